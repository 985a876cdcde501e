from corral.v1 import schedule_pb2 as _schedule_pb2
from corral.v1 import task_pb2 as _task_pb2
from corral.v1 import wal_pb2 as _wal_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SnapshotPointer(_message.Message):
    __slots__ = ("seq", "head_chunks", "at_unix_ms", "head_crc32")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HEAD_CRC32_FIELD_NUMBER: _ClassVar[int]
    seq: int
    head_chunks: int
    at_unix_ms: int
    head_crc32: int
    def __init__(self, seq: _Optional[int] = ..., head_chunks: _Optional[int] = ..., at_unix_ms: _Optional[int] = ..., head_crc32: _Optional[int] = ...) -> None: ...

class AttemptSnapshot(_message.Message):
    __slots__ = ("number", "fencing_token", "actor_id", "actor_incarnation", "started_ms", "deadline_ms", "ended_ms", "outcome", "error")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    ENDED_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    number: int
    fencing_token: int
    actor_id: str
    actor_incarnation: str
    started_ms: int
    deadline_ms: int
    ended_ms: int
    outcome: _task_pb2.AttemptOutcome
    error: _task_pb2.TaskError
    def __init__(self, number: _Optional[int] = ..., fencing_token: _Optional[int] = ..., actor_id: _Optional[str] = ..., actor_incarnation: _Optional[str] = ..., started_ms: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., ended_ms: _Optional[int] = ..., outcome: _Optional[_Union[_task_pb2.AttemptOutcome, str]] = ..., error: _Optional[_Union[_task_pb2.TaskError, _Mapping]] = ...) -> None: ...

class TaskSnapshot(_message.Message):
    __slots__ = ("task_id", "spec", "state", "created_ms", "updated_ms", "ready_at_ms", "eligible_since_ms", "ready_order", "attempts", "failed_attempts", "lost_attempts", "cancel_requested", "cancel_reason", "state_reason", "error", "result", "started_once", "ordinal", "prerequisites", "unfinished_prerequisites", "ready_key", "holds_key", "parent_id", "depth", "children", "unfinished_children", "failed_child", "close_at_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    READY_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    READY_ORDER_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LOST_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STARTED_ONCE_FIELD_NUMBER: _ClassVar[int]
    ORDINAL_FIELD_NUMBER: _ClassVar[int]
    PREREQUISITES_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_PREREQUISITES_FIELD_NUMBER: _ClassVar[int]
    READY_KEY_FIELD_NUMBER: _ClassVar[int]
    HOLDS_KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_CHILDREN_FIELD_NUMBER: _ClassVar[int]
    FAILED_CHILD_FIELD_NUMBER: _ClassVar[int]
    CLOSE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    spec: _task_pb2.TaskSpec
    state: _task_pb2.TaskState
    created_ms: int
    updated_ms: int
    ready_at_ms: int
    eligible_since_ms: int
    ready_order: int
    attempts: _containers.RepeatedCompositeFieldContainer[AttemptSnapshot]
    failed_attempts: int
    lost_attempts: int
    cancel_requested: bool
    cancel_reason: str
    state_reason: str
    error: _task_pb2.TaskError
    result: _wal_pb2.AttemptEnded
    started_once: bool
    ordinal: int
    prerequisites: _containers.RepeatedScalarFieldContainer[str]
    unfinished_prerequisites: int
    ready_key: int
    holds_key: bool
    parent_id: str
    depth: int
    children: _containers.RepeatedScalarFieldContainer[str]
    unfinished_children: int
    failed_child: str
    close_at_ms: int
    def __init__(self, task_id: _Optional[str] = ..., spec: _Optional[_Union[_task_pb2.TaskSpec, _Mapping]] = ..., state: _Optional[_Union[_task_pb2.TaskState, str]] = ..., created_ms: _Optional[int] = ..., updated_ms: _Optional[int] = ..., ready_at_ms: _Optional[int] = ..., eligible_since_ms: _Optional[int] = ..., ready_order: _Optional[int] = ..., attempts: _Optional[_Iterable[_Union[AttemptSnapshot, _Mapping]]] = ..., failed_attempts: _Optional[int] = ..., lost_attempts: _Optional[int] = ..., cancel_requested: _Optional[bool] = ..., cancel_reason: _Optional[str] = ..., state_reason: _Optional[str] = ..., error: _Optional[_Union[_task_pb2.TaskError, _Mapping]] = ..., result: _Optional[_Union[_wal_pb2.AttemptEnded, _Mapping]] = ..., started_once: _Optional[bool] = ..., ordinal: _Optional[int] = ..., prerequisites: _Optional[_Iterable[str]] = ..., unfinished_prerequisites: _Optional[int] = ..., ready_key: _Optional[int] = ..., holds_key: _Optional[bool] = ..., parent_id: _Optional[str] = ..., depth: _Optional[int] = ..., children: _Optional[_Iterable[str]] = ..., unfinished_children: _Optional[int] = ..., failed_child: _Optional[str] = ..., close_at_ms: _Optional[int] = ...) -> None: ...

class RetiredIncarnation(_message.Message):
    __slots__ = ("actor_id", "incarnation")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    incarnation: str
    def __init__(self, actor_id: _Optional[str] = ..., incarnation: _Optional[str] = ...) -> None: ...

class DependentsEntry(_message.Message):
    __slots__ = ("task_id", "dependents")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DEPENDENTS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    dependents: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_id: _Optional[str] = ..., dependents: _Optional[_Iterable[str]] = ...) -> None: ...

class SnapshotHead(_message.Message):
    __slots__ = ("seq", "at_unix_ms", "highest_token", "submitted_count", "ready_order", "actors_seen", "retired_incarnations", "paused", "pause_reason", "live_tasks", "dependents", "finished_tasks", "forgotten_ordinals", "schedules")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    READY_ORDER_FIELD_NUMBER: _ClassVar[int]
    ACTORS_SEEN_FIELD_NUMBER: _ClassVar[int]
    RETIRED_INCARNATIONS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REASON_FIELD_NUMBER: _ClassVar[int]
    LIVE_TASKS_FIELD_NUMBER: _ClassVar[int]
    DEPENDENTS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TASKS_FIELD_NUMBER: _ClassVar[int]
    FORGOTTEN_ORDINALS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at_unix_ms: int
    highest_token: int
    submitted_count: int
    ready_order: int
    actors_seen: _containers.RepeatedCompositeFieldContainer[_task_pb2.ExecutorIdentity]
    retired_incarnations: _containers.RepeatedCompositeFieldContainer[RetiredIncarnation]
    paused: bool
    pause_reason: str
    live_tasks: _containers.RepeatedCompositeFieldContainer[TaskSnapshot]
    dependents: _containers.RepeatedCompositeFieldContainer[DependentsEntry]
    finished_tasks: int
    forgotten_ordinals: _containers.RepeatedScalarFieldContainer[int]
    schedules: _containers.RepeatedCompositeFieldContainer[_schedule_pb2.Schedule]
    def __init__(self, seq: _Optional[int] = ..., at_unix_ms: _Optional[int] = ..., highest_token: _Optional[int] = ..., submitted_count: _Optional[int] = ..., ready_order: _Optional[int] = ..., actors_seen: _Optional[_Iterable[_Union[_task_pb2.ExecutorIdentity, _Mapping]]] = ..., retired_incarnations: _Optional[_Iterable[_Union[RetiredIncarnation, _Mapping]]] = ..., paused: _Optional[bool] = ..., pause_reason: _Optional[str] = ..., live_tasks: _Optional[_Iterable[_Union[TaskSnapshot, _Mapping]]] = ..., dependents: _Optional[_Iterable[_Union[DependentsEntry, _Mapping]]] = ..., finished_tasks: _Optional[int] = ..., forgotten_ordinals: _Optional[_Iterable[int]] = ..., schedules: _Optional[_Iterable[_Union[_schedule_pb2.Schedule, _Mapping]]] = ...) -> None: ...
