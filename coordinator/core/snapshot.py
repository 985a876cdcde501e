"""Snapshots of the projection: conversion between the projection and `corral.v1` snapshot
messages (proto/corral/v1/snapshot.proto), and rebuilding every derived index on load.

Owns: what a snapshot holds and how a loaded one becomes a projection equal to the one it was
taken from (`Projection.fingerprint()` equal to a full replay's). One function per direction:
`task_to_proto` / `task_from_proto` for a task, `capture_head` / `load` for the rest. A field added
to TaskRecord or to the projection's durable globals must be added here (and to snapshot.proto);
tests/unit/test_snapshot.py compares fingerprints on a rich WAL and catches a missing one.

What is stored and what is rebuilt:
- stored per task: everything in TaskRecord.as_tuple(), plus started_once, ordinal, the ready-queue
  sort key (`ready_key`) and whether it occupies its concurrency key (`holds_key`: admitted READY
  tasks are occupants, and only the index knows it);
- stored globals: highest_token, submitted_count, the ready-order counter, actors_seen, retired
  incarnations, paused and its reason, the dependents lists (edge order is creation order, which
  the tasks alone do not give);
- rebuilt on load: tasks dict and ListTasks index (ordinal order), state counts, idempotency keys,
  ready queues (same heap entries), concurrency gates (members, occupants, waiting heaps), timers,
  the expiry queue (retention).

Finished tasks never change (except `unfinished_prerequisites` of a finished dependent, which
Projection.apply re-queues in `unsaved_finished`), so each is written once as its own row
(coordinator/storage/snapshots.py) and the head holds only unfinished tasks.

Pure: no I/O, no clock.
"""
from __future__ import annotations

import heapq
import io
import pickle
from collections import deque
from typing import Iterable

from corral.v1 import snapshot_pb2, task_pb2, wal_pb2

from .model import AttemptRecord, TaskRecord
from .projection import TIMER_ATTEMPT_DEADLINE, TIMER_CLOSE, TIMER_PROMOTE, TIMER_SCHEDULE_TO_START, Projection
from .states import READY, RETRY_WAIT, RUNNING, SCHEDULED, TERMINAL_STATES

TaskSnapshot = snapshot_pb2.TaskSnapshot


def task_to_proto(task: TaskRecord, holds_key: bool = False, msg: TaskSnapshot | None = None) -> TaskSnapshot:
    """Everything durable about `task` (written into `msg` if given, e.g. a repeated field's new item)."""
    if msg is None:
        msg = TaskSnapshot()
    msg.task_id = task.task_id
    msg.spec.CopyFrom(task.spec)
    msg.state = task.state
    msg.created_ms = task.created_ms
    msg.updated_ms = task.updated_ms
    if task.ready_at_ms:
        msg.ready_at_ms = task.ready_at_ms
    if task.eligible_since_ms:
        msg.eligible_since_ms = task.eligible_since_ms
    if task.ready_order:
        msg.ready_order = task.ready_order
    for a in task.attempts:
        item = msg.attempts.add(number=a.number, fencing_token=a.fencing_token, actor_id=a.actor_id,
                                actor_incarnation=a.actor_incarnation, started_ms=a.started_ms,
                                deadline_ms=a.deadline_ms, ended_ms=a.ended_ms, outcome=a.outcome)
        if a.error is not None:
            item.error.CopyFrom(a.error)
    if task.failed_attempts:
        msg.failed_attempts = task.failed_attempts
    if task.lost_attempts:
        msg.lost_attempts = task.lost_attempts
    if task.cancel_requested:
        msg.cancel_requested = True
        msg.cancel_reason = task.cancel_reason
    if task.state_reason:
        msg.state_reason = task.state_reason
    if task.error is not None:
        msg.error.CopyFrom(task.error)
    if task.result is not None:
        msg.result.CopyFrom(task.result)
    if task.started_once:
        msg.started_once = True
    msg.ordinal = task.ordinal
    if task.prerequisites:
        msg.prerequisites.extend(task.prerequisites)
        msg.unfinished_prerequisites = task.unfinished_prerequisites
    if task.ready_key:
        msg.ready_key = task.ready_key
    if holds_key:
        msg.holds_key = True
    if task.parent_id:
        msg.parent_id = task.parent_id
    msg.depth = task.depth  # kept by a child unlinked from its forgotten parent
    if task.children:
        msg.children.extend(task.children)
        msg.unfinished_children = task.unfinished_children
    if task.failed_child:
        msg.failed_child = task.failed_child
    if task.close_at_ms:
        msg.close_at_ms = task.close_at_ms
    return msg


def task_from_proto(msg: TaskSnapshot) -> TaskRecord:
    """The TaskRecord `msg` describes (shares its sub-messages: snapshot messages are not reused)."""
    task = TaskRecord(msg.task_id, msg.spec, msg.state, msg.created_ms, msg.ready_at_ms)
    task.updated_ms = msg.updated_ms
    task.eligible_since_ms = msg.eligible_since_ms
    task.ready_order = msg.ready_order
    for a in msg.attempts:
        attempt = AttemptRecord(a.number, a.fencing_token, a.actor_id, a.actor_incarnation, a.started_ms,
                                a.deadline_ms)
        attempt.ended_ms = a.ended_ms
        attempt.outcome = a.outcome
        if a.HasField("error"):
            attempt.error = a.error
        task.attempts.append(attempt)
    task.failed_attempts = msg.failed_attempts
    task.lost_attempts = msg.lost_attempts
    task.cancel_requested = msg.cancel_requested
    task.cancel_reason = msg.cancel_reason
    task.state_reason = msg.state_reason
    if msg.HasField("error"):
        task.error = msg.error
    if msg.HasField("result"):
        task.result = msg.result
    task.started_once = msg.started_once
    task.ordinal = msg.ordinal
    if msg.prerequisites:
        task.prerequisites = list(msg.prerequisites)
        task.unfinished_prerequisites = msg.unfinished_prerequisites
    task.ready_key = msg.ready_key
    if msg.parent_id:
        task.parent_id = msg.parent_id
    task.depth = msg.depth
    if msg.children:
        task.children = list(msg.children)
        task.unfinished_children = msg.unfinished_children
    task.failed_child = msg.failed_child
    task.close_at_ms = msg.close_at_ms
    return task


# ---- finished-task rows ---------------------------------------------------------------------
# A finished task's row is serialized once per task on the loop (dispatch/snapshotter.py), so its
# cost is paid per task at full throughput: a pickled tuple of plain values, with the protobuf
# parts (spec, result, errors) as their serialized bytes, costs about 60% of building and
# serializing a TaskSnapshot. Rows are read back with an unpickler that refuses every global, so
# only tuples, lists, str, bytes, int, bool and None can come out of one (no code runs).
_ROW_PREFIX = b"R\x01"


def _error_bytes(error) -> bytes | None:
    return error.SerializeToString() if error is not None else None


def finished_row(task: TaskRecord) -> bytes:
    """The serialized row of a finished task (see `task_from_row`)."""
    # A list (not tuple(generator): no generator per row); rows read back either.
    attempts = [(a.number, a.fencing_token, a.actor_id, a.actor_incarnation, a.started_ms, a.deadline_ms,
                 a.ended_ms, a.outcome, None if a.error is None else a.error.SerializeToString())
                for a in task.attempts]
    result = task.result
    return _ROW_PREFIX + pickle.dumps((
        task.task_id, task.spec.SerializeToString(), task.state, task.created_ms, task.updated_ms,
        task.ready_at_ms, task.eligible_since_ms, task.ready_order, attempts, task.failed_attempts,
        task.lost_attempts, task.cancel_requested, task.cancel_reason, task.state_reason,
        None if task.error is None else task.error.SerializeToString(),
        None if result is None else result.SerializeToString(), task.started_once, task.ordinal,
        tuple(task.prerequisites), task.unfinished_prerequisites, task.ready_key, task.parent_id, task.depth,
        tuple(task.children), task.unfinished_children, task.failed_child, task.close_at_ms,
    ), protocol=5)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # rows hold plain values only: nothing to import
        raise pickle.UnpicklingError(f"a snapshot row may not reference {module}.{name}")


def task_from_row(row: bytes) -> TaskRecord:
    """The TaskRecord a finished-task row describes."""
    if row[:2] != _ROW_PREFIX:
        raise ValueError("not a finished-task row of a known version")
    (task_id, spec, state, created_ms, updated_ms, ready_at_ms, eligible_since_ms, ready_order, attempts,
     failed_attempts, lost_attempts, cancel_requested, cancel_reason, state_reason, error, result, started_once,
     ordinal, prerequisites, unfinished_prerequisites, ready_key, parent_id, depth, children, unfinished_children,
     failed_child, close_at_ms) = _PlainUnpickler(io.BytesIO(row[2:])).load()
    task = TaskRecord(task_id, task_pb2.TaskSpec.FromString(spec), state, created_ms, ready_at_ms)
    task.updated_ms = updated_ms
    task.eligible_since_ms = eligible_since_ms
    task.ready_order = ready_order
    for number, token, actor_id, incarnation, started, deadline, ended, outcome, attempt_error in attempts:
        attempt = AttemptRecord(number, token, actor_id, incarnation, started, deadline)
        attempt.ended_ms = ended
        attempt.outcome = outcome
        if attempt_error is not None:
            attempt.error = task_pb2.TaskError.FromString(attempt_error)
        task.attempts.append(attempt)
    task.failed_attempts = failed_attempts
    task.lost_attempts = lost_attempts
    task.cancel_requested = cancel_requested
    task.cancel_reason = cancel_reason
    task.state_reason = state_reason
    if error is not None:
        task.error = task_pb2.TaskError.FromString(error)
    if result is not None:
        task.result = wal_pb2.AttemptEnded.FromString(result)
    task.started_once = started_once
    task.ordinal = ordinal
    if prerequisites:
        task.prerequisites = list(prerequisites)
        task.unfinished_prerequisites = unfinished_prerequisites
    task.ready_key = ready_key
    if parent_id:
        task.parent_id = parent_id
    task.depth = depth
    if children:
        task.children = list(children)
        task.unfinished_children = unfinished_children
    task.failed_child = failed_child
    task.close_at_ms = close_at_ms
    return task


def live_tasks(projection: Projection) -> list[TaskRecord]:
    """The unfinished tasks, in ordinal order."""
    return [t for t in projection.tasks.values() if t.state not in TERMINAL_STATES]


def capture_head(projection: Projection, seq: int, at_unix_ms: int, finished_tasks: int,
                 forgotten_ordinals: Iterable[int] = ()) -> snapshot_pb2.SnapshotHead:
    """Globals and every unfinished task, as of WAL seq `seq` (the projection must be exactly the
    state after applying record `seq`)."""
    head = snapshot_pb2.SnapshotHead(
        seq=seq, at_unix_ms=at_unix_ms, highest_token=projection.highest_token,
        submitted_count=projection.submitted_count, ready_order=projection._ready_order,
        paused=projection.paused, pause_reason=projection.pause_reason, finished_tasks=finished_tasks)
    for actor_id in sorted(projection.actors_seen):
        head.actors_seen.append(projection.actors_seen[actor_id])
    for actor_id, incarnation in sorted(projection.retired_incarnations):
        head.retired_incarnations.add(actor_id=actor_id, incarnation=incarnation)
    holds = projection.concurrency.holds
    add = head.live_tasks.add
    for task in live_tasks(projection):
        key = task.concurrency_key
        task_to_proto(task, bool(key) and holds(task.task_id, key), add())
    for task_id, dependents in projection.dependents.items():
        head.dependents.add(task_id=task_id, dependents=dependents)
    head.forgotten_ordinals.extend(forgotten_ordinals)
    for schedule_id in sorted(projection.schedules):
        head.schedules.append(projection.schedules[schedule_id])
    return head


def _copy_schedule(schedule):
    copy = type(schedule)()
    copy.CopyFrom(schedule)
    return copy


class SnapshotMismatch(Exception):
    """A snapshot whose parts do not fit together (missing rows, duplicate tasks)."""


def load(projection: Projection, head: snapshot_pb2.SnapshotHead, finished: Iterable[bytes]) -> None:
    """Fill a fresh `projection` from a snapshot: `head` and the finished-task rows (any order)."""
    if projection.tasks or projection.last_seq:
        raise ValueError("load needs a fresh projection")
    projection.highest_token = head.highest_token
    projection.submitted_count = head.submitted_count
    projection._ready_order = head.ready_order
    projection.paused = head.paused
    projection.pause_reason = head.pause_reason
    projection.last_seq = head.seq
    for identity in head.actors_seen:
        copy = task_pb2.ExecutorIdentity()
        copy.CopyFrom(identity)
        projection.actors_seen[identity.actor_id] = copy
    for retired in head.retired_incarnations:
        projection.retired_incarnations.add((retired.actor_id, retired.incarnation))
    finished_tasks = [task_from_row(row) for row in finished]
    if len(finished_tasks) != head.finished_tasks:
        raise SnapshotMismatch(f"snapshot {head.seq}: {len(finished_tasks)} finished-task rows, "
                               f"expected {head.finished_tasks}")
    live = [(task_from_proto(msg), msg.holds_key) for msg in head.live_tasks]
    everything = finished_tasks + [task for task, _ in live]
    everything.sort(key=lambda t: t.ordinal)  # the tasks dict's order is submission order
    tasks = projection.tasks
    idempotency = projection.idempotency
    counts = projection.state_counts
    for task in everything:
        if task.task_id in tasks:
            raise SnapshotMismatch(f"snapshot {head.seq}: task {task.task_id!r} appears twice")
        tasks[task.task_id] = task
        counts[task.state] += 1
        key = task.spec.idempotency_key
        if key:
            idempotency[key] = task.task_id
    projection.by_ordinal.load(everything)
    child_keys = projection.child_keys
    for task in everything:  # a linked child's parent is known (forgetting a parent unlinks its children)
        if task.parent_id:
            if task.parent_id not in tasks:
                raise SnapshotMismatch(f"snapshot {head.seq}: task {task.task_id!r} names unknown parent {task.parent_id!r}")
            child_keys[(task.parent_id, task.spec.child_key)] = task.task_id
    if head.schedules:
        projection.schedules = {s.spec.schedule_id: _copy_schedule(s) for s in head.schedules}
    for entry in head.dependents:
        projection.dependents[entry.task_id] = list(entry.dependents)
    concurrency = projection.concurrency
    grace = projection.deadline_grace_ms
    add_timer = projection._add_timer
    for task, holds_key in live:
        task_id = task.task_id
        state = task.state
        gate = None
        if task.concurrency_key:
            concurrency.add_member(task)
            gate = concurrency.gates[task.concurrency_key]
            if holds_key:
                gate.occupants.add(task_id)
        if state == READY:
            entry = (task.ready_key, task.ready_order, task_id)
            if gate is None or holds_key:
                projection.push_ready(task, entry)
            else:
                heapq.heappush(gate.waiting, entry)
                gate.waiting_count += 1
        elif state == SCHEDULED or state == RETRY_WAIT:
            add_timer(task.ready_at_ms, TIMER_PROMOTE, task_id, 0)
        elif state == RUNNING:
            attempt = task.attempts[-1]
            add_timer(attempt.deadline_ms + grace, TIMER_ATTEMPT_DEADLINE, task_id, attempt.number)
        if task.schedule_to_start_ms and task.eligible_since_ms and not task.started_once:
            add_timer(task.eligible_since_ms + task.schedule_to_start_ms, TIMER_SCHEDULE_TO_START, task_id, 0)
        if task.close_at_ms:
            add_timer(task.close_at_ms, TIMER_CLOSE, task_id, 0)
    if projection.expiry is not None:
        finished_tasks.sort(key=lambda t: (t.updated_ms, t.ordinal))
        projection.expiry = deque(t.task_id for t in finished_tasks)
