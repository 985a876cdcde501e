"""Per-type rate limits (coordinator/core/rate_limit.py): token buckets on an injected clock, the
`rate_limits` setting's syntax, selection within a budget, and the loop waking for the next token.
"""
from __future__ import annotations

import pytest

from coordinator.config import ConfigError, CoordinatorConfig
from coordinator.core import decisions
from coordinator.core.admission import Admission
from coordinator.core.fleet import Fleet
from coordinator.core.projection import Projection
from coordinator.core.rate_limit import RateLimit, RateLimiter, TokenBucket, parse_rate_limits
from coordinator.dispatch.loop import DispatchLoop

from .core_fixtures import T0, Sim, identity

# ---- the bucket --------------------------------------------------------------------------------


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(RateLimit(5.0, burst=2), now_ms=1_000)
    assert bucket.available(1_000) == 2
    bucket.take(1_000, 2)
    assert bucket.available(1_000) == 0
    assert bucket.next_token_ms(1_000) == 1_200  # one token per 200 ms
    assert bucket.available(1_199) == 0
    assert bucket.available(1_200) == 1
    assert bucket.next_token_ms(1_200) is None  # a token is there now
    assert bucket.available(10_000) == 2  # never more than the burst


def test_a_bucket_spreads_takes_at_its_rate() -> None:
    bucket = TokenBucket(RateLimit(5.0), now_ms=0)
    starts = []
    now = 0
    while len(starts) < 10:
        if bucket.available(now):
            bucket.take(now)
            starts.append(now)
        else:
            now = bucket.next_token_ms(now)
    assert starts == [i * 200 for i in range(10)]


@pytest.mark.parametrize("rate, expected", [(4.0, {40}), (3.0, {29, 30}), (0.7, {6, 7})])
def test_many_small_refills_keep_the_rate(rate: float, expected: set[int]) -> None:
    # Checked every ms for 10 s: integer nano-tokens never drift. (A token found late by a
    # fraction of a ms loses that fraction: 3/s, checked on whole ms, may give 29.)
    bucket = TokenBucket(RateLimit(rate), now_ms=0)
    bucket.take(0)
    taken = 0
    for now in range(1, 10_001):
        if bucket.available(now):
            bucket.take(now)
            taken += 1
    assert taken in expected


def test_next_token_is_never_in_the_past_or_now() -> None:
    bucket = TokenBucket(RateLimit(1000.0), now_ms=0)
    bucket.take(0)
    assert bucket.next_token_ms(0) == 1
    slow = TokenBucket(RateLimit(0.5), now_ms=0)
    slow.take(0)
    assert slow.next_token_ms(0) == 2_000
    assert slow.next_token_ms(1_500) == 2_000


def test_a_limiter_budgets_only_limited_types_and_reports_the_earliest_refill() -> None:
    limiter = RateLimiter({"a": RateLimit(10.0), "b": RateLimit(2.0, burst=3)}, now_ms=0)
    assert limiter.budget(0) == {"a": 1, "b": 3}
    limiter.took("a", 0)
    limiter.took("other", 0)  # not limited: ignored
    assert limiter.budget(0) == {"a": 0, "b": 3}
    assert limiter.next_token_ms(0) == 100
    limiter.took("b", 0)
    assert limiter.next_token_ms(0) == 100
    assert limiter.next_token_ms(100) is None or limiter.next_token_ms(100) > 100


# ---- the setting -------------------------------------------------------------------------------

def test_rate_limits_syntax() -> None:
    assert parse_rate_limits("") == {}
    assert parse_rate_limits("resize=5:10, email=0.5,x/y=2") == {
        "resize": RateLimit(5.0, 10), "email": RateLimit(0.5, 1), "x/y": RateLimit(2.0, 1)}


@pytest.mark.parametrize("text, says", [
    ("resize", "TYPE=RATE"),
    ("=5", "TYPE=RATE"),
    ("resize=fast", "not a positive number"),
    ("resize=0", "above 0"),
    ("resize=-1", "not a positive number"),
    ("resize=5:0", "burst must be between"),
    ("resize=5:1.5", "not a positive integer"),
    ("a=1,a=2", "given twice"),
    ("bad type=1", "not a task type"),
])
def test_bad_rate_limits_are_refused_naming_the_setting(text: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_rate_limits(text)
    assert says in str(info.value)
    with pytest.raises(ConfigError) as info:
        CoordinatorConfig(rate_limits=text)
    assert "--rate-limits / CORRAL_RATE_LIMITS" in str(info.value) and says in str(info.value)


# ---- selection ---------------------------------------------------------------------------------

def test_selection_grants_a_limited_type_at_most_its_budget_and_other_types_freely() -> None:
    sim = Sim()
    with sim.step(T0):
        sim.connect(identity("a1", "i1", types=("slow", "fast"), slots=10))
        for i in range(4):
            sim.submit(f"s{i}", type="slow", priority=5)  # first in line, but held back
        for i in range(3):
            sim.submit(f"f{i}", type="fast")
    before = sim.projection.fingerprint()
    grants = decisions.select_grants(sim.projection, sim.fleet, {"slow": 1})
    assert [t.task_id for t, _ in grants] == ["s0", "f0", "f1", "f2"]
    assert decisions.select_grants(sim.projection, sim.fleet, {"slow": 0, "fast": 2}) == \
        decisions.select_grants(sim.projection, sim.fleet, {"slow": 0, "fast": 2})
    assert [t.task_id for t, _ in decisions.select_grants(sim.projection, sim.fleet, {"slow": 0, "fast": 2})] == \
        ["f0", "f1"]
    assert sim.projection.fingerprint() == before  # pure
    assert len(decisions.select_grants(sim.projection, sim.fleet)) == 7  # no budget: no limit


# ---- the loop wakes for the next token -----------------------------------------------------------

class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_loop_sleeps_until_the_next_token() -> None:
    mono = Clock(100.0)
    wall = Clock(T0 / 1000)
    limits = {"slow": RateLimit(4.0)}
    loop = DispatchLoop(None, Projection(), Fleet(lease_ttl_ms=10_000), coordinator_id="c", heartbeat_interval_ms=1_000,
                        clock=wall, monotonic=mono, admission=Admission(rate_limits=limits, now_ms=100_000))
    assert loop._seconds_to_next_timer() is None  # nothing to wait for: a full bucket
    loop.admission.granted(["slow"], loop.lease_ms())
    assert loop._seconds_to_next_timer() == pytest.approx(0.25)
    mono.t += 0.1
    assert loop._seconds_to_next_timer() == pytest.approx(0.15)
    mono.t += 0.15
    assert loop._seconds_to_next_timer() is None
    no_limits = DispatchLoop(None, Projection(), Fleet(lease_ttl_ms=10_000), coordinator_id="c",
                             heartbeat_interval_ms=1_000, clock=wall, monotonic=mono)
    assert not no_limits.admission.rate_limited and no_limits.admission.grant_budget(0) is None
