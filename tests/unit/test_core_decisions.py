"""The dispatch decisions (coordinator/core/decisions.py): where an attempt's task goes next, which
timers still apply, and which ready task goes to which actor.

Projections are built only by applying WalRecords, as the dispatch loop does (core_fixtures.Sim).
"""
from __future__ import annotations

import random

import pytest
from google.protobuf import duration_pb2

from corral.v1 import task_pb2, wal_pb2
from coordinator.core import decisions
from coordinator.core.backoff import BackoffPolicy, retry_delay_ms
from coordinator.core.projection import TIMER_ATTEMPT_DEADLINE, TIMER_CLOSE, TIMER_PROMOTE, TIMER_SCHEDULE_TO_START
from coordinator.core.spec import SpecLimits, normalize_spec
from coordinator.core.states import State

from .core_fixtures import GRACE_MS, LEASE_TTL_MS, T0, Sim, const_draw, identity, json_value, spec

O = task_pb2
A1 = ("a1", "i1")


def dur(ms: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(ms)
    return d


def backoff(initial_ms: int = 100, multiplier: float = 2.0, max_ms: int = 10_000,
            jitter: int = task_pb2.JITTER_NONE) -> task_pb2.Backoff:
    return task_pb2.Backoff(initial=dur(initial_ms), multiplier=multiplier, max=dur(max_ms), jitter=jitter)


def started(task_id: str = "t1", *, draw: float = 0.5, slots: int = 1, **spec_kw) -> Sim:
    """Task `task_id` RUNNING on actor a1 (attempt 1, token 1) at T0."""
    sim = Sim(draw=const_draw(draw))
    with sim.step(T0):
        sim.connect(identity("a1", "i1", slots=slots))
        sim.submit(task_id, **spec_kw)
        sim.grant_to(task_id, A1)
    return sim


def regrant(sim: Sim, task_id: str = "t1") -> None:
    """Promote (if waiting) and grant again to a1, at the task's ready time."""
    task = sim.projection.tasks[task_id]
    with sim.step(max(sim.now, task.ready_at_ms)):
        sim.fire_timers()
        assert task.state == State.READY
        sim.grant_to(task_id, A1)


def fail(sim: Sim, task_id: str = "t1", outcome: int = O.ATTEMPT_OUTCOME_FAILED,
         error: task_pb2.TaskError | None = None, at: int | None = None) -> wal_pb2.AttemptEnded:
    with sim.step(sim.now + 1 if at is None else at):
        assert sim.report(task_id, outcome, error=error) is None
    return sim.all_records[-1].attempt_ended


def lose(sim: Sim, task_id: str = "t1") -> wal_pb2.AttemptEnded:
    lease = sim.lease(task_id)
    with sim.step(lease.expires_ms):
        assert sim.expire() == [task_id]
    return sim.all_records[-1].attempt_ended


# ---- end_attempt -------------------------------------------------------------------------------

def test_success_goes_to_succeeded_with_output() -> None:
    sim = started()
    with sim.step(T0 + 50):
        assert sim.report("t1", O.ATTEMPT_OUTCOME_SUCCEEDED, output=json_value({"ok": True})) is None
    ended = sim.all_records[-1].attempt_ended
    assert (ended.outcome, ended.next_state, ended.ready_at_unix_ms) == (O.ATTEMPT_OUTCOME_SUCCEEDED, State.SUCCEEDED, 0)
    assert ended.output.struct_value["ok"] is True
    task = sim.projection.tasks["t1"]
    assert task.state == State.SUCCEEDED and task.error is None
    assert task.result.output.struct_value["ok"] is True
    assert (task.failed_attempts, task.lost_attempts) == (0, 0)


def test_success_carries_output_bytes() -> None:
    sim = started()
    with sim.step(T0 + 50):
        sim.report("t1", O.ATTEMPT_OUTCOME_SUCCEEDED, output_bytes=b"\x00\x01")
    assert sim.projection.tasks["t1"].result.output_bytes == b"\x00\x01"


def test_retryable_failure_waits_for_backoff_delay() -> None:
    sim = started(draw=0.5, max_attempts=3, backoff=backoff(100, 2.0, 10_000))
    ended = fail(sim, at=T0 + 40)
    assert ended.next_state == State.RETRY_WAIT
    assert ended.ready_at_unix_ms == T0 + 40 + 100
    task = sim.projection.tasks["t1"]
    assert (task.state, task.ready_at_ms, task.failed_attempts) == (State.RETRY_WAIT, T0 + 140, 1)
    assert task.error is not None and task.error.kind == "unknown"  # default error for a bare FAILED


def test_retry_delay_grows_with_each_failure_and_uses_the_draw() -> None:
    policy_msg = backoff(100, 3.0, 10_000, jitter=task_pb2.JITTER_FULL)
    sim = started(draw=0.25, max_attempts=4, backoff=policy_msg)
    policy = BackoffPolicy.from_proto(policy_msg)
    for n in (1, 2, 3):
        now = sim.now + 7
        ended = fail(sim, at=now)
        assert ended.next_state == State.RETRY_WAIT
        assert ended.ready_at_unix_ms == now + retry_delay_ms(policy, n, 0.25)
        regrant(sim)
    assert [retry_delay_ms(policy, n, 0.25) for n in (1, 2, 3)] == [25, 75, 225]


def test_failed_once_failed_attempts_reach_max_attempts() -> None:
    sim = started(max_attempts=3, backoff=backoff())
    err = task_pb2.TaskError(message="boom", kind="ValueError")
    assert fail(sim, error=err).next_state == State.RETRY_WAIT
    regrant(sim)
    assert fail(sim, error=err).next_state == State.RETRY_WAIT
    regrant(sim)
    last = fail(sim, error=err)
    assert last.next_state == State.FAILED
    assert last.ready_at_unix_ms == 0
    assert "3 attempts failed" in last.reason and "max_attempts=3" in last.reason
    task = sim.projection.tasks["t1"]
    assert (task.state, task.failed_attempts, len(task.attempts)) == (State.FAILED, 3, 3)
    assert task.error.message == "boom"


def test_max_attempts_one_fails_on_first_failure() -> None:
    sim = started(max_attempts=1)
    assert fail(sim).next_state == State.FAILED


def test_non_retryable_error_fails_at_once() -> None:
    sim = started(max_attempts=10)
    ended = fail(sim, error=task_pb2.TaskError(message="bad input", kind="NonRetryableError", non_retryable=True))
    assert ended.next_state == State.FAILED
    assert ended.reason == "non-retryable error"
    task = sim.projection.tasks["t1"]
    assert task.failed_attempts == 1 and task.error.non_retryable


def test_timed_out_counts_as_a_failure() -> None:
    sim = started(max_attempts=2, backoff=backoff())
    first = fail(sim, outcome=O.ATTEMPT_OUTCOME_TIMED_OUT)
    assert first.next_state == State.RETRY_WAIT
    assert first.error.kind == "timeout"  # default error filled in
    task = sim.projection.tasks["t1"]
    assert (task.failed_attempts, task.lost_attempts) == (1, 0)
    regrant(sim)
    assert fail(sim, outcome=O.ATTEMPT_OUTCOME_TIMED_OUT).next_state == State.FAILED
    assert task.failed_attempts == 2


def test_timed_out_and_failed_share_the_max_attempts_budget() -> None:
    sim = started(max_attempts=3, backoff=backoff())
    fail(sim, outcome=O.ATTEMPT_OUTCOME_TIMED_OUT)
    regrant(sim)
    fail(sim, outcome=O.ATTEMPT_OUTCOME_FAILED)
    regrant(sim)
    assert fail(sim, outcome=O.ATTEMPT_OUTCOME_TIMED_OUT).next_state == State.FAILED


def test_lost_goes_back_to_ready_immediately_and_is_counted_separately() -> None:
    sim = started(max_attempts=1, max_lost_attempts=3)
    ended = lose(sim)
    assert (ended.outcome, ended.next_state, ended.ready_at_unix_ms) == (O.ATTEMPT_OUTCOME_LOST, State.READY, 0)
    assert ended.error.kind == "lease_expired"
    task = sim.projection.tasks["t1"]
    assert (task.state, task.lost_attempts, task.failed_attempts) == (State.READY, 1, 0)


def test_lost_attempts_do_not_consume_max_attempts() -> None:
    sim = started(max_attempts=1, max_lost_attempts=3)
    lose(sim)
    regrant(sim)
    lose(sim)
    regrant(sim)
    task = sim.projection.tasks["t1"]
    assert (task.state, task.lost_attempts, len(task.attempts)) == (State.RUNNING, 2, 3)
    assert fail(sim).next_state == State.FAILED  # its one failure is still available


def test_failures_do_not_consume_max_lost_attempts() -> None:
    sim = started(max_attempts=5, max_lost_attempts=1, backoff=backoff())
    fail(sim)
    regrant(sim)
    fail(sim)
    regrant(sim)
    ended = lose(sim)
    assert ended.next_state == State.FAILED  # the first loss reaches max_lost_attempts=1
    assert "1 attempts lost" in ended.reason and "max_lost_attempts=1" in ended.reason
    task = sim.projection.tasks["t1"]
    assert (task.failed_attempts, task.lost_attempts) == (2, 1)


def test_failed_when_lost_attempts_reach_max_lost_attempts() -> None:
    sim = started(max_attempts=1, max_lost_attempts=3)
    assert lose(sim).next_state == State.READY
    regrant(sim)
    assert lose(sim).next_state == State.READY
    regrant(sim)
    last = lose(sim)
    assert last.next_state == State.FAILED
    task = sim.projection.tasks["t1"]
    assert (task.state, task.lost_attempts) == (State.FAILED, 3)
    assert task.error.kind == "lease_expired"
    assert task.state_reason == last.reason


@pytest.mark.parametrize("outcome", [O.ATTEMPT_OUTCOME_FAILED, O.ATTEMPT_OUTCOME_TIMED_OUT,
                                     O.ATTEMPT_OUTCOME_CANCELED, O.ATTEMPT_OUTCOME_LOST])
def test_cancel_requested_ends_any_non_success_outcome_in_canceled(outcome: int) -> None:
    sim = started(max_attempts=5, max_lost_attempts=5)
    with sim.step(T0 + 5):
        sim.cancel("t1", "user asked")
    task = sim.projection.tasks["t1"]
    assert task.state == State.RUNNING and task.cancel_requested and task.cancel_reason == "user asked"
    if outcome == O.ATTEMPT_OUTCOME_LOST:
        ended = lose(sim)
    else:
        ended = fail(sim, outcome=outcome)
    assert ended.next_state == State.CANCELED
    assert ended.reason  # the caller's reason (e.g. "lease expired") or "canceled: user asked"
    assert (ended.error.kind, ended.error.message) == ("canceled", "user asked")
    assert task.state == State.CANCELED and task.error.kind == "canceled"
    assert (task.failed_attempts, task.lost_attempts) == (
        int(outcome in (O.ATTEMPT_OUTCOME_FAILED, O.ATTEMPT_OUTCOME_TIMED_OUT)), int(outcome == O.ATTEMPT_OUTCOME_LOST))


def test_cancel_requested_reason_names_the_cancel_reason() -> None:
    sim = started()
    with sim.step(T0 + 5):
        sim.cancel("t1", "user asked")
    assert fail(sim).reason == "canceled: user asked"


def test_cancel_requested_keeps_the_actors_error_for_a_canceled_outcome() -> None:
    sim = started()
    with sim.step(T0 + 5):
        sim.cancel("t1")
    ended = fail(sim, outcome=O.ATTEMPT_OUTCOME_CANCELED, error=task_pb2.TaskError(message="stopped", kind="stop"))
    assert ended.next_state == State.CANCELED
    assert (ended.error.message, ended.error.kind) == ("stopped", "stop")
    assert ended.reason == "canceled: canceled by request"


def test_cancel_requested_replaces_a_failure_error_with_a_canceled_error() -> None:
    sim = started()
    with sim.step(T0 + 5):
        sim.cancel("t1", "stop it")
    ended = fail(sim, error=task_pb2.TaskError(message="boom", kind="ValueError"))
    assert (ended.error.kind, ended.error.message) == ("canceled", "stop it")


def test_success_wins_over_a_cancel_request() -> None:
    sim = started()
    with sim.step(T0 + 5):
        sim.cancel("t1")
    with sim.step(T0 + 6):
        sim.report("t1", O.ATTEMPT_OUTCOME_SUCCEEDED)
    assert sim.state("t1") == State.SUCCEEDED


def test_cancel_while_waiting_cancels_at_once() -> None:
    sim = started(max_attempts=3, backoff=backoff())
    fail(sim)
    assert sim.state("t1") == State.RETRY_WAIT
    with sim.step(sim.now + 1):
        sim.cancel("t1", "no more")
    task = sim.projection.tasks["t1"]
    assert task.state == State.CANCELED and task.state_reason == "no more" and task.error.kind == "canceled"


def test_end_attempt_is_pure() -> None:
    sim = started(max_attempts=3, backoff=backoff())
    before = sim.projection.fingerprint()
    task = sim.projection.tasks["t1"]
    for outcome in (O.ATTEMPT_OUTCOME_SUCCEEDED, O.ATTEMPT_OUTCOME_FAILED, O.ATTEMPT_OUTCOME_LOST,
                    O.ATTEMPT_OUTCOME_TIMED_OUT, O.ATTEMPT_OUTCOME_CANCELED):
        rec = decisions.end_attempt(task, outcome, None, T0 + 1, const_draw(0.3))
        assert rec.attempt_ended.fencing_token == 1 and rec.attempt_ended.attempt == 1
    assert sim.projection.fingerprint() == before


def test_handed_back_attempts_are_capped_by_max_lost_attempts() -> None:
    sim = started(max_attempts=3, max_lost_attempts=2)
    for _ in range(5):
        if sim.state("t1") != State.RUNNING:
            break
        fail(sim, outcome=O.ATTEMPT_OUTCOME_CANCELED)
        if sim.state("t1") == State.READY:
            regrant(sim)
    assert sim.state("t1") == State.FAILED
    assert len(sim.projection.tasks["t1"].attempts) == 2


# ---- timer_record ------------------------------------------------------------------------------

def timer(sim: Sim, kind: int, task_id: str, now: int, attempt: int = 0):
    return decisions.timer_record(sim.projection, kind, task_id, attempt, now, sim.draw)


def test_promote_fires_only_when_due_for_a_scheduled_task() -> None:
    sim = Sim()
    with sim.step(T0):
        sim.submit("t1", not_before_ms=T0 + 5_000)
    assert sim.state("t1") == State.SCHEDULED
    assert timer(sim, TIMER_PROMOTE, "t1", T0 + 4_999) is None
    rec = timer(sim, TIMER_PROMOTE, "t1", T0 + 5_000)
    assert rec is not None and rec.task_state_changed.state == State.READY
    # and through the projection's timer heap, exactly at not_before
    assert sim.projection.next_timer_ms() == T0 + 5_000
    with sim.step(T0 + 4_999):
        assert sim.fire_timers() == []
    with sim.step(T0 + 5_000):
        assert len(sim.fire_timers()) == 1
    assert sim.state("t1") == State.READY


def test_promote_fires_only_when_due_for_a_retry_wait_task() -> None:
    sim = started(max_attempts=3, backoff=backoff(1_000, 2.0, 10_000))
    ended = fail(sim, at=T0 + 10)
    ready_at = ended.ready_at_unix_ms
    assert ready_at == T0 + 1_010
    assert timer(sim, TIMER_PROMOTE, "t1", ready_at - 1) is None
    assert timer(sim, TIMER_PROMOTE, "t1", ready_at).task_state_changed.state == State.READY


@pytest.mark.parametrize("how", ["ready", "running", "canceled", "succeeded"])
def test_promote_is_void_unless_scheduled_or_retry_wait(how: str) -> None:
    sim = Sim()
    with sim.step(T0):
        sim.connect(identity("a1", "i1"))
        sim.submit("t1")
        if how in ("running", "succeeded"):
            sim.grant_to("t1", A1)
        if how == "canceled":
            sim.cancel("t1")
        if how == "succeeded":
            sim.report("t1", O.ATTEMPT_OUTCOME_SUCCEEDED)
    assert timer(sim, TIMER_PROMOTE, "t1", T0 + 10**9) is None


def test_promote_of_a_canceled_scheduled_task_is_void() -> None:
    sim = Sim()
    with sim.step(T0):
        sim.submit("t1", not_before_ms=T0 + 5_000)
        sim.cancel("t1")
    with sim.step(T0 + 5_000):
        assert sim.fire_timers() == []
    assert sim.state("t1") == State.CANCELED


def test_timers_of_unknown_tasks_are_void() -> None:
    sim = Sim()
    for kind in (TIMER_PROMOTE, TIMER_SCHEDULE_TO_START, TIMER_ATTEMPT_DEADLINE):
        assert timer(sim, kind, "ghost", T0, 1) is None


def test_schedule_to_start_fails_a_task_that_never_started() -> None:
    sim = Sim()
    with sim.step(T0):
        sim.submit("t1", schedule_to_start_ms=5_000)
    assert timer(sim, TIMER_SCHEDULE_TO_START, "t1", T0 + 5_000) is not None
    with sim.step(T0 + 4_999):
        assert sim.fire_timers() == []
    with sim.step(T0 + 5_000):
        [rec] = sim.fire_timers()
    change = rec.task_state_changed
    assert change.state == State.FAILED
    assert change.error.kind == "schedule_to_start_timeout" and "5000 ms" in change.reason
    task = sim.projection.tasks["t1"]
    assert task.state == State.FAILED and task.error.kind == "schedule_to_start_timeout"
    assert sim.projection.ready_count == 0


def test_schedule_to_start_counts_from_eligibility_not_submission() -> None:
    sim = Sim()
    with sim.step(T0):
        sim.submit("t1", not_before_ms=T0 + 10_000, schedule_to_start_ms=5_000)
    with sim.step(T0 + 10_000):
        sim.fire_timers()
    assert sim.projection.tasks["t1"].eligible_since_ms == T0 + 10_000
    with sim.step(T0 + 14_999):
        assert sim.fire_timers() == []
    with sim.step(T0 + 15_000):
        assert [r.task_state_changed.state for r in sim.fire_timers()] == [State.FAILED]


def test_schedule_to_start_is_void_once_the_task_has_started() -> None:
    sim = started(schedule_to_start_ms=LEASE_TTL_MS + 5_000, max_lost_attempts=5)
    assert timer(sim, TIMER_SCHEDULE_TO_START, "t1", T0 + 10**6) is None  # RUNNING
    lose(sim)
    assert sim.state("t1") == State.READY  # READY again, but it did start once
    assert timer(sim, TIMER_SCHEDULE_TO_START, "t1", T0 + 10**6) is None
    with sim.step(T0 + LEASE_TTL_MS + 5_000):
        assert sim.fire_timers() == []
    assert sim.state("t1") == State.READY


def test_schedule_to_start_unset_adds_no_timer() -> None:
    sim = Sim()
    with sim.step(T0):
        sim.submit("t1")
    assert sim.projection.timers == []


def test_attempt_deadline_times_out_the_current_attempt() -> None:
    sim = started(timeout_ms=30_000, max_attempts=3, backoff=backoff())
    task = sim.projection.tasks["t1"]
    assert task.current_attempt.deadline_ms == T0 + 30_000
    rec = timer(sim, TIMER_ATTEMPT_DEADLINE, "t1", T0 + 30_000 + GRACE_MS, attempt=1)
    ended = rec.attempt_ended
    assert (ended.attempt, ended.fencing_token, ended.outcome) == (1, 1, O.ATTEMPT_OUTCOME_TIMED_OUT)
    assert ended.next_state == State.RETRY_WAIT
    assert ended.error.kind == "timeout" and ended.reason == "execution timeout"


def test_attempt_deadline_timer_is_due_at_deadline_plus_grace() -> None:
    sim = started(timeout_ms=30_000, max_attempts=3, backoff=backoff())
    # heartbeats keep the lease live; only the deadline ends it
    for t in range(T0 + 5_000, T0 + 30_000 + GRACE_MS, 5_000):
        with sim.step(t):
            sim.heartbeat("t1", 1, 1, A1)
            assert sim.fire_timers() == []
    with sim.step(T0 + 30_000 + GRACE_MS - 1):
        assert sim.fire_timers() == []
    with sim.step(T0 + 30_000 + GRACE_MS):
        [rec] = sim.fire_timers()
    assert rec.attempt_ended.outcome == O.ATTEMPT_OUTCOME_TIMED_OUT
    assert sim.state("t1") == State.RETRY_WAIT
    assert "t1" not in sim.fleet.leases  # the lease was released


def test_attempt_deadline_is_void_for_an_old_attempt() -> None:
    sim = started(max_lost_attempts=5)
    lose(sim)
    regrant(sim)
    assert len(sim.projection.tasks["t1"].attempts) == 2
    assert timer(sim, TIMER_ATTEMPT_DEADLINE, "t1", T0 + 10**6, attempt=1) is None
    assert timer(sim, TIMER_ATTEMPT_DEADLINE, "t1", T0 + 10**6, attempt=2) is not None


def test_attempt_deadline_is_void_once_the_attempt_ended() -> None:
    sim = started()
    with sim.step(T0 + 1):
        sim.report("t1", O.ATTEMPT_OUTCOME_SUCCEEDED)
    assert timer(sim, TIMER_ATTEMPT_DEADLINE, "t1", T0 + 10**6, attempt=1) is None
    with sim.step(T0 + 10**6):
        assert sim.fire_timers() == []


def test_a_total_timeout_fails_a_running_task_with_its_own_error_even_if_a_cancel_was_requested() -> None:
    s = spec(normalize=False)
    s.schedule_to_close_timeout.FromMilliseconds(10_000)
    normalize_spec(s, "task", SpecLimits(), T0)
    sim = Sim()
    with sim.step(T0):
        sim.connect(identity("a1", "i1"))
        sim.submit("t1", s)
        sim.grant_to("t1", A1)
    with sim.step(T0 + 5):
        sim.cancel("t1", "user asked")
    ended = timer(sim, TIMER_CLOSE, "t1", T0 + 10_000).attempt_ended
    # FAILED by the timeout, so its error says so (not a "canceled" error on a FAILED task).
    assert ended.next_state == State.FAILED and ended.outcome == O.ATTEMPT_OUTCOME_TIMED_OUT
    assert (ended.error.kind, ended.error.non_retryable) == ("schedule_to_close_timeout", True)
    assert ended.reason.startswith("schedule-to-close timeout")


def test_unknown_timer_kind_is_void() -> None:
    sim = started()
    assert timer(sim, 99, "t1", T0 + 10**9, attempt=1) is None


def test_timer_record_is_pure() -> None:
    sim = started(schedule_to_start_ms=1_000)
    before = sim.projection.fingerprint()
    for kind in (TIMER_PROMOTE, TIMER_SCHEDULE_TO_START, TIMER_ATTEMPT_DEADLINE):
        timer(sim, kind, "t1", T0 + 10**9, attempt=1)
    assert sim.projection.fingerprint() == before


# ---- select_grants -----------------------------------------------------------------------------

def fleet_sim(*idents: task_pb2.ExecutorIdentity) -> Sim:
    sim = Sim()
    with sim.step(T0):
        for ident in idents:
            sim.connect(ident)
    return sim


def selected(sim: Sim) -> list[tuple[str, str]]:
    return [(task.task_id, actor.key[0]) for task, actor in decisions.select_grants(sim.projection, sim.fleet)]


def test_never_more_grants_than_free_slots() -> None:
    sim = fleet_sim(identity("a1", slots=1), identity("a2", slots=2), identity("a3", slots=3))
    with sim.step(T0 + 1):
        for i in range(20):
            sim.submit(f"t{i:02d}")
    grants = selected(sim)
    assert len(grants) == 6
    per_actor = {a: sum(1 for _, x in grants if x == a) for a in ("a1", "a2", "a3")}
    assert per_actor == {"a1": 1, "a2": 2, "a3": 3}
    assert len({t for t, _ in grants}) == 6


def test_held_leases_count_against_slots_across_steps() -> None:
    sim = fleet_sim(identity("a1", slots=2))
    with sim.step(T0 + 1):
        for i in range(5):
            sim.submit(f"t{i}")
        assert len(sim.grant()) == 2
    with sim.step(T0 + 2):
        assert sim.grant() == []  # both slots are held
        sim.report("t0", O.ATTEMPT_OUTCOME_SUCCEEDED)
        assert [g[0] for g in sim.grant()] == ["t2"]
    assert sim.fleet.actors[A1].free_slots == 0


def test_actor_with_zero_free_slots_gets_nothing() -> None:
    sim = fleet_sim(identity("a1", slots=0), identity("a2", slots=1))
    with sim.step(T0 + 1):
        sim.submit("t1")
        sim.submit("t2")
    assert selected(sim) == [("t1", "a2")]
    sim2 = fleet_sim(identity("a1", slots=0))
    with sim2.step(T0 + 1):
        sim2.submit("t1")
    assert selected(sim2) == []


def test_priority_first_then_fifo() -> None:
    sim = fleet_sim(identity("a1", slots=10))
    prios = {"p0-a": 0, "p5-a": 5, "p0-b": 0, "p5-b": 5, "p1-a": 1, "pneg": -3, "p0-c": 0}
    with sim.step(T0 + 1):
        for tid, p in prios.items():
            sim.submit(tid, priority=p)
    assert [t for t, _ in selected(sim)] == ["p5-a", "p5-b", "p1-a", "p0-a", "p0-b", "p0-c", "pneg"]


def test_priority_and_fifo_hold_across_queues() -> None:
    sim = fleet_sim(identity("a1", types=("x", "y"), caps=("gpu",), slots=10))
    with sim.step(T0 + 1):
        sim.submit("x1", type="x")
        sim.submit("y1", type="y")
        sim.submit("x2", type="x", caps=("gpu",))
        sim.submit("y2", type="y", priority=2)
        sim.submit("x3", type="x")
    assert [t for t, _ in selected(sim)] == ["y2", "x1", "y1", "x2", "x3"]


def test_fifo_is_by_time_of_becoming_ready() -> None:
    sim = fleet_sim(identity("a1", slots=10))
    with sim.step(T0):
        sim.submit("late-eligible", not_before_ms=T0 + 100)
        sim.submit("early")
    with sim.step(T0 + 100):
        sim.fire_timers()
        sim.submit("later")
    assert [t for t, _ in selected(sim)] == ["early", "late-eligible", "later"]


def test_only_actors_serving_the_type_get_it() -> None:
    sim = fleet_sim(identity("a1", types=("a",), slots=5), identity("a2", types=("b",), slots=5))
    with sim.step(T0 + 1):
        sim.submit("ta", type="a")
        sim.submit("tb", type="b")
        sim.submit("tc", type="c")
    assert sorted(selected(sim)) == [("ta", "a1"), ("tb", "a2")]


def test_required_capabilities_are_respected() -> None:
    sim = fleet_sim(identity("cpu", caps=("ssd",), slots=5))
    with sim.step(T0 + 1):
        sim.submit("gpu-job", caps=("gpu",))
        sim.submit("plain-job")
        sim.submit("ssd-job", caps=("ssd",))
    # The gpu task is first in line but does not block the others.
    with sim.step(T0 + 2):
        assert [(t, k[0]) for t, _, _, k in sim.grant()] == [("plain-job", "cpu"), ("ssd-job", "cpu")]
    assert sim.state("gpu-job") == State.READY
    with sim.step(T0 + 3):
        sim.connect(identity("g1", caps=("gpu",), slots=1))
        assert [(t, k[0]) for t, _, _, k in sim.grant()] == [("gpu-job", "g1")]


def test_all_required_capabilities_are_needed() -> None:
    sim = fleet_sim(identity("g1", caps=("gpu",), slots=5), identity("g2", caps=("gpu", "ssd", "x"), slots=1))
    with sim.step(T0 + 1):
        sim.submit("both", caps=("gpu", "ssd"))
        sim.submit("both2", caps=("ssd", "gpu"))
    grants = selected(sim)
    assert grants == [("both", "g2")]  # g1 lacks ssd; g2 has one slot


def test_full_actors_of_one_queue_do_not_block_other_queues() -> None:
    sim = fleet_sim(identity("g1", caps=("gpu",), slots=1), identity("c1", slots=2))
    with sim.step(T0 + 1):
        for i in range(3):
            sim.submit(f"g{i}", caps=("gpu",), priority=9)
        for i in range(3):
            sim.submit(f"c{i}")
    grants = selected(sim)
    assert ("g0", "g1") in grants
    assert sum(1 for t, _ in grants if t.startswith("g")) == 1
    assert sorted(t for t, a in grants if a == "c1") == ["c0", "c1"]


def test_tasks_no_longer_ready_are_skipped() -> None:
    sim = fleet_sim(identity("a1", slots=5))
    with sim.step(T0 + 1):
        for i in range(4):
            sim.submit(f"t{i}")
        sim.cancel("t0")
        sim.cancel("t2")
    assert sim.projection.ready_count == 2
    assert [t for t, _ in selected(sim)] == ["t1", "t3"]


def test_canceled_head_of_queue_is_dropped_lazily() -> None:
    sim = fleet_sim(identity("a1", slots=1))
    with sim.step(T0 + 1):
        sim.submit("t0")
        sim.submit("t1")
        sim.cancel("t0")
    queue = next(iter(sim.projection.ready_queues.values()))
    assert len(queue) == 2  # the canceled entry is still there
    assert selected(sim) == [("t1", "a1")]
    assert "t0" not in [e[2] for e in queue]  # the stale head was dropped


def test_scheduled_and_running_tasks_are_not_selected() -> None:
    sim = fleet_sim(identity("a1", slots=5))
    with sim.step(T0 + 1):
        sim.submit("later", not_before_ms=T0 + 60_000)
        sim.submit("now")
        sim.grant()
    assert sim.state("now") == State.RUNNING
    assert selected(sim) == []


def test_nothing_is_selected_without_actors() -> None:
    sim = Sim()
    with sim.step(T0):
        sim.submit("t1")
    assert selected(sim) == []


def test_select_grants_is_pure() -> None:
    sim = fleet_sim(identity("a1", slots=2))
    with sim.step(T0 + 1):
        for i in range(3):
            sim.submit(f"t{i}")
    before = sim.projection.fingerprint()
    first = selected(sim)
    assert selected(sim) == first
    assert sim.projection.fingerprint() == before
    assert sim.fleet.actors[A1].free_slots == 2


def test_random_fleets_respect_slots_types_and_capabilities_and_leave_no_usable_slot_idle() -> None:
    rng = random.Random(7)
    types, caps = ["a", "b", "c"], ["gpu", "ssd", "arm"]
    for round_ in range(40):
        sim = Sim()
        with sim.step(T0):
            for i in range(rng.randrange(1, 6)):
                sim.connect(identity(f"a{i}", types=rng.sample(types, rng.randrange(1, 4)),
                                     caps=rng.sample(caps, rng.randrange(0, 4)), slots=rng.randrange(0, 4)))
            for j in range(rng.randrange(0, 30)):
                sim.submit(f"r{round_}-t{j}", type=rng.choice(types), priority=rng.randrange(0, 3),
                           caps=rng.sample(caps, rng.choice([0, 0, 1, 2])))
        grants = decisions.select_grants(sim.projection, sim.fleet)
        used: dict = {}
        for task, actor in grants:
            assert task.state == State.READY
            assert task.type in actor.task_types
            assert set(task.spec.required_capabilities) <= actor.capabilities
            used[actor.key] = used.get(actor.key, 0) + 1
        assert len({t.task_id for t, _ in grants}) == len(grants)
        for key, n in used.items():
            assert n <= sim.fleet.actors[key].free_slots
        granted_ids = {t.task_id for t, _ in grants}
        for task in sim.projection.tasks.values():
            if task.task_id in granted_ids:
                continue
            for actor in sim.fleet.actors.values():
                usable = (task.type in actor.task_types
                          and set(task.spec.required_capabilities) <= actor.capabilities)
                assert not (usable and actor.free_slots - used.get(actor.key, 0) > 0), (task.task_id, actor.key)
        # Within a queue, grants follow priority then FIFO.
        order = [(-t.priority, t.ready_order) for t, _ in grants]
        assert order == sorted(order)


def test_a_task_any_actor_can_run_does_not_take_the_only_slot_another_task_needs() -> None:
    sim = fleet_sim(identity("general", types=("x", "y"), slots=1), identity("special", types=("y",), slots=1))
    with sim.step(T0 + 1):
        sim.submit("y-task", type="y", priority=5)
        sim.submit("x-task", type="x")
    assert sorted(selected(sim)) == [("x-task", "general"), ("y-task", "special")]


def test_a_task_without_capabilities_does_not_take_the_only_slot_a_capability_task_needs() -> None:
    sim = fleet_sim(identity("gpu", types=("t",), caps=("gpu",), slots=1),
                    identity("plain", types=("t", "u"), slots=1))
    with sim.step(T0 + 1):
        sim.submit("plain-task")
        sim.submit("gpu-task", caps=("gpu",))
    assert sorted(selected(sim)) == [("gpu-task", "gpu"), ("plain-task", "plain")]


def test_selected_tasks_that_are_granted_are_not_selected_again() -> None:
    # What the loop relies on: every selected task is granted in the same step.
    sim = fleet_sim(identity("a1", slots=2))
    with sim.step(T0 + 1):
        for i in range(3):
            sim.submit(f"t{i}")
        assert [g[0] for g in sim.grant()] == ["t0", "t1"]
    with sim.step(T0 + 2):
        sim.report("t0", O.ATTEMPT_OUTCOME_SUCCEEDED)
        sim.report("t1", O.ATTEMPT_OUTCOME_SUCCEEDED)
        assert [g[0] for g in sim.grant()] == ["t2"]
    assert sim.projection.ready_count == 0


def test_handed_back_attempt_goes_ready_at_once_and_counts_against_no_limit() -> None:
    sim = started(max_attempts=1, max_lost_attempts=1)
    for _ in range(3):  # more hand-backs than either limit allows failures or losses
        ended = fail(sim, outcome=O.ATTEMPT_OUTCOME_HANDED_BACK,
                     error=task_pb2.TaskError(message="actor is stopping", kind="HandedBack"))
        assert (ended.outcome, ended.next_state, ended.ready_at_unix_ms) == (
            O.ATTEMPT_OUTCOME_HANDED_BACK, State.READY, 0)
        regrant(sim)
    task = sim.projection.tasks["t1"]
    assert (task.state, task.failed_attempts, task.lost_attempts) == (State.RUNNING, 0, 0)


def test_handed_back_attempt_of_a_canceled_task_ends_it_canceled() -> None:
    sim = started()
    with sim.step(sim.now + 1):
        sim.cancel("t1")
    ended = fail(sim, outcome=O.ATTEMPT_OUTCOME_HANDED_BACK)
    assert ended.next_state == State.CANCELED
