import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_SCHEDULED: _ClassVar[TaskState]
    TASK_STATE_READY: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_RETRY_WAIT: _ClassVar[TaskState]
    TASK_STATE_SUCCEEDED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_CANCELED: _ClassVar[TaskState]
    TASK_STATE_WAITING_FOR_DEPENDENCIES: _ClassVar[TaskState]
    TASK_STATE_WAITING_FOR_CHILDREN: _ClassVar[TaskState]

class AttemptOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTEMPT_OUTCOME_UNSPECIFIED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_SUCCEEDED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_FAILED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_CANCELED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_TIMED_OUT: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_LOST: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_HANDED_BACK: _ClassVar[AttemptOutcome]

class BackoffKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKOFF_KIND_UNSPECIFIED: _ClassVar[BackoffKind]
    BACKOFF_KIND_FIXED: _ClassVar[BackoffKind]
    BACKOFF_KIND_EXPONENTIAL: _ClassVar[BackoffKind]

class Jitter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JITTER_UNSPECIFIED: _ClassVar[Jitter]
    JITTER_NONE: _ClassVar[Jitter]
    JITTER_FULL: _ClassVar[Jitter]
    JITTER_EQUAL: _ClassVar[Jitter]

class ConcurrencyPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONCURRENCY_POLICY_UNSPECIFIED: _ClassVar[ConcurrencyPolicy]
    CONCURRENCY_POLICY_QUEUE: _ClassVar[ConcurrencyPolicy]
    CONCURRENCY_POLICY_CANCEL_IN_PROGRESS: _ClassVar[ConcurrencyPolicy]
    CONCURRENCY_POLICY_DROP_NEW: _ClassVar[ConcurrencyPolicy]
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_SCHEDULED: TaskState
TASK_STATE_READY: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_RETRY_WAIT: TaskState
TASK_STATE_SUCCEEDED: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_CANCELED: TaskState
TASK_STATE_WAITING_FOR_DEPENDENCIES: TaskState
TASK_STATE_WAITING_FOR_CHILDREN: TaskState
ATTEMPT_OUTCOME_UNSPECIFIED: AttemptOutcome
ATTEMPT_OUTCOME_SUCCEEDED: AttemptOutcome
ATTEMPT_OUTCOME_FAILED: AttemptOutcome
ATTEMPT_OUTCOME_CANCELED: AttemptOutcome
ATTEMPT_OUTCOME_TIMED_OUT: AttemptOutcome
ATTEMPT_OUTCOME_LOST: AttemptOutcome
ATTEMPT_OUTCOME_HANDED_BACK: AttemptOutcome
BACKOFF_KIND_UNSPECIFIED: BackoffKind
BACKOFF_KIND_FIXED: BackoffKind
BACKOFF_KIND_EXPONENTIAL: BackoffKind
JITTER_UNSPECIFIED: Jitter
JITTER_NONE: Jitter
JITTER_FULL: Jitter
JITTER_EQUAL: Jitter
CONCURRENCY_POLICY_UNSPECIFIED: ConcurrencyPolicy
CONCURRENCY_POLICY_QUEUE: ConcurrencyPolicy
CONCURRENCY_POLICY_CANCEL_IN_PROGRESS: ConcurrencyPolicy
CONCURRENCY_POLICY_DROP_NEW: ConcurrencyPolicy

class Backoff(_message.Message):
    __slots__ = ("kind", "initial", "multiplier", "max", "jitter")
    KIND_FIELD_NUMBER: _ClassVar[int]
    INITIAL_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    kind: BackoffKind
    initial: _duration_pb2.Duration
    multiplier: float
    max: _duration_pb2.Duration
    jitter: Jitter
    def __init__(self, kind: _Optional[_Union[BackoffKind, str]] = ..., initial: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., multiplier: _Optional[float] = ..., max: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., jitter: _Optional[_Union[Jitter, str]] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("max_attempts", "max_lost_attempts", "backoff")
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_LOST_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    max_attempts: int
    max_lost_attempts: int
    backoff: Backoff
    def __init__(self, max_attempts: _Optional[int] = ..., max_lost_attempts: _Optional[int] = ..., backoff: _Optional[_Union[Backoff, _Mapping]] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("task_id", "type", "input", "input_bytes", "priority", "retry", "execution_timeout", "schedule_to_start_timeout", "not_before", "idempotency_key", "labels", "required_capabilities", "trace_context", "concurrency_key", "concurrency_limit", "concurrency_policy", "hold_key_during_retry", "depends_on", "schedule_to_close_timeout", "parent_task_id", "child_key", "detached", "allow_failure")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_TO_START_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_POLICY_FIELD_NUMBER: _ClassVar[int]
    HOLD_KEY_DURING_RETRY_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_TO_CLOSE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CHILD_KEY_FIELD_NUMBER: _ClassVar[int]
    DETACHED_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FAILURE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    type: str
    input: _struct_pb2.Value
    input_bytes: bytes
    priority: int
    retry: RetryPolicy
    execution_timeout: _duration_pb2.Duration
    schedule_to_start_timeout: _duration_pb2.Duration
    not_before: _timestamp_pb2.Timestamp
    idempotency_key: str
    labels: _containers.ScalarMap[str, str]
    required_capabilities: _containers.RepeatedScalarFieldContainer[str]
    trace_context: _containers.ScalarMap[str, str]
    concurrency_key: str
    concurrency_limit: int
    concurrency_policy: ConcurrencyPolicy
    hold_key_during_retry: bool
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    schedule_to_close_timeout: _duration_pb2.Duration
    parent_task_id: str
    child_key: str
    detached: bool
    allow_failure: bool
    def __init__(self, task_id: _Optional[str] = ..., type: _Optional[str] = ..., input: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., input_bytes: _Optional[bytes] = ..., priority: _Optional[int] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., execution_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., schedule_to_start_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., required_capabilities: _Optional[_Iterable[str]] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., concurrency_key: _Optional[str] = ..., concurrency_limit: _Optional[int] = ..., concurrency_policy: _Optional[_Union[ConcurrencyPolicy, str]] = ..., hold_key_during_retry: _Optional[bool] = ..., depends_on: _Optional[_Iterable[str]] = ..., schedule_to_close_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., parent_task_id: _Optional[str] = ..., child_key: _Optional[str] = ..., detached: _Optional[bool] = ..., allow_failure: _Optional[bool] = ...) -> None: ...

class TaskError(_message.Message):
    __slots__ = ("message", "kind", "non_retryable")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NON_RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    message: str
    kind: str
    non_retryable: bool
    def __init__(self, message: _Optional[str] = ..., kind: _Optional[str] = ..., non_retryable: _Optional[bool] = ...) -> None: ...

class ExecutorIdentity(_message.Message):
    __slots__ = ("actor_id", "incarnation", "host", "version", "task_types", "capabilities", "labels", "slots")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPES_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    incarnation: str
    host: str
    version: str
    task_types: _containers.RepeatedScalarFieldContainer[str]
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    slots: int
    def __init__(self, actor_id: _Optional[str] = ..., incarnation: _Optional[str] = ..., host: _Optional[str] = ..., version: _Optional[str] = ..., task_types: _Optional[_Iterable[str]] = ..., capabilities: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., slots: _Optional[int] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("number", "fencing_token", "actor_id", "actor_incarnation", "started_at", "ended_at", "outcome", "error")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    number: int
    fencing_token: int
    actor_id: str
    actor_incarnation: str
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    outcome: AttemptOutcome
    error: TaskError
    def __init__(self, number: _Optional[int] = ..., fencing_token: _Optional[int] = ..., actor_id: _Optional[str] = ..., actor_incarnation: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome: _Optional[_Union[AttemptOutcome, str]] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "spec", "state", "output", "output_bytes", "error", "attempts", "created_at", "updated_at", "ready_at", "failed_attempts", "lost_attempts", "cancel_requested", "state_reason", "depends_on", "unfinished_prerequisites", "parent_task_id", "depth", "children", "unfinished_children")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    READY_AT_FIELD_NUMBER: _ClassVar[int]
    FAILED_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LOST_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_PREREQUISITES_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_CHILDREN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    spec: TaskSpec
    state: TaskState
    output: _struct_pb2.Value
    output_bytes: bytes
    error: TaskError
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    ready_at: _timestamp_pb2.Timestamp
    failed_attempts: int
    lost_attempts: int
    cancel_requested: bool
    state_reason: str
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    unfinished_prerequisites: int
    parent_task_id: str
    depth: int
    children: int
    unfinished_children: int
    def __init__(self, task_id: _Optional[str] = ..., spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., state: _Optional[_Union[TaskState, str]] = ..., output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., output_bytes: _Optional[bytes] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ready_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., failed_attempts: _Optional[int] = ..., lost_attempts: _Optional[int] = ..., cancel_requested: _Optional[bool] = ..., state_reason: _Optional[str] = ..., depends_on: _Optional[_Iterable[str]] = ..., unfinished_prerequisites: _Optional[int] = ..., parent_task_id: _Optional[str] = ..., depth: _Optional[int] = ..., children: _Optional[int] = ..., unfinished_children: _Optional[int] = ...) -> None: ...
