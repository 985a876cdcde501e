"""Validation and normalisation of a submitted TaskSpec.

Owns: what a valid task looks like and the defaults applied to it. `normalize_spec` checks every
field (raising InvalidField with the field's path, e.g. `tasks[3].retry.max_attempts`) and fills
defaults into the spec itself, so the spec written to the WAL is complete and replay never depends
on the defaults of the code that replays it. Pure: no I/O, no clock.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from corral.v1 import task_pb2

from .backoff import BackoffKind, BackoffPolicy, InvalidBackoff, JitterKind
from .concurrency import normalize_concurrency
from .durations import set_ms, to_ms
from .errors import InvalidField

TASK_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
TYPE_RE = re.compile(r"^[A-Za-z0-9._:/\-]{1,128}$")
CAPABILITY_RE = TYPE_RE

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_MAX_LOST_ATTEMPTS = 3
DEFAULT_EXECUTION_TIMEOUT_MS = 60_000
MAX_ATTEMPTS_LIMIT = 1_000
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
MAX_NOT_BEFORE_AHEAD_MS = 366 * 24 * 3600 * 1000
MAX_LABELS = 64
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 256
MAX_CAPABILITIES = 32
# W3C traceparent is 55 characters; tracestate at most 32 members (512 characters recommended).
MAX_TRACE_CONTEXT_ENTRIES = 8
MAX_TRACE_CONTEXT_VALUE_CHARS = 1024
MAX_IDEMPOTENCY_KEY_CHARS = 256


@dataclass(frozen=True, slots=True)
class SpecLimits:
    max_input_bytes: int = 1 << 20


# google.protobuf Duration/Timestamp: nanos is the fraction of a second. A larger value is not a
# valid message (protobuf's JSON mapping, grpcurl and `corral get` cannot render it).
MAX_NANOS = 999_999_999


def _duration_ms(field: str, d, *, allow_zero: bool) -> int:
    if d.seconds < 0 or d.nanos < 0:
        raise InvalidField(field, "must not be negative")
    if d.nanos > MAX_NANOS:
        raise InvalidField(field, f"nanos must be at most {MAX_NANOS}, got {d.nanos}")
    ms = to_ms(d)
    if ms == 0 and not allow_zero:
        raise InvalidField(field, "must be positive (leave it unset for the default)")
    if ms > MAX_TIMEOUT_MS:
        raise InvalidField(field, f"must be at most {MAX_TIMEOUT_MS // 3_600_000} hours, got {ms} ms")
    return ms


def normalize_spec(spec: task_pb2.TaskSpec, field: str, limits: SpecLimits, now_ms: int,
                   *, child: bool = False) -> None:
    """Validate `spec` in place and fill its defaults. `field` is the path prefix for errors.

    `child`: the spec comes from a running handler (ActorService child submission): child_key is
    required and the child fields are allowed; from a client they are refused."""
    if spec.schedule_id or spec.HasField("scheduled_for"):  # schedules (core/schedules.py) set these
        name = "schedule_id" if spec.schedule_id else "scheduled_for"
        raise InvalidField(f"{field}.{name}", "is set by the coordinator on tasks a schedule creates; leave it empty")
    if spec.task_id and not TASK_ID_RE.fullmatch(spec.task_id):
        raise InvalidField(f"{field}.task_id", "must be 1-128 characters of [A-Za-z0-9._:-]")
    if not spec.type:
        raise InvalidField(f"{field}.type", "is required")
    if not TYPE_RE.fullmatch(spec.type):
        raise InvalidField(f"{field}.type", "must be 1-128 characters of [A-Za-z0-9._:/-]")
    payload = spec.WhichOneof("payload")
    if payload == "input_bytes":
        size = len(spec.input_bytes)
    elif payload == "input":
        size = spec.input.ByteSize()
    else:
        size = 0
    if size > limits.max_input_bytes:
        raise InvalidField(f"{field}.input", f"is {size} bytes, over the limit of {limits.max_input_bytes}")

    retry = spec.retry
    if retry.max_attempts < 0 or retry.max_attempts > MAX_ATTEMPTS_LIMIT:
        raise InvalidField(f"{field}.retry.max_attempts", f"must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {retry.max_attempts}")
    if retry.max_lost_attempts < 0 or retry.max_lost_attempts > MAX_ATTEMPTS_LIMIT:
        raise InvalidField(f"{field}.retry.max_lost_attempts", f"must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {retry.max_lost_attempts}")
    if retry.max_attempts == 0:
        retry.max_attempts = DEFAULT_MAX_ATTEMPTS
    if retry.max_lost_attempts == 0:
        retry.max_lost_attempts = DEFAULT_MAX_LOST_ATTEMPTS
    if retry.HasField("backoff"):
        try:
            policy = BackoffPolicy.from_proto(retry.backoff)
        except InvalidBackoff as e:
            raise InvalidField(f"{field}.retry.backoff.{e.field}", e.message) from None
        write_backoff(policy, retry.backoff)
    else:
        retry.backoff.CopyFrom(DEFAULT_BACKOFF_PROTO)

    if spec.HasField("execution_timeout"):
        _duration_ms(f"{field}.execution_timeout", spec.execution_timeout, allow_zero=False)
    else:
        set_ms(spec.execution_timeout, DEFAULT_EXECUTION_TIMEOUT_MS)
    if spec.HasField("schedule_to_start_timeout"):
        _duration_ms(f"{field}.schedule_to_start_timeout", spec.schedule_to_start_timeout, allow_zero=False)
    if spec.HasField("not_before"):
        nb = spec.not_before
        if nb.seconds < 0 or nb.nanos < 0:
            raise InvalidField(f"{field}.not_before", "must be after 1970-01-01")
        if nb.nanos > MAX_NANOS:
            raise InvalidField(f"{field}.not_before", f"nanos must be at most {MAX_NANOS}, got {nb.nanos}")
        if to_ms(nb) > now_ms + MAX_NOT_BEFORE_AHEAD_MS:
            raise InvalidField(f"{field}.not_before", "must be within a year from now")

    if spec.HasField("schedule_to_close_timeout"):
        _duration_ms(f"{field}.schedule_to_close_timeout", spec.schedule_to_close_timeout, allow_zero=False)
    if child:
        if not spec.child_key:
            raise InvalidField(f"{field}.child_key", "is required for a child task")
        if not TASK_ID_RE.fullmatch(spec.child_key):
            raise InvalidField(f"{field}.child_key", "must be 1-128 characters of [A-Za-z0-9._:-]")
        if spec.parent_task_id:
            raise InvalidField(f"{field}.parent_task_id", "is set by the coordinator from the parent's lease")
    elif spec.parent_task_id or spec.child_key or spec.detached or spec.allow_failure:
        name = next(n for n in ("parent_task_id", "child_key", "detached", "allow_failure") if getattr(spec, n))
        raise InvalidField(f"{field}.{name}", "is only for child tasks, submitted by a running handler "
                                              "(AttemptContext.submit_child)")
    normalize_concurrency(spec, field)
    if spec.depends_on:
        from .graph import normalize_depends_on  # graph.py imports the projection, which needs spec.py

        normalize_depends_on(spec, field)
    if len(spec.idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidField(f"{field}.idempotency_key", f"must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters")
    if len(spec.labels) > MAX_LABELS:
        raise InvalidField(f"{field}.labels", f"at most {MAX_LABELS} labels")
    for k, v in spec.labels.items():
        if not k or len(k) > MAX_LABEL_KEY_CHARS:
            raise InvalidField(f"{field}.labels", f"key {k!r} must be 1-{MAX_LABEL_KEY_CHARS} characters")
        if len(v) > MAX_LABEL_VALUE_CHARS:
            raise InvalidField(f"{field}.labels[{k}]", f"must be at most {MAX_LABEL_VALUE_CHARS} characters")
    if len(spec.required_capabilities) > MAX_CAPABILITIES:
        raise InvalidField(f"{field}.required_capabilities", f"at most {MAX_CAPABILITIES}")
    for i, cap in enumerate(spec.required_capabilities):
        if not CAPABILITY_RE.fullmatch(cap):
            raise InvalidField(f"{field}.required_capabilities[{i}]", "must be 1-128 characters of [A-Za-z0-9._:/-]")
    if spec.trace_context:
        if len(spec.trace_context) > MAX_TRACE_CONTEXT_ENTRIES:
            raise InvalidField(f"{field}.trace_context", f"at most {MAX_TRACE_CONTEXT_ENTRIES} entries")
        for k, v in spec.trace_context.items():
            if not k or len(k) > MAX_LABEL_KEY_CHARS or len(v) > MAX_TRACE_CONTEXT_VALUE_CHARS:
                raise InvalidField(f"{field}.trace_context[{k}]", f"key must be 1-{MAX_LABEL_KEY_CHARS} characters, "
                                   f"value at most {MAX_TRACE_CONTEXT_VALUE_CHARS}")


DEFAULT_BACKOFF = BackoffPolicy()
_KIND_TO_PROTO = {BackoffKind.FIXED: task_pb2.BACKOFF_KIND_FIXED, BackoffKind.EXPONENTIAL: task_pb2.BACKOFF_KIND_EXPONENTIAL}
_JITTER_TO_PROTO = {JitterKind.NONE: task_pb2.JITTER_NONE, JitterKind.FULL: task_pb2.JITTER_FULL,
                    JitterKind.EQUAL: task_pb2.JITTER_EQUAL}


def write_backoff(policy: BackoffPolicy, msg: task_pb2.Backoff) -> None:
    """Write every field of `policy` into `msg`, so the WAL holds no implicit default."""
    msg.kind = _KIND_TO_PROTO[policy.kind]
    set_ms(msg.initial, policy.initial_ms)
    msg.multiplier = policy.multiplier
    set_ms(msg.max, policy.max_ms)
    msg.jitter = _JITTER_TO_PROTO[policy.jitter]


DEFAULT_BACKOFF_PROTO = task_pb2.Backoff()
write_backoff(DEFAULT_BACKOFF, DEFAULT_BACKOFF_PROTO)


def spec_fingerprint(spec: task_pb2.TaskSpec) -> bytes:
    """Bytes that are equal for two normalised specs that ask for the same task.

    The trace context is not part of what is asked for (a retry of a submission from another
    trace is the same task), so it is left out."""
    if spec.trace_context:
        copy = task_pb2.TaskSpec()
        copy.CopyFrom(spec)
        copy.ClearField("trace_context")
        spec = copy
    return spec.SerializeToString(deterministic=True)
