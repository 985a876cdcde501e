"""Fast conversions between protobuf Duration/Timestamp and integer milliseconds.

The well-known-type helpers (ToMilliseconds, FromMilliseconds) are pure Python with validation
and cost microseconds each; these are plain arithmetic for the submission hot path. Callers
validate signs themselves.
"""
from __future__ import annotations


def to_ms(d) -> int:
    """Milliseconds of a Duration or Timestamp (truncated toward zero for positive values)."""
    return d.seconds * 1000 + d.nanos // 1_000_000


def set_ms(d, ms: int) -> None:
    """Set a Duration or Timestamp to `ms` milliseconds (ms >= 0)."""
    d.seconds, rest = divmod(ms, 1000)
    d.nanos = rest * 1_000_000
