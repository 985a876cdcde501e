"""Pure parts of the `corral` client commands: exit codes, error lines, parsing of user input,
human renderings (rendered to a string, no terminal) and the watch set's view of tasks."""
from __future__ import annotations

import argparse
import io
import json
import re

import grpc
import pytest
from google.protobuf import json_format
from rich.console import Console

from coordinator import cli_output as out
from coordinator.cli import build_parser
from coordinator.cli_watch import WatchSet, snapshot_event
from coordinator.client_commands import _labels, _read_input
from corral.v1 import admin_service_pb2, task_pb2, task_service_pb2

S = task_pb2
NOW = 1_700_000_100_000


def render(renderable, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def make_task(task_id="t1", state=S.TASK_STATE_SUCCEEDED, *, output=None, error=None, attempts=(),
              created=1_700_000_000_000, updated=1_700_000_002_000, **spec) -> task_pb2.Task:
    task = task_pb2.Task(task_id=task_id, state=state, spec=task_pb2.TaskSpec(type=spec.pop("type", "echo"), **spec))
    task.created_at.FromMilliseconds(created)
    task.updated_at.FromMilliseconds(updated)
    if output is not None:
        json_format.ParseDict(output, task.output)
    if error is not None:
        task.error.CopyFrom(error)
    for n, (actor, started, ended, outcome) in enumerate(attempts, 1):
        a = task.attempts.add(number=n, actor_id=actor, outcome=outcome)
        a.started_at.FromMilliseconds(started)
        if ended:
            a.ended_at.FromMilliseconds(ended)
    return task


def event(task_id, state, seq, at_ms, *, kind=task_service_pb2.TASK_EVENT_KIND_STATE_CHANGED, attempt=0, actor="",
          type="echo") -> task_service_pb2.TaskEvent:
    e = task_service_pb2.TaskEvent(task_id=task_id, state=state, seq=seq, kind=kind, attempt=attempt,
                                   actor_id=actor, type=type)
    e.time.FromMilliseconds(at_ms)
    return e


# ---- exit codes and error lines ----------------------------------------------------------------

@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_every_status_code_has_one_documented_exit_code(code):
    got = out.exit_code_for(code)
    if code == grpc.StatusCode.OK:
        assert got == 0
    elif code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
                  grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED):
        assert got == out.EXIT_REFUSED == 3
    elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        assert got == out.EXIT_AUTH == 5
    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
        assert got == out.EXIT_UNAVAILABLE == 4
    assert f"  {got} " in out.EXIT_CODES_HELP


def test_error_line_is_one_line_whatever_the_message():
    assert out.error_line("NOT_FOUND", "task 'x'\nnot found\t here") == "corral: error: NOT_FOUND: task 'x' not found here"


def test_usage_errors_are_one_line_and_exit_2(capsys):
    parser = build_parser()
    for argv in (["submit"], ["list", "--limit", "many"], ["get", "x", "--bogus"], ["nope"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("corral: error: USAGE: "), err


def test_help_epilog_lists_the_exit_codes():
    text = build_parser().format_help()
    assert "exit codes:" in text and "130" in text and "UNAUTHENTICATED" in text


# ---- user input --------------------------------------------------------------------------------

def args(input=None, input_file=None) -> argparse.Namespace:
    return argparse.Namespace(input=input, input_file=input_file)


def test_input_from_argument_file_and_stdin(tmp_path, monkeypatch):
    assert _read_input(args('{"a": [1]}')) == {"a": [1]}
    assert _read_input(args()) is None
    path = tmp_path / "in.json"
    path.write_text('{"from": "file"}')
    assert _read_input(args(input_file=str(path))) == {"from": "file"}
    monkeypatch.setattr("sys.stdin", io.StringIO('"from stdin"'))
    assert _read_input(args("-")) == "from stdin"
    monkeypatch.setattr("sys.stdin", io.StringIO('[1, 2]'))
    assert _read_input(args(input_file="-")) == [1, 2]


@pytest.mark.parametrize("kwargs, says", [
    ({"input": "{nope"}, "input is not JSON (the input argument)"),
    ({"input_file": "/no/such/file.json"}, "cannot read --input-file /no/such/file.json: No such file"),
    ({"input": "{}", "input_file": "x.json"}, "not both"),
])
def test_bad_input_is_a_usage_error_saying_why(kwargs, says):
    with pytest.raises(out.UsageError, match=re.escape(says)):
        _read_input(args(**kwargs))


def test_labels_and_states_are_parsed_or_refused():
    assert _labels(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(out.UsageError, match="KEY=VALUE"):
        _labels(["novalue"])
    assert out.parse_state("running") == out.parse_state("TASK_STATE_RUNNING") == S.TASK_STATE_RUNNING
    assert out.parse_state(" Retry_Wait") == S.TASK_STATE_RETRY_WAIT
    for bad in ("bogus", "unspecified"):
        with pytest.raises(out.UsageError, match="is not a task state"):
            out.parse_state(bad)


# ---- formatting ----------------------------------------------------------------------------------

@pytest.mark.parametrize("ms, text", [(0, "0ms"), (350, "350ms"), (12_345, "12.3s"), (245_000, "4m05s"),
                                      (7_380_000, "2h03m"), (273_600_000, "3d04h"), (-5, "0ms")])
def test_durations(ms, text):
    assert out.fmt_duration(ms) == text


def test_output_json_shows_integral_numbers_as_integers():
    task = make_task(output={"a": 1, "b": [1.5, 2], "c": {"d": -3}})
    assert json.loads(out.value_json(task)) == {"a": 1, "b": [1.5, 2], "c": {"d": -3}}
    assert '"a": 1,' in out.value_json(task) or '"a": 1\n' in out.value_json(task)
    assert "1.0" not in out.value_json(task)
    assert out.value_json(make_task(state=S.TASK_STATE_RUNNING)) is None


def test_task_summary_shows_state_attempts_output_and_timings():
    task = make_task(output={"ok": True}, labels={"team": "infra"},
                     attempts=[("actor-a", 1_700_000_000_500, 1_700_000_001_000, S.ATTEMPT_OUTCOME_FAILED),
                               ("actor-b", 1_700_000_001_500, 1_700_000_002_000, S.ATTEMPT_OUTCOME_SUCCEEDED)])
    task.attempts[0].error.CopyFrom(task_pb2.TaskError(kind="ValueError", message="bad row"))
    text = render(out.task_summary(task, NOW))
    for expected in ("t1", "echo", "SUCCEEDED", "team=infra", '{"ok":true}', "actor-a", "actor-b",
                     "ValueError: bad row", "queued 500ms, running 1.5s, total 2.0s", "2 (failed 0, lost 0)"):
        assert expected in text, (expected, text)


def test_a_long_output_is_shown_in_full_after_the_summary():
    text = render(out.task_summary(make_task(output={"rows": list(range(100))}), NOW), width=100)
    assert re.search(r"Output\s+\(below\)", text) and "99" in [line.strip() for line in text.splitlines()]


def test_failed_task_summary_and_outcome_line_show_the_error():
    task = make_task(state=S.TASK_STATE_FAILED, error=task_pb2.TaskError(kind="RuntimeError", message="boom"),
                     attempts=[("a", 1_700_000_000_500, 1_700_000_001_000, S.ATTEMPT_OUTCOME_FAILED)])
    assert "RuntimeError: boom" in render(out.task_summary(task, NOW))
    assert out.outcome_line(task) == "corral: task t1 FAILED after 1 attempt: RuntimeError: boom"
    canceled = make_task(state=S.TASK_STATE_CANCELED)
    canceled.state_reason = "canceled by request"
    assert out.outcome_line(canceled) == "corral: task t1 CANCELED: canceled by request"


def test_running_task_timings_run_to_now():
    task = make_task(state=S.TASK_STATE_RUNNING, attempts=[("a", 1_700_000_001_000, 0, 0)])
    assert out.task_timings(task, NOW) == {"queued": 1000, "running": 99_000, "total": 100_000}


def test_task_table_has_a_row_per_task_with_its_detail():
    tasks = [make_task("t1"), make_task("t2", S.TASK_STATE_RUNNING, attempts=[("worker-9", 1_700_000_001_000, 0, 0)]),
             make_task("t3", S.TASK_STATE_FAILED, error=task_pb2.TaskError(message="nope"))]
    lines = render(out.task_table(tasks, NOW)).splitlines()
    assert lines[0].split() == ["ID", "TYPE", "STATE", "ATTEMPTS", "CREATED", "DURATION", "DETAIL"]
    assert "on worker-9" in lines[3] and "RUNNING" in lines[3] and "nope" in lines[4]


def test_status_view_shows_dispatch_actors_slots_states_and_queues():
    status = admin_service_pb2.GetClusterStatusResponse(coordinator_id="c1", paused=True, pause_reason="db upgrade")
    actor = status.actors.add(leases_held=1, free_slots=1, suspect=True)
    actor.identity.MergeFrom(task_pb2.ExecutorIdentity(actor_id="worker-1", slots=2, task_types=["echo", "resize"]))
    status.tasks_by_state.add(state=S.TASK_STATE_READY, count=3)
    status.tasks_by_state.add(state=S.TASK_STATE_FAILED, count=0)
    status.queue_depths.add(task_type="resize", ready=2)
    status.queue_depths.add(task_type="echo", ready=1)
    text = render(out.status_view(status, NOW))
    assert "PAUSED (db upgrade)" in text and "slots 1/2 used" in text
    assert any(line.split()[:3] == ["worker-1", "1/2", "echo,"] or ("worker-1" in line and "1/2" in line
                                                                     and "suspect" in line)
               for line in text.splitlines()), text
    assert "FAILED" not in text, "zero counts are left out"
    [resize] = [line.split() for line in text.splitlines() if line.startswith("resize")]
    assert resize == ["resize", "2"]
    draining = admin_service_pb2.GetClusterStatusResponse(draining=True, drain_reason="upgrade", paused=True)
    assert "DRAINING (upgrade)" in render(out.status_view(draining, NOW))


def test_schedules_line_counts_by_state_and_names_the_next_occurrence():
    counts = admin_service_pb2.ScheduleCounts()
    assert out.schedules_line(counts) == "0 active"
    counts.active, counts.paused, counts.completed = 3, 1, 2
    counts.next_occurrence.FromMilliseconds(NOW)
    line = out.schedules_line(counts)
    assert line.startswith("3 active, 1 paused, 2 completed; next occurrence ")
    assert line.endswith(out.fmt_time(NOW))
    status = admin_service_pb2.GetClusterStatusResponse(schedules=counts)
    assert line in render(out.status_view(status, NOW))


def test_operation_lines():
    assert out.pause_line(admin_service_pb2.PauseResponse(changed=True, running_attempts=2)) == \
        "Dispatch paused: no new leases; 2 running attempts continue."
    assert "already" in out.pause_line(admin_service_pb2.PauseResponse())
    assert "shutting down" in out.resume_line(admin_service_pb2.ResumeResponse(changed=True, draining=True))
    assert out.drain_line(admin_service_pb2.DrainResponse(changed=True, running_attempts=1)).startswith("Draining:")
    assert out.outcome_counts_line([S.TASK_STATE_SUCCEEDED] * 2 + [S.TASK_STATE_FAILED]) == \
        "3 tasks: 2 succeeded, 1 failed"


def test_event_line_is_plain_text():
    e = event("t1", S.TASK_STATE_RUNNING, 7, NOW, kind=task_service_pb2.TASK_EVENT_KIND_ATTEMPT_STARTED,
              attempt=2, actor="w1")
    line = out.event_line(e)
    assert "t1  echo  RUNNING  attempt started  attempt 2 on w1" in line
    assert out.event_line(snapshot_event(make_task())).startswith("now  t1  echo  SUCCEEDED  current")


# ---- the watch set -------------------------------------------------------------------------------

def test_watch_set_applies_only_newer_events_of_watched_tasks_and_terminal_is_final():
    watch = WatchSet(["t1", "t2"])
    assert not watch.done()
    snap = make_task("t1", S.TASK_STATE_RUNNING, updated=NOW)
    assert watch.add_snapshot(snap).state == S.TASK_STATE_RUNNING
    assert not watch.apply(event("t1", S.TASK_STATE_READY, 5, NOW - 1)), "older than the snapshot"
    assert not watch.apply(event("other", S.TASK_STATE_READY, 6, NOW + 1)), "same type, not watched"
    assert watch.apply(event("t1", S.TASK_STATE_RUNNING, 6, NOW)), "same commit time: applied"
    assert watch.apply(event("t1", S.TASK_STATE_SUCCEEDED, 8, NOW + 5))
    assert not watch.apply(event("t1", S.TASK_STATE_SUCCEEDED, 8, NOW + 5)), "duplicate seq"
    assert not watch.apply(event("t1", S.TASK_STATE_RUNNING, 9, NOW + 6)), "terminal is final"
    assert not watch.add_snapshot(make_task("t1", S.TASK_STATE_RUNNING, updated=NOW + 9))
    assert not watch.done(), "t2 not seen yet"
    watch.add_snapshot(make_task("t2", S.TASK_STATE_FAILED, updated=NOW))
    assert watch.done() and watch.finished() == 2 and not watch.all_succeeded()


def test_watch_set_adds_children_only_from_their_parents_stream_or_listing():
    watch = WatchSet(["p"], parents=["p"])
    watch.add_snapshot(make_task("p", S.TASK_STATE_RUNNING, updated=NOW))
    assert not watch.apply(event("c1", S.TASK_STATE_READY, 3, NOW)), "not from the parent's stream"
    assert watch.apply(event("c1", S.TASK_STATE_READY, 3, NOW, kind=task_service_pb2.TASK_EVENT_KIND_SUBMITTED),
                       child_of="p")
    stranger = make_task("c9", S.TASK_STATE_READY)
    assert watch.add_snapshot(stranger, child_of="p") is None, "a listing that ignored the parent filter"
    child = make_task("c2", S.TASK_STATE_SUCCEEDED)
    child.parent_task_id = "p"
    assert watch.add_snapshot(child, child_of="p") is not None
    assert set(watch.tasks) == {"p", "c1", "c2"}
    watch.apply(event("p", S.TASK_STATE_SUCCEEDED, 9, NOW + 1))
    assert not watch.done(), "c1 still READY"
    watch.apply(event("c1", S.TASK_STATE_SUCCEEDED, 10, NOW + 2), child_of="p")
    assert watch.done() and watch.all_succeeded()


def test_watch_table_lists_unfinished_tasks_first_and_is_bounded():
    watch = WatchSet([f"t{i}" for i in range(30)])
    for i in range(30):
        watch.add_snapshot(make_task(f"t{i}", S.TASK_STATE_RUNNING if i == 29 else S.TASK_STATE_SUCCEEDED))
    lines = render(out.watch_table(list(watch.tasks.values()), max_rows=5)).splitlines()
    assert lines[2].split()[:3] == ["t29", "echo", "RUNNING"]
    assert "… and 25 more" in lines[-1]


class _FakeStream:
    """A WatchEvents call: yields the given responses, then blocks until cancelled."""

    def __init__(self, responses) -> None:
        import threading as _threading
        self.responses = responses
        self.cancelled = _threading.Event()

    def initial_metadata(self):
        return ()

    def __iter__(self):
        yield from self.responses
        self.cancelled.wait(10)

    def cancel(self) -> None:
        self.cancelled.set()


class _FakeTaskStub:
    """The TaskService calls `follow` makes, scripted: the parent ends on the types stream while
    its child (submitted after the first listing) has sent nothing on the parent's stream yet."""

    def __init__(self) -> None:
        self.listings = 0

    def GetTask(self, request, timeout=None):
        return task_service_pb2.GetTaskResponse(task=make_task("p", S.TASK_STATE_RUNNING))

    def WatchEvents(self, request):
        if request.parent_task_id:
            return _FakeStream([])  # the child's events are still in flight
        done = task_service_pb2.TaskEvent(task_id="p", type="echo", state=S.TASK_STATE_FAILED, seq=5)
        done.time.FromMilliseconds(1_700_000_005_000)
        return _FakeStream([task_service_pb2.WatchEventsResponse(events=[done])])

    def ListTasks(self, request, timeout=None):
        self.listings += 1
        if self.listings == 1:
            return task_service_pb2.ListTasksResponse()
        child = make_task("c", S.TASK_STATE_CANCELED, updated=1_700_000_005_000)
        child.parent_task_id = "p"
        return task_service_pb2.ListTasksResponse(tasks=[child])


def test_watch_children_lists_them_again_before_ending(monkeypatch):
    from coordinator import cli_watch
    stub = _FakeTaskStub()
    monkeypatch.setattr(cli_watch.task_service_pb2_grpc, "TaskServiceStub", lambda channel: stub)
    watch = WatchSet(["p"], parents=["p"])
    events = list(cli_watch.follow(object(), ["p"], children=True, timeout_s=5, watch=watch))
    assert [e.task_id for e in events] == ["p", "p", "c"]
    assert watch.tasks["c"].state == S.TASK_STATE_CANCELED and watch.done()
    assert stub.listings == 2
