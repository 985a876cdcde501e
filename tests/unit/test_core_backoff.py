"""Retry backoff (coordinator/core/backoff.py): validated policies, a pure delay function.

hypothesis is not installed in the venv, so the delay-bound properties are checked over a
seeded, deterministic sweep of policies, retry numbers and draws instead.
"""
from __future__ import annotations

import math
import random

import pytest
from google.protobuf import duration_pb2

from corral.v1 import task_pb2
from coordinator.core.backoff import (DEFAULT_INITIAL_MS, DEFAULT_MAX_MS, DEFAULT_MULTIPLIER, MAX_DELAY_MS,
                                      BackoffKind, BackoffPolicy, InvalidBackoff, JitterKind, retry_delay_ms)

def ms(n: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(n)
    return d


def delays(policy: BackoffPolicy, n: int, draw: float = 0.0) -> list[int]:
    return [retry_delay_ms(policy, i, draw) for i in range(1, n + 1)]


# ---- sequences ---------------------------------------------------------------------------------

def test_fixed_backoff_is_initial_for_every_retry() -> None:
    p = BackoffPolicy(kind=BackoffKind.FIXED, initial_ms=750, max_ms=750)
    assert delays(p, 6) == [750] * 6
    assert retry_delay_ms(p, 10_000, 0.9) == 750


def test_fixed_backoff_ignores_multiplier() -> None:
    p = BackoffPolicy(kind=BackoffKind.FIXED, initial_ms=100, multiplier=10.0, max_ms=100_000)
    assert delays(p, 4) == [100, 100, 100, 100]


def test_exponential_backoff_doubles_from_initial() -> None:
    p = BackoffPolicy(kind=BackoffKind.EXPONENTIAL, initial_ms=100, multiplier=2.0, max_ms=1_000_000)
    assert delays(p, 6) == [100, 200, 400, 800, 1600, 3200]


def test_exponential_backoff_with_other_multiplier() -> None:
    p = BackoffPolicy(initial_ms=10, multiplier=3.0, max_ms=1_000_000)
    assert delays(p, 5) == [10, 30, 90, 270, 810]


def test_exponential_backoff_is_capped_at_max() -> None:
    p = BackoffPolicy(initial_ms=100, multiplier=2.0, max_ms=1_000)
    assert delays(p, 7) == [100, 200, 400, 800, 1000, 1000, 1000]


def test_multiplier_one_is_constant() -> None:
    p = BackoffPolicy(initial_ms=500, multiplier=1.0, max_ms=10_000)
    assert delays(p, 5) == [500] * 5


def test_default_policy_is_exponential_1s_x2_capped_at_5min_no_jitter() -> None:
    p = BackoffPolicy()
    assert (p.kind, p.initial_ms, p.multiplier, p.max_ms, p.jitter) == (
        BackoffKind.EXPONENTIAL, 1_000, 2.0, 300_000, JitterKind.NONE)
    assert delays(p, 10, draw=0.99) == [1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 300000]


def test_delays_never_decrease_without_jitter() -> None:
    for p in (BackoffPolicy(), BackoffPolicy(initial_ms=7, multiplier=1.5, max_ms=10_000),
              BackoffPolicy(initial_ms=1, multiplier=100.0, max_ms=MAX_DELAY_MS)):
        seq = delays(p, 60)
        assert seq == sorted(seq)
        assert seq[-1] == p.max_ms


# ---- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("multiplier", [0.0, 0.5, 0.999, -2.0, 100.001, 1e9, math.nan, math.inf, -math.inf])
def test_multiplier_outside_1_to_100_is_rejected_with_field_name(multiplier: float) -> None:
    with pytest.raises(InvalidBackoff) as info:
        BackoffPolicy(multiplier=multiplier)
    assert info.value.field == "multiplier"
    assert str(info.value).startswith("multiplier: ")


@pytest.mark.parametrize("multiplier", [1.0, 1.0001, 2.0, 100.0])
def test_multiplier_within_bounds_is_accepted(multiplier: float) -> None:
    assert BackoffPolicy(multiplier=multiplier).multiplier == multiplier


def test_max_below_initial_is_rejected_with_field_max() -> None:
    with pytest.raises(InvalidBackoff) as info:
        BackoffPolicy(initial_ms=2_000, max_ms=1_999)
    assert info.value.field == "max"
    assert "initial" in info.value.message


def test_max_equal_to_initial_is_accepted() -> None:
    assert delays(BackoffPolicy(initial_ms=2_000, max_ms=2_000), 3) == [2000, 2000, 2000]


@pytest.mark.parametrize(("kw", "field"), [
    ({"initial_ms": -1}, "initial"),
    ({"initial_ms": MAX_DELAY_MS + 1, "max_ms": MAX_DELAY_MS + 1}, "initial"),
    ({"max_ms": -1, "initial_ms": 0}, "max"),
    ({"max_ms": MAX_DELAY_MS + 1}, "max"),
])
def test_out_of_range_durations_are_rejected_with_field_name(kw: dict, field: str) -> None:
    with pytest.raises(InvalidBackoff) as info:
        BackoffPolicy(**kw)
    assert info.value.field == field


def test_invalid_backoff_is_a_value_error() -> None:
    assert issubclass(InvalidBackoff, ValueError)


@pytest.mark.parametrize("n", [0, -1, -10**9])
def test_retry_number_below_one_is_rejected(n: int) -> None:
    with pytest.raises(ValueError):
        retry_delay_ms(BackoffPolicy(), n, 0.5)


# ---- jitter ------------------------------------------------------------------------------------

def _base(p: BackoffPolicy, n: int) -> int:
    return retry_delay_ms(BackoffPolicy(kind=p.kind, initial_ms=p.initial_ms, multiplier=p.multiplier,
                                        max_ms=p.max_ms, jitter=JitterKind.NONE), n, 0.0)


def _sweep():
    rng = random.Random(20240501)
    draws = [0.0, 0.5, 1.0 - 1e-12] + [rng.random() for _ in range(12)]
    for _ in range(60):
        initial = rng.choice([0, 1, 3, 1000, rng.randrange(0, 100_000)])
        max_ms = rng.randrange(initial, MAX_DELAY_MS + 1) if rng.random() < 0.5 else initial + rng.randrange(0, 10_000)
        kind = rng.choice(list(BackoffKind))
        multiplier = rng.choice([1.0, 2.0, 100.0, 1.0 + rng.random() * 10])
        for n in (1, 2, 3, rng.randrange(1, 100), 10**6):
            for draw in draws:
                yield BackoffPolicy(kind=kind, initial_ms=initial, multiplier=multiplier, max_ms=max_ms), n, draw


def test_jitter_none_is_exactly_the_base_delay() -> None:
    for p, n, draw in _sweep():
        assert retry_delay_ms(p, n, draw) == _base(p, n)


def test_jitter_full_stays_within_zero_and_base() -> None:
    for p, n, draw in _sweep():
        full = BackoffPolicy(kind=p.kind, initial_ms=p.initial_ms, multiplier=p.multiplier, max_ms=p.max_ms,
                             jitter=JitterKind.FULL)
        d = retry_delay_ms(full, n, draw)
        assert 0 <= d <= _base(p, n), (p, n, draw)


def test_jitter_equal_stays_within_half_base_and_base() -> None:
    for p, n, draw in _sweep():
        eq = BackoffPolicy(kind=p.kind, initial_ms=p.initial_ms, multiplier=p.multiplier, max_ms=p.max_ms,
                           jitter=JitterKind.EQUAL)
        d = retry_delay_ms(eq, n, draw)
        base = _base(p, n)
        assert base // 2 <= d <= base, (p, n, draw)


def test_jitter_uses_the_draw_at_the_ends() -> None:
    full = BackoffPolicy(initial_ms=1_000, max_ms=1_000, jitter=JitterKind.FULL)
    equal = BackoffPolicy(initial_ms=1_000, max_ms=1_000, jitter=JitterKind.EQUAL)
    assert retry_delay_ms(full, 1, 0.0) == 0
    assert retry_delay_ms(full, 1, 0.25) == 250
    assert retry_delay_ms(equal, 1, 0.0) == 500
    assert retry_delay_ms(equal, 1, 0.5) == 750
    assert retry_delay_ms(equal, 1, 1.0 - 1e-9) == 999


def test_delay_is_a_pure_function_of_its_inputs() -> None:
    p = BackoffPolicy(initial_ms=123, multiplier=1.7, max_ms=99_999, jitter=JitterKind.FULL)
    assert [retry_delay_ms(p, n, 0.37) for n in range(1, 30)] == [retry_delay_ms(p, n, 0.37) for n in range(1, 30)]


# ---- huge retry numbers ------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1_000, 1_001, 10**6, 10**18, 2**63 - 1])
@pytest.mark.parametrize("multiplier", [1.5, 2.0, 100.0])
def test_huge_retry_numbers_do_not_overflow_and_give_max(n: int, multiplier: float) -> None:
    p = BackoffPolicy(initial_ms=1_000, multiplier=multiplier, max_ms=MAX_DELAY_MS)
    d = retry_delay_ms(p, n, 0.5)
    assert type(d) is int
    assert d == MAX_DELAY_MS


def test_huge_retry_number_with_integer_multiplier_stays_at_max() -> None:
    p = BackoffPolicy(initial_ms=5, multiplier=100, max_ms=60_000)  # int multiplier: int power
    assert retry_delay_ms(p, 10**6, 0.0) == 60_000


def test_zero_initial_exponential_delay_stays_zero_for_huge_retry_numbers() -> None:
    p = BackoffPolicy(initial_ms=0, multiplier=100.0, max_ms=60_000)
    assert retry_delay_ms(p, 2, 0.0) == 0
    assert retry_delay_ms(p, 200, 0.0) == 0


# ---- from_proto --------------------------------------------------------------------------------

def test_from_proto_empty_message_gives_the_defaults() -> None:
    p = BackoffPolicy.from_proto(task_pb2.Backoff())
    assert p == BackoffPolicy()
    assert (p.kind, p.initial_ms, p.multiplier, p.max_ms, p.jitter) == (
        BackoffKind.EXPONENTIAL, DEFAULT_INITIAL_MS, DEFAULT_MULTIPLIER, DEFAULT_MAX_MS, JitterKind.NONE)


def test_from_proto_maps_every_enum_value() -> None:
    kinds = {task_pb2.BACKOFF_KIND_UNSPECIFIED: BackoffKind.EXPONENTIAL,
             task_pb2.BACKOFF_KIND_FIXED: BackoffKind.FIXED,
             task_pb2.BACKOFF_KIND_EXPONENTIAL: BackoffKind.EXPONENTIAL}
    jitters = {task_pb2.JITTER_UNSPECIFIED: JitterKind.NONE, task_pb2.JITTER_NONE: JitterKind.NONE,
               task_pb2.JITTER_FULL: JitterKind.FULL, task_pb2.JITTER_EQUAL: JitterKind.EQUAL}
    assert set(kinds) == set(task_pb2.BackoffKind.values())
    assert set(jitters) == set(task_pb2.Jitter.values())
    for k, want in kinds.items():
        assert BackoffPolicy.from_proto(task_pb2.Backoff(kind=k)).kind is want
    for j, want in jitters.items():
        assert BackoffPolicy.from_proto(task_pb2.Backoff(jitter=j)).jitter is want


def test_from_proto_reads_explicit_values() -> None:
    msg = task_pb2.Backoff(kind=task_pb2.BACKOFF_KIND_FIXED, initial=ms(250), multiplier=3.0, max=ms(9_000),
                           jitter=task_pb2.JITTER_EQUAL)
    assert BackoffPolicy.from_proto(msg) == BackoffPolicy(
        kind=BackoffKind.FIXED, initial_ms=250, multiplier=3.0, max_ms=9_000, jitter=JitterKind.EQUAL)


def test_from_proto_default_max_is_raised_to_a_large_initial() -> None:
    p = BackoffPolicy.from_proto(task_pb2.Backoff(initial=ms(600_000)))
    assert p.initial_ms == 600_000 and p.max_ms == 600_000


def test_from_proto_explicit_zero_initial_is_kept() -> None:
    assert BackoffPolicy.from_proto(task_pb2.Backoff(initial=ms(0))).initial_ms == 0


@pytest.mark.parametrize(("msg", "field"), [
    (task_pb2.Backoff(kind=99), "kind"),
    (task_pb2.Backoff(kind=-1), "kind"),
    (task_pb2.Backoff(jitter=99), "jitter"),
    (task_pb2.Backoff(jitter=-3), "jitter"),
    (task_pb2.Backoff(initial=duration_pb2.Duration(seconds=-1)), "initial"),
    (task_pb2.Backoff(max=duration_pb2.Duration(nanos=-5)), "max"),
    (task_pb2.Backoff(initial=ms(5_000), max=ms(4_000)), "max"),
    (task_pb2.Backoff(multiplier=0.5), "multiplier"),
    (task_pb2.Backoff(multiplier=-1.0), "multiplier"),
    (task_pb2.Backoff(multiplier=math.nan), "multiplier"),
    (task_pb2.Backoff(initial=duration_pb2.Duration(seconds=8 * 24 * 3600)), "initial"),
])
def test_from_proto_rejects_bad_values_with_field_name(msg: task_pb2.Backoff, field: str) -> None:
    with pytest.raises(InvalidBackoff) as info:
        BackoffPolicy.from_proto(msg)
    assert info.value.field == field


def test_policy_is_immutable() -> None:
    p = BackoffPolicy()
    with pytest.raises(Exception):
        p.initial_ms = 5  # type: ignore[misc]
