"""The README's "grpcurl cookbook" runs as written, against a real cluster, so it cannot rot.

Parsed from README.md: the `## grpcurl cookbook` section, its ```sh blocks, one command per line
starting with `grpcurl`. Each runs, in order, with the real grpcurl binary against a coordinator and
a demo actor (harness), after two substitutions: `localhost:7070` -> the cluster's address, and
`TASK_ID` -> the `task_id` printed by the last command that printed one (a SubmitTask). A command
must exit 0, unless it ends with `# expect: CODE` (it must then fail with that gRPC code); one
ending with `# stream` must still be running, having printed something, a few seconds in (for
WatchEvents the test submits a task matching the command's filter). And every RPC the server
describes for TaskService, AdminService and the health service must appear in the cookbook.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import Cluster, wait_for

from .conftest import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

README = REPO_ROOT / "README.md"
SECTION = "## grpcurl cookbook"
ADDRESS = "localhost:7070"
PLACEHOLDER = "TASK_ID"
# Services whose every RPC the cookbook shows (ActorService is the actors' stream: mentioned only).
COVERED_SERVICES = ("corral.v1.TaskService", "corral.v1.AdminService", "grpc.health.v1.Health")
NOT_RUN_SERVICES = ("corral.v1.ActorService",)
MARKER = re.compile(r"#\s*(?:expect:\s*(?P<code>[A-Za-z]+)|(?P<stream>stream))\s*$")
METHOD = re.compile(r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*/[A-Za-z_]\w*$")


@dataclass
class Command:
    line: str             # as written in the README
    lineno: int           # 1-based, in README.md
    argv: list[str]       # shell words, comment dropped, before substitution
    expect_code: str | None
    stream: bool

    @property
    def method(self) -> str | None:
        """`pkg.Service/Method` for a call; None for list/describe."""
        return next((a for a in self.argv[1:] if METHOD.match(a)), None)

    @property
    def data(self) -> dict:
        return json.loads(self.argv[self.argv.index("-d") + 1]) if "-d" in self.argv else {}

    def where(self) -> str:
        return f"README.md:{self.lineno}: {self.line}"


def cookbook_section(text: str) -> tuple[int, list[str]]:
    """(first line number, lines) of the cookbook section: from its heading to the next `## `."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == SECTION]
    assert len(starts) == 1, f"README.md must have exactly one '{SECTION}' heading (found {len(starts)})"
    start = starts[0]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return start + 1, lines[start:end]


def parse_cookbook(text: str) -> list[Command]:
    first, lines = cookbook_section(text)
    commands: list[Command] = []
    fence: str | None = None
    for offset, raw in enumerate(lines):
        lineno, line = first + offset, raw.strip()
        if line.startswith("```"):
            fence = None if fence is not None else (line[3:].strip() or "none")
            continue
        if fence not in ("sh", "shell", "bash", "console") or not line or line.startswith("#"):
            continue
        # Everything in a shell block of the cookbook is run: no line may escape the test.
        assert line.startswith("grpcurl "), f"README.md:{lineno}: a cookbook shell line must be one grpcurl command: {line}"
        marker = MARKER.search(line)
        commands.append(Command(line=line, lineno=lineno, argv=shlex.split(line, comments=True),
                                expect_code=marker.group("code") if marker else None,
                                stream=bool(marker and marker.group("stream"))))
    assert fence is None, "unclosed ``` fence in the grpcurl cookbook"
    return commands


@pytest.fixture(scope="module")
def cookbook() -> list[Command]:
    return parse_cookbook(README.read_text())


def substitute(command: Command, target: str, task_id: str | None) -> list[str]:
    argv = []
    for arg in command.argv:
        arg = arg.replace(ADDRESS, target)
        if PLACEHOLDER in arg:
            assert task_id, f"{command.where()}\n{PLACEHOLDER} is used before any command printed a task_id"
            arg = arg.replace(PLACEHOLDER, task_id)
        argv.append(arg)
    return argv


def printed_task_id(stdout: str) -> str | None:
    try:
        reply = json.loads(stdout)
    except ValueError:
        return None
    return (reply.get("task_id") or reply.get("taskId")) if isinstance(reply, dict) else None


# ---- the section itself ----------------------------------------------------------------------------

def test_cookbook_commands_are_well_formed(cookbook):
    assert len(cookbook) >= 15, [c.line for c in cookbook]
    for command in cookbook:
        assert "-plaintext" in command.argv, command.where()
        assert ADDRESS in command.argv, f"{command.where()}\nuse the address {ADDRESS} (the test substitutes it)"
        if "-d" in command.argv:
            assert isinstance(command.data, dict), command.where()
    assert any(c.expect_code for c in cookbook) and any(c.stream for c in cookbook)


def test_cookbook_mentions_the_actor_service_without_running_it(cookbook):
    _, lines = cookbook_section(README.read_text())
    for service in NOT_RUN_SERVICES:
        assert service in "\n".join(lines), f"the cookbook should mention {service}"
        assert not any((c.method or "").startswith(service + "/") for c in cookbook), service


# ---- against a real cluster ------------------------------------------------------------------------

def described_rpcs(grpcurl_bin: str, cluster: Cluster, service: str) -> set[str]:
    proc = subprocess.run([grpcurl_bin, "-plaintext", cluster.target, "describe", service], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {f"{service}/{name}" for name in re.findall(r"^\s*rpc (\w+) ", proc.stdout, re.M)}


def test_cookbook_shows_every_rpc_the_server_describes(cookbook, grpcurl_bin, demo_cluster):
    listed = subprocess.run([grpcurl_bin, "-plaintext", demo_cluster.target, "list"], capture_output=True, text=True,
                            timeout=30)
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    corral = {s for s in services if s.startswith("corral.")}
    unknown = corral - set(COVERED_SERVICES) - set(NOT_RUN_SERVICES)
    assert not unknown, f"services the cookbook does not cover yet: {sorted(unknown)} (add them to README.md)"
    shown = {c.method for c in cookbook if c.method}
    for service in COVERED_SERVICES:
        assert service in services, f"the server does not list {service}: {sorted(services)}"
        rpcs = described_rpcs(grpcurl_bin, demo_cluster, service)
        assert rpcs, service
        missing = sorted(rpcs - shown)
        assert not missing, f"RPCs missing from the README's grpcurl cookbook: {missing}"


def run_stream(argv: list[str], command: Command, cluster: Cluster, log: Path) -> None:
    """Start a never-ending stream, make it print (a matching task for WatchEvents), then stop it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        next_submit = 0.0

        def printed() -> bool:
            nonlocal next_submit
            if proc.poll() is not None:
                raise AssertionError(f"{command.where()}\na stream ended (exit {proc.returncode}):\n{log.read_text()}")
            if command.method == "corral.v1.TaskService/WatchEvents" and time.monotonic() >= next_submit:
                types = command.data.get("types") or ["echo"]
                cluster.submit(types[0], {"from": "cookbook"}, labels=command.data.get("labels") or {})
                next_submit = time.monotonic() + 0.5
            return log.stat().st_size > 0
        wait_for(printed, 15, f"{command.where()} to print something", interval_s=0.05)
        time.sleep(0.2)
        assert proc.poll() is None, f"{command.where()}\nthe stream ended (exit {proc.returncode}):\n{log.read_text()}"
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


def test_every_cookbook_command_runs(cookbook, grpcurl_bin, demo_cluster, tmp_path):
    task_id: str | None = None
    for n, command in enumerate(cookbook):
        argv = [grpcurl_bin, *substitute(command, demo_cluster.target, task_id)[1:]]
        if command.stream:
            run_stream(argv, command, demo_cluster, tmp_path / f"stream-{n}.log")
            continue
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        output = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        if command.expect_code:
            assert proc.returncode != 0, f"{command.where()}\nexpected {command.expect_code}, but it succeeded:\n{output}"
            assert f"Code: {command.expect_code}" in proc.stdout + proc.stderr, f"{command.where()}\n{output}"
            continue
        assert proc.returncode == 0, f"{command.where()}\n{output}\n{demo_cluster.logs()}"
        task_id = printed_task_id(proc.stdout) or task_id
    assert task_id, "no cookbook command printed a task_id (SubmitTask)"
