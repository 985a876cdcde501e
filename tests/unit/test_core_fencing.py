"""The fencing rule (decisions.fence) and lease liveness (coordinator/core/fleet.py).

A message about an attempt is accepted only if its token is the attempt's current token, the
lease is live, and it comes from the actor identity the lease was granted to.
"""
from __future__ import annotations

from corral.v1 import task_pb2
from coordinator.core import decisions
from coordinator.core.fleet import ConnectedActor, Fleet
from coordinator.core.states import State

from .core_fixtures import LEASE_TTL_MS, T0, FakeSession, Sim, identity

A1 = ("a1", "i1")
A2 = ("a2", "i1")


def running_sim(**spec_kw) -> tuple[Sim, tuple]:
    """A sim with actors a1, a2 connected and task t1 granted to a1 at T0."""
    sim = Sim()
    with sim.step(T0):
        sim.connect(identity("a1", "i1", slots=2))
        sim.connect(identity("a2", "i1", slots=2))
        sim.submit("t1", **spec_kw)
        grant = sim.grant_to("t1", A1)
    return sim, grant


def fence(sim: Sim, actor_key, task_id: str, attempt: int, token: int, now_ms: int | None = None) -> str | None:
    return decisions.fence(sim.projection, sim.fleet, actor_key, task_id, attempt, token,
                           sim.now if now_ms is None else now_ms)


# ---- decisions.fence ---------------------------------------------------------------------------

def test_current_attempt_token_and_actor_is_accepted() -> None:
    sim, (_, attempt, token, key) = running_sim()
    assert (attempt, token, key) == (1, 1, A1)
    assert fence(sim, A1, "t1", 1, 1) is None
    assert fence(sim, A1, "t1", 1, 1, T0 + LEASE_TTL_MS - 1) is None


def test_unknown_task_is_rejected() -> None:
    sim, _ = running_sim()
    why = fence(sim, A1, "nope", 1, 1)
    assert why is not None and "unknown task" in why and "nope" in why


def test_task_not_running_is_rejected() -> None:
    sim = Sim()
    with sim.step(T0):
        sim.submit("ready")  # never granted
    why = fence(sim, A1, "ready", 1, 1)
    assert why is not None and "READY" in why and "not running" in why


def test_ended_attempt_is_rejected_even_with_its_own_token() -> None:
    sim, (_, attempt, token, key) = running_sim()
    with sim.step(T0 + 10):
        assert sim.report("t1", task_pb2.ATTEMPT_OUTCOME_SUCCEEDED) is None
    assert sim.state("t1") == State.SUCCEEDED
    why = fence(sim, key, "t1", attempt, token)
    assert why is not None and "SUCCEEDED" in why


def test_stale_attempt_number_is_rejected() -> None:
    sim, (_, attempt, token, _) = running_sim()
    why = fence(sim, A1, "t1", attempt + 1, token)
    assert why is not None and "stale" in why
    why = fence(sim, A1, "t1", 0, token)
    assert why is not None and "stale" in why


def test_older_token_of_a_regranted_task_is_rejected() -> None:
    sim, (_, old_attempt, old_token, _) = running_sim(max_lost_attempts=5)
    # The lease expires without heartbeats: LOST, back to READY, granted again (to a2).
    with sim.step(T0 + LEASE_TTL_MS):
        assert sim.expire() == ["t1"]
        assert sim.state("t1") == State.READY
        _, new_attempt, new_token, _ = sim.grant_to("t1", A2)
    assert (new_attempt, new_token) == (2, old_token + 1)
    # The old holder's late messages are fenced off, whoever sends them.
    why = fence(sim, A1, "t1", old_attempt, old_token)
    assert why is not None and "stale" in why and f"token {new_token}" in why
    assert fence(sim, A2, "t1", old_attempt, old_token) is not None
    assert fence(sim, A2, "t1", new_attempt, old_token) is not None  # right attempt, old token
    assert fence(sim, A2, "t1", old_attempt, new_token) is not None  # right token, old attempt
    assert fence(sim, A2, "t1", new_attempt, new_token) is None


def test_late_outcome_of_old_attempt_does_not_end_the_new_one() -> None:
    sim, (_, old_attempt, old_token, _) = running_sim(max_lost_attempts=5)
    with sim.step(T0 + LEASE_TTL_MS):
        sim.expire()
        sim.grant_to("t1", A2)
    with sim.step(T0 + LEASE_TTL_MS + 1):
        why = sim.report("t1", task_pb2.ATTEMPT_OUTCOME_FAILED, attempt=old_attempt, token=old_token, actor_key=A1)
    assert why is not None
    task = sim.projection.tasks["t1"]
    assert task.state == State.RUNNING and task.failed_attempts == 0
    assert task.current_attempt.outcome == task_pb2.ATTEMPT_OUTCOME_UNSPECIFIED


def test_token_from_the_future_is_rejected() -> None:
    sim, (_, attempt, token, _) = running_sim()
    assert fence(sim, A1, "t1", attempt, token + 1) is not None


def test_expired_lease_is_rejected() -> None:
    sim, (_, attempt, token, _) = running_sim()
    expires = sim.lease("t1").expires_ms
    assert expires == T0 + LEASE_TTL_MS
    assert fence(sim, A1, "t1", attempt, token, expires - 1) is None
    why = fence(sim, A1, "t1", attempt, token, expires)
    assert why is not None and "expired" in why
    assert fence(sim, A1, "t1", attempt, token, expires + 60_000) is not None


def test_expired_lease_is_rejected_even_before_the_expiry_is_recorded() -> None:
    # The task is still RUNNING in the projection (no LOST record yet): liveness alone decides.
    sim, (_, attempt, token, _) = running_sim()
    now = T0 + LEASE_TTL_MS + 5
    assert sim.projection.tasks["t1"].state == State.RUNNING
    assert fence(sim, A1, "t1", attempt, token, now) is not None


def test_released_lease_is_rejected() -> None:
    sim, (_, attempt, token, _) = running_sim()
    sim.fleet.release("t1")
    assert fence(sim, A1, "t1", attempt, token) is not None


def test_other_actor_with_the_current_token_is_rejected() -> None:
    sim, (_, attempt, token, _) = running_sim()
    why = fence(sim, A2, "t1", attempt, token)
    assert why is not None and "another actor" in why


def test_other_incarnation_of_the_same_actor_is_rejected() -> None:
    sim, (_, attempt, token, _) = running_sim()
    why = fence(sim, ("a1", "i2"), "t1", attempt, token)
    assert why is not None and "another actor" in why


def test_rejected_outcome_changes_nothing() -> None:
    sim, (_, attempt, token, _) = running_sim()
    before = sim.projection.fingerprint()
    with sim.step(T0 + 1):
        assert sim.report("t1", task_pb2.ATTEMPT_OUTCOME_SUCCEEDED, actor_key=A2) is not None
        assert sim.report("t1", task_pb2.ATTEMPT_OUTCOME_SUCCEEDED, token=token + 7) is not None
    assert sim.projection.fingerprint() == before
    assert sim.pending == [] and sim.state("t1") == State.RUNNING


# ---- heartbeats: fleet.extend --------------------------------------------------------------------

def test_heartbeat_keeps_the_lease_live_past_the_original_expiry() -> None:
    sim, (_, attempt, token, key) = running_sim()
    original = sim.lease("t1").expires_ms
    sim.now = original - 1
    assert sim.heartbeat("t1", attempt, token, key) is None
    assert sim.lease("t1").expires_ms == original - 1 + LEASE_TTL_MS
    assert fence(sim, key, "t1", attempt, token, original + 1) is None
    assert fence(sim, key, "t1", attempt, token, original - 1 + LEASE_TTL_MS) is not None


def test_heartbeats_keep_a_lease_alive_indefinitely_and_expiry_never_fires() -> None:
    sim, (_, attempt, token, key) = running_sim(timeout_ms=10 * 60_000)
    for i in range(1, 20):
        with sim.step(T0 + i * (LEASE_TTL_MS // 2)):
            assert sim.heartbeat("t1", attempt, token, key) is None
            assert sim.expire() == []
    assert sim.state("t1") == State.RUNNING


def test_heartbeat_from_wrong_actor_does_not_extend() -> None:
    sim, (_, attempt, token, _) = running_sim()
    original = sim.lease("t1").expires_ms
    sim.now = T0 + 5_000
    assert sim.heartbeat("t1", attempt, token, A2) is not None
    assert sim.lease("t1").expires_ms == original


def test_heartbeat_after_expiry_is_rejected_and_does_not_revive() -> None:
    sim, (_, attempt, token, key) = running_sim()
    sim.now = T0 + LEASE_TTL_MS
    assert sim.heartbeat("t1", attempt, token, key) is not None
    assert sim.lease("t1").expires_ms == T0 + LEASE_TTL_MS


# ---- fleet.pop_expired ---------------------------------------------------------------------------

def make_fleet(slots: int = 4) -> tuple[Fleet, ConnectedActor]:
    fleet = Fleet(LEASE_TTL_MS)
    actor = ConnectedActor(identity("a1", "i1", slots=slots), T0, FakeSession("a1"))
    fleet.connect(actor)
    return fleet, actor


def test_pop_expired_yields_only_really_expired_leases() -> None:
    fleet, _ = make_fleet()
    fleet.bind("early", 1, 1, A1, T0)
    fleet.bind("late", 1, 2, A1, T0 + 5_000)
    assert [l.task_id for l in fleet.pop_expired(T0 + LEASE_TTL_MS - 1)] == []
    assert [l.task_id for l in fleet.pop_expired(T0 + LEASE_TTL_MS)] == ["early"]
    assert [l.task_id for l in fleet.pop_expired(T0 + LEASE_TTL_MS + 4_999)] == []
    assert [l.task_id for l in fleet.pop_expired(T0 + LEASE_TTL_MS + 5_000)] == ["late"]


def test_pop_expired_skips_extended_leases_until_their_new_expiry() -> None:
    fleet, _ = make_fleet()
    kept = fleet.bind("kept", 1, 1, A1, T0)
    fleet.bind("dropped", 1, 2, A1, T0)
    fleet.extend(kept, T0 + 8_000)
    assert [l.task_id for l in fleet.pop_expired(T0 + LEASE_TTL_MS)] == ["dropped"]
    assert fleet.live_lease("kept", 1, T0 + LEASE_TTL_MS) is kept
    assert fleet.next_expiry_ms() == T0 + 8_000 + LEASE_TTL_MS  # re-queued at the new expiry
    assert list(fleet.pop_expired(T0 + 8_000 + LEASE_TTL_MS - 1)) == []
    assert [l.task_id for l in fleet.pop_expired(T0 + 8_000 + LEASE_TTL_MS)] == ["kept"]


def test_pop_expired_skips_released_leases() -> None:
    fleet, actor = make_fleet()
    fleet.bind("done", 1, 1, A1, T0)
    fleet.bind("open", 1, 2, A1, T0)
    assert fleet.release("done") is not None
    assert fleet.release("done") is None  # idempotent
    assert [l.task_id for l in fleet.pop_expired(T0 + LEASE_TTL_MS)] == ["open"]


def test_pop_expired_skips_the_old_entry_of_a_regranted_task() -> None:
    fleet, _ = make_fleet()
    fleet.bind("t", 1, 1, A1, T0)
    fleet.release("t")
    fleet.bind("t", 2, 7, A1, T0 + 6_000)
    assert list(fleet.pop_expired(T0 + LEASE_TTL_MS)) == []
    expired = list(fleet.pop_expired(T0 + 6_000 + LEASE_TTL_MS))
    assert [(l.task_id, l.attempt, l.token) for l in expired] == [("t", 2, 7)]


def test_pop_expired_yields_each_expired_lease_once() -> None:
    fleet, _ = make_fleet()
    fleet.bind("t", 1, 1, A1, T0)
    assert len(list(fleet.pop_expired(T0 + LEASE_TTL_MS))) == 1
    assert list(fleet.pop_expired(T0 + LEASE_TTL_MS + 1)) == []


def test_pop_expired_agrees_with_live_lease_at_the_boundary() -> None:
    fleet, _ = make_fleet()
    lease = fleet.bind("t", 1, 3, A1, T0)
    assert fleet.live_lease("t", 3, lease.expires_ms - 1) is lease
    assert fleet.live_lease("t", 3, lease.expires_ms) is None
    assert list(fleet.pop_expired(lease.expires_ms - 1)) == []
    assert list(fleet.pop_expired(lease.expires_ms)) == [lease]


def test_live_lease_checks_token() -> None:
    fleet, _ = make_fleet()
    fleet.bind("t", 1, 3, A1, T0)
    assert fleet.live_lease("t", 2, T0) is None
    assert fleet.live_lease("t", 4, T0) is None
    assert fleet.live_lease("missing", 3, T0) is None


def test_expired_then_recorded_lost_is_not_expired_again() -> None:
    sim, _ = running_sim(max_lost_attempts=5)
    with sim.step(T0 + LEASE_TTL_MS):
        assert sim.expire() == ["t1"]
    with sim.step(T0 + 3 * LEASE_TTL_MS):
        assert sim.expire() == []
    assert sim.projection.tasks["t1"].lost_attempts == 1


def test_lost_attempt_record_is_none_for_a_stale_lease() -> None:
    sim, (_, attempt, token, _) = running_sim()
    assert decisions.lost_attempt_record(sim.projection, "t1", attempt, token + 1, sim.now, sim.draw, "x") is None
    assert decisions.lost_attempt_record(sim.projection, "t1", attempt + 1, token, sim.now, sim.draw, "x") is None
    assert decisions.lost_attempt_record(sim.projection, "zz", attempt, token, sim.now, sim.draw, "x") is None
    rec = decisions.lost_attempt_record(sim.projection, "t1", attempt, token, sim.now, sim.draw, "gone")
    assert rec is not None
    ended = rec.attempt_ended
    assert (ended.outcome, ended.error.kind, ended.reason) == (task_pb2.ATTEMPT_OUTCOME_LOST, "lease_expired", "gone")


# ---- slots -------------------------------------------------------------------------------------

def test_bound_leases_use_slots_and_release_frees_them() -> None:
    fleet, actor = make_fleet(slots=2)
    assert actor.free_slots == 2
    fleet.bind("x", 1, 1, A1, T0)
    fleet.bind("y", 1, 2, A1, T0)
    assert actor.free_slots == 0 and fleet.free_slots_total() == 0
    fleet.release("x")
    assert actor.free_slots == 1


def test_disconnect_keeps_leases_and_adopt_counts_them_again() -> None:
    fleet, actor = make_fleet(slots=2)
    lease = fleet.bind("x", 1, 1, A1, T0)
    assert fleet.disconnect(A1) is actor
    assert "x" in fleet.leases and fleet.leases_of(A1) == [lease]
    again = ConnectedActor(identity("a1", "i1", slots=2), T0 + 1_000, FakeSession("a1"))
    fleet.connect(again)
    assert again.free_slots == 2  # not counted until re-presented
    fleet.adopt(lease, again, T0 + 9_000)
    assert again.free_slots == 1
    assert lease.expires_ms == T0 + 9_000 + LEASE_TTL_MS
