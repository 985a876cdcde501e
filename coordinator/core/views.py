"""Rendering of projection records as the public `corral.v1.Task` message.

Owns: the mapping from internal records to what clients read. Pure; never mutates a record.
"""
from __future__ import annotations

from google.protobuf import timestamp_pb2

from corral.v1 import task_pb2

from .model import TaskRecord
from .states import SUCCEEDED, WAITING_FOR_CHILDREN


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def task_view(task: TaskRecord) -> task_pb2.Task:
    view = task_pb2.Task(
        task_id=task.task_id,
        spec=task.spec,
        state=task.state,
        created_at=_ts(task.created_ms),
        updated_at=_ts(task.updated_ms),
        failed_attempts=task.failed_attempts,
        lost_attempts=task.lost_attempts,
        cancel_requested=task.cancel_requested,
        state_reason=task.state_reason,
    )
    if task.ready_at_ms:
        view.ready_at.FromMilliseconds(task.ready_at_ms)
    if task.prerequisites:
        view.depends_on.extend(task.prerequisites)
        view.unfinished_prerequisites = task.unfinished_prerequisites
    if task.error is not None:
        view.error.CopyFrom(task.error)
    if task.depth:  # a child (its spec names the parent even once the parent was forgotten)
        view.parent_task_id = task.spec.parent_task_id
        view.depth = task.depth
    if task.children:
        view.children = len(task.children)
        view.unfinished_children = task.unfinished_children
    result = task.result
    # A parent that failed with a child keeps its handler's output out of sight.
    if result is not None and (task.state == SUCCEEDED or task.state == WAITING_FOR_CHILDREN):
        which = result.WhichOneof("result")
        if which == "output":
            view.output.CopyFrom(result.output)
        elif which == "output_bytes":
            view.output_bytes = result.output_bytes
    for a in task.attempts:
        attempt = view.attempts.add(
            number=a.number, fencing_token=a.fencing_token, actor_id=a.actor_id,
            actor_incarnation=a.actor_incarnation, outcome=a.outcome,
        )
        attempt.started_at.FromMilliseconds(a.started_ms)
        if a.ended_ms:
            attempt.ended_at.FromMilliseconds(a.ended_ms)
        if a.error is not None:
            attempt.error.CopyFrom(a.error)
    return view
