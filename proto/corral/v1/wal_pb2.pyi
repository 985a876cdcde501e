from google.protobuf import struct_pb2 as _struct_pb2
from corral.v1 import schedule_pb2 as _schedule_pb2
from corral.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WalRecord(_message.Message):
    __slots__ = ("seq", "at_unix_ms", "task_submitted", "lease_granted", "attempt_ended", "task_state_changed", "cancel_requested", "actor_registered", "dispatch_paused", "dispatch_resumed", "dependency_declared", "schedule_created", "schedule_fired", "schedule_paused", "schedule_resumed", "schedule_deleted", "tasks_forgotten")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TASK_SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    LEASE_GRANTED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ENDED_FIELD_NUMBER: _ClassVar[int]
    TASK_STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    ACTOR_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_PAUSED_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_RESUMED_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCY_DECLARED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_CREATED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIRED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_PAUSED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_RESUMED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_DELETED_FIELD_NUMBER: _ClassVar[int]
    TASKS_FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at_unix_ms: int
    task_submitted: TaskSubmitted
    lease_granted: LeaseGranted
    attempt_ended: AttemptEnded
    task_state_changed: TaskStateChanged
    cancel_requested: CancelRequested
    actor_registered: ActorRegistered
    dispatch_paused: DispatchPaused
    dispatch_resumed: DispatchResumed
    dependency_declared: DependencyDeclared
    schedule_created: ScheduleCreated
    schedule_fired: ScheduleFired
    schedule_paused: SchedulePaused
    schedule_resumed: ScheduleResumed
    schedule_deleted: ScheduleDeleted
    tasks_forgotten: TasksForgotten
    def __init__(self, seq: _Optional[int] = ..., at_unix_ms: _Optional[int] = ..., task_submitted: _Optional[_Union[TaskSubmitted, _Mapping]] = ..., lease_granted: _Optional[_Union[LeaseGranted, _Mapping]] = ..., attempt_ended: _Optional[_Union[AttemptEnded, _Mapping]] = ..., task_state_changed: _Optional[_Union[TaskStateChanged, _Mapping]] = ..., cancel_requested: _Optional[_Union[CancelRequested, _Mapping]] = ..., actor_registered: _Optional[_Union[ActorRegistered, _Mapping]] = ..., dispatch_paused: _Optional[_Union[DispatchPaused, _Mapping]] = ..., dispatch_resumed: _Optional[_Union[DispatchResumed, _Mapping]] = ..., dependency_declared: _Optional[_Union[DependencyDeclared, _Mapping]] = ..., schedule_created: _Optional[_Union[ScheduleCreated, _Mapping]] = ..., schedule_fired: _Optional[_Union[ScheduleFired, _Mapping]] = ..., schedule_paused: _Optional[_Union[SchedulePaused, _Mapping]] = ..., schedule_resumed: _Optional[_Union[ScheduleResumed, _Mapping]] = ..., schedule_deleted: _Optional[_Union[ScheduleDeleted, _Mapping]] = ..., tasks_forgotten: _Optional[_Union[TasksForgotten, _Mapping]] = ...) -> None: ...

class TaskSubmitted(_message.Message):
    __slots__ = ("task_id", "spec", "state", "ready_at_unix_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    READY_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    spec: _task_pb2.TaskSpec
    state: _task_pb2.TaskState
    ready_at_unix_ms: int
    def __init__(self, task_id: _Optional[str] = ..., spec: _Optional[_Union[_task_pb2.TaskSpec, _Mapping]] = ..., state: _Optional[_Union[_task_pb2.TaskState, str]] = ..., ready_at_unix_ms: _Optional[int] = ...) -> None: ...

class LeaseGranted(_message.Message):
    __slots__ = ("task_id", "attempt", "fencing_token", "actor_id", "actor_incarnation", "deadline_unix_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_INCARNATION_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    fencing_token: int
    actor_id: str
    actor_incarnation: str
    deadline_unix_ms: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., fencing_token: _Optional[int] = ..., actor_id: _Optional[str] = ..., actor_incarnation: _Optional[str] = ..., deadline_unix_ms: _Optional[int] = ...) -> None: ...

class AttemptEnded(_message.Message):
    __slots__ = ("task_id", "attempt", "fencing_token", "outcome", "output", "output_bytes", "error", "next_state", "ready_at_unix_ms", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NEXT_STATE_FIELD_NUMBER: _ClassVar[int]
    READY_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    fencing_token: int
    outcome: _task_pb2.AttemptOutcome
    output: _struct_pb2.Value
    output_bytes: bytes
    error: _task_pb2.TaskError
    next_state: _task_pb2.TaskState
    ready_at_unix_ms: int
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., fencing_token: _Optional[int] = ..., outcome: _Optional[_Union[_task_pb2.AttemptOutcome, str]] = ..., output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., output_bytes: _Optional[bytes] = ..., error: _Optional[_Union[_task_pb2.TaskError, _Mapping]] = ..., next_state: _Optional[_Union[_task_pb2.TaskState, str]] = ..., ready_at_unix_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class TaskStateChanged(_message.Message):
    __slots__ = ("task_id", "state", "reason", "error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: _task_pb2.TaskState
    reason: str
    error: _task_pb2.TaskError
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[_task_pb2.TaskState, str]] = ..., reason: _Optional[str] = ..., error: _Optional[_Union[_task_pb2.TaskError, _Mapping]] = ...) -> None: ...

class CancelRequested(_message.Message):
    __slots__ = ("task_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ActorRegistered(_message.Message):
    __slots__ = ("identity",)
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    identity: _task_pb2.ExecutorIdentity
    def __init__(self, identity: _Optional[_Union[_task_pb2.ExecutorIdentity, _Mapping]] = ...) -> None: ...

class DispatchPaused(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class DispatchResumed(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class DependencyDeclared(_message.Message):
    __slots__ = ("task_id", "depends_on")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_id: _Optional[str] = ..., depends_on: _Optional[_Iterable[str]] = ...) -> None: ...

class ScheduleCreated(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: _schedule_pb2.Schedule
    def __init__(self, schedule: _Optional[_Union[_schedule_pb2.Schedule, _Mapping]] = ...) -> None: ...

class ScheduleFired(_message.Message):
    __slots__ = ("schedule_id", "created_occurrences_unix_ms", "task_ids", "skipped", "skip_reason", "last_occurrence_unix_ms", "next_occurrence_unix_ms")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_OCCURRENCES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_OCCURRENCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_OCCURRENCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    created_occurrences_unix_ms: _containers.RepeatedScalarFieldContainer[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    skipped: int
    skip_reason: str
    last_occurrence_unix_ms: int
    next_occurrence_unix_ms: int
    def __init__(self, schedule_id: _Optional[str] = ..., created_occurrences_unix_ms: _Optional[_Iterable[int]] = ..., task_ids: _Optional[_Iterable[str]] = ..., skipped: _Optional[int] = ..., skip_reason: _Optional[str] = ..., last_occurrence_unix_ms: _Optional[int] = ..., next_occurrence_unix_ms: _Optional[int] = ...) -> None: ...

class SchedulePaused(_message.Message):
    __slots__ = ("schedule_id", "reason")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    reason: str
    def __init__(self, schedule_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ScheduleResumed(_message.Message):
    __slots__ = ("schedule_id", "next_occurrence_unix_ms")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_OCCURRENCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    next_occurrence_unix_ms: int
    def __init__(self, schedule_id: _Optional[str] = ..., next_occurrence_unix_ms: _Optional[int] = ...) -> None: ...

class ScheduleDeleted(_message.Message):
    __slots__ = ("schedule_id",)
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    def __init__(self, schedule_id: _Optional[str] = ...) -> None: ...

class TasksForgotten(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...
