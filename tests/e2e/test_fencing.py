"""The fencing rule, end to end: only the current (task, attempt, token) held by the identity the
lease was granted to may heartbeat or end an attempt; everything else is rejected and recorded
nowhere; tokens only go up, also across a coordinator restart.

The actor side is driven by hand over the raw protocol (tests/e2e/raw_actor.py) so the test decides
exactly when heartbeats and (late) results are sent. Raw actors serve the task type "fence-probe",
which no real actor registers.
"""
from __future__ import annotations

import re

import pytest
from google.protobuf import json_format

from corral.v1 import actor_service_pb2, admin_service_pb2, task_pb2

from .harness import corrupt_wal_record, read_wal, wait_for
from .raw_actor import RawActor

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

PROBE = "fence-probe"
SUCCEEDED = task_pb2.ATTEMPT_OUTCOME_SUCCEEDED
LOST = task_pb2.ATTEMPT_OUTCOME_LOST
IN_PROGRESS = task_pb2.ATTEMPT_OUTCOME_UNSPECIFIED
LEASE_LOST = actor_service_pb2.CANCEL_REASON_LEASE_LOST


@pytest.fixture
def raw_actors(cluster):
    """Factory for raw actors on `cluster`; every stream is closed at the end of the test."""
    made: list[RawActor] = []

    def make(actor_id: str, **kwargs) -> RawActor:
        actor = RawActor(cluster.target, actor_id, **kwargs)
        made.append(actor)
        actor.welcome()
        return actor

    yield make
    for actor in made:
        actor.close()


def output_of(task: task_pb2.Task):
    return json_format.MessageToDict(task.output) if task.HasField("output") else None


def ms(ts) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def status(cluster) -> admin_service_pb2.GetClusterStatusResponse:
    return cluster.admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=10)


def test_late_result_for_expired_lease_is_rejected_and_recorded_nowhere(cluster, raw_actors):
    stale = raw_actors("stale")
    task_id = cluster.submit(PROBE, {"n": 1})
    first = stale.lease(task_id, attempt=1)
    t1 = first.ref.fencing_token

    # The actor goes silent: no heartbeat for the lease TTL. The coordinator records attempt 1 LOST,
    # tells the actor its lease is gone, and (its slot free again) grants attempt 2 with a new token.
    expired = stale.cancel_for(first.ref)
    assert expired.reason == LEASE_LOST
    # An actor whose lease expired gets nothing until it speaks again (see the next test).
    stale.heartbeat()
    second = stale.lease(task_id, attempt=2)
    t2 = second.ref.fencing_token
    assert t2 > t1
    stale.heartbeat(second.ref)  # keep attempt 2 alive while we play the late result

    task = cluster.get(task_id)
    assert task.state == task_pb2.TASK_STATE_RUNNING
    assert [a.outcome for a in task.attempts] == [LOST, IN_PROGRESS]
    assert task.lost_attempts == 1 and task.failed_attempts == 0
    lost = task.attempts[0]
    assert lost.fencing_token == t1 and lost.error.kind == "lease_expired"
    # Re-dispatch only after a real expiry: no heartbeat for the whole TTL.
    # Record times are wall-clock ms, lease expiry runs on the monotonic clock: allow 2 ms of rounding.
    assert ms(lost.ended_at) - ms(lost.started_at) >= int(cluster.lease_ttl_s * 1000) - 2

    # The late result of attempt 1 (it "finished" after all): rejected, recorded nowhere.
    stale.report(first.ref, SUCCEEDED, output={"from": "attempt-1"})
    ack = stale.ack_for(first.ref)
    assert not ack.accepted
    assert re.search(r"stale|expired|not current", ack.reason), ack.reason
    task = cluster.get(task_id)
    assert task.state == task_pb2.TASK_STATE_RUNNING
    assert not task.HasField("output") and not task.HasField("output_bytes")
    assert [a.outcome for a in task.attempts] == [LOST, IN_PROGRESS]
    assert task.lost_attempts == 1 and task.failed_attempts == 0

    # The current attempt's result is accepted and is what the task records.
    stale.report(second.ref, SUCCEEDED, output={"from": "attempt-2"})
    ack = stale.ack_for(second.ref)
    assert ack.accepted, ack.reason
    task = cluster.get(task_id)
    assert task.state == task_pb2.TASK_STATE_SUCCEEDED
    assert output_of(task) == {"from": "attempt-2"}
    assert [a.outcome for a in task.attempts] == [LOST, SUCCEEDED]
    assert task.attempts[1].fencing_token == t2
    assert sum(a.outcome == SUCCEEDED for a in task.attempts) == 1


def test_result_with_current_token_from_another_actor_identity_is_rejected(cluster, raw_actors):
    owner = raw_actors("owner")
    task_id = cluster.submit(PROBE, {"n": 2})
    lease = owner.lease(task_id, attempt=1)
    owner.heartbeat(lease.ref)
    intruder = raw_actors("intruder")

    # Right task, attempt and token — but not the identity the lease was granted to.
    intruder.report(lease.ref, SUCCEEDED, output={"by": "intruder"})
    ack = intruder.ack_for(lease.ref)
    assert not ack.accepted
    assert "another actor" in ack.reason, ack.reason
    # Its heartbeat for that lease is answered with LEASE_LOST (to it, not to the owner).
    intruder.heartbeat(lease.ref)
    assert intruder.cancel_for(lease.ref).reason == LEASE_LOST

    task = cluster.get(task_id)
    assert task.state == task_pb2.TASK_STATE_RUNNING
    assert not task.HasField("output")
    assert [(a.outcome, a.actor_id) for a in task.attempts] == [(IN_PROGRESS, "owner")]

    owner.report(lease.ref, SUCCEEDED, output={"by": "owner"})
    assert owner.ack_for(lease.ref).accepted
    task = cluster.get(task_id)
    assert task.state == task_pb2.TASK_STATE_SUCCEEDED
    assert output_of(task) == {"by": "owner"}
    assert [a.outcome for a in task.attempts] == [SUCCEEDED]
    assert owner.cancels_for(lease.ref) == []


def test_heartbeat_for_lease_no_longer_current_gets_lease_lost_cancel(cluster, raw_actors):
    actor = raw_actors("heartbeater")
    task_id = cluster.submit(PROBE, {"n": 3})
    first = actor.lease(task_id, attempt=1)
    # Let attempt 1 expire (the coordinator pushes one LEASE_LOST cancel when it expires) ...
    assert actor.cancel_for(first.ref).reason == LEASE_LOST
    actor.heartbeat()  # speak again, so the coordinator grants to this actor again
    second = actor.lease(task_id, attempt=2)
    pushed = len(actor.cancels_for(first.ref))

    # ... then heartbeat it anyway, together with the current lease: only the stale one is cancelled.
    actor.heartbeat(first.ref, second.ref)
    cancel = actor.cancel_for(first.ref, after=pushed)
    assert cancel.reason == LEASE_LOST
    assert re.search(r"stale|not current", cancel.message), cancel.message
    assert actor.cancels_for(second.ref) == []
    assert cluster.get(task_id).state == task_pb2.TASK_STATE_RUNNING

    # A heartbeat for an attempt that ended (the task succeeded) and for an unknown task: same.
    actor.report(second.ref, SUCCEEDED, output={"ok": True})
    assert actor.ack_for(second.ref).accepted
    unknown = actor_service_pb2.LeaseRef(task_id="no-such-task", attempt=1, fencing_token=second.ref.fencing_token)
    actor.heartbeat(second.ref, unknown)
    assert actor.cancel_for(second.ref).reason == LEASE_LOST
    assert actor.cancel_for(unknown).reason == LEASE_LOST
    task = cluster.get(task_id)
    assert task.state == task_pb2.TASK_STATE_SUCCEEDED and output_of(task) == {"ok": True}


def test_fencing_tokens_strictly_increase_across_grants_and_coordinator_restart(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator()
    cluster.start_actor("tokens", slots=2)

    def run_one() -> int:
        task_id = cluster.submit("fencing_token")
        task = cluster.wait_state(task_id, timeout_s=20)
        assert task.state == task_pb2.TASK_STATE_SUCCEEDED, task
        token = task.attempts[-1].fencing_token
        # The handler saw the same token the coordinator recorded (it can guard side effects with it).
        assert output_of(task) == {"token": token, "attempt": 1}
        return token

    before = [run_one() for _ in range(5)]
    assert all(a < b for a, b in zip(before, before[1:])), before
    high_before = status(cluster).highest_fencing_token
    assert high_before == max(before)

    cluster.kill(cluster.coordinator)
    cluster.start_coordinator()
    assert status(cluster).highest_fencing_token == high_before  # replayed from the WAL, not reset
    wait_for(lambda: "tokens" in cluster.connected_actor_ids(), 20, "the actor to reconnect")

    after = [run_one() for _ in range(5)]
    assert all(a < b for a, b in zip(after, after[1:])), after
    assert min(after) > max(before), (before, after)
    high_after = status(cluster).highest_fencing_token
    assert high_after == max(after) > high_before


def test_fencing_tokens_are_not_reissued_after_truncating_a_corrupt_wal(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator()
    cluster.start_actor("tokens", slots=1)
    issued = []
    for _ in range(3):
        task = cluster.wait_state(cluster.submit("fencing_token"), timeout_s=20)
        assert task.state == task_pb2.TASK_STATE_SUCCEEDED
        issued.append(task.attempts[-1].fencing_token)
    assert issued == sorted(set(issued))

    cluster.kill(cluster.coordinator)
    grants = [r for r in read_wal(cluster.data_dir) if r.HasField("lease_granted")]
    assert [r.lease_granted.fencing_token for r in grants] == issued
    # The record of the second grant is damaged; the operator chooses to drop it and what follows.
    corrupt_wal_record(cluster.data_dir, grants[1].seq)
    cluster.start_coordinator("--truncate-corrupt-wal")
    wait_for(lambda: "tokens" in cluster.connected_actor_ids(), 20, "the actor to reconnect")

    # Tokens issued before the truncation may still be held by running handlers and remembered by
    # downstream stores: a new grant must still be above every one of them.
    task = cluster.wait_state(cluster.submit("fencing_token"), timeout_s=20)
    assert task.state == task_pb2.TASK_STATE_SUCCEEDED
    assert task.attempts[-1].fencing_token > max(issued), (issued, task.attempts[-1].fencing_token)
    assert status(cluster).highest_fencing_token > max(issued)


def test_actor_whose_lease_expired_gets_no_new_lease_until_it_speaks(cluster, raw_actors):
    """A connected actor that stopped heartbeating (a stalled event loop, overload) is not handed
    the re-dispatch of the very task it lost: another eligible actor gets it."""
    stalled = raw_actors("stalled")
    task_id = cluster.submit(PROBE, {"n": 2})
    first = stalled.lease(task_id, attempt=1)
    healthy = raw_actors("healthy")
    assert stalled.cancel_for(first.ref).reason == LEASE_LOST
    second = healthy.lease(task_id, attempt=2)
    assert second.ref.fencing_token > first.ref.fencing_token
    assert not [lease for lease in stalled.leases() if lease.ref.attempt == 2]
