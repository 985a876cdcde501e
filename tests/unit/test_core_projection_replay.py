"""The projection is rebuilt exactly by replaying the WAL (coordinator/core/projection.py).

A realistic history is driven through the decisions into a live Projection (each record applied
with now_ms = the step's time, as the dispatch loop does) while the same records are appended,
one batch per step, to a real LMDB WriteAheadLog. Replaying that WAL into fresh projections must
rebuild the same state; records the projection cannot apply must be refused.
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from corral.v1 import task_pb2, wal_pb2
from coordinator.core import decisions
from coordinator.core.fleet import ConnectedActor, Fleet
from coordinator.core.projection import CorruptProjection, Projection
from coordinator.core.states import IllegalTransition, State
from coordinator.storage.wal import WriteAheadLog

from .core_fixtures import T0, FakeSession, Sim, const_draw, granted, identity, json_value, replay, spec, submitted

O = task_pb2
STEP_MS = 500
LEASE_TTL = 3_000
HOUR = 3_600_000


def backoff(initial_ms: int) -> task_pb2.Backoff:
    b = task_pb2.Backoff()
    b.initial.FromMilliseconds(initial_ms)
    return b


# What each task's attempts do, one letter per attempt:
# S succeed, F fail (retryable), N fail non-retryable, T report TIMED_OUT, C hand back (CANCELED),
# L go silent (the lease expires), H hang while heartbeating (the attempt deadline fires).
SCRIPTS = {
    "ok": "S", "retry": "FTS", "exhaust": "FFF", "nonretry": "N", "lost": "LS", "lost-out": "LL",
    "deadline": "HS", "handback": "CS", "cancel-running": "H", "cancel-wait": "F", "sched": "S",
    "gpu": "S", "idem": "S", "prio": "S", "late1": "S", "late2": "S", "long-wait": "F", "hung": "H",
}
EXPECTED_END = {
    "ok": State.SUCCEEDED, "retry": State.SUCCEEDED, "exhaust": State.FAILED, "nonretry": State.FAILED,
    "lost": State.SUCCEEDED, "lost-out": State.FAILED, "deadline": State.SUCCEEDED, "handback": State.SUCCEEDED,
    "cancel-running": State.CANCELED, "cancel-ready": State.CANCELED, "cancel-wait": State.CANCELED,
    "sched": State.SUCCEEDED, "s2s": State.FAILED, "gpu": State.SUCCEEDED, "idem": State.SUCCEEDED,
    "prio": State.SUCCEEDED, "late1": State.SUCCEEDED, "late2": State.SUCCEEDED,
    "far-sched": State.SCHEDULED, "long-wait": State.RETRY_WAIT, "hung": State.RUNNING, "orphan": State.READY,
}
STEPS = 70


def submit_initial(sim: Sim) -> None:
    now = sim.now
    sim.submit("ok", backoff=backoff(200))
    sim.submit("retry", max_attempts=3, backoff=backoff(1_000))
    sim.submit("exhaust", max_attempts=3, backoff=backoff(500))
    sim.submit("nonretry", max_attempts=5)
    sim.submit("lost", max_lost_attempts=3)
    sim.submit("lost-out", max_lost_attempts=2)
    sim.submit("deadline", timeout_ms=3_000, max_attempts=3, backoff=backoff(100))
    sim.submit("handback")
    sim.submit("cancel-running", timeout_ms=HOUR)
    sim.submit("cancel-ready", type="nobody")
    sim.submit("cancel-wait", backoff=backoff(60_000))
    sim.submit("sched", not_before_ms=now + 4_000)
    sim.submit("s2s", type="nobody", schedule_to_start_ms=2_000)
    sim.submit("gpu", caps=("gpu",))
    sim.submit("idem", idempotency_key="key-1", labels={"team": "a"})
    sim.submit("prio", priority=5)
    sim.submit("far-sched", not_before_ms=now + 10 * HOUR)
    sim.submit("long-wait", max_attempts=3, backoff=backoff(HOUR))
    sim.submit("hung", timeout_ms=HOUR)
    sim.submit("orphan", type="nobody")


def actor_turn(sim: Sim) -> None:
    """Every actor's heartbeats and results for this step, following SCRIPTS."""
    for task_id, lease in sorted(sim.fleet.leases.items()):
        task = sim.projection.tasks[task_id]
        attempt = task.current_attempt
        if attempt is None or attempt.number != lease.attempt or task.state != State.RUNNING:
            continue
        action = SCRIPTS[task_id][attempt.number - 1]
        if action == "L":
            continue  # silent: no heartbeat
        assert sim.heartbeat(task_id, lease.attempt, lease.token, lease.actor_key) is None
        if task.cancel_requested:
            assert sim.report(task_id, O.ATTEMPT_OUTCOME_CANCELED,
                              error=task_pb2.TaskError(message="stopped on request", kind="canceled")) is None
            continue
        if action == "H" or sim.now - attempt.started_ms < 2 * STEP_MS:
            continue
        if action == "S":
            out = {"output": json_value({"task": task_id, "attempt": attempt.number})}
            if task_id == "idem":
                out = {"output_bytes": b"\x00raw"}
            assert sim.report(task_id, O.ATTEMPT_OUTCOME_SUCCEEDED, **out) is None
        elif action == "F":
            assert sim.report(task_id, O.ATTEMPT_OUTCOME_FAILED,
                              error=task_pb2.TaskError(message=f"boom {attempt.number}", kind="ValueError")) is None
        elif action == "N":
            assert sim.report(task_id, O.ATTEMPT_OUTCOME_FAILED, error=task_pb2.TaskError(
                message="bad input", kind="NonRetryableError", non_retryable=True)) is None
        elif action == "T":
            assert sim.report(task_id, O.ATTEMPT_OUTCOME_TIMED_OUT) is None
        elif action == "C":
            assert sim.report(task_id, O.ATTEMPT_OUTCOME_CANCELED) is None


def run_history(wal: WriteAheadLog | None) -> Sim:
    sim = Sim(wal, lease_ttl_ms=LEASE_TTL, draw=random.Random(42).random)
    for i in range(STEPS):
        with sim.step(T0 + i * STEP_MS):
            if i == 0:
                sim.connect(identity("a1", "i1", slots=4))
                sim.connect(identity("a2", "i1", caps=("gpu",), slots=2))
                submit_initial(sim)
            if i == 2:
                sim.cancel("cancel-ready", "not needed")
            if i == 4:
                sim.cancel("cancel-running", "user stop")
            if i == 8:
                assert sim.state("cancel-wait") == State.RETRY_WAIT
                sim.cancel("cancel-wait")
            if i == 10:
                sim.connect(identity("a3", "i1", slots=1))
                sim.connect(identity("a1", "i1", slots=4))  # same identity again: no new record
                sim.submit("late1", priority=1)
                sim.submit("late2")
            if i > 0:
                actor_turn(sim)
            sim.tick()
    return sim


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[Sim, list[wal_pb2.WalRecord], WriteAheadLog]:
    path = Path(tmp_path_factory.mktemp("wal")) / "wal"
    wal = WriteAheadLog(path, map_size_bytes=1 << 24, sync=False)
    sim = run_history(wal)
    records = list(wal.records())
    yield sim, records, wal
    wal.close()


def replayed_from_disk(wal: WriteAheadLog) -> Projection:
    return replay(wal.records())


# ---- the history itself --------------------------------------------------------------------------

def test_history_reaches_the_expected_states(history) -> None:
    sim, _, _ = history
    assert {tid: State(t.state) for tid, t in sim.projection.tasks.items()} == EXPECTED_END


def test_history_exercises_every_outcome_and_transition(history) -> None:
    _, records, _ = history
    kinds = Counter(r.WhichOneof("event") for r in records)
    assert set(kinds) == {"task_submitted", "lease_granted", "attempt_ended", "task_state_changed",
                          "cancel_requested", "actor_registered"}
    assert kinds["actor_registered"] == 3
    ended = [r.attempt_ended for r in records if r.HasField("attempt_ended")]
    assert {e.outcome for e in ended} == {O.ATTEMPT_OUTCOME_SUCCEEDED, O.ATTEMPT_OUTCOME_FAILED,
                                          O.ATTEMPT_OUTCOME_CANCELED, O.ATTEMPT_OUTCOME_TIMED_OUT,
                                          O.ATTEMPT_OUTCOME_LOST}
    assert {e.next_state for e in ended} == {State.SUCCEEDED, State.FAILED, State.CANCELED, State.READY,
                                             State.RETRY_WAIT}
    changes = {r.task_state_changed.state for r in records if r.HasField("task_state_changed")}
    assert changes == {State.READY, State.FAILED, State.CANCELED}  # promotions, s2s timeout, cancels


def test_wal_holds_exactly_the_live_records_in_order(history) -> None:
    sim, records, wal = history
    assert wal.last_seq == len(records) == len(sim.all_records)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert [r.SerializeToString(deterministic=True) for r in records] == \
        [r.SerializeToString(deterministic=True) for r in sim.all_records]
    assert all(r.at_unix_ms >= T0 and (r.at_unix_ms - T0) % STEP_MS == 0 for r in records)
    assert [r.at_unix_ms for r in records] == sorted(r.at_unix_ms for r in records)


def test_tokens_in_the_wal_strictly_increase(history) -> None:
    _, records, _ = history
    tokens = [r.lease_granted.fencing_token for r in records if r.HasField("lease_granted")]
    assert tokens == list(range(1, len(tokens) + 1))


# ---- replay equals live ----------------------------------------------------------------------------

def test_two_replays_of_the_wal_have_equal_fingerprints(history) -> None:
    _, _, wal = history
    first, second = replayed_from_disk(wal), replayed_from_disk(wal)
    assert first is not second
    assert first.fingerprint() == second.fingerprint()


def test_replay_rebuilds_every_task_exactly(history) -> None:
    sim, _, wal = history
    live, rebuilt = sim.projection, replayed_from_disk(wal)
    assert set(rebuilt.tasks) == set(live.tasks)
    for task_id, task in live.tasks.items():
        assert rebuilt.tasks[task_id].as_tuple() == task.as_tuple(), task_id
    assert rebuilt.idempotency == live.idempotency == {"key-1": "idem"}
    assert {k: v.SerializeToString(deterministic=True) for k, v in rebuilt.actors_seen.items()} == \
        {k: v.SerializeToString(deterministic=True) for k, v in live.actors_seen.items()}
    assert rebuilt.submitted_count == live.submitted_count == len(EXPECTED_END)
    assert rebuilt.ready_count == live.ready_count


def test_replay_rebuilds_the_state_counts(history) -> None:
    sim, _, wal = history
    live, rebuilt = sim.projection, replayed_from_disk(wal)
    actual = Counter(t.state for t in live.tasks.values())
    expected = Counter(EXPECTED_END.values())
    for state in State:
        assert live.state_counts[state] == rebuilt.state_counts[state] == actual[state] == expected[state], state
    assert sum(rebuilt.state_counts.values()) == len(rebuilt.tasks)


def test_high_water_token_survives_replay(history) -> None:
    sim, records, wal = history
    rebuilt = replayed_from_disk(wal)
    last = max(r.lease_granted.fencing_token for r in records if r.HasField("lease_granted"))
    assert rebuilt.highest_token == sim.projection.highest_token == last > 10


def test_replay_continues_above_the_high_water_token(history) -> None:
    _, records, wal = history
    rebuilt = replayed_from_disk(wal)
    high = rebuilt.highest_token
    orphan = rebuilt.tasks["orphan"]
    assert orphan.state == State.READY
    at = records[-1].at_unix_ms + 1
    for reused in (1, high):  # any token already issued is refused after a restart
        with pytest.raises(CorruptProjection):
            rebuilt.apply(granted("orphan", 1, reused, ("a9", "i1"), at + 60_000), at)
    rebuilt.apply(granted("orphan", 1, high + 1, ("a9", "i1"), at + 60_000), at)
    assert rebuilt.highest_token == high + 1 and orphan.state == State.RUNNING


def test_replayed_projection_selects_the_same_grants_as_live(history) -> None:
    sim, _, wal = history

    def pick(projection: Projection) -> list[tuple[str, str]]:
        fleet = Fleet(LEASE_TTL)
        fleet.connect(ConnectedActor(identity("n1", "i1", types=("nobody", "t"), slots=5), T0, FakeSession("n1")))
        return [(t.task_id, a.key[0]) for t, a in decisions.select_grants(projection, fleet)]

    assert pick(replayed_from_disk(wal)) == pick(sim.projection) == [("orphan", "n1")]


def test_replayed_projection_fires_the_same_timers_as_live(history) -> None:
    sim, _, wal = history
    far = T0 + 100 * HOUR

    def effective(projection: Projection) -> list[bytes]:
        out = []
        for kind, task_id, attempt in projection.pop_due_timers(far):
            rec = decisions.timer_record(projection, kind, task_id, attempt, far, const_draw(0.5))
            if rec is not None:
                out.append(rec.SerializeToString(deterministic=True))
        return sorted(out)

    live_timers = effective(sim.projection)
    assert live_timers == effective(replayed_from_disk(wal))
    fired = {wal_pb2.WalRecord.FromString(b).WhichOneof("event") for b in live_timers}
    assert fired == {"task_state_changed", "attempt_ended"}  # far-sched/long-wait promote, hung deadline
    assert len(live_timers) == 3


def test_replay_with_record_times_equals_apply_all(history) -> None:
    _, records, wal = history
    p = Projection()
    assert p.apply_all(wal.records()) == len(records)
    assert p.fingerprint() == replayed_from_disk(wal).fingerprint()


def test_live_fingerprint_equals_replay_fingerprints(history) -> None:
    sim, _, wal = history
    assert sim.projection.fingerprint() == replayed_from_disk(wal).fingerprint()


def test_identical_histories_give_identical_projections(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "w1", map_size_bytes=1 << 24, sync=False) as w1, \
            WriteAheadLog(tmp_path / "w2", map_size_bytes=1 << 24, sync=False) as w2:
        run_history(w1)
        run_history(w2)
        assert replayed_from_disk(w1).fingerprint() == replayed_from_disk(w2).fingerprint()


# ---- records that must be refused ------------------------------------------------------------------

def base_sim() -> Sim:
    sim = Sim()
    with sim.step(T0):
        sim.connect(identity("a1", "i1", slots=4))
        sim.submit("t1", max_attempts=3)
        sim.submit("t2")
        sim.grant_to("t1", ("a1", "i1"))  # token 1
    return sim


@pytest.mark.parametrize("token", [0, 1, -5])
def test_lease_granted_with_token_not_above_high_water_is_refused(token: int) -> None:
    sim = base_sim()
    before = sim.projection.fingerprint()
    with pytest.raises(CorruptProjection, match="high-water"):
        sim.projection.apply(granted("t2", 1, token, ("a1", "i1"), T0 + 60_000), T0 + 1)
    assert sim.projection.fingerprint() == before
    assert sim.state("t2") == State.READY and sim.projection.highest_token == 1


def test_lease_granted_token_above_high_water_may_skip_values() -> None:
    sim = base_sim()
    sim.projection.apply(granted("t2", 1, 50, ("a1", "i1"), T0 + 60_000), T0 + 1)
    assert sim.projection.highest_token == 50


def test_lease_granted_out_of_attempt_order_is_refused() -> None:
    sim = base_sim()
    with pytest.raises(CorruptProjection, match="out of order"):
        sim.projection.apply(granted("t2", 2, 2, ("a1", "i1"), T0 + 60_000), T0 + 1)


def test_lease_granted_for_a_running_task_is_refused() -> None:
    sim = base_sim()
    with pytest.raises((CorruptProjection, IllegalTransition)):
        sim.projection.apply(granted("t1", 2, 2, ("a1", "i1"), T0 + 60_000), T0 + 1)


def ended(task_id: str, attempt: int, token: int, outcome: int = O.ATTEMPT_OUTCOME_SUCCEEDED,
          next_state: int = State.SUCCEEDED) -> wal_pb2.WalRecord:
    return wal_pb2.WalRecord(attempt_ended=wal_pb2.AttemptEnded(
        task_id=task_id, attempt=attempt, fencing_token=token, outcome=outcome, next_state=next_state))


@pytest.mark.parametrize(("attempt", "token"), [(2, 1), (1, 2), (0, 1), (1, 0)])
def test_attempt_ended_for_a_non_current_attempt_is_refused(attempt: int, token: int) -> None:
    sim = base_sim()
    before = sim.projection.fingerprint()
    with pytest.raises(CorruptProjection, match="not current"):
        sim.projection.apply(ended("t1", attempt, token), T0 + 1)
    assert sim.projection.fingerprint() == before


def test_attempt_ended_for_a_superseded_attempt_is_refused() -> None:
    sim = base_sim()
    with sim.step(T0 + 1):
        sim.report("t1", O.ATTEMPT_OUTCOME_CANCELED)  # handed back: READY
        sim.grant_to("t1", ("a1", "i1"))  # attempt 2, token 2
    with pytest.raises(CorruptProjection):
        sim.projection.apply(ended("t1", 1, 1), T0 + 2)
    assert sim.state("t1") == State.RUNNING


def test_attempt_ended_without_any_attempt_is_refused() -> None:
    sim = base_sim()
    with pytest.raises(CorruptProjection):
        sim.projection.apply(ended("t2", 1, 1), T0 + 1)


@pytest.mark.parametrize("record", [
    wal_pb2.WalRecord(lease_granted=wal_pb2.LeaseGranted(task_id="ghost", attempt=1, fencing_token=99)),
    wal_pb2.WalRecord(attempt_ended=wal_pb2.AttemptEnded(task_id="ghost", attempt=1, fencing_token=1)),
    wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(task_id="ghost", state=State.READY)),
    wal_pb2.WalRecord(cancel_requested=wal_pb2.CancelRequested(task_id="ghost")),
], ids=["lease_granted", "attempt_ended", "task_state_changed", "cancel_requested"])
def test_records_about_unknown_tasks_are_refused(record: wal_pb2.WalRecord) -> None:
    with pytest.raises(CorruptProjection, match="unknown task"):
        base_sim().projection.apply(record, T0 + 1)


def test_record_without_event_is_refused() -> None:
    with pytest.raises(CorruptProjection, match="unknown event"):
        Projection().apply(wal_pb2.WalRecord(seq=1), T0)


def test_task_submitted_twice_is_refused() -> None:
    sim = base_sim()
    with pytest.raises(CorruptProjection, match="submitted twice"):
        sim.projection.apply(submitted("t2", spec(), T0 + 1), T0 + 1)


@pytest.mark.parametrize("state", [State.RUNNING, State.SUCCEEDED, State.RETRY_WAIT])
def test_task_submitted_in_a_state_other_than_scheduled_or_ready_is_refused(state: State) -> None:
    rec = submitted("new", spec(), T0)
    rec.task_submitted.state = state
    with pytest.raises(CorruptProjection):
        Projection().apply(rec, T0)


def test_cancel_requested_for_a_terminal_task_is_refused() -> None:
    sim = base_sim()
    with sim.step(T0 + 1):
        sim.report("t1", O.ATTEMPT_OUTCOME_SUCCEEDED)
    with pytest.raises(CorruptProjection, match="terminal"):
        sim.projection.apply(wal_pb2.WalRecord(cancel_requested=wal_pb2.CancelRequested(task_id="t1")), T0 + 2)


def test_illegal_state_change_is_refused() -> None:
    sim = base_sim()
    with sim.step(T0 + 1):
        sim.report("t1", O.ATTEMPT_OUTCOME_SUCCEEDED)
    with pytest.raises(IllegalTransition):
        sim.projection.apply(wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
            task_id="t1", state=State.READY)), T0 + 2)
    assert sim.state("t1") == State.SUCCEEDED


def test_corrupt_wal_fails_replay(tmp_path: Path) -> None:
    good = base_sim()
    bad = list(good.all_records) + [granted("t2", 1, 1, ("a1", "i1"), T0 + 60_000)]  # token 1 again
    with WriteAheadLog(tmp_path / "wal", map_size_bytes=1 << 24, sync=False) as wal:
        wal.append_batch(bad, T0)
        with pytest.raises(CorruptProjection):
            replay(wal.records())


def test_attempt_ended_for_an_already_ended_attempt_is_refused() -> None:
    sim = base_sim()
    with sim.step(T0 + 1):
        sim.report("t1", O.ATTEMPT_OUTCOME_FAILED)
    assert sim.state("t1") == State.RETRY_WAIT
    with pytest.raises((CorruptProjection, IllegalTransition)):
        sim.projection.apply(ended("t1", 1, 1, O.ATTEMPT_OUTCOME_FAILED, State.READY), T0 + 2)


@pytest.mark.parametrize(("task_id", "to"), [("t2", State.RUNNING), ("t1", State.READY), ("t1", State.SUCCEEDED)],
                         ids=["ready-to-running", "running-to-ready", "running-to-succeeded"])
def test_task_state_changed_cannot_start_or_end_an_attempt(task_id: str, to: State) -> None:
    sim = base_sim()
    with pytest.raises((CorruptProjection, IllegalTransition)):
        sim.projection.apply(wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
            task_id=task_id, state=to)), T0 + 1)
