"""Task events (TaskService.WatchEvents): committed WAL records seen as events about tasks.

Owns: which records are task events, what each event says (`task_event`), and which events a
subscriber asked for (`EventFilter`). Pure: the dispatch layer (dispatch/event_hub.py) calls these
after a step's commit, only when someone subscribed, and does the queueing.

Invariants:
- An event is made from a committed record (its `seq` and `at_unix_ms` are set) and the task's
  record in the projection, read for what does not change (type, labels, attempts' actors). The
  state in an event is the one the record says, not the task's state now (later records of the
  same step may have moved it on).
- Records that are not about one task (actors, pause/resume, and kinds this module does not know)
  are no events.
"""
from __future__ import annotations

from typing import Mapping

from corral.v1 import task_service_pb2, wal_pb2

from .errors import InvalidField
from .model import TaskRecord
from .spec import MAX_LABEL_KEY_CHARS, MAX_LABEL_VALUE_CHARS, MAX_LABELS, TYPE_RE
from .states import State

TaskEvent = task_service_pb2.TaskEvent

KIND_SUBMITTED = task_service_pb2.TASK_EVENT_KIND_SUBMITTED
KIND_STATE_CHANGED = task_service_pb2.TASK_EVENT_KIND_STATE_CHANGED
KIND_ATTEMPT_STARTED = task_service_pb2.TASK_EVENT_KIND_ATTEMPT_STARTED
KIND_ATTEMPT_ENDED = task_service_pb2.TASK_EVENT_KIND_ATTEMPT_ENDED
KIND_CANCEL_REQUESTED = task_service_pb2.TASK_EVENT_KIND_CANCEL_REQUESTED

MAX_FILTER_TYPES = 100
MAX_TASK_ID_CHARS = 128

# Record kinds that are about one task, and the field naming it.
TASK_RECORD_KINDS = frozenset({"task_submitted", "lease_granted", "attempt_ended", "task_state_changed",
                               "cancel_requested"})


def record_task_id(record: wal_pb2.WalRecord) -> str | None:
    """The task a record is about, or None if it is no task event."""
    kind = record.WhichOneof("event")
    if kind not in TASK_RECORD_KINDS:
        return None
    return getattr(record, kind).task_id


class EventFilter:
    """What one WatchEvents subscriber asked for; every part must match (empty parts match all)."""

    __slots__ = ("types", "labels", "parent_task_id", "everything")

    def __init__(self, types: frozenset[str] = frozenset(), labels: Mapping[str, str] | None = None,
                 parent_task_id: str = "") -> None:
        self.types = types
        self.labels = tuple((labels or {}).items())
        self.parent_task_id = parent_task_id
        self.everything = not (types or self.labels or parent_task_id)  # no need to call matches()

    @classmethod
    def from_request(cls, request: task_service_pb2.WatchEventsRequest) -> "EventFilter":
        """The filter of a WatchEvents request; InvalidField names what is wrong."""
        if len(request.types) > MAX_FILTER_TYPES:
            raise InvalidField("types", f"at most {MAX_FILTER_TYPES} types")
        for i, t in enumerate(request.types):
            if not TYPE_RE.fullmatch(t):
                raise InvalidField(f"types[{i}]", "must be 1-128 characters of [A-Za-z0-9._:/-]")
        if len(request.labels) > MAX_LABELS:
            raise InvalidField("labels", f"at most {MAX_LABELS} labels")
        for k, v in request.labels.items():
            if not k or len(k) > MAX_LABEL_KEY_CHARS:
                raise InvalidField("labels", f"key {k!r} must be 1-{MAX_LABEL_KEY_CHARS} characters")
            if len(v) > MAX_LABEL_VALUE_CHARS:
                raise InvalidField(f"labels[{k}]", f"must be at most {MAX_LABEL_VALUE_CHARS} characters")
        if len(request.parent_task_id) > MAX_TASK_ID_CHARS:
            raise InvalidField("parent_task_id", f"must be at most {MAX_TASK_ID_CHARS} characters")
        return cls(frozenset(request.types), dict(request.labels), request.parent_task_id)

    def matches(self, task: TaskRecord) -> bool:
        if self.parent_task_id and task.parent_id != self.parent_task_id:
            return False
        if self.types and task.type not in self.types:
            return False
        if self.labels:
            have = task.spec.labels
            for key, value in self.labels:
                if have.get(key) != value:
                    return False
        return True


def task_event(record: wal_pb2.WalRecord, task: TaskRecord) -> TaskEvent | None:
    """The event a committed record is, for `task` (the record's task); None if it is none."""
    kind = record.WhichOneof("event")
    if kind not in TASK_RECORD_KINDS:
        return None
    event = TaskEvent()
    fill_event(event, record, kind, getattr(record, kind), task)
    return event


_RUNNING = int(State.RUNNING)


def event_base(at_unix_ms: int) -> TaskEvent:
    """An event holding only the commit time: `fill_event` starts from a copy of it (one C-level
    copy is cheaper than building the Timestamp field by field, and a step's records share it)."""
    base = TaskEvent()
    base.time.seconds = at_unix_ms // 1000
    base.time.nanos = (at_unix_ms % 1000) * 1_000_000
    return base


def fill_event(event: TaskEvent, record: wal_pb2.WalRecord, kind: str, body, task: TaskRecord,
               base: TaskEvent | None = None) -> None:
    """Fill `event` (empty, e.g. fresh from `response.events.add()`) from a committed record of a
    task kind; `body` is `getattr(record, kind)`; `base` is `event_base(record.at_unix_ms)`, if
    the caller has one. On the publication path: fields are set in place (no message to copy)."""
    event.CopyFrom(base if base is not None else event_base(record.at_unix_ms))
    event.seq = record.seq
    event.task_id = task.task_id
    event.type = task.type
    labels = task.spec.labels
    if labels:
        event.labels.update(labels)
    if kind == "lease_granted":
        event.kind = KIND_ATTEMPT_STARTED
        event.state = _RUNNING
        event.attempt = body.attempt
        event.actor_id = body.actor_id
    elif kind == "attempt_ended":
        event.kind = KIND_ATTEMPT_ENDED
        event.state = body.next_state
        attempt = body.attempt
        event.attempt = attempt
        event.outcome = body.outcome
        reason = body.reason or (body.error.message if body.HasField("error") else "")
        if reason:
            event.reason = reason
        if 0 < attempt <= len(task.attempts):
            event.actor_id = task.attempts[attempt - 1].actor_id
    elif kind == "task_submitted":
        event.kind = KIND_SUBMITTED
        event.state = body.state
    elif kind == "task_state_changed":
        event.kind = KIND_STATE_CHANGED
        event.state = body.state
        event.reason = body.reason
    else:  # cancel_requested: only a running task gets one; it stays RUNNING until its actor stops
        event.kind = KIND_CANCEL_REQUESTED
        event.state = _RUNNING
        event.reason = body.reason
        if task.attempts:
            current = task.attempts[-1]
            event.attempt = current.number
            event.actor_id = current.actor_id
