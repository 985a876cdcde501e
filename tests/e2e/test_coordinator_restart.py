"""`kill -9` of the coordinator loses nothing it acknowledged: acknowledged submissions exist after a
restart on the same data dir and run; attempts in flight are re-presented by their actors and
adopted (not re-run); a corrupt WAL record stops start-up unless truncation is asked for.
"""
from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
from google.protobuf import json_format

from corral.v1 import actor_service_pb2, task_pb2, task_service_pb2, task_service_pb2_grpc

from .harness import TERMINAL, corrupt_wal_record, free_port, read_wal, wait_for
from .raw_actor import RawActor

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SUCCEEDED_STATE = task_pb2.TASK_STATE_SUCCEEDED


def succeeded_tasks(cluster, task_type: str) -> dict[str, task_pb2.Task]:
    """Every SUCCEEDED task of `task_type`, paging through ListTasks."""
    found: dict[str, task_pb2.Task] = {}
    token = ""
    while True:
        page = cluster.tasks.ListTasks(task_service_pb2.ListTasksRequest(
            states=[SUCCEEDED_STATE], type=task_type, page_size=1000, page_token=token), timeout=10)
        for task in page.tasks:
            found[task.task_id] = task
        token = page.next_page_token
        if not token:
            return found


def coordinator_log(cluster) -> str:
    """The log (stdout + stderr) of the most recently started coordinator process."""
    return sorted(cluster.workdir.glob("*-coordinator.log"))[-1].read_text(errors="replace")


def test_acknowledged_submissions_survive_coordinator_kill(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator()
    cluster.start_actor("steady-1", slots=8)
    cluster.start_actor("steady-2", slots=8)

    acknowledged: list[str] = []  # list.append is atomic: shared by the submitter threads
    stop = threading.Event()

    def submit_until_stopped(worker: int) -> None:
        channel = grpc.insecure_channel(cluster.target)
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        n = 0
        try:
            while not stop.is_set():
                task_id = f"w{worker}-{n:06d}"
                n += 1
                spec = task_pb2.TaskSpec(task_id=task_id, type="echo")
                json_format.ParseDict({"id": task_id}, spec.input)
                try:
                    stub.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=5)
                except grpc.RpcError:
                    continue  # not acknowledged: it may or may not exist after the restart
                acknowledged.append(task_id)
        finally:
            channel.close()

    submitters = [threading.Thread(target=submit_until_stopped, args=(w,), daemon=True) for w in range(4)]
    for thread in submitters:
        thread.start()
    try:
        wait_for(lambda: len(acknowledged) >= 200, 30, "200 acknowledged submissions")
        cluster.kill(cluster.coordinator)  # SIGKILL while the submitters are still going
    finally:
        stop.set()
        for thread in submitters:
            thread.join(timeout=20)
    acked = list(acknowledged)
    assert len(acked) >= 200 and len(set(acked)) == len(acked)

    cluster.start_coordinator()  # same port, same data dir; the actors reconnect by themselves
    wait_for(lambda: {"steady-1", "steady-2"} <= cluster.connected_actor_ids(), 20, "both actors to reconnect")

    missing: set[str] = set()

    def all_acknowledged_succeeded() -> bool:
        done = succeeded_tasks(cluster, "echo")
        missing.clear()
        missing.update(t for t in acked if t not in done)
        return not missing
    try:
        wait_for(all_acknowledged_succeeded, 40, "every acknowledged task to succeed", interval_s=0.2)
    except AssertionError:
        sample = sorted(missing)[:5]
        states = {t: task_pb2.TaskState.Name(cluster.get(t).state) for t in sample}
        raise AssertionError(f"{len(missing)} of {len(acked)} acknowledged tasks did not succeed, e.g. {states}")
    done = succeeded_tasks(cluster, "echo")
    for task_id in acked:
        task = done[task_id]
        assert json_format.MessageToDict(task.output) == {"id": task_id}
        assert sum(a.outcome == task_pb2.ATTEMPT_OUTCOME_SUCCEEDED for a in task.attempts) == 1


def test_in_flight_attempt_is_adopted_after_coordinator_kill_not_rerun(make_cluster):
    # TTL 5 s: long enough that the actor re-presents its lease before the restored lease expires.
    cluster = make_cluster(lease_ttl_s=5)
    cluster.start_coordinator()
    cluster.start_actor("keeper", slots=1)
    task_id = cluster.submit("sleep", {"seconds": 4})
    running = cluster.wait_state(task_id, (task_pb2.TASK_STATE_RUNNING,), timeout_s=10)
    (attempt,) = running.attempts

    cluster.kill(cluster.coordinator)
    cluster.start_coordinator()

    task = cluster.wait_state(task_id, timeout_s=30)
    assert task.state == SUCCEEDED_STATE, task
    assert json_format.MessageToDict(task.output) == {"slept": 4.0}
    # The same attempt finished: one attempt, same token, same process; nothing lost, nothing re-run.
    assert [(a.number, a.fencing_token, a.actor_incarnation, a.outcome) for a in task.attempts] == [
        (1, attempt.fencing_token, attempt.actor_incarnation, task_pb2.ATTEMPT_OUTCOME_SUCCEEDED)]
    assert task.lost_attempts == 0 and task.failed_attempts == 0


def test_lease_not_represented_after_restart_expires_and_is_redispatched_exactly_once(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator()
    actors: list[RawActor] = []

    def connect(actor_id: str, **kwargs) -> RawActor:
        actor = RawActor(cluster.target, actor_id, **kwargs)
        actors.append(actor)
        actor.welcome()
        return actor

    try:
        slow = connect("slow", incarnation="slow-1")
        task_id = cluster.submit("fence-probe", {"n": 1})
        first = slow.lease(task_id, attempt=1)

        cluster.kill(cluster.coordinator)
        assert slow.wait_ended() is not None
        cluster.start_coordinator()
        # The grant was durable before the lease was sent: the restarted coordinator knows it.
        restored = cluster.get(task_id)
        assert restored.state == task_pb2.TASK_STATE_RUNNING
        assert [(a.number, a.fencing_token, a.actor_id) for a in restored.attempts] == [
            (1, first.ref.fencing_token, "slow")]

        # "slow" does not come back within the TTL the restart gave its lease: the attempt is lost and
        # the task goes, once, to the other actor.
        rescuer = connect("rescuer")
        second = rescuer.lease(task_id, attempt=2)
        rescuer.heartbeat(second.ref)
        assert second.ref.fencing_token > first.ref.fencing_token

        # "slow" finally reconnects and re-presents its lease: not adopted, told to stop, and its late
        # result is refused.
        late = connect("slow", incarnation="slow-1", held_leases=[first.ref])
        assert list(late.welcome().adopted) == []
        assert late.cancel_for(first.ref).reason == actor_service_pb2.CANCEL_REASON_LEASE_LOST
        late.report(first.ref, task_pb2.ATTEMPT_OUTCOME_SUCCEEDED, output={"by": "slow"})
        assert not late.ack_for(first.ref).accepted

        rescuer.report(second.ref, task_pb2.ATTEMPT_OUTCOME_SUCCEEDED, output={"by": "rescuer"})
        assert rescuer.ack_for(second.ref).accepted
        task = cluster.get(task_id)
        assert task.state == SUCCEEDED_STATE
        assert json_format.MessageToDict(task.output) == {"by": "rescuer"}
        assert [(a.actor_id, a.outcome) for a in task.attempts] == [
            ("slow", task_pb2.ATTEMPT_OUTCOME_LOST), ("rescuer", task_pb2.ATTEMPT_OUTCOME_SUCCEEDED)]
        assert [lease.ref.attempt for lease in rescuer.leases()] == [2]  # re-dispatched exactly once
        assert late.leases() == []
    finally:
        for actor in actors:
            actor.close()


def test_corrupt_wal_record_stops_startup_unless_truncation_is_asked_for(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator()
    task_ids = [cluster.submit("echo", {"n": n}) for n in range(8)]  # no actors: 8 TaskSubmitted records
    cluster.kill(cluster.coordinator, signal.SIGTERM)
    assert cluster.coordinator.returncode == 0

    # Flip one payload byte of a middle record.
    records = read_wal(cluster.data_dir)
    assert [r.WhichOneof("event") for r in records] == ["task_submitted"] * 8
    seq = 5
    assert records[seq - 1].task_submitted.task_id == task_ids[seq - 1]
    corrupt_wal_record(cluster.data_dir, seq)

    refused = cluster.start_coordinator(wait=False)
    assert refused.wait(timeout=30) == 3
    log = coordinator_log(cluster)
    assert f"WAL record {seq} is corrupt" in log, log
    assert "--truncate-corrupt-wal" in log, log

    cluster.start_coordinator("--truncate-corrupt-wal")
    for task_id in task_ids[:seq - 1]:
        assert cluster.get(task_id).state == task_pb2.TASK_STATE_READY
    for task_id in task_ids[seq - 1:]:
        with pytest.raises(grpc.RpcError) as info:
            cluster.get(task_id)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "truncated" in coordinator_log(cluster)
    new_id = cluster.submit("echo", {"n": "after"})

    # The truncation is durable: a plain restart now starts, with what survived plus what came after.
    cluster.kill(cluster.coordinator, signal.SIGTERM)
    cluster.start_coordinator()
    assert cluster.get(new_id).state == task_pb2.TASK_STATE_READY
    assert cluster.get(task_ids[0]).state == task_pb2.TASK_STATE_READY
    cluster.start_actor("after-restart", slots=4)
    for task_id in [*task_ids[:seq - 1], new_id]:
        assert cluster.wait_state(task_id, TERMINAL, timeout_s=20).state == SUCCEEDED_STATE


def test_sigterm_ends_actor_streams_and_exits_promptly_then_actors_reconnect(make_cluster):
    """SIGTERM closes actor streams and watches instead of waiting out the shutdown grace for them;
    the actors keep running and reconnect to the next coordinator by themselves."""
    cluster = make_cluster(coordinator_flags=("--shutdown-grace-s", "20"))
    cluster.start_coordinator()
    actor = cluster.start_actor("survivor", slots=2)
    watched = cluster.submit("nobody-runs-this")
    watch = cluster.tasks.WatchTask(task_service_pb2.WatchTaskRequest(task_id=watched), timeout=30)
    assert next(watch).task.state == task_pb2.TASK_STATE_READY
    started = time.monotonic()
    cluster.coordinator.send_signal(signal.SIGTERM)
    assert cluster.coordinator.wait(timeout=15) == 0
    assert time.monotonic() - started < 10, "shutdown waited for streams that never end"
    with pytest.raises(grpc.RpcError) as info:
        next(watch)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert actor.poll() is None, "the actor must survive a coordinator shutdown"
    cluster.start_coordinator()
    wait_for(lambda: "survivor" in cluster.connected_actor_ids(), 20, "the actor to reconnect")
    assert cluster.wait_state(cluster.submit("echo", {"after": "restart"})).state == SUCCEEDED_STATE


def test_a_second_coordinator_on_the_same_data_dir_is_refused_and_the_first_keeps_serving(make_cluster):
    cluster = make_cluster()
    first = cluster.start_coordinator()
    before = cluster.submit("echo", {"n": "before"})

    second = cluster.start_coordinator("--listen", f"127.0.0.1:{free_port()}", wait=False)
    cluster.coordinator = first
    assert second.wait(timeout=30) == 2
    log = coordinator_log(cluster)
    assert "in use by another process" in log and "--data-dir" in log, log

    after = cluster.submit("echo", {"n": "after"})
    cluster.kill(first, signal.SIGTERM)
    assert first.returncode == 0
    assert [r.task_submitted.task_id for r in read_wal(cluster.data_dir)] == [before, after]


def test_a_snapshot_with_missing_parts_stops_startup_with_exit_3_and_a_message(make_cluster):
    import lmdb

    cluster = make_cluster()
    cluster.start_coordinator("--snapshot-every-records", "1")
    for n in range(4):
        cluster.submit("echo", {"n": n})
    cluster.kill(cluster.coordinator, signal.SIGTERM)
    assert cluster.coordinator.returncode == 0

    env = lmdb.open(str(cluster.data_dir), subdir=True, max_dbs=4, map_size=16 << 30)
    try:
        heads = env.open_db(b"snap_head")
        with env.begin(write=True, db=heads) as txn:
            assert txn.get(b"snapshot", db=env.open_db(b"meta", txn=txn)) is not None, "no snapshot was taken"
            assert txn.stat(heads)["entries"] > 0
            txn.drop(heads, delete=False)  # the pointer now names head chunks that are gone
    finally:
        env.close()

    refused = cluster.start_coordinator("--snapshot-every-records", "1", wait=False)
    assert refused.wait(timeout=30) == 3
    log = coordinator_log(cluster)
    assert "head chunk 0 is missing" in log, log
    assert "Traceback" not in log, log
