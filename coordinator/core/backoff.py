"""Retry backoff: a validated policy and a pure function from retry number to delay.

Owns: how long a task waits in RETRY_WAIT. The delay is a pure function of (policy, retry
number, a random draw in [0, 1)); the caller supplies the draw so the decision is reproducible
in tests and the result is written to the WAL (replay never recomputes it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from corral.v1 import task_pb2


class BackoffKind(str, Enum):
    FIXED = "fixed"
    EXPONENTIAL = "exponential"


class JitterKind(str, Enum):
    NONE = "none"
    FULL = "full"
    EQUAL = "equal"


DEFAULT_INITIAL_MS = 1_000
DEFAULT_MULTIPLIER = 2.0
DEFAULT_MAX_MS = 300_000
MAX_DELAY_MS = 7 * 24 * 3600 * 1000


class InvalidBackoff(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    kind: BackoffKind = BackoffKind.EXPONENTIAL
    initial_ms: int = DEFAULT_INITIAL_MS
    multiplier: float = DEFAULT_MULTIPLIER
    max_ms: int = DEFAULT_MAX_MS
    jitter: JitterKind = JitterKind.NONE

    def __post_init__(self) -> None:
        if not 0 <= self.initial_ms <= MAX_DELAY_MS:
            raise InvalidBackoff("initial", f"must be between 0 and {MAX_DELAY_MS} ms, got {self.initial_ms}")
        if not 0 <= self.max_ms <= MAX_DELAY_MS:
            raise InvalidBackoff("max", f"must be between 0 and {MAX_DELAY_MS} ms, got {self.max_ms}")
        if self.max_ms < self.initial_ms:
            raise InvalidBackoff("max", f"must be >= initial ({self.initial_ms} ms), got {self.max_ms} ms")
        if not (math.isfinite(self.multiplier) and 1.0 <= self.multiplier <= 100.0):
            raise InvalidBackoff("multiplier", f"must be between 1 and 100, got {self.multiplier}")

    @classmethod
    def from_proto(cls, msg: task_pb2.Backoff) -> "BackoffPolicy":
        kind = BackoffKind.FIXED if msg.kind == task_pb2.BACKOFF_KIND_FIXED else BackoffKind.EXPONENTIAL
        if msg.kind not in (task_pb2.BACKOFF_KIND_UNSPECIFIED, task_pb2.BACKOFF_KIND_FIXED,
                            task_pb2.BACKOFF_KIND_EXPONENTIAL):
            raise InvalidBackoff("kind", f"unknown value {msg.kind}")
        jitter = {
            task_pb2.JITTER_UNSPECIFIED: JitterKind.NONE,
            task_pb2.JITTER_NONE: JitterKind.NONE,
            task_pb2.JITTER_FULL: JitterKind.FULL,
            task_pb2.JITTER_EQUAL: JitterKind.EQUAL,
        }.get(msg.jitter)
        if jitter is None:
            raise InvalidBackoff("jitter", f"unknown value {msg.jitter}")
        for name in ("initial", "max"):
            d = getattr(msg, name)
            if d.seconds < 0 or d.nanos < 0:
                raise InvalidBackoff(name, "must not be negative")
        initial_ms = msg.initial.ToMilliseconds() if msg.HasField("initial") else DEFAULT_INITIAL_MS
        max_ms = msg.max.ToMilliseconds() if msg.HasField("max") else max(DEFAULT_MAX_MS, initial_ms)
        multiplier = msg.multiplier if msg.multiplier != 0 else DEFAULT_MULTIPLIER
        return cls(kind=kind, initial_ms=initial_ms, multiplier=multiplier, max_ms=max_ms, jitter=jitter)


def retry_delay_ms(policy: BackoffPolicy, retry_number: int, draw: float) -> int:
    """Delay before retry `retry_number` (1 = first retry). `draw` is uniform in [0, 1)."""
    if retry_number < 1:
        raise ValueError(f"retry_number must be >= 1, got {retry_number}")
    if policy.kind is BackoffKind.FIXED:
        base = float(policy.initial_ms)
    else:
        # Cap the exponent so huge retry numbers cannot overflow the float.
        exponent = min(retry_number - 1, 1000)
        try:
            base = policy.initial_ms * policy.multiplier**exponent
        except OverflowError:
            base = float(policy.max_ms) if policy.initial_ms else 0.0
        base = min(base, float(policy.max_ms))
    if policy.jitter is JitterKind.FULL:
        delay = base * draw
    elif policy.jitter is JitterKind.EQUAL:
        delay = base / 2 + (base / 2) * draw
    else:
        delay = base
    return int(delay)
