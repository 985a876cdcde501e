"""The `corral` command line, run as real subprocesses against a real coordinator.

Client commands print protobuf JSON; a refused request prints one line `error: CODE: message` on
stderr and exits 1; `submit --wait` exits 3 when the task did not succeed; a bad coordinator
setting exits 2 with a message naming the setting.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from corral.v1 import task_pb2

from .harness import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

S = task_pb2


def corral(*args: str, env: dict[str, str] | None = None, cwd=None, timeout_s: float = 30,
           stdin: str | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}  # hermetic
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=cwd or REPO_ROOT, input=stdin,
                          env={**base, "PYTHONPATH": str(REPO_ROOT), **(env or {})})


def ok_json(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def assert_one_error_line(proc: subprocess.CompletedProcess, prefix: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr
    assert proc.stdout == "", proc.stdout
    return lines[0]


@pytest.fixture(scope="module")
def cli(shared_cluster):
    shared_cluster.start_actor("cli-actor", slots=2, extra=("--grace-s", "0.5"))
    return shared_cluster


def at(cluster) -> tuple[str, str]:
    return ("--coordinator", cluster.target)


# ---- client commands ---------------------------------------------------------------------------

def test_submit_wait_exits_0_and_prints_the_succeeded_task_with_its_output(cli):
    task = ok_json(corral("submit", "echo", '{"a": 1}', "--wait", *at(cli)))
    assert task["state"] == "TASK_STATE_SUCCEEDED"
    assert task["output"] == {"a": 1}
    assert task["taskId"] and task["spec"]["type"] == "echo"
    assert [a["actorId"] for a in task["attempts"]] == ["cli-actor"]
    assert cli.get(task["taskId"]).state == S.TASK_STATE_SUCCEEDED


def test_submit_without_wait_prints_the_task_id_and_get_prints_the_task(cli):
    submitted = ok_json(corral("submit", "echo", '{"b": [1, 2]}', "--id", "cli-get-me", *at(cli)))
    assert submitted["taskId"] == "cli-get-me" and submitted["created"] is True
    cli.wait_state("cli-get-me", timeout_s=10)

    task = ok_json(corral("get", "cli-get-me", *at(cli)))
    assert task["taskId"] == "cli-get-me"
    assert task["state"] == "TASK_STATE_SUCCEEDED"
    assert task["output"] == {"b": [1, 2]}


def test_submit_reads_input_from_stdin_and_sets_priority_labels_and_retry_options(cli):
    task = ok_json(corral("submit", "echo", "-", "--priority", "7", "--label", "team=infra", "--max-attempts", "2",
                          "--execution-timeout-s", "5", "--wait", *at(cli), stdin='{"from": "stdin"}'))
    assert task["state"] == "TASK_STATE_SUCCEEDED"
    assert task["output"] == {"from": "stdin"}
    assert task["spec"]["priority"] == 7
    assert task["spec"]["labels"] == {"team": "infra"}
    assert task["spec"]["retry"]["maxAttempts"] == 2
    assert task["spec"]["executionTimeout"] == "5s"


def test_get_of_unknown_task_exits_1_with_one_not_found_line_and_no_traceback(cli):
    proc = corral("get", "nope", *at(cli))
    assert proc.returncode == 1
    line = assert_one_error_line(proc, "error: NOT_FOUND: ")
    assert "nope" in line


def test_status_prints_json_with_the_connected_actor_and_task_counts(cli):
    status = ok_json(corral("status", *at(cli)))
    [actor] = [a for a in status["actors"] if a["identity"]["actorId"] == "cli-actor"]
    assert actor["identity"]["slots"] == 2
    assert "echo" in actor["identity"]["taskTypes"]
    states = {c["state"] for c in status["tasksByState"]}
    assert {"TASK_STATE_READY", "TASK_STATE_RUNNING", "TASK_STATE_SUCCEEDED"} <= states
    assert "wal" in status


def test_list_state_filter_accepts_lowercase_short_names(cli):
    task_id = ok_json(corral("submit", "echo", '{"listed": true}', "--wait", *at(cli)))["taskId"]
    listed = ok_json(corral("list", "--state", "succeeded", "--type", "echo", "--page-size", "1000", *at(cli)))
    assert task_id in {t["taskId"] for t in listed["tasks"]}
    assert all(t["state"] == "TASK_STATE_SUCCEEDED" and t["spec"]["type"] == "echo" for t in listed["tasks"])

    proc = corral("list", "--state", "bogus", *at(cli))
    assert proc.returncode != 0
    assert_one_error_line(proc, "error: ")


def test_cancel_stops_a_running_sleep_task(cli):
    task_id = ok_json(corral("submit", "sleep", '{"seconds": 30}', *at(cli)))["taskId"]
    cli.wait_state(task_id, (S.TASK_STATE_RUNNING,), timeout_s=10)

    reply = ok_json(corral("cancel", task_id, "--reason", "from the cli", *at(cli)))
    assert reply["taskId"] == task_id
    assert reply["state"] == "TASK_STATE_CANCELED" or reply.get("cancelRequested") is True, reply
    task = cli.wait_state(task_id, timeout_s=5)
    assert task.state == S.TASK_STATE_CANCELED, task
    assert task.attempts[-1].outcome == S.ATTEMPT_OUTCOME_CANCELED

    proc = corral("cancel", task_id, *at(cli))  # already terminal
    assert proc.returncode == 1
    assert_one_error_line(proc, "error: FAILED_PRECONDITION: ")


def test_watch_prints_one_json_line_per_change_ending_with_the_terminal_state(cli):
    task_id = ok_json(corral("submit", "sleep", '{"seconds": 0.3}', *at(cli)))["taskId"]
    proc = corral("watch", task_id, *at(cli))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines and all(line["task_id"] == task_id for line in lines)
    assert lines[-1]["state"] == "TASK_STATE_SUCCEEDED", lines


def test_submit_wait_of_a_failing_task_exits_3_and_prints_the_failed_task(cli):
    proc = corral("submit", "fail", '{"message": "cli says no"}', "--max-attempts", "1", "--wait", *at(cli))
    assert proc.returncode == 3, f"{proc.returncode}: {proc.stdout} {proc.stderr}"
    task = json.loads(proc.stdout)
    assert task["state"] == "TASK_STATE_FAILED"
    assert task["error"]["message"] == "cli says no"
    assert len(task["attempts"]) == 1


def test_submit_of_invalid_json_input_exits_nonzero_without_submitting(cli):
    proc = corral("submit", "echo", "{not json", "--id", "cli-never", *at(cli))
    assert proc.returncode != 0
    assert_one_error_line(proc, "error: input is not JSON")
    proc = corral("get", "cli-never", *at(cli))
    assert proc.returncode == 1 and "NOT_FOUND" in proc.stderr


def test_rejected_submission_exits_1_with_invalid_argument_naming_the_field(cli):
    proc = corral("submit", "has space", *at(cli))
    assert proc.returncode == 1
    assert_one_error_line(proc, "error: INVALID_ARGUMENT: task.type")


def test_unreachable_coordinator_exits_2(tmp_path):
    from .harness import free_port

    proc = corral("get", "x", "--coordinator", f"127.0.0.1:{free_port()}", "--timeout-s", "2")
    assert proc.returncode == 2
    assert_one_error_line(proc, "error: UNAVAILABLE: ")


# ---- coordinator configuration -----------------------------------------------------------------

@pytest.mark.parametrize("args, env, names", [
    (("--lease-ttl-s", "-1"), {}, "--lease-ttl-s"),
    (("--lease-ttl-s", "abc"), {}, "--lease-ttl-s"),
    ((), {"CORRAL_LISTEN": "bad"}, "CORRAL_LISTEN"),
    ((), {"CORRAL_LEASE_TTL_S": "0"}, "CORRAL_LEASE_TTL_S"),
    ((), {"CORRAL_LOG_LEVEL": "chatty"}, "CORRAL_LOG_LEVEL"),
])
def test_coordinator_with_a_bad_setting_exits_2_naming_the_setting(tmp_path, args, env, names):
    proc = corral("coordinator", "--data-dir", str(tmp_path / "wal"), *args, env=env, cwd=tmp_path, timeout_s=20)
    assert proc.returncode == 2, f"{proc.returncode}: {proc.stdout} {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert names in proc.stderr, proc.stderr
    assert "invalid configuration" in proc.stderr
    assert not (tmp_path / "wal").exists(), "a misconfigured coordinator must not touch its data dir"


@pytest.mark.parametrize("args, says", [
    (("--coordinator", "127.0.0.1:1"), "--app"),
    (("--coordinator", "127.0.0.1:1", "--app", "no_such_module_for_corral"), "no_such_module_for_corral"),
    (("--coordinator", "127.0.0.1:1", "--app", "actor.demo:nope"), "nope"),
    (("--coordinator", "127.0.0.1:1", "--app", "actor.demo", "--slots", "0"), "slots"),
])
def test_actor_with_bad_arguments_exits_2_saying_why(tmp_path, args, says):
    proc = corral("actor", *args, cwd=tmp_path, timeout_s=20)
    assert proc.returncode == 2, f"{proc.returncode}: {proc.stdout} {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert says in proc.stderr, proc.stderr
