"""TaskService.WatchEvents: committed task events, filtered by type and labels; a subscriber that
does not read is dropped with RESOURCE_EXHAUSTED while the cluster (and other subscribers) go on."""
from __future__ import annotations

import threading

import grpc
import pytest

from corral.v1 import admin_service_pb2, task_pb2, task_service_pb2

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

S = task_pb2
E = task_service_pb2


def subscribe(cluster, timeout_s: float = 60, **request_fields):
    """A WatchEvents stream, returned once the subscription is in place (its initial metadata)."""
    call = cluster.tasks.WatchEvents(task_service_pb2.WatchEventsRequest(**request_fields), timeout=timeout_s)
    metadata = dict(call.initial_metadata())
    assert int(metadata["corral-wal-seq"]) >= 0
    return call


def events_until(call, done) -> list[task_service_pb2.TaskEvent]:
    """Events of `call` up to and including the first for which done(event) is true."""
    seen = []
    for response in call:
        for event in response.events:
            seen.append(event)
            if done(event):
                return seen
    raise AssertionError(f"stream ended before the awaited event; saw {seen}")


def event_subscribers(cluster) -> int:
    return cluster.admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=5).event_subscribers


def test_events_of_the_filtered_type_and_labels_and_no_others(cluster):
    cluster.start_actor("worker", slots=2)
    filtered = subscribe(cluster, types=["echo"], labels={"team": "a"})
    everything = subscribe(cluster)
    decoys = [cluster.submit("echo", {"n": 1}, labels={"team": "b"}),
              cluster.submit("sleep", {"seconds": 0.05}, labels={"team": "a"}),
              cluster.submit("echo", {"n": 2})]
    for decoy in decoys:
        cluster.wait_state(decoy, timeout_s=20)
    target = cluster.submit("echo", {"n": 3}, labels={"team": "a", "extra": "x"})
    assert cluster.wait_state(target, timeout_s=20).state == S.TASK_STATE_SUCCEEDED

    def target_ended(e):
        return e.task_id == target and e.kind == E.TASK_EVENT_KIND_ATTEMPT_ENDED

    got = events_until(filtered, target_ended)
    assert {e.task_id for e in got} == {target}, "events of other tasks went through the filter"
    assert [(e.kind, e.state, e.attempt, e.actor_id) for e in got] == [
        (E.TASK_EVENT_KIND_SUBMITTED, S.TASK_STATE_READY, 0, ""),
        (E.TASK_EVENT_KIND_ATTEMPT_STARTED, S.TASK_STATE_RUNNING, 1, "worker"),
        (E.TASK_EVENT_KIND_ATTEMPT_ENDED, S.TASK_STATE_SUCCEEDED, 1, "worker"),
    ]
    assert got[-1].outcome == S.ATTEMPT_OUTCOME_SUCCEEDED
    assert all(e.type == "echo" and dict(e.labels) == {"team": "a", "extra": "x"} for e in got)
    assert [e.seq for e in got] == sorted(e.seq for e in got) and got[0].time.seconds > 0

    all_events = events_until(everything, target_ended)
    assert {e.task_id for e in all_events} == {*decoys, target}  # the decoys had events too
    filtered.cancel()
    everything.cancel()
    wait_for(lambda: event_subscribers(cluster) == 0, 10, "both subscriptions to end")


def test_a_subscriber_that_does_not_read_is_dropped_and_the_cluster_keeps_working(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator("--max-queued-events", "1000")
    cluster.start_actor("worker", slots=8)
    # Big events (every label goes with every event) fill the stream's flow-control windows fast.
    labels = {f"k{i:02d}": "v" * 256 for i in range(64)}
    stuck = subscribe(cluster, types=["echo"])  # never read until it is dropped
    reader = subscribe(cluster, types=["echo"])
    read: set[str] = set()
    reader_error: list[BaseException] = []

    def read_all() -> None:
        try:
            for response in reader:
                read.update(e.task_id for e in response.events if e.kind == E.TASK_EVENT_KIND_ATTEMPT_ENDED)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                reader_error.append(exc)

    thread = threading.Thread(target=read_all, daemon=True)
    thread.start()
    wait_for(lambda: event_subscribers(cluster) == 2, 10, "both subscriptions")
    submitted: list[str] = []
    for _ in range(200):  # bounded: the stuck one overflows long before (each batch < the bound)
        batch = task_service_pb2.SubmitTasksRequest(tasks=[task_pb2.TaskSpec(type="echo", labels=labels)
                                                           for _ in range(50)])
        submitted += [r.task_id for r in cluster.tasks.SubmitTasks(batch, timeout=30).results]
        if event_subscribers(cluster) == 1:
            break
    assert event_subscribers(cluster) == 1, "the subscriber that does not read was never dropped"

    with pytest.raises(grpc.RpcError) as info:
        for _ in stuck:  # what was already on its way, then the status
            pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fell behind" in info.value.details()

    for task_id in submitted[-5:]:
        assert cluster.wait_state(task_id, timeout_s=60).state == S.TASK_STATE_SUCCEEDED
    wait_for(lambda: set(submitted) <= read, 60, "the reading subscriber to see every task end", interval_s=0.1)
    assert not reader_error and thread.is_alive()
    reader.cancel()
    thread.join(timeout=10)
    log = "".join(p.read_text(errors="replace") for p in cluster.workdir.glob("*-coordinator.log"))
    assert "dropped WatchEvents subscriber" in log


def test_a_dropped_subscriber_that_never_reads_frees_its_stream_slot(make_cluster):
    """A subscriber whose client stops reading altogether is dropped by the hub; its stream must end
    then too (its watch-stream slot freed), not stay open while the server waits to write to it."""
    cluster = make_cluster()
    cluster.start_coordinator("--max-queued-events", "100", "--max-streams-per-peer", "1")
    labels = {f"k{i:02d}": "v" * 256 for i in range(64)}  # ~20 KiB events: flow control fills fast
    stuck = subscribe(cluster, types=["echo"])  # never read
    wait_for(lambda: event_subscribers(cluster) == 1, 10, "the subscription")
    for _ in range(40):  # no actor: SUBMITTED events only, 50 per commit (< the bound of 100)
        cluster.tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(
            tasks=[task_pb2.TaskSpec(type="echo", labels=labels) for _ in range(50)]), timeout=30)
        if event_subscribers(cluster) == 0:
            break
    assert event_subscribers(cluster) == 0, "the subscriber that does not read was never dropped"

    def slot_free() -> bool:
        call = cluster.tasks.WatchEvents(task_service_pb2.WatchEventsRequest(), timeout=5)
        if "corral-wal-seq" in dict(call.initial_metadata()):
            call.cancel()
            return True
        with pytest.raises(grpc.RpcError) as refused:
            next(call)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "watch streams open" in refused.value.details()
        return False

    wait_for(slot_free, 10, "the dropped stream to end and free its slot", interval_s=0.2)
    stuck.cancel()
