import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from corral.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StateCount(_message.Message):
    __slots__ = ("state", "count")
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    state: _task_pb2.TaskState
    count: int
    def __init__(self, state: _Optional[_Union[_task_pb2.TaskState, str]] = ..., count: _Optional[int] = ...) -> None: ...

class ActorStatus(_message.Message):
    __slots__ = ("identity", "free_slots", "leases_held", "connected_at", "draining", "suspect")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    LEASES_HELD_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    SUSPECT_FIELD_NUMBER: _ClassVar[int]
    identity: _task_pb2.ExecutorIdentity
    free_slots: int
    leases_held: int
    connected_at: _timestamp_pb2.Timestamp
    draining: bool
    suspect: bool
    def __init__(self, identity: _Optional[_Union[_task_pb2.ExecutorIdentity, _Mapping]] = ..., free_slots: _Optional[int] = ..., leases_held: _Optional[int] = ..., connected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., draining: _Optional[bool] = ..., suspect: _Optional[bool] = ...) -> None: ...

class WalPosition(_message.Message):
    __slots__ = ("last_seq", "commits")
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    last_seq: int
    commits: int
    def __init__(self, last_seq: _Optional[int] = ..., commits: _Optional[int] = ...) -> None: ...

class GetClusterStatusResponse(_message.Message):
    __slots__ = ("coordinator_id", "tasks_by_state", "actors", "wal", "highest_fencing_token", "paused", "pause_reason", "draining", "drain_reason", "event_subscribers", "queue_depths", "schedules")
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_BY_STATE_FIELD_NUMBER: _ClassVar[int]
    ACTORS_FIELD_NUMBER: _ClassVar[int]
    WAL_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REASON_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    DRAIN_REASON_FIELD_NUMBER: _ClassVar[int]
    EVENT_SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTHS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    coordinator_id: str
    tasks_by_state: _containers.RepeatedCompositeFieldContainer[StateCount]
    actors: _containers.RepeatedCompositeFieldContainer[ActorStatus]
    wal: WalPosition
    highest_fencing_token: int
    paused: bool
    pause_reason: str
    draining: bool
    drain_reason: str
    event_subscribers: int
    queue_depths: _containers.RepeatedCompositeFieldContainer[QueueDepth]
    schedules: ScheduleCounts
    def __init__(self, coordinator_id: _Optional[str] = ..., tasks_by_state: _Optional[_Iterable[_Union[StateCount, _Mapping]]] = ..., actors: _Optional[_Iterable[_Union[ActorStatus, _Mapping]]] = ..., wal: _Optional[_Union[WalPosition, _Mapping]] = ..., highest_fencing_token: _Optional[int] = ..., paused: _Optional[bool] = ..., pause_reason: _Optional[str] = ..., draining: _Optional[bool] = ..., drain_reason: _Optional[str] = ..., event_subscribers: _Optional[int] = ..., queue_depths: _Optional[_Iterable[_Union[QueueDepth, _Mapping]]] = ..., schedules: _Optional[_Union[ScheduleCounts, _Mapping]] = ...) -> None: ...

class ScheduleCounts(_message.Message):
    __slots__ = ("active", "paused", "completed", "next_occurrence")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    NEXT_OCCURRENCE_FIELD_NUMBER: _ClassVar[int]
    active: int
    paused: int
    completed: int
    next_occurrence: _timestamp_pb2.Timestamp
    def __init__(self, active: _Optional[int] = ..., paused: _Optional[int] = ..., completed: _Optional[int] = ..., next_occurrence: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class QueueDepth(_message.Message):
    __slots__ = ("task_type", "ready")
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    task_type: str
    ready: int
    def __init__(self, task_type: _Optional[str] = ..., ready: _Optional[int] = ...) -> None: ...

class ListActorsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListActorsResponse(_message.Message):
    __slots__ = ("actors",)
    ACTORS_FIELD_NUMBER: _ClassVar[int]
    actors: _containers.RepeatedCompositeFieldContainer[ActorStatus]
    def __init__(self, actors: _Optional[_Iterable[_Union[ActorStatus, _Mapping]]] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class PauseResponse(_message.Message):
    __slots__ = ("changed", "running_attempts")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    running_attempts: int
    def __init__(self, changed: _Optional[bool] = ..., running_attempts: _Optional[int] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ("changed", "draining")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    draining: bool
    def __init__(self, changed: _Optional[bool] = ..., draining: _Optional[bool] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("changed", "running_attempts")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    running_attempts: int
    def __init__(self, changed: _Optional[bool] = ..., running_attempts: _Optional[int] = ...) -> None: ...
