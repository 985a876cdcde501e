"""Children: tasks submitted by a running handler, and what they do to their parent.

Owns the pure decisions about parent/child trees:
- whether a child submission is accepted (`check_submission`): the parent's lease is checked by
  the loop (decisions.fence) before this; here, the parent must not be being canceled, the depth
  bound holds, and a child key that exists under the parent returns the existing child (a retried
  parent attempt resubmitting its children gets them back, never duplicates);
- where a parent goes when its handler returns successfully (`success_state`): SUCCEEDED, or
  WAITING_FOR_CHILDREN while a non-detached child is unfinished or one failed that was not
  allowed to;
- when a waiting parent finishes (`resolve`): SUCCEEDED with its handler's output once every
  non-detached child is terminal, FAILED as soon as a child that may not fail ended FAILED or
  CANCELED (error kind "child_failed", naming the child);
- which descendants a cancel reaches (`descendants`): an explicit cancel reaches the whole subtree
  (detached children too); a parent that ends FAILED or CANCELED by itself cancels its
  non-detached descendants (detached children outlive their parent).

The tree (parent, depth, children, counters, child keys) is maintained by `Projection.apply`
(core/projection.py) from TaskSubmitted records (spec.parent_task_id) and the children's terminal
transitions, so replay rebuilds it; the records returned here are written by the dispatch loop
like any other. Pure: no I/O, no clock.
"""
from __future__ import annotations

from corral.v1 import actor_service_pb2, task_pb2, wal_pb2

from .errors import FailedPrecondition
from .graph import ancestor_cycle
from .model import TaskRecord
from .projection import Projection
from .states import CANCELED, FAILED, RUNNING, SUCCEEDED, WAITING_FOR_CHILDREN, State, is_terminal

DEFAULT_MAX_DEPTH = 8
CHILD_FAILED = "child_failed"


def check_submission(projection: Projection, parent: TaskRecord, spec: task_pb2.TaskSpec,
                     max_depth: int) -> str | None:
    """A child submission from `parent`'s current attempt (already fenced): the existing child's
    id when the parent has a child with this key, None when a new child may be written.
    Raises FailedPrecondition naming the reason otherwise, InvalidField for prerequisites that are
    (or depend on) an ancestor waiting for the child (graph.ancestor_cycle)."""
    existing = projection.child_keys.get((parent.task_id, spec.child_key))
    if existing is not None:
        return existing
    if parent.cancel_requested:
        raise FailedPrecondition(f"task {parent.task_id!r} is being canceled; it may not submit children")
    depth = parent.depth + 1
    if depth > max_depth:
        raise FailedPrecondition(
            f"task.child_key {spec.child_key!r}: a child of task {parent.task_id!r} would be at depth {depth}, "
            f"over the maximum task depth of {max_depth} (--max-task-depth)")
    if spec.depends_on:
        ancestor_cycle(projection, parent.task_id, spec.detached, spec.depends_on, "task.depends_on")
    return None


def prepare_child_spec(parent: TaskRecord, spec: task_pb2.TaskSpec) -> None:
    """Fill what the coordinator sets on a new child: its parent, and the parent's trace context
    when the child brings none (child tasks continue their parent's trace)."""
    spec.parent_task_id = parent.task_id
    if not spec.trace_context and parent.spec.trace_context:
        spec.trace_context.update(parent.spec.trace_context)


def success_state(task: TaskRecord) -> int:
    """Where a task goes when its handler returned successfully."""
    if task.children and (task.unfinished_children or task.failed_child):
        return WAITING_FOR_CHILDREN
    return SUCCEEDED


def resolve(projection: Projection, parent: TaskRecord) -> wal_pb2.WalRecord | None:
    """The record that ends a WAITING_FOR_CHILDREN parent, or None while it must keep waiting."""
    if parent.state != WAITING_FOR_CHILDREN:
        return None
    if parent.failed_child:
        child = projection.tasks.get(parent.failed_child)
        what = State(child.state).name if child is not None else "FAILED"
        detail = f": {child.error.message}" if child is not None and child.error is not None else ""
        message = f"child {parent.failed_child} ended {what}{detail}"
        return wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
            task_id=parent.task_id, state=FAILED, reason=message,
            error=task_pb2.TaskError(message=message, kind=CHILD_FAILED, non_retryable=True)))
    if parent.unfinished_children == 0:
        return wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
            task_id=parent.task_id, state=SUCCEEDED, reason="all children finished"))
    return None


def descendants(projection: Projection, task_id: str, *, include_detached: bool) -> list[TaskRecord]:
    """Non-terminal descendants of `task_id`, parents before their children. Detached children
    (and their subtrees) are left out unless `include_detached`."""
    tasks = projection.tasks
    found: list[TaskRecord] = []
    root = tasks.get(task_id)
    stack = list(reversed(root.children)) if root is not None and root.children else []
    while stack:
        child = tasks.get(stack.pop())
        if child is None or (child.spec.detached and not include_detached):
            continue
        if not is_terminal(child.state):
            found.append(child)
        if child.children:
            stack.extend(reversed(child.children))
    return found


def cancel_record(task: TaskRecord, reason: str) -> wal_pb2.WalRecord | None:
    """Cancel one descendant: CancelRequested for a running one (its actor is told; it ends when
    the actor reports or its lease expires), CANCELED at once otherwise. None if already asked."""
    if task.state == RUNNING:
        if task.cancel_requested:
            return None
        return wal_pb2.WalRecord(cancel_requested=wal_pb2.CancelRequested(task_id=task.task_id, reason=reason))
    if is_terminal(task.state):
        return None
    return wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
        task_id=task.task_id, state=CANCELED, reason=reason,
        error=task_pb2.TaskError(message=reason, kind="canceled")))


def outcome_message(task: TaskRecord, parent_ref: actor_service_pb2.LeaseRef) -> actor_service_pb2.ChildOutcome:
    """What a handler waiting for `task` (a terminal child) is told."""
    outcome = actor_service_pb2.ChildOutcome(parent=parent_ref, task_id=task.task_id, state=task.state)
    if task.state == SUCCEEDED and task.result is not None:
        which = task.result.WhichOneof("result")
        if which == "output":
            outcome.output.CopyFrom(task.result.output)
        elif which == "output_bytes":
            outcome.output_bytes = task.result.output_bytes
    elif task.error is not None:
        outcome.error.CopyFrom(task.error)
    return outcome
