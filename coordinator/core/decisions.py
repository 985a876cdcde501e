"""The dispatch decisions, as pure functions of (projection, fleet, now, random draw).

Owns: what to do — accept or reject an actor's message (fencing), where a task goes after an
attempt, which timers fire, which leases expired, which ready task goes to which actor. Nothing
here performs I/O or reads a clock: the dispatch loop passes `now_ms` and a `draw` function, and
turns the returned records into WAL appends and messages. That is what lets tests drive the loop
through simulated time.

Invariants:
- The fencing rule: a message about an attempt is accepted only if its token is the attempt's
  current token, the lease is live, and it comes from the actor identity the lease was granted to.
- Grants never exceed an actor's free slots and only go to actors that serve the task's type and
  have all its required capabilities; selection is by priority with aging, then FIFO (the ready
  queues' order, see Projection.ready_entry); a rate-limited type gets at most its budget.
- Concurrency keys need no check here: a keyed task is in a ready queue only once its key
  admitted it (core/concurrency.py), so a selection can never exceed a key's limit.
"""
from __future__ import annotations

import heapq
from typing import Callable

from corral.v1 import task_pb2, wal_pb2

from .admission import drop_on_promote
from .backoff import retry_delay_ms
from .durations import to_ms
from .fleet import ActorKey, ConnectedActor, Fleet
from .model import TaskRecord
from .children import success_state
from .projection import (TIMER_ATTEMPT_DEADLINE, TIMER_CLOSE, TIMER_PROMOTE, TIMER_SCHEDULE_TO_START,
                         Projection)
from .states import is_terminal
from .states import RUNNING, State

Draw = Callable[[], float]

O_SUCCEEDED = task_pb2.ATTEMPT_OUTCOME_SUCCEEDED
O_FAILED = task_pb2.ATTEMPT_OUTCOME_FAILED
O_CANCELED = task_pb2.ATTEMPT_OUTCOME_CANCELED
O_TIMED_OUT = task_pb2.ATTEMPT_OUTCOME_TIMED_OUT
O_LOST = task_pb2.ATTEMPT_OUTCOME_LOST
O_HANDED_BACK = task_pb2.ATTEMPT_OUTCOME_HANDED_BACK
REPORTABLE_OUTCOMES = frozenset({O_SUCCEEDED, O_FAILED, O_CANCELED, O_TIMED_OUT, O_HANDED_BACK})


# ---- fencing ---------------------------------------------------------------------------------

def fence(projection: Projection, fleet: Fleet, actor_key: ActorKey, task_id: str, attempt: int,
          token: int, now_ms: int) -> str | None:
    """None if the message about (task, attempt, token) from `actor_key` is current; else why not.

    `now_ms` is on the fleet's lease clock (monotonic), like every lease expiry."""
    task = projection.tasks.get(task_id)
    if task is None:
        return f"unknown task {task_id}"
    if task.state != RUNNING:
        return f"task {task_id} is {State(task.state).name}, not running"
    current = task.attempts[-1]
    if current.number != attempt or current.fencing_token != token:
        return (f"stale: attempt {attempt} token {token} is not current "
                f"(current attempt {current.number} token {current.fencing_token})")
    lease = fleet.live_lease(task_id, token, now_ms)
    if lease is None:
        return f"lease of task {task_id} attempt {attempt} has expired"
    if lease.actor_key != actor_key:
        return f"lease of task {task_id} attempt {attempt} was granted to another actor"
    return None


# ---- ending an attempt -----------------------------------------------------------------------

def end_attempt(task: TaskRecord, outcome: int, error: task_pb2.TaskError | None, now_ms: int,
                draw: Draw, reason: str = "") -> wal_pb2.WalRecord:
    """The AttemptEnded record for the task's current attempt: where the task goes next."""
    attempt = task.current_attempt
    assert attempt is not None
    ready_at_ms = 0
    if task.cancel_requested and outcome != O_SUCCEEDED:
        next_state = State.CANCELED
        reason = reason or (f"canceled: {task.cancel_reason}" if task.cancel_reason else "canceled by request")
        if error is None or outcome != O_CANCELED:
            error = task_pb2.TaskError(message=task.cancel_reason or "canceled by request", kind="canceled")
    elif outcome == O_SUCCEEDED:
        # A parent whose children have not all finished waits for them (core/children.py) -
        # unless its cancel was requested: that cancel reached (or, ending it, reaches) its
        # children, so waiting could only end it FAILED by its own cancel. The handler's success
        # wins only when there is nothing left to wait for, as for a task without children.
        next_state = success_state(task) if task.children else State.SUCCEEDED
        if next_state == State.WAITING_FOR_CHILDREN and task.cancel_requested:
            next_state = State.CANCELED
            reason = reason or (f"canceled: {task.cancel_reason}" if task.cancel_reason else "canceled by request")
            error = task_pb2.TaskError(message=task.cancel_reason or "canceled by request", kind="canceled")
    elif outcome == O_HANDED_BACK:
        next_state = State.READY  # never ran: counts against no limit
    elif outcome == O_LOST or outcome == O_CANCELED:
        # Lost (actor died or was partitioned) or handed back by the actor: run it again now, unless
        # this task has lost too many attempts (it may be what kills its actors).
        lost = task.lost_attempts + 1
        if lost >= task.max_lost_attempts:
            next_state = State.FAILED
            reason = f"{lost} attempts lost (max_lost_attempts={task.max_lost_attempts})"
        else:
            next_state = State.READY
    elif error is not None and error.non_retryable:
        next_state = State.FAILED
        reason = reason or "non-retryable error"
    else:
        failed = task.failed_attempts + 1
        if failed >= task.max_attempts:
            next_state = State.FAILED
            reason = reason or f"{failed} attempts failed (max_attempts={task.max_attempts})"
        else:
            next_state = State.RETRY_WAIT
            ready_at_ms = now_ms + retry_delay_ms(task.backoff, failed, draw())
    record = wal_pb2.WalRecord()
    ended = record.attempt_ended
    ended.task_id = task.task_id
    ended.attempt = attempt.number
    ended.fencing_token = attempt.fencing_token
    ended.outcome = outcome
    ended.next_state = next_state
    if ready_at_ms:
        ended.ready_at_unix_ms = ready_at_ms
    if reason:
        ended.reason = reason
    if error is not None:
        ended.error.CopyFrom(error)
    return record


def end_attempt_with_result(task: TaskRecord, result, now_ms: int, draw: Draw) -> wal_pb2.WalRecord:
    """AttemptEnded for an actor's AttemptResult (already fenced), carrying its output."""
    error = result.error if result.HasField("error") else None
    outcome = result.outcome
    if outcome == O_SUCCEEDED:
        record = end_attempt(task, outcome, None, now_ms, draw)
        which = result.WhichOneof("result")
        if which == "output":
            record.attempt_ended.output.CopyFrom(result.output)
        elif which == "output_bytes":
            record.attempt_ended.output_bytes = result.output_bytes
        return record
    if outcome == O_FAILED and error is None:
        error = task_pb2.TaskError(message="handler failed", kind="unknown")
    if outcome == O_TIMED_OUT and error is None:
        error = task_pb2.TaskError(message=f"attempt exceeded its execution timeout of {task.execution_timeout_ms} ms",
                                   kind="timeout")
    return end_attempt(task, outcome, error, now_ms, draw)


# ---- timers and expiry -----------------------------------------------------------------------

def timer_record(projection: Projection, kind: int, task_id: str, attempt: int, now_ms: int,
                 draw: Draw) -> wal_pb2.WalRecord | None:
    """The record a due timer produces, or None if the timer no longer applies."""
    task = projection.tasks.get(task_id)
    if task is None:
        return None
    state = task.state
    if kind == TIMER_PROMOTE:
        if (state == State.SCHEDULED or state == State.RETRY_WAIT) and task.ready_at_ms <= now_ms:
            if task.concurrency_key:
                dropped = drop_on_promote(projection, task, now_ms)  # DROP_NEW and its key is full
                if dropped is not None:
                    return dropped
            return wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(task_id=task_id, state=State.READY))
        return None
    # Timers are keyed by task id: one left behind by a forgotten task (retention) may meet a new
    # task submitted under its id, so each also checks that its own time has come for this task.
    if kind == TIMER_SCHEDULE_TO_START:
        limit = task.schedule_to_start_ms
        if (state == State.READY and not task.started_once and limit
                and task.eligible_since_ms + limit <= now_ms):
            reason = f"schedule-to-start timeout: not started within {limit} ms"
            return wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
                task_id=task_id, state=State.FAILED, reason=reason,
                error=task_pb2.TaskError(message=reason, kind="schedule_to_start_timeout")))
        return None
    if kind == TIMER_ATTEMPT_DEADLINE:
        current = task.current_attempt
        if (state == State.RUNNING and current is not None and current.number == attempt
                and current.deadline_ms + projection.deadline_grace_ms <= now_ms):
            error = task_pb2.TaskError(
                message=f"attempt {attempt} exceeded its execution timeout of {task.execution_timeout_ms} ms",
                kind="timeout")
            return end_attempt(task, O_TIMED_OUT, error, now_ms, draw, reason="execution timeout")
        return None
    if kind == TIMER_CLOSE:
        if is_terminal(state) or not task.close_at_ms or task.close_at_ms > now_ms:
            return None
        reason = f"schedule-to-close timeout: not finished by its total deadline ({to_ms(task.spec.schedule_to_close_timeout)} ms)"
        error = task_pb2.TaskError(message=reason, kind="schedule_to_close_timeout", non_retryable=True)
        if state == State.RUNNING:
            record = end_attempt(task, O_TIMED_OUT, error, now_ms, draw, reason=reason)
            ended = record.attempt_ended
            ended.next_state = State.FAILED
            ended.ClearField("ready_at_unix_ms")
            ended.error.CopyFrom(error)  # end_attempt puts a "canceled" error on a task being canceled
            return record
        return wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
            task_id=task_id, state=State.FAILED, reason=reason, error=error))
    return None


def lost_attempt_record(projection: Projection, task_id: str, attempt: int, token: int, now_ms: int,
                        draw: Draw, why: str) -> wal_pb2.WalRecord | None:
    task = projection.tasks.get(task_id)
    if task is None or task.state != State.RUNNING:
        return None
    current = task.current_attempt
    if current is None or current.number != attempt or current.fencing_token != token:
        return None
    error = task_pb2.TaskError(message=why, kind="lease_expired")
    return end_attempt(task, O_LOST, error, now_ms, draw, reason=why)


# ---- selection -------------------------------------------------------------------------------

def select_grants(projection: Projection, fleet: Fleet,
                  type_budget: dict[str, int] | None = None) -> list[tuple[TaskRecord, ConnectedActor]]:
    """Ready tasks matched to actors with free slots: priority (with aging) first, then FIFO.

    Ready queues are per (type, required capabilities); only queues with at least one eligible
    actor with a free slot are looked at, so tasks nobody can run cost nothing per step. Among
    eligible actors the one with the fewest capabilities (those a task does not need are kept for
    tasks that do), then the most specialised (fewest task types), with a free slot is preferred,
    then the one with the most free slots, so generalists and capable actors stay free for what
    only they can run.
    `type_budget` (rate limits): at most this many grants for each type it names.
    Pure: the ready queues are left as they were (heads taken are pushed back).
    """
    if projection.ready_count == 0:
        return []
    free_actors = [a for a in fleet.actors.values() if a.grantable]
    if not free_actors:
        return []
    tasks = projection.tasks
    queues = projection.ready_queues
    frontier: list[tuple[int, int, str, tuple]] = []
    eligible: dict[tuple, list[ConnectedActor]] = {}
    # An actor's level, lowest preferred: capabilities first, then task types (one int to compare).
    level_of = {a.key: (len(a.capabilities) << 20) + min(len(a.task_types), (1 << 20) - 1) for a in free_actors}
    for key, queue in queues.items():
        if not queue:
            continue
        task_type, caps = key
        actors = [a for a in free_actors
                  if task_type in a.task_types and (not caps or caps <= a.capabilities)]
        if not actors:
            continue
        actors.sort(key=lambda a: level_of[a.key])
        eligible[key] = actors
        _push_head(frontier, queue, tasks, key)
    grants: list[tuple[TaskRecord, ConnectedActor]] = []
    taken_heads: list[tuple[tuple, tuple[int, int, str]]] = []
    free = {a.key: a.free_slots for a in free_actors}  # what this selection leaves, per actor
    budget = dict(type_budget) if type_budget else None  # what this selection leaves, per type
    heappop = heapq.heappop
    while frontier:
        _, _, task_id, key = heappop(frontier)
        best = None
        best_free = 0
        best_level = 0
        # Actors are sorted by level (capabilities, then task types): take the lowest level that
        # has room, and within it the actor with the most free slots.
        for a in eligible[key]:
            level = level_of[a.key]
            if best is not None and level > best_level:
                break
            f = free[a.key]
            if f > best_free:
                best, best_free, best_level = a, f, level
        if best is None:
            continue  # every eligible actor is full: the rest of this queue waits
        if budget is not None:
            left = budget.get(key[0])
            if left is not None:
                if left <= 0:
                    continue  # no token for this type: the rest of this queue waits
                budget[key[0]] = left - 1
        queue = queues[key]
        taken_heads.append((key, heappop(queue)))
        free[best.key] = best_free - 1
        grants.append((tasks[task_id], best))
        _push_head(frontier, queue, tasks, key)
    for key, entry in taken_heads:
        heapq.heappush(queues[key], entry)
    return grants


def _push_head(frontier: list, queue: list, tasks: dict, key: tuple) -> None:
    """Drop stale heads of `queue` (lazy deletion) and put its live head on the frontier."""
    while queue:
        sort_key, order, task_id = queue[0]
        task = tasks.get(task_id)
        if task is not None and task.state == State.READY and task.ready_order == order:
            heapq.heappush(frontier, (sort_key, order, task_id, key))
            return
        heapq.heappop(queue)
