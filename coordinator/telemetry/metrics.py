"""The coordinator's Prometheus metrics, kept off the dispatch loop's hot path.

Owns ``LoopMetrics`` (what the loop records: called ONCE per step, after the commit, with the
step's grants and ended attempts) and ``CoordinatorCollector`` (everything else, computed when
Prometheus scrapes, from the projection, the fleet, the WAL and the loop's plain counters).

Cost model (the loop spends ~60 µs of CPU per task): per step, two bucket observations for the
WAL commit; per granted first attempt, one subtraction and one bucket observation; per ended
attempt, a dict increment and one bucket observation (~1 µs per task in all, measured in
tests/bench). Gauges cost nothing until scraped. With metrics off the loop holds None and checks
it once per step.

Reads at scrape time happen on the scrape server's thread while the loop mutates: dicts are
copied with ``list(...)``/``dict(...)`` (atomic under the GIL) before they are walked; ints are
read whole. The projection may be one step ahead of the WAL (records are applied as they are
emitted, committed at the end of the step), which is fine for metrics.

Metric names (Prometheus conventions: ``corral_`` prefix, base units in the name, ``_total``
for counters; label values lower case):

    corral_tasks{state}                                   gauge      tasks by state
    corral_queue_depth{task_type}                         gauge      READY tasks in the ready queues
    corral_connected_actors / corral_slots / corral_free_slots / corral_leases   gauges
    corral_attempts_total{task_type,outcome}              counter    attempts ended, by outcome
    corral_lease_expiries_total                           counter
    corral_stale_results_rejected_total                   counter
    corral_dispatch_steps_total / corral_wal_commits_total counters
    corral_task_submit_to_start_seconds{task_type}        histogram  eligible -> first grant
    corral_attempt_duration_seconds{task_type}            histogram  grant -> end (ms clock)
    corral_wal_commit_duration_seconds                    histogram  one group commit, as the loop waits for it
    corral_wal_batch_size_records                         histogram  records per commit
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from corral_telemetry.prometheus import (COMMIT_BUCKETS_S, DURATION_BUCKETS_S, LATENCY_BUCKETS_S, OUTCOME_LABELS,
                                         SIZE_BUCKETS, BucketCounts, MsBucketCounts, histogram_family,
                                         outcome_counter_family)

from ..core.states import State

if TYPE_CHECKING:
    from ..dispatch.loop import DispatchLoop

STATE_LABELS = {int(s): s.name.lower() for s in State}


class TypeStats:
    """What the loop records about one task type: attempts ended by outcome, attempt durations,
    submit-to-start latencies (integer ms in, seconds out)."""

    __slots__ = ("outcomes", "duration", "submit_to_start")

    def __init__(self) -> None:
        self.outcomes = [0] * (max(OUTCOME_LABELS) + 1)
        self.duration = MsBucketCounts(DURATION_BUCKETS_S)
        self.submit_to_start = MsBucketCounts(LATENCY_BUCKETS_S)


class LoopMetrics:
    """Accumulates what the dispatch loop observes; read by ``CoordinatorCollector``.

    ``step_committed`` is the only call on the hot path: once per step that did anything. Per
    task it costs about 1 µs (measured with tests/bench/dispatch_cpu.py): the histogram updates
    are inlined list increments, one dict lookup per task type."""

    __slots__ = ("projection", "by_type", "wal_commit", "wal_batch")

    def __init__(self, projection: Any) -> None:
        self.projection = projection
        self.by_type: dict[str, TypeStats] = {}
        self.wal_commit = BucketCounts(COMMIT_BUCKETS_S)
        self.wal_batch = BucketCounts(SIZE_BUCKETS)

    def stats(self, task_type: str) -> TypeStats:
        stats = self.by_type.get(task_type)
        if stats is None:
            stats = self.by_type[task_type] = TypeStats()
        return stats

    def step_committed(self, now_ms: int, n_records: int, commit_s: float, grants: Any, ended: list) -> None:
        """After a step's commit: ``grants`` are its (task, actor) grants, ``ended`` the ids of
        the tasks whose attempt it ended (at most one per task and step; already applied)."""
        if n_records:
            self.wal_commit.observe(commit_s)
            self.wal_batch.observe(n_records)
        by_type = self.by_type
        table_size = MsBucketCounts.MS_TABLE_SIZE
        if grants:
            for task, _actor in grants:
                if len(task.attempts) == 1:  # the first attempt: submit-to-start
                    stats = by_type.get(task.type) or self.stats(task.type)
                    h = stats.submit_to_start
                    ms = now_ms - task.eligible_since_ms
                    if 0 <= ms < table_size:
                        h.counts[h.index[ms]] += 1
                        h.sum_ms += ms
                    else:
                        h.observe_ms(ms)
        if ended:
            tasks = self.projection.tasks
            for task_id in ended:
                task = tasks[task_id]
                stats = by_type.get(task.type) or self.stats(task.type)
                a = task.attempts[-1]
                if not a.outcome:  # lost and granted again in the same step: the ended one is before
                    a = task.attempts[-2]
                stats.outcomes[a.outcome] += 1
                h = stats.duration
                ms = a.ended_ms - a.started_ms
                if 0 <= ms < table_size:
                    h.counts[h.index[ms]] += 1
                    h.sum_ms += ms
                else:
                    h.observe_ms(ms)


def queue_depths(projection: Any) -> dict[str, int]:
    """READY tasks in the ready queues, by task type (exact: Projection.ready_by_type)."""
    return projection.ready_by_type()


class CoordinatorCollector:
    """Computes every coordinator metric at scrape time (see the module docstring)."""

    def __init__(self, loop: "DispatchLoop", metrics: LoopMetrics) -> None:
        self.loop = loop
        self.metrics = metrics

    def describe(self) -> list:
        return []  # unchecked collector: do not run collect() at registration

    def collect(self):
        loop = self.loop
        projection = loop.projection
        fleet = loop.fleet
        m = self.metrics

        tasks = GaugeMetricFamily("corral_tasks", "Tasks by state.", labels=["state"])
        for state, count in dict(projection.state_counts).items():
            tasks.add_metric([STATE_LABELS.get(state, str(state))], count)
        yield tasks

        depth = GaugeMetricFamily("corral_queue_depth",
                                  "READY tasks in the ready queues, waiting for an actor slot, by task type (tasks "
                                  "held back by a concurrency key count once admitted).", labels=["task_type"])
        for task_type, n in sorted(queue_depths(projection).items()):
            depth.add_metric([task_type], n)
        yield depth

        actors = list(fleet.actors.values())
        slots = sum(a.slots for a in actors)
        held = sum(len(a.held) for a in actors)
        yield GaugeMetricFamily("corral_connected_actors", "Actor processes with an open stream.", value=len(actors))
        yield GaugeMetricFamily("corral_slots", "Slots of the connected actors.", value=slots)
        yield GaugeMetricFamily("corral_free_slots", "Free slots of the connected actors.", value=slots - held)
        yield GaugeMetricFamily("corral_leases", "Live leases (RUNNING attempts, also of disconnected actors).",
                                value=len(fleet.leases))

        by_type = sorted(list(m.by_type.items()))
        yield outcome_counter_family("corral_attempts", "Attempts ended, by task type and outcome.",
                                     ((t, list(stats.outcomes)) for t, stats in by_type))
        yield CounterMetricFamily("corral_lease_expiries", "Leases that expired (no heartbeat for the lease TTL).",
                                  value=loop.lease_expiries)
        yield CounterMetricFamily("corral_stale_results_rejected",
                                  "Results refused by fencing (stale token, lease not live, wrong actor).",
                                  value=loop.stale_results_rejected)
        yield CounterMetricFamily("corral_dispatch_steps", "Dispatch loop steps.", value=loop.steps)
        yield CounterMetricFamily("corral_wal_commits", "WAL group commits (one fsync'd transaction each).",
                                  value=loop.wal.commits)

        yield histogram_family(
            "corral_task_submit_to_start_seconds",
            "From submission (or not_before, for delayed tasks) to the grant of the first attempt.",
            ["task_type"], [([t], stats.submit_to_start) for t, stats in by_type])
        yield histogram_family(
            "corral_attempt_duration_seconds", "From lease grant to the end of the attempt (millisecond clock).",
            ["task_type"], [([t], stats.duration) for t, stats in by_type])
        yield histogram_family(
            "corral_wal_commit_duration_seconds",
            "Time the dispatch loop waits for one WAL group commit (transaction + fsync).", [], [([], m.wal_commit)])
        yield histogram_family("corral_wal_batch_size_records", "WAL records per group commit.", [],
                               [([], m.wal_batch)])


def start_coordinator_metrics(listen: str, loop: "DispatchLoop", metrics: LoopMetrics):
    """Serve /metrics on ``listen``; returns (server, bound port)."""
    from corral_telemetry.prometheus import start_metrics_server

    return start_metrics_server(listen, [CoordinatorCollector(loop, metrics)])
