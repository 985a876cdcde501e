"""A task's life through real processes: submit, lease, run, result; and how dispatch chooses.

Covers: JSON and bytes payloads round-tripping through a real actor, batch submission, WatchTask
streaming the state machine, ListTasks filters and pagination, delayed start, priority order, no
hoarding (grants never exceed an actor's slots) and required capabilities.
"""
from __future__ import annotations

import time

import pytest
from google.protobuf import json_format

from coordinator.core.states import TRANSITIONS
from corral.v1 import admin_service_pb2, task_pb2, task_service_pb2

from .harness import TERMINAL, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

S = task_pb2
RUNNING = (S.TASK_STATE_RUNNING,)
SUCCEEDED = (S.TASK_STATE_SUCCEEDED,)


# ---- helpers -----------------------------------------------------------------------------------

def spec(task_type: str, input=None, **fields) -> task_pb2.TaskSpec:
    s = task_pb2.TaskSpec(type=task_type, **fields)
    if input is not None:
        json_format.ParseDict(input, s.input)
    return s


def submit_spec(cluster, s: task_pb2.TaskSpec) -> str:
    return cluster.tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=s), timeout=10).task_id


def output_of(task: task_pb2.Task):
    assert task.WhichOneof("result") == "output", task
    return json_format.MessageToDict(task.output)


def ms(ts) -> int:
    return ts.ToMilliseconds()


def status(cluster) -> admin_service_pb2.GetClusterStatusResponse:
    return cluster.admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=5)


def actor_identity(cluster, actor_id: str) -> task_pb2.ExecutorIdentity:
    [identity] = [a.identity for a in status(cluster).actors if a.identity.actor_id == actor_id]
    return identity


def wait_all(cluster, task_ids, states=TERMINAL, timeout_s: float = 30) -> dict[str, task_pb2.Task]:
    """Wait until every task is in `states`; returns the tasks as last read."""
    done: dict[str, task_pb2.Task] = {}
    pending = list(task_ids)

    def all_reached():
        for task_id in list(pending):
            task = cluster.get(task_id)
            if task.state in states:
                done[task_id] = task
                pending.remove(task_id)
        return not pending
    wait_for(all_reached, timeout_s, f"{len(pending)} tasks to reach {states}")
    return done


def list_all(cluster, page_size: int, **filters) -> tuple[list[task_pb2.Task], int]:
    """Follow next_page_token to the end; returns (tasks in page order, number of pages)."""
    tasks: list[task_pb2.Task] = []
    token = ""
    pages = 0
    while True:
        resp = cluster.tasks.ListTasks(task_service_pb2.ListTasksRequest(
            page_size=page_size, page_token=token, **filters), timeout=10)
        pages += 1
        assert len(resp.tasks) <= page_size, f"page of {len(resp.tasks)} tasks > page_size {page_size}"
        tasks.extend(resp.tasks)
        token = resp.next_page_token
        if not token:
            return tasks, pages
        assert pages < 1000, "ListTasks never returned an empty next_page_token"


@pytest.fixture(scope="module")
def lc(shared_cluster):
    """The shared coordinator with one demo actor (8 slots)."""
    shared_cluster.start_actor("lc-actor", slots=8)
    return shared_cluster


# ---- one task, end to end ----------------------------------------------------------------------

def test_echo_json_task_succeeds_with_output_equal_to_input_and_one_recorded_attempt(lc):
    value = {"hello": "world", "n": [1, 2.5, True, None], "nested": {"k": "v", "empty": {}}}
    before_ms = int(time.time() * 1000)
    task_id = submit_spec(lc, spec("echo", value))
    task = lc.wait_state(task_id, timeout_s=15)

    assert task.state == S.TASK_STATE_SUCCEEDED, task
    assert output_of(task) == value
    assert not task.HasField("error") and task.failed_attempts == 0 and task.lost_attempts == 0
    [attempt] = task.attempts
    identity = actor_identity(lc, "lc-actor")
    assert attempt.number == 1
    assert attempt.outcome == S.ATTEMPT_OUTCOME_SUCCEEDED
    assert attempt.actor_id == "lc-actor"
    assert attempt.actor_incarnation and attempt.actor_incarnation == identity.incarnation
    assert attempt.fencing_token > 0
    assert attempt.HasField("started_at") and attempt.HasField("ended_at")
    assert before_ms - 1000 <= ms(task.created_at) <= ms(attempt.started_at) <= ms(attempt.ended_at)
    assert ms(attempt.ended_at) <= int(time.time() * 1000) + 1000
    assert status(lc).highest_fencing_token >= attempt.fencing_token


def test_binary_input_round_trips_to_output_bytes(lc):
    payload = bytes(range(256)) + b"\x00corral\xff" * 10
    task_id = submit_spec(lc, task_pb2.TaskSpec(type="echo", input_bytes=payload))
    task = lc.wait_state(task_id, timeout_s=15)
    assert task.state == S.TASK_STATE_SUCCEEDED, task
    assert task.WhichOneof("result") == "output_bytes"
    assert task.output_bytes == payload


def test_batch_of_200_echo_tasks_all_succeed_with_their_own_outputs(lc):
    n = 200
    specs = [spec("echo", {"i": i, "tag": f"batch-{i}"}) for i in range(n)]
    resp = lc.tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=30)
    assert len(resp.results) == n
    assert all(r.created for r in resp.results)
    ids = [r.task_id for r in resp.results]
    assert len(set(ids)) == n

    tasks = wait_all(lc, ids, timeout_s=40)
    for i, task_id in enumerate(ids):
        task = tasks[task_id]
        assert task.state == S.TASK_STATE_SUCCEEDED, task
        assert output_of(task) == {"i": i, "tag": f"batch-{i}"}
        assert len(task.attempts) == 1
    tokens = [tasks[t].attempts[0].fencing_token for t in ids]
    assert len(set(tokens)) == n, "two attempts shared a fencing token"


def test_watch_streams_states_in_state_machine_order_and_ends_at_succeeded(lc):
    task_id = submit_spec(lc, spec("sleep", {"seconds": 0.5}))
    stream = lc.tasks.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task_id), timeout=15)
    views = [resp.task for resp in stream]  # the stream must end by itself once the task is terminal

    assert views and all(v.task_id == task_id for v in views)
    states = assert_watch_sequence_is_legal(views, S.TASK_STATE_SUCCEEDED)
    assert S.TASK_STATE_RUNNING in states, states
    updated = [ms(v.updated_at) for v in views]
    assert updated == sorted(updated), "updates arrived out of order"
    assert output_of(views[-1]) == {"slept": 0.5}


def assert_watch_sequence_is_legal(views, final_state) -> list[int]:
    states = [v.state for v in views]
    names = [S.TaskState.Name(s) for s in states]
    assert states and states[-1] == final_state, names
    assert all(s not in TERMINAL for s in states[:-1]), f"a terminal state before the end: {names}"
    distinct = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    for a, b in zip(distinct, distinct[1:]):
        assert b in TRANSITIONS[a], f"{S.TaskState.Name(a)} -> {S.TaskState.Name(b)} is not allowed: {names}"
    return states


def test_watch_of_delayed_task_shows_every_committed_state_scheduled_ready_running_succeeded(lc):
    s = spec("sleep", {"seconds": 0.2})
    s.not_before.FromMilliseconds(int(time.time() * 1000) + 300)
    task_id = submit_spec(lc, s)
    views = [resp.task for resp in lc.tasks.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task_id), timeout=15)]
    states = assert_watch_sequence_is_legal(views, S.TASK_STATE_SUCCEEDED)
    assert states[0] == S.TASK_STATE_SCHEDULED


def test_list_filters_by_state_and_type_and_paginates_without_duplicates(lc):
    probe_type = "lc-list-probe"  # no actor serves it: its tasks stay READY
    ready_ids = [submit_spec(lc, spec(probe_type, {"i": i})) for i in range(7)]
    canceled_id = submit_spec(lc, spec(probe_type, {"i": "canceled"}))
    lc.tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=canceled_id), timeout=10)
    echo_id = submit_spec(lc, spec("echo", {"listed": True}))
    lc.wait_state(echo_id, SUCCEEDED, timeout_s=15)

    tasks, pages = list_all(lc, 3, states=[S.TASK_STATE_READY], type=probe_type)
    ids = [t.task_id for t in tasks]
    assert len(ids) == len(set(ids)), f"duplicates across pages: {ids}"
    assert set(ids) == set(ready_ids)
    assert pages >= 3, f"7 tasks with page_size 3 fit in {pages} pages"
    assert all(t.state == S.TASK_STATE_READY and t.spec.type == probe_type for t in tasks)

    tasks, _ = list_all(lc, 2, states=[S.TASK_STATE_CANCELED], type=probe_type)
    assert [t.task_id for t in tasks] == [canceled_id]

    tasks, _ = list_all(lc, 4, states=[S.TASK_STATE_READY, S.TASK_STATE_CANCELED], type=probe_type)
    assert sorted(t.task_id for t in tasks) == sorted(ready_ids + [canceled_id])

    tasks, _ = list_all(lc, 1000, type=probe_type)  # no state filter: all states
    assert sorted(t.task_id for t in tasks) == sorted(ready_ids + [canceled_id])

    tasks, _ = list_all(lc, 50, states=[S.TASK_STATE_SUCCEEDED], type="echo")
    assert echo_id in {t.task_id for t in tasks}
    assert all(t.state == S.TASK_STATE_SUCCEEDED and t.spec.type == "echo" for t in tasks)

    tasks, _ = list_all(lc, 10, states=[S.TASK_STATE_SUCCEEDED], type=probe_type)
    assert tasks == []


def test_delayed_task_stays_scheduled_until_not_before_then_runs(lc):
    not_before_ms = int(time.time() * 1000) + 1000
    s = spec("echo", {"delayed": True})
    s.not_before.FromMilliseconds(not_before_ms)
    task_id = submit_spec(lc, s)

    task = lc.get(task_id)
    assert task.state == S.TASK_STATE_SCHEDULED, task
    assert ms(task.ready_at) == not_before_ms
    assert not task.attempts

    task = lc.wait_state(task_id, timeout_s=10)
    assert task.state == S.TASK_STATE_SUCCEEDED, task
    assert output_of(task) == {"delayed": True}
    [attempt] = task.attempts
    assert ms(attempt.started_at) >= not_before_ms, (ms(attempt.started_at), not_before_ms)


def test_task_nobody_starts_in_time_fails_with_schedule_to_start_timeout(lc):
    s = spec("lc-nobody", {"i": 1})  # no actor serves this type
    s.schedule_to_start_timeout.FromMilliseconds(300)
    task_id = submit_spec(lc, s)
    task = lc.wait_state(task_id, timeout_s=10)
    assert task.state == S.TASK_STATE_FAILED, task
    assert not task.attempts
    assert task.error.kind == "schedule_to_start_timeout", task.error
    assert ms(task.updated_at) - ms(task.created_at) >= 300


# ---- dispatch decisions (each on a cluster of its own: they need a known fleet) ----------------

def test_higher_priority_task_starts_first_then_fifo_within_a_priority(make_cluster):
    c = make_cluster()
    c.start_coordinator()
    c.start_actor("prio-actor", slots=1, extra=("--grace-s", "0.5"))
    blocker = c.submit("sleep", {"seconds": 30})
    c.wait_state(blocker, RUNNING, timeout_s=10)

    low1 = submit_spec(c, spec("echo", {"n": "low1"}, priority=0))
    high = submit_spec(c, spec("echo", {"n": "high"}, priority=10))
    low2 = submit_spec(c, spec("echo", {"n": "low2"}, priority=0))
    for task_id in (low1, high, low2):
        assert c.get(task_id).state == S.TASK_STATE_READY, "the only slot should still be busy"

    c.tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=blocker), timeout=10)  # frees the slot
    tasks = wait_all(c, [low1, high, low2], timeout_s=15)
    assert all(t.state == S.TASK_STATE_SUCCEEDED for t in tasks.values()), tasks
    token = {tid: tasks[tid].attempts[0].fencing_token for tid in tasks}
    started = {tid: ms(tasks[tid].attempts[0].started_at) for tid in tasks}
    assert token[high] < token[low1] < token[low2], token
    assert started[high] <= started[low1] <= started[low2], started


def test_actor_is_never_granted_more_leases_than_its_slots(make_cluster):
    c = make_cluster()
    c.start_coordinator()
    for actor_id in ("slots-a", "slots-b"):
        c.start_actor(actor_id, slots=2, extra=("--grace-s", "0.5"))
    ids = [c.submit("sleep", {"seconds": 30, "i": i}) for i in range(6)]

    def four_running():
        tasks = [c.get(t) for t in ids]
        return tasks if sum(t.state == S.TASK_STATE_RUNNING for t in tasks) == 4 else None
    tasks = wait_for(four_running, 15, "4 of the 6 sleep tasks to be RUNNING")

    def check_fleet(expected_running: int, expected_ready: int) -> None:
        st = status(c)
        by_state = {sc.state: sc.count for sc in st.tasks_by_state}
        assert by_state.get(S.TASK_STATE_RUNNING, 0) == expected_running, st
        assert by_state.get(S.TASK_STATE_READY, 0) == expected_ready, st
        assert {a.identity.actor_id for a in st.actors} == {"slots-a", "slots-b"}
        for a in st.actors:
            assert a.leases_held <= 2 and a.free_slots >= 0, a
            assert a.leases_held + a.free_slots == a.identity.slots == 2, a

    per_actor = {}
    for t in tasks:
        if t.state == S.TASK_STATE_RUNNING:
            per_actor[t.attempts[-1].actor_id] = per_actor.get(t.attempts[-1].actor_id, 0) + 1
    assert per_actor == {"slots-a": 2, "slots-b": 2}
    for _ in range(10):  # a few samples: it must hold while they run, not just once
        check_fleet(4, 2)

    # Freeing one slot lets exactly one waiting task in.
    victim = next(t.task_id for t in tasks if t.state == S.TASK_STATE_RUNNING)
    c.tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=victim), timeout=10)
    c.wait_state(victim, (S.TASK_STATE_CANCELED,), timeout_s=10)
    wait_for(lambda: sum(c.get(t).state == S.TASK_STATE_RUNNING for t in ids) == 4, 10,
             "a waiting task to take the freed slot")
    check_fleet(4, 1)
    actor_logs = "".join(p.read_text(errors="replace") for p in c.workdir.glob("*slots-*.log"))
    assert "granted more leases than slots" not in actor_logs


def test_task_requiring_a_capability_waits_for_an_actor_that_has_it(make_cluster):
    c = make_cluster()
    c.start_coordinator()
    c.start_actor("plain-actor", slots=2)
    gpu_task = submit_spec(c, spec("echo", {"needs": "gpu"}, required_capabilities=["gpu"]))
    control = submit_spec(c, spec("echo", {"needs": "nothing"}))

    # The plain actor is dispatching (it ran the control task), yet the gpu task was not given to it.
    assert c.wait_state(control, timeout_s=15).state == S.TASK_STATE_SUCCEEDED
    task = c.get(gpu_task)
    assert task.state == S.TASK_STATE_READY and not task.attempts, task

    c.start_actor("gpu-actor", slots=1, app="tests.e2e.gpu_app")
    assert list(actor_identity(c, "gpu-actor").capabilities) == ["gpu"]
    task = c.wait_state(gpu_task, timeout_s=15)
    assert task.state == S.TASK_STATE_SUCCEEDED, task
    assert [a.actor_id for a in task.attempts] == ["gpu-actor"]
    assert output_of(task) == {"needs": "gpu"}
