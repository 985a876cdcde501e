"""Prometheus exposition without cost on the hot path.

Owns ``BucketCounts`` (a histogram's state as plain ints: no lock, one writer), the conversion
of such state and plain counters into metric families at scrape time, and the scrape server.

The pattern: the hot path only adds to plain Python ints and lists (one writer: the event-loop
thread); a custom collector reads them when Prometheus scrapes, from the server's thread.
Reading an int or copying a list is atomic under the GIL, so a scrape sees each value whole;
the worst a scrape can see is one step's observations half counted, which the next scrape
completes. Counters start at zero when the process starts, as Prometheus expects.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from corral.v1 import task_pb2

# Bucket upper bounds (inclusive, Prometheus `le`).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                     60.0, 300.0)
DURATION_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
COMMIT_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class BucketCounts:
    """A histogram's state: counts per bucket (the last one is +Inf) and the sum.

    ``observe`` costs a bisect and two additions (~0.2 µs); written by one thread only."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[list[tuple[str, int]], float, int]:
        """(cumulative buckets as (le, count), sum, count), consistent with each other."""
        counts = list(self.counts)
        total = self.sum
        cumulative = 0
        buckets = []
        for bound, n in zip(self.bounds + (math.inf,), counts):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        return buckets, total, cumulative


class MsBucketCounts(BucketCounts):
    """A histogram in seconds fed with integer milliseconds (the coordinator's clock): the bucket
    of a value below MS_TABLE_SIZE is one list lookup (``index``), not a bisect. The hot path
    inlines ``counts[index[ms]] += 1; sum_ms += ms`` (see coordinator/telemetry/metrics.py)."""

    __slots__ = ("index", "bounds_ms", "sum_ms")
    MS_TABLE_SIZE = 10_001
    _tables: dict[tuple[float, ...], list[int]] = {}

    def __init__(self, bounds_s: Sequence[float]) -> None:
        super().__init__(bounds_s)
        self.bounds_ms = tuple(b * 1000 for b in self.bounds)
        table = self._tables.get(self.bounds)
        if table is None:
            table = self._tables[self.bounds] = [bisect_left(self.bounds_ms, ms) for ms in range(self.MS_TABLE_SIZE)]
        self.index = table
        self.sum_ms = 0

    def observe_ms(self, ms: int) -> None:
        if 0 <= ms < self.MS_TABLE_SIZE:
            self.counts[self.index[ms]] += 1
        else:
            self.counts[bisect_left(self.bounds_ms, ms)] += 1
        self.sum_ms += ms

    def snapshot(self) -> tuple[list[tuple[str, int]], float, int]:
        buckets, _, count = super().snapshot()
        return buckets, self.sum_ms / 1000.0, count


# Label values of `outcome` for every AttemptOutcome number ("succeeded", "lost", ...).
OUTCOME_LABELS = {v.number: v.name.removeprefix("ATTEMPT_OUTCOME_").lower()
                  for v in task_pb2.AttemptOutcome.DESCRIPTOR.values}


def outcome_counter_family(name: str, documentation: str,
                           outcomes_by_type: Iterable[tuple[str, Sequence[int]]]) -> CounterMetricFamily:
    """A counter labelled (task_type, outcome) from per-type counts indexed by outcome number."""
    family = CounterMetricFamily(name, documentation, labels=["task_type", "outcome"])
    for task_type, outcomes in outcomes_by_type:
        for outcome, n in enumerate(outcomes):
            if n:
                family.add_metric([task_type, OUTCOME_LABELS.get(outcome, str(outcome))], n)
    return family


def histogram_family(name: str, documentation: str, labelnames: Sequence[str],
                     items: Iterable[tuple[Sequence[str], BucketCounts]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=list(labelnames))
    for labels, histogram in items:
        buckets, total, _ = histogram.snapshot()
        family.add_metric(list(labels), buckets, sum_value=total)
    return family


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (HOST may be empty or [::]) -> (host, port). Raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def start_metrics_server(listen: str, collectors: Iterable[Any], *, process_metrics: bool = True) -> tuple[Any, int]:
    """Serve ``/metrics`` on ``listen`` from a fresh registry holding ``collectors`` (plus the
    standard process_* metrics). Returns (server, bound port); the server runs in a daemon thread
    (``server.shutdown()`` stops it)."""
    from prometheus_client import ProcessCollector, start_http_server

    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=True)
    if process_metrics:
        ProcessCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_address[1]
