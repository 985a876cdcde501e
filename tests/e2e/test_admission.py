"""Concurrency keys, the queued-task bound and rate limits, through real coordinator and actor
processes: enforced by the coordinator, cluster-wide, and rebuilt by WAL replay after a kill -9.

Start and end times compared here are the attempts' `started_at`/`ended_at`: the coordinator's
grant and end records, the moments a key is taken and given back.
"""
from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from corral.v1 import task_pb2, task_service_pb2

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

S = task_pb2
RUNNING = (S.TASK_STATE_RUNNING,)
ACTOR = "adm-actor"
RATE_LIMITED = "noop"  # 5 per second on the module's cluster


def spec(task_type: str, input=None, **fields) -> task_pb2.TaskSpec:
    s = task_pb2.TaskSpec(type=task_type, **fields)
    if input is not None:
        json_format.ParseDict(input, s.input)
    return s


def submit_all(cluster, specs: list[task_pb2.TaskSpec]) -> list[task_service_pb2.SubmitTaskResponse]:
    return list(cluster.tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=10).results)


def submit_one(cluster, s: task_pb2.TaskSpec) -> task_service_pb2.SubmitTaskResponse:
    return cluster.tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=s), timeout=10)


def ms(ts) -> int:
    return ts.ToMilliseconds()


def assert_never_overlap(tasks: list[task_pb2.Task]) -> None:
    """No two attempts of these tasks were in progress at the same time."""
    spans = sorted((ms(a.started_at), ms(a.ended_at), t.task_id) for t in tasks for a in t.attempts)
    assert all(a.ended_at.seconds or a.ended_at.nanos for t in tasks for a in t.attempts)
    for (s1, e1, t1), (s2, e2, t2) in zip(spans, spans[1:]):
        assert e1 <= s2, f"{t1} [{s1}, {e1}] overlaps {t2} [{s2}, {e2}]"


@pytest.fixture(scope="module")
def adm(tmp_path_factory):
    from .harness import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("admission"), coordinator_flags=("--rate-limits", f"{RATE_LIMITED}=5"))
    cluster.start_coordinator()
    cluster.start_actor(ACTOR, slots=8, extra=("--grace-s", "0.5"))
    yield cluster
    cluster.stop()


# ---- concurrency keys ----------------------------------------------------------------------------

def test_queue_policy_runs_tasks_with_one_key_one_at_a_time(adm):
    results = submit_all(adm, [spec("sleep", {"seconds": 0.3}, concurrency_key="q-key") for _ in range(3)])
    # Another key and an unkeyed task are not held up behind them.
    other = submit_one(adm, spec("sleep", {"seconds": 0.1}, concurrency_key="q-other")).task_id
    plain = submit_one(adm, spec("echo", {"plain": True})).task_id
    for task_id in (other, plain):
        assert adm.wait_state(task_id, timeout_s=10).state == S.TASK_STATE_SUCCEEDED
    tasks = [adm.wait_state(r.task_id, timeout_s=30) for r in results]
    assert [t.state for t in tasks] == [S.TASK_STATE_SUCCEEDED] * 3, tasks
    assert all(len(t.attempts) == 1 for t in tasks)
    assert_never_overlap(tasks)
    # FIFO: in submission order.
    assert [t.task_id for t in sorted(tasks, key=lambda t: ms(t.attempts[0].started_at))] == \
        [r.task_id for r in results]
    # The unkeyed task did not wait for the keyed ones.
    assert ms(adm.get(plain).attempts[0].started_at) < ms(tasks[-1].attempts[0].started_at)


def test_a_limit_of_two_runs_two_at_once_never_three(adm):
    results = submit_all(adm, [spec("sleep", {"seconds": 0.4}, concurrency_key="two-key", concurrency_limit=2)
                               for _ in range(4)])
    tasks = [adm.wait_state(r.task_id, timeout_s=30) for r in results]
    assert all(t.state == S.TASK_STATE_SUCCEEDED for t in tasks), tasks
    events = sorted([(ms(t.attempts[0].started_at), 1) for t in tasks] + [(ms(t.attempts[0].ended_at), -1) for t in tasks])
    running, peak = 0, 0
    for _, delta in events:  # an end and a start at the same ms: the end sorts first
        running += delta
        peak = max(peak, running)
    assert peak == 2


def test_cancel_in_progress_cancels_the_running_task_and_the_newcomer_runs(adm):
    old = submit_one(adm, spec("sleep", {"seconds": 30}, concurrency_key="cip-key")).task_id
    adm.wait_state(old, RUNNING, timeout_s=10)
    new = submit_one(adm, spec("sleep", {"seconds": 0.1}, concurrency_key="cip-key",
                               concurrency_policy=S.CONCURRENCY_POLICY_CANCEL_IN_PROGRESS)).task_id
    canceled = adm.wait_state(old, timeout_s=15)
    assert canceled.state == S.TASK_STATE_CANCELED, canceled
    assert f"superseded by task {new}" in canceled.state_reason
    assert canceled.attempts[-1].outcome == S.ATTEMPT_OUTCOME_CANCELED  # the actor stopped it
    done = adm.wait_state(new, timeout_s=15)
    assert done.state == S.TASK_STATE_SUCCEEDED, done
    assert_never_overlap([canceled, done])


def test_drop_new_ends_the_newcomer_canceled_while_the_key_is_taken(adm):
    drop = dict(concurrency_key="drop-key", concurrency_policy=S.CONCURRENCY_POLICY_DROP_NEW)
    holder = submit_one(adm, spec("sleep", {"seconds": 30}, **drop)).task_id
    adm.wait_state(holder, RUNNING, timeout_s=10)
    response = submit_one(adm, spec("echo", {"n": 2}, **drop))
    assert response.created and response.state == S.TASK_STATE_CANCELED
    dropped = adm.get(response.task_id)
    assert dropped.state == S.TASK_STATE_CANCELED and not dropped.attempts
    assert dropped.state_reason == "dropped: concurrency key 'drop-key' is at its limit of 1 (policy DROP_NEW)"
    assert dropped.error.kind == "concurrency_limit"
    adm.tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=holder), timeout=10)
    assert adm.wait_state(holder, timeout_s=15).state == S.TASK_STATE_CANCELED
    later = submit_one(adm, spec("echo", {"n": 3}, **drop))
    assert later.state != S.TASK_STATE_CANCELED
    assert adm.wait_state(later.task_id, timeout_s=10).state == S.TASK_STATE_SUCCEEDED


def test_bad_concurrency_fields_are_invalid_argument_naming_the_field(adm):
    with pytest.raises(grpc.RpcError) as info:
        submit_one(adm, spec("echo", concurrency_limit=2))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task.concurrency_limit" in info.value.details()


# ---- rate limits ---------------------------------------------------------------------------------

def test_a_rate_limit_spreads_starts_without_delaying_other_types(adm):
    results = submit_all(adm, [spec(RATE_LIMITED, task_id=f"rl-{i}") for i in range(10)]
                         + [spec("echo", {"i": i}, task_id=f"free-{i}") for i in range(10)])
    tasks = {r.task_id: adm.wait_state(r.task_id, timeout_s=30) for r in results}
    assert all(t.state == S.TASK_STATE_SUCCEEDED for t in tasks.values())
    limited = sorted(ms(t.attempts[0].started_at) for tid, t in tasks.items() if tid.startswith("rl-"))
    free = sorted(ms(t.attempts[0].started_at) for tid, t in tasks.items() if tid.startswith("free-"))
    # 5 per second, burst 1: starts 200 ms apart, 1.8 s from first to last.
    assert limited[-1] - limited[0] >= 1_500, limited
    assert min(b - a for a, b in zip(limited, limited[1:])) >= 150, limited
    # The other type started at once, long before the limited one was through.
    assert free[-1] - free[0] < 1_000, free
    assert free[-1] < limited[4], (free, limited)


# ---- the bound on queued tasks -------------------------------------------------------------------

def test_max_queued_tasks_refuses_submissions_beyond_it(make_cluster):
    cluster = make_cluster(coordinator_flags=("--max-queued-tasks", "5"))
    cluster.start_coordinator()
    queued = submit_all(cluster, [spec("mq-nobody", {"i": i}) for i in range(4)])  # nobody runs them
    with pytest.raises(grpc.RpcError) as info:  # a batch: all or nothing
        submit_all(cluster, [spec("mq-nobody", {"i": 4}), spec("mq-nobody", {"i": 5})])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queued_tasks" in info.value.details() and "is 5" in info.value.details()
    listed = cluster.tasks.ListTasks(task_service_pb2.ListTasksRequest(type="mq-nobody", page_size=100), timeout=10)
    assert len(listed.tasks) == 4
    last = submit_one(cluster, spec("mq-nobody", {"i": 4}))
    with pytest.raises(grpc.RpcError) as info:
        submit_one(cluster, spec("mq-nobody", {"i": 5}))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Resubmitting an existing task adds nothing: still accepted.
    again = submit_one(cluster, spec("mq-nobody", {"i": 4}, task_id=last.task_id))
    assert not again.created
    # Room again once a queued task ends.
    cluster.tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=queued[0].task_id), timeout=10)
    assert submit_one(cluster, spec("mq-nobody", {"i": 5})).created


# ---- restart -------------------------------------------------------------------------------------

def test_key_occupancy_survives_a_coordinator_kill(make_cluster):
    # TTL 5 s: the actor re-presents its lease after the restart, so the holder is adopted.
    cluster = make_cluster(lease_ttl_s=5)
    cluster.start_coordinator()
    cluster.start_actor("key-keeper", slots=4)
    holder = cluster.submit("sleep", {"seconds": 4}, concurrency_key="restart-key")
    cluster.wait_state(holder, RUNNING, timeout_s=10)
    waiter = cluster.submit("echo", {"after": "holder"}, concurrency_key="restart-key")
    assert cluster.get(waiter).state == S.TASK_STATE_READY

    cluster.kill(cluster.coordinator)
    cluster.start_coordinator()  # replays the WAL: the holder still holds the key

    # The waiter waits while the holder runs (the actor, with free slots, reconnects meanwhile).
    wait_for(lambda: "key-keeper" in cluster.connected_actor_ids(), 20, "the actor to reconnect")
    held = cluster.get(holder)
    waiting = cluster.get(waiter)
    if held.state == S.TASK_STATE_RUNNING:
        assert waiting.state == S.TASK_STATE_READY and not waiting.attempts, waiting
    first = cluster.wait_state(holder, timeout_s=30)
    second = cluster.wait_state(waiter, timeout_s=30)
    assert first.state == S.TASK_STATE_SUCCEEDED and second.state == S.TASK_STATE_SUCCEEDED, (first, second)
    assert_never_overlap([first, second])
    assert ms(second.attempts[0].started_at) >= ms(first.attempts[-1].ended_at)
