"""TaskSpec validation and normalisation (coordinator/core/spec.py)."""
from __future__ import annotations

import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from corral.v1 import task_pb2
from coordinator.core.errors import CorralError, InvalidField
from coordinator.core.spec import (DEFAULT_EXECUTION_TIMEOUT_MS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_LOST_ATTEMPTS,
                                   MAX_CAPABILITIES, MAX_IDEMPOTENCY_KEY_CHARS, MAX_LABEL_KEY_CHARS,
                                   MAX_LABEL_VALUE_CHARS, MAX_LABELS, MAX_NOT_BEFORE_AHEAD_MS, MAX_TIMEOUT_MS,
                                   SpecLimits, normalize_spec, spec_fingerprint)

from .core_fixtures import T0, json_value

LIMITS = SpecLimits()
DAY_MS = 24 * 3600 * 1000


def base(**kw) -> task_pb2.TaskSpec:
    kw.setdefault("type", "email.send")
    return task_pb2.TaskSpec(**kw)


def norm(s: task_pb2.TaskSpec, field: str = "task", limits: SpecLimits = LIMITS, now_ms: int = T0) -> task_pb2.TaskSpec:
    normalize_spec(s, field, limits, now_ms)
    return s


def rejected(s: task_pb2.TaskSpec, field: str = "task", limits: SpecLimits = LIMITS, now_ms: int = T0) -> InvalidField:
    with pytest.raises(InvalidField) as info:
        normalize_spec(s, field, limits, now_ms)
    assert str(info.value).startswith(info.value.field + ": ")
    return info.value


def dur(ms: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(ms)
    return d


# ---- required fields and identifiers -----------------------------------------------------------

def test_missing_type_is_rejected_with_field_task_type() -> None:
    err = rejected(task_pb2.TaskSpec())
    assert err.field == "task.type"
    assert "required" in err.message


def test_invalid_field_is_a_corral_error() -> None:
    assert issubclass(InvalidField, CorralError)


@pytest.mark.parametrize("type_", ["has space", "ä", "x" * 129, "semi;colon", "a\tb"])
def test_bad_type_is_rejected(type_: str) -> None:
    assert rejected(base(type=type_)).field == "task.type"


@pytest.mark.parametrize("type_", ["t", "email.send", "ns/queue:v2-x_y", "x" * 128])
def test_good_type_is_accepted(type_: str) -> None:
    assert norm(base(type=type_)).type == type_


@pytest.mark.parametrize("task_id", ["has space", "a/b", "x" * 129, "é", "id\x00"])
def test_bad_task_id_is_rejected_with_field_task_id(task_id: str) -> None:
    assert rejected(base(task_id=task_id)).field == "task.task_id"


@pytest.mark.parametrize("task_id", ["", "a", "order-17:retry_2.x", "x" * 128])
def test_good_or_empty_task_id_is_accepted(task_id: str) -> None:
    assert norm(base(task_id=task_id)).task_id == task_id


def test_field_prefix_is_used_in_errors() -> None:
    assert rejected(task_pb2.TaskSpec(), field="tasks[3]").field == "tasks[3].type"
    assert rejected(base(task_id="bad id"), field="tasks[0]").field == "tasks[0].task_id"
    s = base()
    s.retry.max_attempts = -1
    assert rejected(s, field="tasks[12]").field == "tasks[12].retry.max_attempts"
    s = base()
    s.retry.backoff.multiplier = 0.5
    assert rejected(s, field="req.tasks[3]").field == "req.tasks[3].retry.backoff.multiplier"


def test_trailing_newline_in_identifiers_is_rejected() -> None:
    assert rejected(base(task_id="abc\n")).field == "task.task_id"
    assert rejected(base(type="email\n")).field == "task.type"
    s = base()
    s.required_capabilities.append("gpu\n")
    assert rejected(s).field == "task.required_capabilities[0]"


# ---- input size --------------------------------------------------------------------------------

def test_input_bytes_over_limit_is_rejected_at_task_input() -> None:
    limits = SpecLimits(max_input_bytes=16)
    err = rejected(base(input_bytes=b"x" * 17), limits=limits)
    assert err.field == "task.input"
    assert "17" in err.message and "16" in err.message


def test_input_bytes_at_limit_is_accepted() -> None:
    assert norm(base(input_bytes=b"x" * 16), limits=SpecLimits(max_input_bytes=16)).input_bytes == b"x" * 16


def test_json_input_over_limit_is_rejected_at_task_input() -> None:
    limits = SpecLimits(max_input_bytes=64)
    s = base(input=json_value({"k": "v" * 100}))
    assert rejected(s, limits=limits).field == "task.input"
    assert norm(base(input=json_value({"k": "v"})), limits=limits).input.struct_value["k"] == "v"


def test_input_size_is_the_serialized_value_size() -> None:
    v = json_value("y" * 50)
    size = v.ByteSize()
    assert norm(base(input=v), limits=SpecLimits(max_input_bytes=size)).input == v
    assert rejected(base(input=v), limits=SpecLimits(max_input_bytes=size - 1)).field == "task.input"


def test_default_input_limit_is_one_mib() -> None:
    assert len(norm(base(input_bytes=b"\0" * (1 << 20))).input_bytes) == 1 << 20
    assert rejected(base(input_bytes=b"\0" * ((1 << 20) + 1))).field == "task.input"


# ---- timeouts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [duration_pb2.Duration(seconds=-1), duration_pb2.Duration(nanos=-1),
                               duration_pb2.Duration(seconds=0), duration_pb2.Duration(nanos=999_999)])
def test_negative_or_zero_execution_timeout_is_rejected(d: duration_pb2.Duration) -> None:
    s = base()
    s.execution_timeout.CopyFrom(d)
    assert rejected(s).field == "task.execution_timeout"


@pytest.mark.parametrize("ms", [MAX_TIMEOUT_MS + 1, 30 * DAY_MS, 10**15])
def test_absurd_execution_timeout_over_7_days_is_rejected(ms: int) -> None:
    s = base(execution_timeout=dur(ms))
    err = rejected(s)
    assert err.field == "task.execution_timeout"
    assert "168 hours" in err.message


def test_execution_timeout_of_exactly_7_days_is_accepted() -> None:
    assert MAX_TIMEOUT_MS == 7 * DAY_MS
    assert norm(base(execution_timeout=dur(MAX_TIMEOUT_MS))).execution_timeout.ToMilliseconds() == MAX_TIMEOUT_MS


def test_explicit_execution_timeout_is_kept() -> None:
    assert norm(base(execution_timeout=dur(1_500))).execution_timeout.ToMilliseconds() == 1_500


@pytest.mark.parametrize(("ms", "ok"), [(-5_000, False), (0, False), (1, True), (MAX_TIMEOUT_MS, True),
                                        (MAX_TIMEOUT_MS + 1, False)])
def test_schedule_to_start_timeout_bounds(ms: int, ok: bool) -> None:
    s = base(schedule_to_start_timeout=dur(ms))
    if ok:
        assert norm(s).schedule_to_start_timeout.ToMilliseconds() == ms
    else:
        assert rejected(s).field == "task.schedule_to_start_timeout"


def test_unset_schedule_to_start_timeout_stays_unset() -> None:
    assert not norm(base()).HasField("schedule_to_start_timeout")


# ---- retry policy ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [-1, -1000, 1001, 2**31 - 1])
def test_max_attempts_negative_or_over_1000_is_rejected(n: int) -> None:
    s = base()
    s.retry.max_attempts = n
    err = rejected(s)
    assert err.field == "task.retry.max_attempts"
    assert str(n) in err.message


@pytest.mark.parametrize("n", [-1, 1001])
def test_max_lost_attempts_negative_or_over_1000_is_rejected(n: int) -> None:
    s = base()
    s.retry.max_lost_attempts = n
    assert rejected(s).field == "task.retry.max_lost_attempts"


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_max_attempts_in_range_is_kept(n: int) -> None:
    s = base()
    s.retry.max_attempts = n
    s.retry.max_lost_attempts = n
    out = norm(s)
    assert (out.retry.max_attempts, out.retry.max_lost_attempts) == (n, n)


def test_defaults_are_filled_into_the_spec() -> None:
    s = norm(base())
    assert (DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_LOST_ATTEMPTS, DEFAULT_EXECUTION_TIMEOUT_MS) == (3, 3, 60_000)
    assert s.retry.max_attempts == 3
    assert s.retry.max_lost_attempts == 3
    assert s.HasField("execution_timeout")
    assert s.execution_timeout.ToMilliseconds() == 60_000


def test_defaults_survive_serialization() -> None:
    s = task_pb2.TaskSpec.FromString(norm(base()).SerializeToString())
    assert (s.retry.max_attempts, s.retry.max_lost_attempts, s.execution_timeout.ToMilliseconds()) == (3, 3, 60_000)


def test_normalize_is_idempotent() -> None:
    s = norm(base(input=json_value({"a": 1}), priority=4, labels={"team": "x"}))
    once = spec_fingerprint(s)
    assert spec_fingerprint(norm(s)) == once


@pytest.mark.parametrize(("backoff", "field"), [
    (task_pb2.Backoff(multiplier=0.5), "task.retry.backoff.multiplier"),
    (task_pb2.Backoff(kind=99), "task.retry.backoff.kind"),
    (task_pb2.Backoff(jitter=99), "task.retry.backoff.jitter"),
    (task_pb2.Backoff(initial=dur(10_000), max=dur(5_000)), "task.retry.backoff.max"),
    (task_pb2.Backoff(initial=duration_pb2.Duration(seconds=-2)), "task.retry.backoff.initial"),
])
def test_backoff_errors_surface_as_task_retry_backoff_field(backoff: task_pb2.Backoff, field: str) -> None:
    s = base()
    s.retry.backoff.CopyFrom(backoff)
    err = rejected(s)
    assert err.field == field
    assert err.message  # the backoff's own message, without its field prefix
    assert not err.message.startswith(field.rsplit(".", 1)[1] + ":")


def test_valid_backoff_keeps_its_values_and_gets_its_defaults_written() -> None:
    s = base()
    s.retry.backoff.CopyFrom(task_pb2.Backoff(kind=task_pb2.BACKOFF_KIND_FIXED, initial=dur(200), max=dur(200)))
    b = norm(s).retry.backoff
    assert (b.kind, b.initial.ToMilliseconds(), b.max.ToMilliseconds()) == (task_pb2.BACKOFF_KIND_FIXED, 200, 200)
    assert (b.multiplier, b.jitter) == (2.0, task_pb2.JITTER_NONE)


def test_default_backoff_is_written_into_the_spec() -> None:
    b = norm(base()).retry.backoff
    assert (b.kind, b.initial.ToMilliseconds(), b.multiplier, b.max.ToMilliseconds(), b.jitter) == (
        task_pb2.BACKOFF_KIND_EXPONENTIAL, 1000, 2.0, 300_000, task_pb2.JITTER_NONE)


# ---- labels, capabilities, idempotency key -------------------------------------------------------

def test_at_most_64_labels() -> None:
    ok = base()
    ok.labels.update({f"k{i}": "v" for i in range(MAX_LABELS)})
    assert len(norm(ok).labels) == MAX_LABELS
    bad = base()
    bad.labels.update({f"k{i}": "v" for i in range(MAX_LABELS + 1)})
    assert rejected(bad).field == "task.labels"


@pytest.mark.parametrize("key", ["", "k" * (MAX_LABEL_KEY_CHARS + 1)])
def test_label_key_empty_or_too_long_is_rejected(key: str) -> None:
    s = base()
    s.labels[key] = "v"
    assert rejected(s).field == "task.labels"


def test_label_value_too_long_is_rejected_with_its_key() -> None:
    s = base()
    s.labels["owner"] = "v" * (MAX_LABEL_VALUE_CHARS + 1)
    assert rejected(s).field == "task.labels[owner]"


def test_label_limits_are_inclusive() -> None:
    s = base()
    s.labels["k" * MAX_LABEL_KEY_CHARS] = "v" * MAX_LABEL_VALUE_CHARS
    s.labels["empty"] = ""
    assert dict(norm(s).labels) == {"k" * MAX_LABEL_KEY_CHARS: "v" * MAX_LABEL_VALUE_CHARS, "empty": ""}


def test_too_many_or_bad_capabilities_are_rejected() -> None:
    s = base()
    s.required_capabilities.extend([f"c{i}" for i in range(MAX_CAPABILITIES + 1)])
    assert rejected(s).field == "task.required_capabilities"
    s = base()
    s.required_capabilities.extend(["gpu", "has space"])
    assert rejected(s).field == "task.required_capabilities[1]"
    s = base()
    s.required_capabilities.extend([""])
    assert rejected(s).field == "task.required_capabilities[0]"
    s = base()
    s.required_capabilities.extend([f"c{i}" for i in range(MAX_CAPABILITIES)])
    assert len(norm(s).required_capabilities) == MAX_CAPABILITIES


def test_idempotency_key_length_limit() -> None:
    assert norm(base(idempotency_key="k" * MAX_IDEMPOTENCY_KEY_CHARS)).idempotency_key == "k" * MAX_IDEMPOTENCY_KEY_CHARS
    assert rejected(base(idempotency_key="k" * (MAX_IDEMPOTENCY_KEY_CHARS + 1))).field == "task.idempotency_key"


# ---- not_before --------------------------------------------------------------------------------

def ts(ms: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromMilliseconds(ms)
    return t


def test_not_before_more_than_a_year_ahead_is_rejected() -> None:
    err = rejected(base(not_before=ts(T0 + MAX_NOT_BEFORE_AHEAD_MS + 1)))
    assert err.field == "task.not_before"


def test_not_before_within_a_year_or_in_the_past_is_accepted() -> None:
    assert norm(base(not_before=ts(T0 + MAX_NOT_BEFORE_AHEAD_MS))).not_before.ToMilliseconds() == T0 + MAX_NOT_BEFORE_AHEAD_MS
    assert norm(base(not_before=ts(T0 - DAY_MS))).not_before.ToMilliseconds() == T0 - DAY_MS


def test_not_before_limit_is_relative_to_now() -> None:
    s = base(not_before=ts(T0 + MAX_NOT_BEFORE_AHEAD_MS + 1))
    assert rejected(s, now_ms=T0).field == "task.not_before"
    assert norm(s, now_ms=T0 + 1).HasField("not_before")


def test_not_before_before_1970_is_rejected() -> None:
    s = base()
    s.not_before.seconds = -1
    assert rejected(s).field == "task.not_before"


# ---- fingerprint -------------------------------------------------------------------------------

def full_spec() -> task_pb2.TaskSpec:
    s = base(task_id="t-1", priority=2, idempotency_key="idem-1", input=json_value({"a": 1, "b": "x"}),
             execution_timeout=dur(5_000), schedule_to_start_timeout=dur(9_000), not_before=ts(T0 + 1_000))
    s.retry.max_attempts = 4
    s.retry.max_lost_attempts = 2
    s.retry.backoff.CopyFrom(task_pb2.Backoff(initial=dur(100), max=dur(1_000), multiplier=3.0,
                                              jitter=task_pb2.JITTER_FULL, kind=task_pb2.BACKOFF_KIND_EXPONENTIAL))
    s.labels.update({"team": "a", "env": "prod"})
    s.required_capabilities.extend(["gpu", "ssd"])
    return norm(s)


def test_fingerprint_equal_for_equal_specs() -> None:
    a = full_spec()
    b = full_spec()
    assert a is not b
    assert spec_fingerprint(a) == spec_fingerprint(b)


def test_fingerprint_ignores_map_insertion_order() -> None:
    a, b = base(), base()
    for k in ["z", "a", "m"]:
        a.labels[k] = k
    for k in ["m", "z", "a"]:
        b.labels[k] = k
    c, d = base(input=json_value({"x": 1, "y": 2})), base(input=json_value({"y": 2, "x": 1}))
    assert spec_fingerprint(norm(a)) == spec_fingerprint(norm(b))
    assert spec_fingerprint(norm(c)) == spec_fingerprint(norm(d))


def test_fingerprint_equal_for_explicit_defaults_and_unset() -> None:
    explicit = base(execution_timeout=dur(DEFAULT_EXECUTION_TIMEOUT_MS))
    explicit.retry.max_attempts = DEFAULT_MAX_ATTEMPTS
    explicit.retry.max_lost_attempts = DEFAULT_MAX_LOST_ATTEMPTS
    assert spec_fingerprint(norm(explicit)) == spec_fingerprint(norm(base()))


def _mutations():
    def m(name, fn):
        return pytest.param(fn, id=name)
    return [
        m("task_id", lambda s: setattr(s, "task_id", "t-2")),
        m("type", lambda s: setattr(s, "type", "other")),
        m("input", lambda s: s.input.struct_value.update({"a": 2})),
        m("input_bytes", lambda s: setattr(s, "input_bytes", b"raw")),
        m("priority", lambda s: setattr(s, "priority", 3)),
        m("retry.max_attempts", lambda s: setattr(s.retry, "max_attempts", 5)),
        m("retry.max_lost_attempts", lambda s: setattr(s.retry, "max_lost_attempts", 3)),
        m("retry.backoff.kind", lambda s: setattr(s.retry.backoff, "kind", task_pb2.BACKOFF_KIND_FIXED)),
        m("retry.backoff.initial", lambda s: s.retry.backoff.initial.FromMilliseconds(101)),
        m("retry.backoff.multiplier", lambda s: setattr(s.retry.backoff, "multiplier", 2.5)),
        m("retry.backoff.max", lambda s: s.retry.backoff.max.FromMilliseconds(1_001)),
        m("retry.backoff.jitter", lambda s: setattr(s.retry.backoff, "jitter", task_pb2.JITTER_EQUAL)),
        m("execution_timeout", lambda s: s.execution_timeout.FromMilliseconds(5_001)),
        m("schedule_to_start_timeout", lambda s: s.schedule_to_start_timeout.FromMilliseconds(9_001)),
        m("not_before", lambda s: s.not_before.FromMilliseconds(T0 + 1_001)),
        m("idempotency_key", lambda s: setattr(s, "idempotency_key", "idem-2")),
        m("labels.value", lambda s: s.labels.__setitem__("team", "b")),
        m("labels.extra", lambda s: s.labels.__setitem__("new", "")),
        m("required_capabilities", lambda s: s.required_capabilities.append("fpga")),
        m("required_capabilities.order", lambda s: s.required_capabilities.reverse()),
        m("concurrency_key", lambda s: setattr(s, "concurrency_key", "k-2")),
        m("concurrency_limit", lambda s: setattr(s, "concurrency_limit", 7)),
        m("concurrency_policy", lambda s: setattr(s, "concurrency_policy", task_pb2.CONCURRENCY_POLICY_DROP_NEW)),
        m("hold_key_during_retry", lambda s: setattr(s, "hold_key_during_retry", True)),
        m("depends_on", lambda s: s.depends_on.append("prereq-2")),
        m("schedule_to_close_timeout", lambda s: s.schedule_to_close_timeout.FromMilliseconds(70_001)),
        m("parent_task_id", lambda s: setattr(s, "parent_task_id", "p-2")),
        m("child_key", lambda s: setattr(s, "child_key", "k-2")),
        m("detached", lambda s: setattr(s, "detached", True)),
        m("allow_failure", lambda s: setattr(s, "allow_failure", True)),
    ]


@pytest.mark.parametrize("mutate", _mutations())
def test_fingerprint_differs_when_any_field_differs(mutate) -> None:
    a = full_spec()
    b = full_spec()
    mutate(b)
    assert spec_fingerprint(a) != spec_fingerprint(b)


# Fields that are not part of what a spec asks for: they never change the fingerprint.
NOT_IN_FINGERPRINT = {"trace_context"}


def test_fingerprint_mutations_cover_every_spec_field() -> None:
    covered = {p.id.split(".")[0] for p in _mutations()}
    assert covered | NOT_IN_FINGERPRINT == {f.name for f in task_pb2.TaskSpec.DESCRIPTOR.fields}
    covered_retry = {p.id.split(".")[1] for p in _mutations() if p.id.startswith("retry.")}
    assert covered_retry == {f.name for f in task_pb2.RetryPolicy.DESCRIPTOR.fields}
    covered_backoff = {p.id.split(".")[2] for p in _mutations() if p.id.startswith("retry.backoff.")}
    assert covered_backoff == {f.name for f in task_pb2.Backoff.DESCRIPTOR.fields}


def test_trace_context_is_not_part_of_the_fingerprint_and_stays_in_the_spec() -> None:
    a = full_spec()
    b = full_spec()
    b.trace_context["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert spec_fingerprint(a) == spec_fingerprint(b)
    assert b.trace_context["traceparent"].startswith("00-0af7")


def test_trace_context_size_is_bounded() -> None:
    s = base()
    s.trace_context.update({f"k{i}": "v" for i in range(9)})
    assert rejected(s).field == "task.trace_context"
    s = base()
    s.trace_context["tracestate"] = "x" * 1025
    assert rejected(s).field == "task.trace_context[tracestate]"
    s = base()
    s.trace_context["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert norm(s).trace_context["traceparent"].endswith("-01")


def test_fingerprint_is_bytes_and_stable_across_serialization() -> None:
    a = full_spec()
    fp = spec_fingerprint(a)
    assert isinstance(fp, bytes)
    assert spec_fingerprint(task_pb2.TaskSpec.FromString(a.SerializeToString())) == fp


def test_fingerprint_distinguishes_json_input_from_bytes_input() -> None:
    a = norm(base(input=struct_pb2.Value(string_value="x")))
    b = norm(base(input_bytes=b"x"))
    assert spec_fingerprint(a) != spec_fingerprint(b)
