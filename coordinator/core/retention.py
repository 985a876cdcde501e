"""Retention: which finished tasks to forget, as a pure decision over the projection.

Owns: the choice of the tasks a TasksForgotten record names. A finished task (SUCCEEDED, FAILED,
CANCELED) is forgotten once `updated_ms + retention_ms <= now` (its updated_ms is when it
finished: nothing changes a finished task's updated_ms). The record, not this decision, is what
replay applies (Projection.forget), so replay never re-decides.

Invariants:
- Only finished tasks are named, each at most once per record.
- A parent with an unfinished child (detached ones included) is kept, and so is a child while its
  parent has not finished; forgetting a parent unlinks its (finished) children (Projection.forget),
  so a task submitted later under the parent's id never adopts them.
- A task with an unfinished dependent is kept (its output travels in the dependent's lease) and
  looked at again later; it is forgotten once every dependent has finished.
- The work per call is bounded (`limit` entries looked at), so a backlog (retention lowered at a
  restart, a long pause of the sweep) is worked off over several steps, never in one long one.
- `Projection.expiry` lists finished task ids in the order they finished (derived state, not in
  the fingerprint): entries of tasks since forgotten (or forgotten and submitted again under the
  same id, not finished yet) are dropped when they reach the head. Wall-clock steps backwards
  only delay forgetting: a head that is not due holds back the ones behind it.

Pure: no I/O, no clock.
"""
from __future__ import annotations

from corral.v1 import wal_pb2

from .projection import Projection
from .states import TERMINAL_STATES

# At most this many ids per TasksForgotten record (a record stays far below any size limit).
MAX_IDS_PER_RECORD = 1_000
# At most this many expiry entries looked at per step.
MAX_VISITS_PER_STEP = 10_000


def has_unfinished_dependent(projection: Projection, task_id: str) -> bool:
    dependents = projection.dependents.get(task_id) if projection.dependents else None
    if not dependents:
        return False
    tasks = projection.tasks
    return any(tasks[d].state not in TERMINAL_STATES for d in dependents)


def has_unfinished_parent(projection: Projection, task) -> bool:
    """A child is kept while its parent runs or waits: a retried parent attempt resubmitting its
    key must get it back (core/children.py), and a waiting parent may still need its outcome."""
    if not task.parent_id:
        return False
    parent = projection.tasks.get(task.parent_id)
    return parent is not None and parent.state not in TERMINAL_STATES


def has_unfinished_child(projection: Projection, task) -> bool:
    """A parent is kept while any child (detached ones too) has not finished: the child's
    outcome still reaches it, and the parent's id must not be reused under a live child."""
    if not task.children:
        return False
    tasks = projection.tasks
    return any(tasks[c].state not in TERMINAL_STATES for c in task.children)


def due_forgets(projection: Projection, now_ms: int, retention_ms: int,
                limit: int = MAX_VISITS_PER_STEP) -> tuple[list[str], bool]:
    """Ids of the finished tasks whose retention has passed (popped from `projection.expiry`),
    and whether to look again at the next step (the visit limit was reached while forgetting;
    entries kept for their dependents alone wait for the next sweep, so they cause no churn)."""
    expiry = projection.expiry
    if not expiry:
        return [], False
    tasks = projection.tasks
    due: list[str] = []
    kept: list[str] = []
    visits = 0
    while expiry:
        if visits == limit:
            expiry.extend(kept)
            return due, bool(due)
        visits += 1
        task_id = expiry[0]
        task = tasks.get(task_id)
        if task is None or task.state not in TERMINAL_STATES:
            expiry.popleft()  # stale: already forgotten
            continue
        if task.updated_ms + retention_ms > now_ms:
            break
        expiry.popleft()
        if (has_unfinished_dependent(projection, task_id) or has_unfinished_parent(projection, task)
                or has_unfinished_child(projection, task)):
            kept.append(task_id)  # looked at again once the entries before it are done
        else:
            due.append(task_id)
    expiry.extend(kept)
    return due, False


def forget_records(task_ids: list[str]) -> list[wal_pb2.WalRecord]:
    """TasksForgotten records for `task_ids`, at most MAX_IDS_PER_RECORD ids each."""
    return [wal_pb2.WalRecord(tasks_forgotten=wal_pb2.TasksForgotten(task_ids=task_ids[i:i + MAX_IDS_PER_RECORD]))
            for i in range(0, len(task_ids), MAX_IDS_PER_RECORD)]


def next_due_ms(projection: Projection, retention_ms: int) -> int | None:
    """When the head of the expiry queue is due (None: nothing finished is waiting). A stale head
    counts as due now (0): the next sweep drops it."""
    expiry = projection.expiry
    if not expiry:
        return None
    task = projection.tasks.get(expiry[0])
    if task is None or task.state not in TERMINAL_STATES:
        return 0
    return task.updated_ms + retention_ms
