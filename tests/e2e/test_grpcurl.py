"""The coordinator is usable with the stock grpcurl binary and no proto files (server reflection)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def _find_grpcurl() -> str | None:
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which("grpcurl", path=venv_bin) or shutil.which("grpcurl")


@pytest.fixture(scope="module")
def grpcurl_bin() -> str:
    path = _find_grpcurl()
    if path is None:
        pytest.skip("grpcurl binary not found next to the interpreter or on PATH")
    probe = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        pytest.skip(f"{path} does not run: {(probe.stdout + probe.stderr).strip()[:300]}")
    return path


@pytest.fixture(scope="module")
def served(shared_cluster):
    shared_cluster.start_actor("grpcurl-actor", slots=2)
    return shared_cluster


def grpcurl(binary: str, cluster, *args: str, data: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [binary, "-plaintext", "-max-time", "10"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [cluster.target, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20)


def ok_json(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    return json.loads(proc.stdout)


def field(obj: dict, snake: str):
    """grpcurl prints the proto field names; accept the lowerCamel JSON names as well."""
    camel = snake.split("_")[0] + "".join(p.title() for p in snake.split("_")[1:])
    return obj[snake] if snake in obj else obj[camel]


def test_list_shows_corral_services_health_and_reflection(grpcurl_bin, served):
    proc = grpcurl(grpcurl_bin, served, "list")
    assert proc.returncode == 0, proc.stderr
    services = set(proc.stdout.split())
    assert {"corral.v1.TaskService", "corral.v1.ActorService", "corral.v1.AdminService",
            "grpc.health.v1.Health"} <= services, services
    assert any(s.startswith("grpc.reflection.") and s.endswith("ServerReflection") for s in services), services


def test_describe_task_service_shows_its_rpcs(grpcurl_bin, served):
    proc = grpcurl(grpcurl_bin, served, "describe", "corral.v1.TaskService")
    assert proc.returncode == 0, proc.stderr
    for rpc in ("SubmitTask", "SubmitTasks", "GetTask", "ListTasks", "CancelTask", "WatchTask"):
        assert f"rpc {rpc} " in proc.stdout, proc.stdout
    proc = grpcurl(grpcurl_bin, served, "describe", "corral.v1.TaskSpec")
    assert proc.returncode == 0 and "required_capabilities" in proc.stdout, proc.stdout + proc.stderr


def test_submit_with_json_input_then_get_until_succeeded_with_output(grpcurl_bin, served):
    submitted = ok_json(grpcurl(grpcurl_bin, served, "corral.v1.TaskService/SubmitTask",
                                data={"task": {"type": "echo", "input": {"hello": "world"}}}))
    task_id = field(submitted, "task_id")
    assert task_id and submitted["created"] is True

    def succeeded():
        task = ok_json(grpcurl(grpcurl_bin, served, "corral.v1.TaskService/GetTask", data={"task_id": task_id}))["task"]
        return task if task["state"] == "TASK_STATE_SUCCEEDED" else None
    task = wait_for(succeeded, 15, f"task {task_id} to be TASK_STATE_SUCCEEDED via grpcurl", interval_s=0.05)
    assert task["output"] == {"hello": "world"}
    assert field(task, "task_id") == task_id
    [attempt] = task["attempts"]
    assert field(attempt, "actor_id") == "grpcurl-actor"
    assert attempt["outcome"] == "ATTEMPT_OUTCOME_SUCCEEDED"

    listed = ok_json(grpcurl(grpcurl_bin, served, "corral.v1.TaskService/ListTasks",
                             data={"states": ["TASK_STATE_SUCCEEDED"], "type": "echo"}))
    assert task_id in {field(t, "task_id") for t in listed["tasks"]}

    # A server stream: the terminal task is sent once and the stream ends (grpcurl exits 0).
    watched = grpcurl(grpcurl_bin, served, "corral.v1.TaskService/WatchTask", data={"task_id": task_id})
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.count("TASK_STATE_SUCCEEDED") == 1, watched.stdout


def test_bad_request_prints_invalid_argument_naming_the_field_and_exits_nonzero(grpcurl_bin, served):
    proc = grpcurl(grpcurl_bin, served, "corral.v1.TaskService/SubmitTask", data={"task": {"input": {"hello": "world"}}})
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "InvalidArgument" in out and "task.type" in out, out

    proc = grpcurl(grpcurl_bin, served, "corral.v1.TaskService/GetTask", data={"task_id": "no-such-task"})
    assert proc.returncode != 0
    assert "NotFound" in proc.stdout + proc.stderr


def test_health_check_reports_serving(grpcurl_bin, served):
    assert ok_json(grpcurl(grpcurl_bin, served, "grpc.health.v1.Health/Check")) == {"status": "SERVING"}
    for service in ("corral.v1.TaskService", "corral.v1.ActorService", "corral.v1.AdminService"):
        reply = ok_json(grpcurl(grpcurl_bin, served, "grpc.health.v1.Health/Check", data={"service": service}))
        assert reply == {"status": "SERVING"}, service
