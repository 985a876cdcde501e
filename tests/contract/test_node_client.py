"""A Node.js client generated from proto/ submits a task to a real cluster and watches it to the end.

clients/node: `npm ci` (pinned by package-lock.json; node_modules is kept between runs and
reinstalled only when the lock file changes), stubs generated from proto/ with protoc
(grpcio-tools) + protoc-gen-es into clients/node/gen, compiled with tsc into clients/node/dist
(both ignored by git), then `node dist/src/submit_and_watch.js HOST:PORT echo '{"from":"node"}'`.

Skipped when node or npm is missing; an unreachable npm registry is a failure.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CLIENT = REPO_ROOT / "clients" / "node"
STAMP = CLIENT / "node_modules" / ".corral-npm-ci"


def run(cmd: list[str], timeout_s: float, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=CLIENT, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "PYTHON": sys.executable, "npm_config_update_notifier": "false",
                               "npm_config_fund": "false", "npm_config_audit": "false"}, **kwargs)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def lock_digest() -> str:
    return hashlib.sha256((CLIENT / "package.json").read_bytes() + (CLIENT / "package-lock.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def node_client() -> list[str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node.js client (Node.js >= 20)")
    major = int(subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
                .lstrip("v").split(".")[0])
    if major < 20:
        pytest.skip(f"Node.js {major} is too old for clients/node (needs >= 20)")

    # npm ci only when package.json/package-lock.json changed since the last install here. It needs
    # the npm registry (or a warm npm cache): a failure here is a failure, not a skip.
    digest = lock_digest()
    if not STAMP.exists() or STAMP.read_text().strip() != digest:
        run([npm, "ci", "--no-audit", "--no-fund"], timeout_s=180)
        STAMP.write_text(digest + "\n")

    run([node, "scripts/gen.mjs"], timeout_s=60)             # proto/ -> gen/ (never committed)
    run([node, "node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], timeout_s=120)  # -> dist/
    return [node, str(CLIENT / "dist" / "src" / "submit_and_watch.js")]


def test_generated_stubs_cover_every_proto_file(node_client):
    protos = sorted(p.stem for p in (REPO_ROOT / "proto" / "corral" / "v1").glob("*.proto"))
    generated = sorted(p.name.removesuffix("_pb.ts") for p in (CLIENT / "gen" / "corral" / "v1").glob("*_pb.ts"))
    assert generated == protos


def test_node_client_submits_and_watches_an_echo_task_to_success(node_client, demo_cluster):
    proc = subprocess.run([*node_client, demo_cluster.target, "echo", '{"from":"node"}'], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n{demo_cluster.logs()}"
    task = json.loads(proc.stdout)
    assert task["state"] == "TASK_STATE_SUCCEEDED", task
    assert task["output"] == {"from": "node"}, task
    assert task["spec"]["input"] == {"from": "node"}, task
    [attempt] = task["attempts"]
    assert attempt["outcome"] == "ATTEMPT_OUTCOME_SUCCEEDED" and attempt["actorId"] == "contract-actor", attempt
    # The coordinator agrees with what the Node.js client printed.
    assert demo_cluster.get(task["taskId"]).output.struct_value["from"] == "node"


def test_node_client_reports_a_failed_task_and_grpc_errors(node_client, demo_cluster):
    proc = subprocess.run([*node_client, demo_cluster.target, "fail", '{"non_retryable": true, "message": "no"}'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    task = json.loads(proc.stdout)
    assert task["state"] == "TASK_STATE_FAILED" and task["error"]["nonRetryable"] is True, task

    # A refusal from the coordinator comes back as a gRPC status: a task with no type.
    proc = subprocess.run([*node_client, demo_cluster.target, "", "{}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "InvalidArgument" in proc.stderr and "task.type" in proc.stderr, proc.stderr
