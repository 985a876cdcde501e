"""The actor's telemetry: a span per attempt, Prometheus metrics, task fields on log lines.

Owns ``ActorTelemetry``, which ``ActorSession`` calls at two points per attempt (``start_attempt``
instead of ``runner.start()``, and ``attempt_done``), and ``install`` (set-up from the runner's
settings and the environment). A session without telemetry (``session.telemetry is None``, the
default) pays one None check per attempt.

- Traces (``--otlp-endpoint`` and/or ``--trace-file``, as on the coordinator): the
  attempt span ``corral.attempt`` is a child of the context the lease carries (the task's
  submission span on the coordinator, itself a child of the submitter's span), with attributes
  task id, type, attempt, fencing token and, at the end, the outcome (the actor id is the
  resource's service.instance.id); its status is ERROR when the attempt failed or timed out. The
  handler runs with the span current, so spans it starts nest under it. Child tasks (a later
  issue) inherit here: a task submitted from inside a handler gets the current context
  (``corral_telemetry.tracing.carrier_of()``, i.e. this attempt's span) in its
  ``TaskSpec.trace_context``, which the coordinator keeps because it is not empty.
- Metrics (``--metrics-listen`` / ``CORRAL_METRICS_LISTEN``): counters the session keeps anyway
  are read at scrape time; per attempt only an outcome count and a duration observation are
  added (plain ints, no lock). With tracing on, the duration is the attempt span's (its start and
  end timestamps: one clock read serves both), otherwise from the monotonic clock.

Per attempt with tracing on: one ``RecordedSpan`` (the handler's current span, then the exported
span), one OpenTelemetry context set on its ContextVar around ``runner.start()``, one dict entry
(runner -> span) while it runs, and at the end the attributes and one queue append
(``SpanBatcher``). Measure with ``python -m tests.bench.instructions --side actor``.
- Logs (``--log-format json``): the handler runs with ``TASK_CONTEXT`` set, so its own log
  lines carry task_id, attempt and trace_id.
"""
from __future__ import annotations

import atexit
import logging
import os
from bisect import bisect_left
from time import monotonic, time_ns
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context as OtelContext
from opentelemetry.trace import SpanKind, Status, StatusCode

from corral.v1 import task_pb2
from corral_telemetry.logs import TASK_CONTEXT, check_log_format, trace_id_of, use_json_logs
from corral_telemetry.prometheus import (DURATION_BUCKETS_S, OUTCOME_LABELS, BucketCounts, histogram_family,
                                         outcome_counter_family)
from corral_telemetry.tracing import (CURRENT_SPAN_KEY, RecordedSpan, Tracing, attach_context, configure_tracing,
                                      detach_context)

if TYPE_CHECKING:
    from actor.attempt_runner import AttemptRunner
    from actor.session import ActorSession

log = logging.getLogger(__name__)

ENV_METRICS_LISTEN = "CORRAL_METRICS_LISTEN"
ENV_LOG_FORMAT = "CORRAL_LOG_FORMAT"
ENV_OTLP_ENDPOINT = "CORRAL_OTLP_ENDPOINT"
ENV_TRACE_FILE = "CORRAL_TRACE_FILE"

ERROR_OUTCOMES = frozenset({task_pb2.ATTEMPT_OUTCOME_FAILED, task_pb2.ATTEMPT_OUTCOME_TIMED_OUT})
ATTEMPT_SPAN = "corral.attempt"


class _TypeStats:
    __slots__ = ("outcomes", "duration")

    def __init__(self) -> None:
        self.outcomes = [0] * (max(OUTCOME_LABELS) + 1)  # by AttemptOutcome number
        self.duration = BucketCounts(DURATION_BUCKETS_S)


class ActorTelemetry:
    """Per-attempt hooks for an ``ActorSession``; any of tracing, metrics and task log fields."""

    def __init__(self, session: "ActorSession", *, tracing: Tracing | None = None, metrics: bool = False,
                 task_logs: bool = False) -> None:
        self.session = session
        self.tracing = tracing
        # Attempt spans are made with a SpanRecorder (a third of the tracer's cost per span).
        self.spans = tracing.recorder(ATTEMPT_SPAN, SpanKind.CONSUMER) if tracing is not None else None
        self.metrics = metrics
        self.task_logs = task_logs
        # Attempts started and not done: runner -> its span (tracing on), else its monotonic start.
        self._open: dict[Any, RecordedSpan | float] = {}
        self._last_trace_id: tuple[int, str] = (0, "")
        # task type -> attempts finished by outcome, handler durations.
        self.by_type: dict[str, _TypeStats] = {}
        self.metrics_server: Any = None
        self.metrics_port = 0

    # ---- the session's hooks -------------------------------------------------------------------

    def start_attempt(self, runner: "AttemptRunner") -> None:
        """Start ``runner`` inside its attempt span (and task log context)."""
        token = None
        task_token = None
        span = None
        spans = self.spans
        if spans is not None:
            span = spans.start_from_carrier(runner.lease.trace_context)
            # Current while the handler runs (= attach(spans.context_of(span))): its spans nest
            # here, and child tasks inherit it by injecting carrier_of() into their
            # TaskSpec.trace_context.
            token = attach_context(OtelContext({CURRENT_SPAN_KEY: span}))
            self._open[runner] = span
        elif self.metrics:
            self._open[runner] = monotonic()
        if self.task_logs:
            key = runner.key
            task_token = TASK_CONTEXT.set((key[0], key[1], self._trace_id(runner, span)))
        try:
            runner.start()  # an async handler's task copies this context; sync ones get a copy too
        finally:
            if task_token is not None:
                TASK_CONTEXT.reset(task_token)
            if token is not None:
                detach_context(token)

    def _trace_id(self, runner: "AttemptRunner", span: RecordedSpan | None) -> str:
        """The attempt's trace id in hex, for its log lines (formatted once per trace: the attempts
        of one submission share it)."""
        if span is None:
            return trace_id_of(runner.lease.trace_context)
        trace_id = span.context.trace_id
        last = self._last_trace_id
        if last[0] != trace_id:
            last = self._last_trace_id = (trace_id, format(trace_id, "032x"))
        return last[1]

    def attempt_done(self, runner: "AttemptRunner", result: Any, dropped: bool) -> None:
        """The attempt ended with ``result``; ``dropped``: its result will not be reported (lease
        lost, or the actor is stopping)."""
        opened = self._open.pop(runner, None)
        if opened is None:  # neither metrics nor tracing
            return
        outcome = result.outcome
        task_type = runner.lease.task_type
        if self.spans is None:
            span = None
            end_ns = 0
            seconds = monotonic() - opened
        else:
            span = opened
            end_ns = time_ns()
            # With tracing, the handler's duration is its span's (one clock read for both).
            seconds = (end_ns - span._start_time) / 1e9
        if self.metrics:
            stats = self.by_type.get(task_type) or self._new_type(task_type)
            try:
                stats.outcomes[outcome] += 1
            except IndexError:  # an outcome newer than this code: not counted
                pass
            if seconds < 0.0:  # the wall clock stepped back
                seconds = 0.0
            h = stats.duration
            h.counts[bisect_left(DURATION_BUCKETS_S, seconds)] += 1  # BucketCounts.observe, inlined
            h.sum += seconds
        if span is not None and span.recording:
            key = runner.key  # (task id, attempt, fencing token)
            attributes = {"corral.task.id": key[0], "corral.task.type": task_type, "corral.attempt": key[1],
                          "corral.fencing_token": key[2], "corral.outcome": OUTCOME_LABELS.get(outcome) or str(outcome)}
            if dropped:
                attributes["corral.result_dropped"] = True
            status = None
            if outcome in ERROR_OUTCOMES:
                error = result.error
                status = Status(StatusCode.ERROR, f"{error.kind}: {error.message}"[:1024])
            self.spans.end(span, attributes, status, end_ns)

    def _new_type(self, task_type: str) -> _TypeStats:
        stats = self.by_type[task_type] = _TypeStats()
        return stats

    def close(self) -> None:
        """End spans of attempts that never finished (the actor stopped), flush the exporters,
        stop the metrics server."""
        opened, self._open = self._open, {}
        for runner, span in opened.items():
            if isinstance(span, RecordedSpan):
                key = runner.key
                self.spans.end(span, {"corral.task.id": key[0], "corral.attempt": key[1],
                                      "corral.fencing_token": key[2], "corral.result_dropped": True},
                               Status(StatusCode.ERROR, "the actor stopped before the attempt ended"))
        if self.tracing is not None:
            self.tracing.provider.shutdown()  # flushes the exporters
            self.tracing = None
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server = None

    # ---- metrics at scrape time ----------------------------------------------------------------

    def describe(self) -> list:
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.session
        yield CounterMetricFamily("corral_actor_attempts_started", "Attempts started (leases run).",
                                  value=s.attempts_started)
        by_type = sorted(list(self.by_type.items()))
        yield outcome_counter_family("corral_actor_attempts_finished",
                                     "Attempts finished, by task type and outcome (as the actor saw it).",
                                     ((t, list(stats.outcomes)) for t, stats in by_type))
        yield GaugeMetricFamily("corral_actor_running_attempts", "Attempts running now.", value=s.running_count)
        yield GaugeMetricFamily("corral_actor_slots", "Attempts this actor runs at once.", value=s.slots)
        yield GaugeMetricFamily("corral_actor_connected", "1 while the stream to the coordinator is up.",
                                value=1 if s.connected else 0)
        yield CounterMetricFamily("corral_actor_reconnects", "Streams opened after the first one.",
                                  value=max(0, s.connects - 1))
        yield CounterMetricFamily("corral_actor_results_rejected",
                                  "Results the coordinator refused (stale token, lease no longer live).",
                                  value=s.results_rejected)
        yield CounterMetricFamily("corral_actor_results_dropped",
                                  "Results not reported (lease lost, not adopted, or the actor stopped).",
                                  value=s.results_dropped)
        yield histogram_family("corral_actor_handler_duration_seconds",
                               "From the handler's start to its result, by task type.", ["task_type"],
                               [([t], stats.duration) for t, stats in by_type])


def install(session: "ActorSession", *, metrics_listen: str | None = None, log_format: str | None = None,
            otlp_endpoint: str | None = None, trace_file: str | None = None,
            environ: Mapping[str, str] | None = None) -> ActorTelemetry | None:
    """Set up what is configured and attach it to ``session``; None when nothing is.

    Each argument left empty falls back to its environment variable (CORRAL_METRICS_LISTEN,
    CORRAL_LOG_FORMAT, CORRAL_OTLP_ENDPOINT, CORRAL_TRACE_FILE); ``corral actor`` passes the
    values ``actor.runner.resolve_settings`` resolved (flag, then environment).

    Raises ValueError naming the setting for a bad value, ``TracingUnavailable`` (a RuntimeError)
    when OTLP is configured but not installed, OSError when the metrics address cannot be bound."""
    environ = os.environ if environ is None else environ
    listen = metrics_listen or environ.get(ENV_METRICS_LISTEN, "")
    log_format = log_format or environ.get(ENV_LOG_FORMAT, "") or "text"
    problem = check_log_format(log_format)
    if problem:
        raise ValueError(f"--log-format / {ENV_LOG_FORMAT}: {problem} (got {log_format!r})")
    json_logs = log_format.lower() == "json"
    if json_logs:
        use_json_logs()
    tracing = configure_tracing("corral-actor", instance_id=session.actor_id,
                                otlp_endpoint=otlp_endpoint or environ.get(ENV_OTLP_ENDPOINT, ""),
                                trace_file=trace_file or environ.get(ENV_TRACE_FILE, ""))
    if tracing is None and not listen and not json_logs:
        return None
    telemetry = ActorTelemetry(session, tracing=tracing, metrics=bool(listen), task_logs=json_logs)
    if listen:
        from corral_telemetry.prometheus import parse_listen, start_metrics_server

        try:
            parse_listen(listen)
        except ValueError as exc:
            raise ValueError(f"--metrics-listen / {ENV_METRICS_LISTEN}: {exc}") from None
        telemetry.metrics_server, telemetry.metrics_port = start_metrics_server(listen, [telemetry])
        log.info("serving Prometheus metrics on %s (port %d)", listen, telemetry.metrics_port)
    session.telemetry = telemetry
    atexit.register(telemetry.close)
    return telemetry
