"""Admission: what may enter the cluster, and when a READY task may start.

Owns the decisions, as pure functions of the projection (plus the volatile rate-limit buckets):
- the global bound on queued tasks (`max_queued_tasks`): a submission that would take the number
  of SCHEDULED + READY + RETRY_WAIT + WAITING_FOR_DEPENDENCIES tasks over it is refused,
  RESOURCE_EXHAUSTED, all or nothing (every new task of the request counts, even one that its
  DROP_NEW policy or an already-failed prerequisite will cancel in the same step);
- the concurrency-key policies that act when a task arrives (core/concurrency.py keeps who holds
  which key): CANCEL_IN_PROGRESS cancels every earlier unfinished task with the key; DROP_NEW
  ends the newcomer CANCELED if it cannot take the key at once (accepted, then canceled with a
  reason, never a refused RPC: a batch stays all or nothing, and the outcome is durable and
  visible like any other);
- per-type rate limits (core/rate_limit.py): how many leases each limited type may get now.

The records returned here are applied and committed by the dispatch loop like any other, so
replay never re-decides them.
"""
from __future__ import annotations

from typing import Callable, Iterable

from corral.v1 import task_pb2, wal_pb2

from .concurrency import CANCEL_IN_PROGRESS, DROP_NEW
from .errors import ResourceExhausted
from .model import TaskRecord
from .projection import Projection
from .rate_limit import RateLimit, RateLimiter
from .states import READY, RETRY_WAIT, RUNNING, SCHEDULED, WAITING, is_terminal

DEFAULT_MAX_QUEUED_TASKS = 1_000_000


class Admission:
    """The admission settings and the rate-limit buckets (volatile) of one dispatch loop."""

    def __init__(self, max_queued_tasks: int = DEFAULT_MAX_QUEUED_TASKS,
                 rate_limits: dict[str, RateLimit] | None = None, now_ms: int = 0) -> None:
        self.max_queued_tasks = max_queued_tasks
        self.rate_limiter = RateLimiter(rate_limits or {}, now_ms)
        self.rate_limited = bool(self.rate_limiter)

    # ---- the queued-task bound -------------------------------------------------------------

    def check_queued(self, projection: Projection, at_most: int, count_new: Callable[[], int] | None = None) -> None:
        """Raise ResourceExhausted if the new tasks of a submission would take the queued tasks over
        max_queued_tasks (0: no bound). `at_most` bounds how many are new (the specs of the
        request); `count_new` counts them exactly (resubmissions are not new), called only when
        the bound is close."""
        limit = self.max_queued_tasks
        if not limit:
            return
        queued = queued_tasks(projection)
        if queued + at_most <= limit:
            return
        new_tasks = count_new() if count_new is not None else at_most
        if new_tasks and queued + new_tasks > limit:
            raise ResourceExhausted(
                f"max_queued_tasks (--max-queued-tasks / CORRAL_MAX_QUEUED_TASKS) is {limit}: {queued} tasks are "
                f"queued and this request adds {new_tasks}; retry when fewer are waiting")

    # ---- rate limits ---------------------------------------------------------------------------

    def grant_budget(self, now_ms: int) -> dict[str, int] | None:
        """Leases each rate-limited type may get now; None when no type is limited."""
        return self.rate_limiter.budget(now_ms) if self.rate_limited else None

    def granted(self, task_types: Iterable[str], now_ms: int) -> None:
        """Take one token per lease granted (types without a limit are ignored)."""
        if self.rate_limited:
            took = self.rate_limiter.took
            for task_type in task_types:
                took(task_type, now_ms)

    def next_token_ms(self, now_ms: int) -> int | None:
        """When an empty bucket refills (the loop must wake then: READY tasks may be waiting)."""
        return self.rate_limiter.next_token_ms(now_ms) if self.rate_limited else None


def queued_tasks(projection: Projection) -> int:
    """Tasks waiting to run: SCHEDULED + READY + RETRY_WAIT + WAITING_FOR_DEPENDENCIES (RUNNING ones
    are bounded by the slots). Tasks waiting for prerequisites count: they are accepted work that
    the coordinator holds, whatever they wait for."""
    counts = projection.state_counts
    return counts[SCHEDULED] + counts[READY] + counts[RETRY_WAIT] + counts[WAITING]


# ---- concurrency-key policies ----------------------------------------------------------------

def dropped_reason(task: TaskRecord) -> str:
    spec = task.spec
    return (f"dropped: concurrency key {spec.concurrency_key!r} is at its limit of {spec.concurrency_limit} "
            f"(policy DROP_NEW)")


def drop_record(task: TaskRecord) -> wal_pb2.WalRecord:
    """The record that ends a DROP_NEW newcomer that could not take its key."""
    reason = dropped_reason(task)
    return wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
        task_id=task.task_id, state=task_pb2.TASK_STATE_CANCELED, reason=reason,
        error=task_pb2.TaskError(message=reason, kind="concurrency_limit")))


def drop_when_ready(projection: Projection, task: TaskRecord, now_ms: int) -> wal_pb2.WalRecord | None:
    """A DROP_NEW task is about to become READY (its not_before came, or its prerequisites
    succeeded): the drop record if it could not take its key at once (decided as at submission)."""
    if (task.concurrency_key and task.spec.concurrency_policy == DROP_NEW
            and not projection.concurrency.would_admit(task, now_ms)):
        return drop_record(task)
    return None


def drop_on_promote(projection: Projection, task: TaskRecord, now_ms: int) -> wal_pb2.WalRecord | None:
    """A SCHEDULED DROP_NEW task reaches its not_before: `drop_when_ready`."""
    return drop_when_ready(projection, task, now_ms) if task.state == SCHEDULED else None


def on_submitted(projection: Projection, task: TaskRecord) -> list[wal_pb2.WalRecord]:
    """Records a keyed newcomer's policy calls for, right after its TaskSubmitted was applied.

    CANCEL_IN_PROGRESS: a cancel for every earlier unfinished task with the key (CancelRequested
    for running ones, whose actors must be told; CANCELED at once for the others).
    DROP_NEW: the newcomer's own CANCELED record if it is READY but could not take the key."""
    key = task.concurrency_key
    if not key:
        return []
    policy = task.spec.concurrency_policy
    if policy == DROP_NEW:
        if task.state == READY and not projection.concurrency.holds(task.task_id, key):
            return [drop_record(task)]
        return []
    if policy != CANCEL_IN_PROGRESS:
        return []
    gate = projection.concurrency.gates.get(key)
    if gate is None:
        return []
    tasks = projection.tasks
    reason = f"superseded by task {task.task_id} (concurrency key {key!r}, policy CANCEL_IN_PROGRESS)"
    records = []
    for other in sorted((tasks[tid] for tid in gate.members if tid != task.task_id), key=lambda t: t.ordinal):
        if is_terminal(other.state):
            continue
        if other.state == RUNNING:
            if not other.cancel_requested:
                records.append(wal_pb2.WalRecord(cancel_requested=wal_pb2.CancelRequested(
                    task_id=other.task_id, reason=reason)))
        else:
            records.append(wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
                task_id=other.task_id, state=task_pb2.TASK_STATE_CANCELED, reason=reason,
                error=task_pb2.TaskError(message=reason, kind="superseded"))))
    return records
