from google.protobuf import struct_pb2 as _struct_pb2
from corral.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CancelReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANCEL_REASON_UNSPECIFIED: _ClassVar[CancelReason]
    CANCEL_REASON_REQUESTED: _ClassVar[CancelReason]
    CANCEL_REASON_TIMED_OUT: _ClassVar[CancelReason]
    CANCEL_REASON_LEASE_LOST: _ClassVar[CancelReason]
CANCEL_REASON_UNSPECIFIED: CancelReason
CANCEL_REASON_REQUESTED: CancelReason
CANCEL_REASON_TIMED_OUT: CancelReason
CANCEL_REASON_LEASE_LOST: CancelReason

class LeaseRef(_message.Message):
    __slots__ = ("task_id", "attempt", "fencing_token")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    fencing_token: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("identity", "held_leases")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    HELD_LEASES_FIELD_NUMBER: _ClassVar[int]
    identity: _task_pb2.ExecutorIdentity
    held_leases: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    def __init__(self, identity: _Optional[_Union[_task_pb2.ExecutorIdentity, _Mapping]] = ..., held_leases: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ...) -> None: ...

class AttemptResult(_message.Message):
    __slots__ = ("lease", "outcome", "output", "output_bytes", "error")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    outcome: _task_pb2.AttemptOutcome
    output: _struct_pb2.Value
    output_bytes: bytes
    error: _task_pb2.TaskError
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., outcome: _Optional[_Union[_task_pb2.AttemptOutcome, str]] = ..., output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., output_bytes: _Optional[bytes] = ..., error: _Optional[_Union[_task_pb2.TaskError, _Mapping]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "heartbeats", "results", "draining", "child_submissions", "child_waits")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEATS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    CHILD_SUBMISSIONS_FIELD_NUMBER: _ClassVar[int]
    CHILD_WAITS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeats: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    results: _containers.RepeatedCompositeFieldContainer[AttemptResult]
    draining: bool
    child_submissions: _containers.RepeatedCompositeFieldContainer[ChildSubmission]
    child_waits: _containers.RepeatedCompositeFieldContainer[ChildWait]
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeats: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ..., results: _Optional[_Iterable[_Union[AttemptResult, _Mapping]]] = ..., draining: _Optional[bool] = ..., child_submissions: _Optional[_Iterable[_Union[ChildSubmission, _Mapping]]] = ..., child_waits: _Optional[_Iterable[_Union[ChildWait, _Mapping]]] = ...) -> None: ...

class ChildSubmission(_message.Message):
    __slots__ = ("parent", "request_id", "task")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    parent: LeaseRef
    request_id: int
    task: _task_pb2.TaskSpec
    def __init__(self, parent: _Optional[_Union[LeaseRef, _Mapping]] = ..., request_id: _Optional[int] = ..., task: _Optional[_Union[_task_pb2.TaskSpec, _Mapping]] = ...) -> None: ...

class ChildSubmitted(_message.Message):
    __slots__ = ("request_id", "code", "message", "task_id", "created", "state")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    code: int
    message: str
    task_id: str
    created: bool
    state: _task_pb2.TaskState
    def __init__(self, request_id: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., task_id: _Optional[str] = ..., created: _Optional[bool] = ..., state: _Optional[_Union[_task_pb2.TaskState, str]] = ...) -> None: ...

class ChildWait(_message.Message):
    __slots__ = ("parent", "task_ids")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    parent: LeaseRef
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, parent: _Optional[_Union[LeaseRef, _Mapping]] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ChildOutcome(_message.Message):
    __slots__ = ("parent", "task_id", "state", "output", "output_bytes", "error")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    parent: LeaseRef
    task_id: str
    state: _task_pb2.TaskState
    output: _struct_pb2.Value
    output_bytes: bytes
    error: _task_pb2.TaskError
    def __init__(self, parent: _Optional[_Union[LeaseRef, _Mapping]] = ..., task_id: _Optional[str] = ..., state: _Optional[_Union[_task_pb2.TaskState, str]] = ..., output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., output_bytes: _Optional[bytes] = ..., error: _Optional[_Union[_task_pb2.TaskError, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("coordinator_id", "lease_ttl_ms", "heartbeat_interval_ms", "adopted")
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    ADOPTED_FIELD_NUMBER: _ClassVar[int]
    coordinator_id: str
    lease_ttl_ms: int
    heartbeat_interval_ms: int
    adopted: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    def __init__(self, coordinator_id: _Optional[str] = ..., lease_ttl_ms: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., adopted: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("ref", "task_type", "input", "input_bytes", "execution_timeout_ms", "deadline_unix_ms", "labels", "trace_context", "prerequisites")
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
    REF_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PREREQUISITES_FIELD_NUMBER: _ClassVar[int]
    ref: LeaseRef
    task_type: str
    input: _struct_pb2.Value
    input_bytes: bytes
    execution_timeout_ms: int
    deadline_unix_ms: int
    labels: _containers.ScalarMap[str, str]
    trace_context: _containers.ScalarMap[str, str]
    prerequisites: _containers.RepeatedCompositeFieldContainer[PrerequisiteResult]
    def __init__(self, ref: _Optional[_Union[LeaseRef, _Mapping]] = ..., task_type: _Optional[str] = ..., input: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., input_bytes: _Optional[bytes] = ..., execution_timeout_ms: _Optional[int] = ..., deadline_unix_ms: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., prerequisites: _Optional[_Iterable[_Union[PrerequisiteResult, _Mapping]]] = ...) -> None: ...

class PrerequisiteResult(_message.Message):
    __slots__ = ("task_id", "output", "output_bytes")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    output: _struct_pb2.Value
    output_bytes: bytes
    def __init__(self, task_id: _Optional[str] = ..., output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., output_bytes: _Optional[bytes] = ...) -> None: ...

class ResultAck(_message.Message):
    __slots__ = ("lease", "accepted", "reason")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    accepted: bool
    reason: str
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelAttempt(_message.Message):
    __slots__ = ("lease", "reason", "message")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseRef
    reason: CancelReason
    message: str
    def __init__(self, lease: _Optional[_Union[LeaseRef, _Mapping]] = ..., reason: _Optional[_Union[CancelReason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "leases", "acks", "cancels", "child_submitted", "child_outcomes")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    CANCELS_FIELD_NUMBER: _ClassVar[int]
    CHILD_SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    CHILD_OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    acks: _containers.RepeatedCompositeFieldContainer[ResultAck]
    cancels: _containers.RepeatedCompositeFieldContainer[CancelAttempt]
    child_submitted: _containers.RepeatedCompositeFieldContainer[ChildSubmitted]
    child_outcomes: _containers.RepeatedCompositeFieldContainer[ChildOutcome]
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., acks: _Optional[_Iterable[_Union[ResultAck, _Mapping]]] = ..., cancels: _Optional[_Iterable[_Union[CancelAttempt, _Mapping]]] = ..., child_submitted: _Optional[_Iterable[_Union[ChildSubmitted, _Mapping]]] = ..., child_outcomes: _Optional[_Iterable[_Union[ChildOutcome, _Mapping]]] = ...) -> None: ...
