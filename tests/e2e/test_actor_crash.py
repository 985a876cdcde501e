"""A dead actor's attempts always come back: `kill -9` of an actor mid-attempt loses the attempt
(after the lease TTL, or at once when the same actor id comes back as a new incarnation) and the
task runs again elsewhere; a task that keeps killing its actors stops at max_lost_attempts; a
superseded incarnation does not get its actor id back.
"""
from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from corral.v1 import admin_service_pb2, task_pb2

from .harness import wait_for
from .raw_actor import RawActor

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

RUNNING = (task_pb2.TASK_STATE_RUNNING,)
SUCCEEDED = task_pb2.ATTEMPT_OUTCOME_SUCCEEDED
LOST = task_pb2.ATTEMPT_OUTCOME_LOST
IN_PROGRESS = task_pb2.ATTEMPT_OUTCOME_UNSPECIFIED


def ms(ts) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def incarnation_of(cluster, actor_id: str) -> str | None:
    status = cluster.admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=5)
    return next((a.identity.incarnation for a in status.actors if a.identity.actor_id == actor_id), None)


def test_attempt_of_killed_actor_is_lost_after_ttl_and_rerun_once_elsewhere(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator()
    cluster.start_actor("crash-a", slots=1)
    cluster.start_actor("crash-b", slots=1)
    task_id = cluster.submit("sleep", {"seconds": 2.5})
    running = cluster.wait_state(task_id, RUNNING, timeout_s=10)
    victim = running.attempts[-1].actor_id
    survivor = {"crash-a": "crash-b", "crash-b": "crash-a"}[victim]

    cluster.kill(cluster.actors[victim])

    task = cluster.wait_state(task_id, timeout_s=20)
    assert task.state == task_pb2.TASK_STATE_SUCCEEDED, task
    assert json_format.MessageToDict(task.output) == {"slept": 2.5}
    assert [(a.number, a.actor_id, a.outcome) for a in task.attempts] == [
        (1, victim, LOST), (2, survivor, SUCCEEDED)]
    assert task.lost_attempts == 1 and task.failed_attempts == 0
    first, second = task.attempts
    assert first.error.kind == "lease_expired", first.error
    # Lost only because nobody heartbeated it for a whole TTL, not because of some other timer.
    # Record times are wall-clock ms, lease expiry runs on the monotonic clock: allow 2 ms of rounding.
    assert ms(first.ended_at) - ms(first.started_at) >= int(cluster.lease_ttl_s * 1000) - 2
    assert second.fencing_token > first.fencing_token


def test_task_that_kills_its_actor_fails_after_max_lost_attempts(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator()
    names = ["doomed-1", "doomed-2", "doomed-3"]
    for name in names:
        cluster.start_actor(name, slots=1, app="tests.e2e.crash_app")
    task_id = cluster.submit("crash", retry=task_pb2.RetryPolicy(max_lost_attempts=2))

    task = cluster.wait_state(task_id, timeout_s=30)
    assert task.state == task_pb2.TASK_STATE_FAILED, task
    assert task.lost_attempts == 2 and task.failed_attempts == 0
    assert [a.outcome for a in task.attempts] == [LOST, LOST]
    assert "lost" in task.state_reason and "max_lost_attempts=2" in task.state_reason, task.state_reason
    # Each attempt killed the actor that ran it; the third actor never got the task and lives on.
    killers = [a.actor_id for a in task.attempts]
    assert len(set(killers)) == 2
    for name in killers:
        assert cluster.actors[name].wait(timeout=10) == 1
    (spared,) = set(names) - set(killers)
    assert cluster.actors[spared].poll() is None
    assert cluster.get(task_id).attempts == task.attempts  # terminal: no attempt after FAILED


def test_restarted_actor_makes_old_incarnation_leases_lost_before_ttl(make_cluster):
    cluster = make_cluster(lease_ttl_s=30)
    cluster.start_coordinator()
    cluster.start_actor("phoenix", slots=1)
    task_id = cluster.submit("sleep", {"seconds": 1.5})
    running = cluster.wait_state(task_id, RUNNING, timeout_s=10)
    old_incarnation = running.attempts[0].actor_incarnation
    assert old_incarnation == incarnation_of(cluster, "phoenix")

    cluster.kill(cluster.actors["phoenix"])
    cluster.start_actor("phoenix", slots=1, wait=False)  # same actor id, new process
    wait_for(lambda: incarnation_of(cluster, "phoenix") not in (None, old_incarnation), 20,
             "the new incarnation of phoenix to connect")

    # Well before the 30 s TTL: the new incarnation proves the old process is gone.
    task = cluster.wait_state(task_id, timeout_s=15)
    assert task.state == task_pb2.TASK_STATE_SUCCEEDED, task
    first, second = task.attempts
    assert (first.outcome, first.actor_incarnation) == (LOST, old_incarnation)
    assert "restarted" in first.error.message, first.error
    assert ms(first.ended_at) - ms(first.started_at) < 15_000
    assert second.outcome == SUCCEEDED and second.actor_id == "phoenix"
    assert second.actor_incarnation not in ("", old_incarnation)
    assert second.fencing_token > first.fencing_token
    assert task.lost_attempts == 1 and task.failed_attempts == 0


def test_superseded_incarnation_cannot_take_its_actor_id_back(cluster):
    """A new incarnation proves the old process is gone; the old one coming back must not undo that."""
    actors: list[RawActor] = []

    def connect(incarnation: str, **kwargs) -> RawActor:
        actor = RawActor(cluster.target, "twin", incarnation=incarnation, **kwargs)
        actors.append(actor)
        return actor

    try:
        old = connect("old")
        old.welcome()
        task_id = cluster.submit("fence-probe", {"n": 1})
        first = old.lease(task_id, attempt=1)

        new = connect("new")  # the restarted process
        new.welcome()
        superseded = old.wait_ended()
        assert superseded is not None and superseded.code() == grpc.StatusCode.ABORTED
        second = new.lease(task_id, attempt=2)  # attempt 1 was declared lost at once
        new.heartbeat(second.ref)
        assert [a.outcome for a in cluster.get(task_id).attempts] == [LOST, IN_PROGRESS]

        # The old process is alive after all (partition healed, duplicate --actor-id, ...) and
        # reconnects with its incarnation, as the real actor does after ABORTED.
        zombie = connect("old", held_leases=[first.ref])
        zombie.wait_answered()  # welcomed or refused: either way its hello has been decided

        task = cluster.get(task_id)
        assert [a.outcome for a in task.attempts] == [LOST, IN_PROGRESS], task
        assert incarnation_of(cluster, "twin") == "new"
        assert not new.ended, new.error
    finally:
        for actor in actors:
            actor.close()


def test_stalled_actor_gets_work_again_once_it_answers(cluster):
    """An actor frozen past the lease TTL (SIGSTOP) loses its attempt and is 'suspect' (no grants
    while it may still be stalled); once it runs again it answers the lease-lost cancel, and the
    task, with no other actor around, comes back to it and succeeds."""
    import signal

    actor = cluster.start_actor("stall", slots=1)
    task_id = cluster.submit("sleep", {"seconds": 1.0})
    cluster.wait_state(task_id, RUNNING, timeout_s=10)
    actor.send_signal(signal.SIGSTOP)
    try:
        lost = wait_for(lambda: (t := cluster.get(task_id)).attempts[0].outcome == LOST and t,
                        15, "the frozen actor's attempt to be lost")
        assert lost.state == task_pb2.TASK_STATE_READY
    finally:
        actor.send_signal(signal.SIGCONT)
    done = cluster.wait_state(task_id, timeout_s=20)
    assert done.state == task_pb2.TASK_STATE_SUCCEEDED, done
    assert [a.actor_id for a in done.attempts] == ["stall", "stall"]
