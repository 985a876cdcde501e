"""The `corral` command line, run as real subprocesses against a real coordinator.

Client commands print for people by default (stdout is a pipe here: plain text, no ANSI codes) and
protobuf JSON with --json; a user mistake or a refusal prints one line `corral: error: CODE: message`
on stderr with the documented exit code (2 usage, 3 refused, 4 unreachable); `submit --wait` and
`watch` exit 1 when a task did not succeed; a bad coordinator setting exits 2 naming the setting.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from google.protobuf import json_format

from corral.v1 import admin_service_pb2, task_pb2

from .harness import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

S = task_pb2


def corral(*args: str, env: dict[str, str] | None = None, cwd=None, timeout_s: float = 30,
           stdin: str | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}  # hermetic
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=cwd or REPO_ROOT, input=stdin,
                          env={**base, "PYTHONPATH": str(REPO_ROOT), **(env or {})})


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def ok_json(proc: subprocess.CompletedProcess):
    return json.loads(ok(proc))


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

def test_submit_from_argument_file_and_stdin_prints_the_task_id(cli, tmp_path):
    from_arg = ok(corral("submit", "echo", '{"from": "arg"}', *at(cli))).strip()
    path = tmp_path / "input.json"
    path.write_text('{"from": "file"}')
    from_file = ok(corral("submit", "echo", "--input-file", str(path), *at(cli))).strip()
    from_stdin = ok(corral("submit", "echo", "-", *at(cli), stdin='{"from": "stdin"}')).strip()
    for task_id, source in ((from_arg, "arg"), (from_file, "file"), (from_stdin, "stdin")):
        assert len(task_id.split()) == 1, "human output of submit: the id alone"
        task = cli.wait_state(task_id, timeout_s=10)
        assert task.state == S.TASK_STATE_SUCCEEDED and json_format.MessageToDict(task.output) == {"from": source}


def test_submit_again_with_the_same_id_prints_the_id_and_notes_it_existed(cli):
    first = ok(corral("submit", "echo", "{}", "--id", "cli-twice", *at(cli)))
    proc = corral("submit", "echo", "{}", "--id", "cli-twice", *at(cli))
    assert proc.returncode == 0 and proc.stdout == first == "cli-twice\n"
    assert "already existed" in proc.stderr


def test_submit_wait_prints_the_output_and_exits_0(cli):
    proc = corral("submit", "echo", '{"a": 1, "b": [1.5, "x"]}', "--wait", *at(cli))
    assert json.loads(ok(proc)) == {"a": 1, "b": [1.5, "x"]}
    assert '"a": 1' in proc.stdout and "1.0" not in proc.stdout


def test_submit_wait_json_prints_the_succeeded_task(cli):
    task = ok_json(corral("submit", "echo", '{"a": 1}', "--wait", "--json", *at(cli)))
    assert task["state"] == "TASK_STATE_SUCCEEDED"
    assert task["output"] == {"a": 1}
    assert task["taskId"] and task["spec"]["type"] == "echo"
    assert [a["actorId"] for a in task["attempts"]] == ["cli-actor"]


def test_submit_wait_of_a_failing_task_exits_1_with_its_error_on_one_line(cli):
    proc = corral("submit", "fail", '{"message": "cli says no"}', "--max-attempts", "1", "--wait", *at(cli))
    assert proc.returncode == 1, f"{proc.returncode}: {proc.stdout} {proc.stderr}"
    assert proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("corral: task ") and "FAILED after 1 attempt" in line and "cli says no" in line

    proc = corral("submit", "fail", '{"message": "cli says no"}', "--max-attempts", "1", "--wait", "--json",
                  *at(cli))
    assert proc.returncode == 1
    task = json.loads(proc.stdout)
    assert task["state"] == "TASK_STATE_FAILED" and task["error"]["message"] == "cli says no"
    assert len(task["attempts"]) == 1


def test_submit_sets_priority_labels_and_retry_options(cli):
    task = ok_json(corral("submit", "echo", "-", "--priority", "7", "--label", "team=infra", "--max-attempts", "2",
                          "--execution-timeout-s", "5", "--wait", "--json", *at(cli), stdin='{"from": "stdin"}'))
    assert task["state"] == "TASK_STATE_SUCCEEDED"
    assert task["output"] == {"from": "stdin"}
    assert task["spec"]["priority"] == 7
    assert task["spec"]["labels"] == {"team": "infra"}
    assert task["spec"]["retry"]["maxAttempts"] == 2
    assert task["spec"]["executionTimeout"] == "5s"


def test_get_shows_a_summary_and_json(cli):
    ok(corral("submit", "echo", '{"b": [1, 2]}', "--id", "cli-get-me", "--label", "k=v", *at(cli)))
    cli.wait_state("cli-get-me", timeout_s=10)

    text = ok(corral("get", "cli-get-me", *at(cli)))
    rows = {line.split(None, 1)[0]: line.split(None, 1)[1].strip() for line in text.splitlines()
            if line and line[0].isupper() and len(line.split(None, 1)) == 2}
    assert rows["Task"] == "cli-get-me" and rows["State"] == "SUCCEEDED" and rows["Labels"] == "k=v"
    assert rows["Output"] == '{"b":[1,2]}'
    assert rows["Timings"].startswith("queued ")
    assert "cli-actor" in text and "\x1b[" not in text, "piped: no ANSI codes"

    task = ok_json(corral("get", "cli-get-me", "--json", *at(cli)))
    assert task["taskId"] == "cli-get-me" and task["state"] == "TASK_STATE_SUCCEEDED"
    assert task["output"] == {"b": [1, 2]}


def test_list_prints_a_table_and_json_with_filters_limit_and_paging(cli):
    ids = [ok(corral("submit", "echo", "{}", "--label", "listed=yes", *at(cli))).strip() for _ in range(3)]
    for task_id in ids:
        cli.wait_state(task_id, timeout_s=10)

    table = ok(corral("list", "--state", "succeeded", "--type", "echo", "--limit", "0", *at(cli)))
    header, rule, *rows = table.splitlines()
    assert header.split() == ["ID", "TYPE", "STATE", "ATTEMPTS", "CREATED", "DURATION", "DETAIL"]
    listed = {row.split()[0]: row.split()[1:3] for row in rows}
    assert all(listed[t] == ["echo", "SUCCEEDED"] for t in ids)
    assert all(v == ["echo", "SUCCEEDED"] for v in listed.values())

    every = ok_json(corral("list", "--state", "SUCCEEDED,running", "--type", "echo", "--limit", "0", "--json", *at(cli)))
    assert set(ids) <= {t["taskId"] for t in every["tasks"]} and "nextPageToken" not in every
    assert all(t["state"] == "TASK_STATE_SUCCEEDED" and t["spec"]["type"] == "echo" for t in every["tasks"])

    # --limit over pages of 1: the CLI fetches the pages and says there are more.
    proc = corral("list", "--type", "echo", "--limit", "2", "--page-size", "1", "--json", *at(cli))
    two = ok_json(proc)
    assert len(two["tasks"]) == 2 and two["nextPageToken"]
    assert proc.stderr == ""
    rest = ok_json(corral("list", "--type", "echo", "--limit", "0", "--page-token", two["nextPageToken"], "--json",
                          *at(cli)))
    assert [t["taskId"] for t in two["tasks"] + rest["tasks"]] == [t["taskId"] for t in ok_json(corral(
        "list", "--type", "echo", "--limit", "0", "--json", *at(cli)))["tasks"]]
    proc = corral("list", "--type", "echo", "--limit", "1", *at(cli))
    assert len(ok(proc).splitlines()) == 3 and "more with --limit 0" in proc.stderr


def test_status_prints_actor_slots_and_task_counts_and_json(cli):
    done = cli.wait_state(cli.submit("echo", {"for": "status"}), timeout_s=10)  # at least one SUCCEEDED
    assert done.state == S.TASK_STATE_SUCCEEDED
    text = ok(corral("status", *at(cli)))
    assert "Dispatch       running" in text
    [actor] = [line.split() for line in text.splitlines() if line.startswith("cli-actor")]
    assert actor[2].endswith("/2"), actor
    assert "Tasks by state" in text and "SUCCEEDED" in text

    status = ok_json(corral("status", "--json", *at(cli)))
    [actor] = [a for a in status["actors"] if a["identity"]["actorId"] == "cli-actor"]
    assert actor["identity"]["slots"] == 2
    assert "echo" in actor["identity"]["taskTypes"]
    states = {c["state"] for c in status["tasksByState"]}
    assert {"TASK_STATE_READY", "TASK_STATE_RUNNING", "TASK_STATE_SUCCEEDED"} <= states
    assert "wal" in status


def test_status_counts_the_queue_per_type(cli):
    queued = [cli.submit("cli-nobody-runs-this") for _ in range(2)]
    text = ok(corral("status", *at(cli)))
    [row] = [line.split() for line in text.splitlines() if line.startswith("cli-nobody-runs-this")]
    assert row[0] == "cli-nobody-runs-this" and row[-1] == "2", text
    for task_id in queued:
        ok(corral("cancel", task_id, *at(cli)))


def test_cancel_stops_a_running_sleep_task(cli):
    task_id = ok(corral("submit", "sleep", '{"seconds": 30}', *at(cli))).strip()
    cli.wait_state(task_id, (S.TASK_STATE_RUNNING,), timeout_s=10)

    reply = ok_json(corral("cancel", task_id, "--reason", "from the cli", "--json", *at(cli)))
    assert reply["taskId"] == task_id
    assert reply["state"] == "TASK_STATE_CANCELED" or reply.get("cancelRequested") is True, reply
    task = cli.wait_state(task_id, timeout_s=5)
    assert task.state == S.TASK_STATE_CANCELED, task
    assert task.attempts[-1].outcome == S.ATTEMPT_OUTCOME_CANCELED

    proc = corral("cancel", task_id, *at(cli))  # already terminal
    assert proc.returncode == 3
    assert_one_error_line(proc, "corral: error: FAILED_PRECONDITION: ")

    waiting = cli.submit("cli-nobody-runs-this")
    assert ok(corral("cancel", waiting, *at(cli))) == f"Canceled task {waiting}.\n"


def test_watch_of_a_set_ends_when_all_are_terminal_one_line_per_change_when_piped(cli):
    a = ok(corral("submit", "sleep", '{"seconds": 0.3}', *at(cli))).strip()
    b = ok(corral("submit", "echo", '{}', *at(cli))).strip()
    proc = corral("watch", a, b, *at(cli))
    lines = [line.split("  ") for line in ok(proc).splitlines()]
    assert {line[1] for line in lines} == {a, b}
    last = {line[1]: line[3] for line in lines}
    assert last == {a: "SUCCEEDED", b: "SUCCEEDED"}, proc.stdout
    assert lines[0][0] == "now", "the first lines are the current states"
    assert "\x1b[" not in proc.stdout
    assert proc.stderr.strip() == "corral: 2 tasks: 2 succeeded"


def test_watch_json_prints_one_event_per_line_and_exits_1_when_one_fails(cli):
    ok_task = ok(corral("submit", "sleep", '{"seconds": 0.5}', *at(cli))).strip()
    bad = ok(corral("submit", "fail", '{"message": "watched"}', "--max-attempts", "1", *at(cli))).strip()
    proc = corral("watch", ok_task, bad, "--json", *at(cli))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {e["taskId"] for e in events} == {ok_task, bad}
    assert all(set(e) >= {"seq", "time", "taskId", "type", "kind", "state", "attempt", "actorId", "outcome", "reason"}
               for e in events), "every field printed: the same keys on every line"
    snapshots = [e for e in events if e["kind"] == "TASK_EVENT_KIND_UNSPECIFIED"]
    assert {e["taskId"] for e in snapshots} == {ok_task, bad} and all(e["seq"] == "0" for e in snapshots)
    final = {e["taskId"]: e["state"] for e in events}
    assert final == {ok_task: "TASK_STATE_SUCCEEDED", bad: "TASK_STATE_FAILED"}
    seqs = [int(e["seq"]) for e in events if e["taskId"] == ok_task and e["seq"] != "0"]
    assert seqs == sorted(seqs)


def test_watch_of_terminal_tasks_returns_at_once(cli):
    task_id = ok_json(corral("submit", "echo", "{}", "--wait", "--json", *at(cli)))["taskId"]
    proc = corral("watch", task_id, *at(cli), timeout_s=15)
    assert ok(proc).split("  ")[3] == "SUCCEEDED"


# ---- user mistakes and refusals: one line, no traceback, the documented exit code ----------------

@pytest.mark.parametrize("argv, exit_code, prefix", [
    (("submit", "echo", "{not json", "--id", "cli-never"), 2, "corral: error: USAGE: input is not JSON"),
    (("submit", "echo", "--input-file", "/no/such/input.json"), 2, "corral: error: USAGE: cannot read --input-file"),
    (("submit", "echo", "{}", "--label", "nokey"), 2, "corral: error: USAGE: --label 'nokey' is not KEY=VALUE"),
    (("submit",), 2, "corral: error: USAGE: the following arguments are required: type"),
    (("list", "--state", "bogus"), 2, "corral: error: USAGE: --state 'bogus' is not a task state"),
    (("get", "x", "--no-such-flag"), 2, "corral: error: USAGE: unrecognized arguments: --no-such-flag"),
    (("get", "nope"), 3, "corral: error: NOT_FOUND: "),
    (("watch", "nope", "--json"), 3, "corral: error: NOT_FOUND: "),
    (("submit", "has space"), 3, "corral: error: INVALID_ARGUMENT: task.type"),
])
def test_user_mistakes_give_one_error_line_and_the_documented_exit_code(cli, argv, exit_code, prefix):
    proc = corral(*argv, *at(cli))
    assert proc.returncode == exit_code, f"{proc.returncode}: {proc.stdout} {proc.stderr}"
    assert_one_error_line(proc, prefix)


def test_invalid_input_submits_nothing(cli):
    corral("submit", "echo", "{not json", "--id", "cli-never", *at(cli))
    proc = corral("get", "cli-never", *at(cli))
    assert proc.returncode == 3 and "NOT_FOUND" in proc.stderr


def test_unreachable_coordinator_exits_4(tmp_path):
    from .harness import free_port

    proc = corral("get", "x", "--coordinator", f"127.0.0.1:{free_port()}", "--timeout-s", "2")
    assert proc.returncode == 4
    assert_one_error_line(proc, "corral: error: UNAVAILABLE: ")


@pytest.mark.parametrize("args", [
    ("--timeout-s", "0"), ("--timeout-s", "-1"), ("--timeout-s", "nan"), ("--timeout-s", "inf"),
    ("--coordinator", ""),
])
def test_a_bad_client_option_is_a_usage_error(args):
    # Before: --timeout-s inf/nan/-1 answered DEADLINE_EXCEEDED (exit 4) without calling anyone, and
    # an empty --coordinator printed grpc's C-core log lines and UNKNOWN (exit 4).
    from .harness import free_port

    proc = corral("status", "--coordinator", f"127.0.0.1:{free_port()}", *args)
    assert proc.returncode == 2, f"{proc.returncode}: {proc.stderr}"
    assert_one_error_line(proc, "corral: error: USAGE: ")
    assert args[0] in proc.stderr


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_non_utf8_input_is_a_usage_error(tmp_path, how):
    from .harness import free_port

    path = tmp_path / "input.json"
    path.write_bytes(b'"\xff\xfe"')
    target = ("--coordinator", f"127.0.0.1:{free_port()}", "--timeout-s", "2")
    if how == "file":
        proc = corral("submit", "echo", "--input-file", str(path), *target)
    else:
        proc = subprocess.run([sys.executable, "-m", "coordinator.cli", "submit", "echo", "-", *target],
                              capture_output=True, timeout=30, cwd=REPO_ROOT, input=path.read_bytes(),
                              env={**{k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")},
                                   "PYTHONPATH": str(REPO_ROOT)})
        proc = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                           proc.stderr.decode(errors="replace"))
    assert proc.returncode == 2, f"{proc.returncode}: {proc.stderr}"
    assert_one_error_line(proc, "corral: error: USAGE: ")
    assert "UTF-8" in proc.stderr


def test_help_documents_the_exit_codes():
    text = ok(corral("--help"))
    assert "exit codes:" in text and "corral: error: CODE: message" in text


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


def test_coordinator_whose_listen_address_is_taken_exits_2_naming_it(tmp_path):
    # grpc raises RuntimeError when it cannot bind: it was a traceback and exit 1.
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        proc = corral("coordinator", "--data-dir", str(tmp_path / "wal"), "--insecure-plaintext",
                      "--listen", listen, cwd=tmp_path, timeout_s=30)
    assert proc.returncode == 2, f"{proc.returncode}: {proc.stdout} {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "--listen" in proc.stderr and listen in proc.stderr, proc.stderr


def test_coordinator_whose_metrics_address_is_taken_exits_2_naming_it(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        proc = corral("coordinator", "--data-dir", str(tmp_path / "wal"), "--insecure-plaintext",
                      "--listen", "127.0.0.1:0", "--metrics-listen", listen, cwd=tmp_path, timeout_s=30)
    assert proc.returncode == 2, f"{proc.returncode}: {proc.stdout} {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "--metrics-listen" in proc.stderr and listen in proc.stderr, proc.stderr


def test_coordinator_whose_wal_cannot_be_mapped_exits_2_naming_the_settings(tmp_path):
    # 10**18 bytes is beyond any x86-64/arm64 address space: LMDB's mmap fails (lmdb.MemoryError,
    # not an OSError), which was a traceback and exit 1.
    proc = corral("coordinator", "--data-dir", str(tmp_path / "wal"), "--insecure-plaintext",
                  "--listen", "127.0.0.1:0", "--wal-map-size-bytes", str(10 ** 18), cwd=tmp_path, timeout_s=30)
    assert proc.returncode == 2, f"{proc.returncode}: {proc.stdout} {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "--wal-map-size-bytes" in proc.stderr and "--data-dir" in proc.stderr, proc.stderr


def test_coordinator_with_a_tls_file_that_is_not_pem_exits_2_naming_it(tmp_path):
    # Readable but not a certificate/key: grpc failed to bind (RuntimeError traceback, exit 1).
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    proc = corral("coordinator", "--data-dir", str(tmp_path / "wal"), "--listen", "127.0.0.1:0",
                  "--tls-cert-file", str(bad), "--tls-key-file", str(bad), cwd=tmp_path, timeout_s=30)
    assert proc.returncode == 2, f"{proc.returncode}: {proc.stdout} {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "--tls-cert-file" in proc.stderr and "invalid configuration" in proc.stderr, proc.stderr
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


# ---- children ------------------------------------------------------------------------------------

def test_watch_children_follows_a_parent_and_its_children_until_all_are_terminal(cluster):
    from .harness import wait_for

    cluster.start_actor("fan", app="tests.e2e.children_app", slots=8)
    assert ok(corral("pause", "--reason", "watch first", *at(cluster))).startswith("Dispatch paused")
    fan_in = '{"n": 3, "child_type": "sleep", "child_input": {"seconds": 0.2}, "wait": true}'
    parent = ok(corral("submit", "fanout", fan_in, *at(cluster))).strip()
    base = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    watcher = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "watch", parent, "--children", "--json",
                                *at(cluster)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO_ROOT, env={**base, "PYTHONPATH": str(REPO_ROOT)})
    try:
        # Subscribed (a stream for the parent's type, one for its children) before anything runs:
        # the children are discovered from the stream, not from a listing.
        wait_for(lambda: cluster.admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(),
                                                        timeout=5).event_subscribers == 2, 20, "the watch streams")
        assert ok(corral("resume", *at(cluster))) == "Dispatch resumed.\n"
        stdout, stderr = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(timeout=10)
    assert watcher.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    children = ok_json(corral("list", "--parent", parent, "--json", *at(cluster)))["tasks"]
    assert len(children) == 3 and all(c["parentTaskId"] == parent for c in children)
    child_ids = {c["taskId"] for c in children}
    final = {e["taskId"]: e["state"] for e in events}
    assert final == {parent: "TASK_STATE_SUCCEEDED", **{c: "TASK_STATE_SUCCEEDED" for c in child_ids}}
    kinds = [(e["taskId"], e["kind"]) for e in events]
    assert kinds[0] == (parent, "TASK_EVENT_KIND_UNSPECIFIED")
    assert {t for t, kind in kinds if kind == "TASK_EVENT_KIND_SUBMITTED"} == child_ids
    assert [e["state"] for e in events if e["taskId"] == parent] == [
        "TASK_STATE_READY", "TASK_STATE_RUNNING", "TASK_STATE_SUCCEEDED"]

    # Piped human output of a finished tree: the current states, then the summary.
    proc = corral("watch", parent, "--children", *at(cluster))
    assert len(ok(proc).splitlines()) == 4 and proc.stderr.strip() == "corral: 4 tasks: 4 succeeded"
    table = ok(corral("list", "--parent", parent, *at(cluster)))
    assert {row.split()[0] for row in table.splitlines()[2:]} == child_ids


# ---- schedules -----------------------------------------------------------------------------------

def test_schedule_commands_create_list_get_pause_resume_delete(cli):
    from .harness import wait_for

    created = ok_json(corral("schedule", "create", "cli-tick", "echo", '{"tick": true}', "--every", "1s",
                             "--misfire", "skip", "--label", "from=cli", "--json", *at(cli)))
    assert created["created"] is True
    assert created["schedule"]["spec"]["interval"] == "1s"
    assert created["schedule"]["spec"]["misfirePolicy"] == "MISFIRE_POLICY_SKIP"
    again = ok(corral("schedule", "create", "cli-tick", "echo", '{"tick": true}', "--every", "1s",
                      "--misfire", "skip", "--label", "from=cli", *at(cli)))
    assert again.startswith("Already exists (same spec): schedule cli-tick; next occurrence ")

    def first_task():
        return ok_json(corral("schedule", "get", "cli-tick", "--json", *at(cli))).get("lastTaskId")
    task_id = wait_for(first_task, 20, "the schedule's first task")
    assert task_id.startswith("cli-tick:")
    task = cli.wait_state(task_id, timeout_s=10)
    assert task.state == S.TASK_STATE_SUCCEEDED and task.spec.labels["from"] == "cli"
    assert json_format.MessageToDict(task.output) == {"tick": True}

    table = ok(corral("schedule", "list", *at(cli)))
    [row] = [line for line in table.splitlines() if line.startswith("cli-tick ")]
    assert "every 1.0s" in row and "echo" in row and "ACTIVE" in row, table

    schedules = ok_json(corral("status", "--json", *at(cli)))["schedules"]
    assert schedules["active"] == "1" and "nextOccurrence" in schedules, schedules  # int64: a JSON string
    paused = ok(corral("schedule", "pause", "cli-tick", "--reason", "quiet hours", *at(cli)))
    assert paused.startswith("Paused schedule cli-tick")
    assert "Schedules      0 active, 1 paused" in ok(corral("status", *at(cli)))
    summary = ok(corral("schedule", "get", "cli-tick", *at(cli)))
    assert "PAUSED (quiet hours)" in summary and "Tasks created" in summary, summary
    resumed = ok_json(corral("schedule", "resume", "cli-tick", "--json", *at(cli)))
    assert resumed["state"] == "SCHEDULE_STATE_ACTIVE"

    assert ok(corral("schedule", "delete", "cli-tick", *at(cli))).startswith("Deleted schedule cli-tick")
    gone = corral("schedule", "get", "cli-tick", *at(cli))
    assert gone.returncode == 3
    assert_one_error_line(gone, "corral: error: NOT_FOUND: ")
    assert cli.get(task_id).state == S.TASK_STATE_SUCCEEDED  # its tasks stay


def test_schedule_create_mistakes_are_one_line_with_the_exit_code(cli):
    bad_zone = corral("schedule", "create", "bad", "echo", "--cron", "0 3 * * *", "--time-zone", "Mars/Olympus",
                      *at(cli))
    assert bad_zone.returncode == 3
    assert "schedule.cron.time_zone" in assert_one_error_line(bad_zone, "corral: error: INVALID_ARGUMENT: ")
    bad_every = corral("schedule", "create", "bad", "echo", "--every", "soon", *at(cli))
    assert bad_every.returncode == 2
    assert "--every 'soon'" in assert_one_error_line(bad_every, "corral: error: USAGE: ")
    both = corral("schedule", "create", "bad", "echo", "--every", "1s", "--cron", "* * * * *", *at(cli))
    assert both.returncode == 2
    assert_one_error_line(both, "corral: error: USAGE: ")
