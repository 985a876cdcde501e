"""Per-type rate limits: token buckets, and the `rate_limits` setting's syntax.

Owns: how many tasks of a type may start per second, cluster-wide. One bucket per limited type
holds up to `burst` tokens and refills at `rate` tokens per second; every lease granted for the
type takes one. Tasks of a type with no token stay READY (undispatched) and do not hold up any
other type; the dispatch loop sleeps until the next token (`next_token_ms`).

Buckets are volatile (not in the WAL): a coordinator restart starts them full, which allows at
most one extra burst. Times are ms on the caller's clock (the loop uses its monotonic clock, so
a wall-clock step neither fills nor drains a bucket). Pure: the clock is always passed in.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .spec import TYPE_RE

NANO = 1_000_000_000  # nano-tokens per token
MAX_RATE = 1_000_000.0
MAX_BURST = 1_000_000


@dataclass(frozen=True)
class RateLimit:
    rate: float  # tokens per second
    burst: int = 1  # bucket size: how many may start at once after a quiet period


class TokenBucket:
    """Tokens are counted in integer nano-tokens, so refilling in many small steps never loses or
    gains a token to floating-point drift."""

    __slots__ = ("nano_per_ms", "capacity", "nano", "updated_ms")

    def __init__(self, limit: RateLimit, now_ms: int) -> None:
        # tokens per second * 1e9 nano-tokens / 1000 ms
        self.nano_per_ms = max(1, round(limit.rate * 1_000_000))
        self.capacity = limit.burst * NANO
        self.nano = self.capacity
        self.updated_ms = now_ms

    def _refill(self, now_ms: int) -> int:
        elapsed = now_ms - self.updated_ms
        if elapsed > 0:
            self.nano = min(self.capacity, self.nano + elapsed * self.nano_per_ms)
            self.updated_ms = now_ms
        return self.nano

    def available(self, now_ms: int) -> int:
        """Whole tokens available now."""
        return self._refill(now_ms) // NANO

    def take(self, now_ms: int, n: int = 1) -> None:
        """Use `n` tokens (the caller checked `available`)."""
        self._refill(now_ms)
        self.nano -= n * NANO

    def next_token_ms(self, now_ms: int) -> int | None:
        """When the next whole token is available, or None if one is available now."""
        missing = NANO - self._refill(now_ms)
        if missing <= 0:
            return None
        return now_ms + -(-missing // self.nano_per_ms)  # ceil: never wake before it is there


class RateLimiter:
    """The buckets of every limited type."""

    def __init__(self, limits: dict[str, RateLimit], now_ms: int = 0) -> None:
        self.limits = dict(limits)
        self.buckets = {task_type: TokenBucket(limit, now_ms) for task_type, limit in limits.items()}

    def __bool__(self) -> bool:
        return bool(self.buckets)

    def budget(self, now_ms: int) -> dict[str, int]:
        """How many leases each limited type may be granted now."""
        return {task_type: bucket.available(now_ms) for task_type, bucket in self.buckets.items()}

    def took(self, task_type: str, now_ms: int, n: int = 1) -> None:
        bucket = self.buckets.get(task_type)
        if bucket is not None:
            bucket.take(now_ms, n)

    def next_token_ms(self, now_ms: int) -> int | None:
        """The earliest time an empty bucket has a token again (None: no bucket is empty)."""
        best = None
        for bucket in self.buckets.values():
            due = bucket.next_token_ms(now_ms)
            if due is not None and (best is None or due < best):
                best = due
        return best


_NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?$")


def parse_rate_limits(text: str) -> dict[str, RateLimit]:
    """`type=rate[:burst],type2=rate` (rate: tasks per second, burst: default 1).

    Raises ValueError with a message saying what is wrong."""
    limits: dict[str, RateLimit] = {}
    text = text.strip()
    if not text:
        return limits
    for item in text.split(","):
        item = item.strip()
        task_type, sep, value = item.partition("=")
        task_type = task_type.strip()
        if not sep or not task_type:
            raise ValueError(f"expected TYPE=RATE[:BURST], got {item!r}")
        if not TYPE_RE.fullmatch(task_type):
            raise ValueError(f"{task_type!r} is not a task type (1-128 characters of [A-Za-z0-9._:/-])")
        if task_type in limits:
            raise ValueError(f"task type {task_type!r} is given twice")
        rate_text, colon, burst_text = value.strip().partition(":")
        if not _NUMBER.fullmatch(rate_text.strip()):
            raise ValueError(f"{task_type}: rate {rate_text!r} is not a positive number (tasks per second)")
        rate = float(rate_text)
        if not 0 < rate <= MAX_RATE:
            raise ValueError(f"{task_type}: rate must be above 0 and at most {MAX_RATE:g} per second, got {rate_text}")
        burst = 1
        if colon:
            if not burst_text.strip().isdigit():
                raise ValueError(f"{task_type}: burst {burst_text!r} is not a positive integer")
            burst = int(burst_text)
            if not 1 <= burst <= MAX_BURST:
                raise ValueError(f"{task_type}: burst must be between 1 and {MAX_BURST}, got {burst}")
        limits[task_type] = RateLimit(rate, burst)
    return limits
