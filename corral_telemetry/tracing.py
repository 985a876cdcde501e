"""Traces: W3C trace-context propagation helpers, the tracer set-up, a JSON-lines span exporter.

The trace context of a task travels WITH THE TASK: the coordinator stores its submission span's
context in ``TaskSpec.trace_context`` (so it is in the WAL and survives restarts), every lease
carries it, and the actor's attempt span is its child. On the wire between processes it is the
W3C ``traceparent`` / ``tracestate`` pair, in gRPC metadata (client -> coordinator) and in those
map fields (coordinator -> actor).

Tracing is on in a process when an exporter is configured: ``otlp_endpoint`` (OTLP over gRPC;
needs the optional extra ``corral[otlp]``, imported only then) and/or ``trace_file`` (finished
spans as JSON lines, for tests and debugging; ``/dev/null`` batches the spans and drops them).
Otherwise ``configure_tracing`` returns None, no tracer exists, and callers create no span at
all. The sampler is the SDK's (parent-based, always on by default; ``OTEL_TRACES_SAMPLER`` /
``OTEL_TRACES_SAMPLER_ARG`` change it), and the batching follows the SDK's settings
(``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_QUEUE_SIZE``, ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``).
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat, starmap
from random import getrandbits
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.sdk.environment_variables import (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_MAX_QUEUE_SIZE,
                                                     OTEL_BSP_SCHEDULE_DELAY)
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

TRACE_HEADERS = ("traceparent", "tracestate")
# The W3C propagator only: the carrier fields are documented as traceparent/tracestate.
_PROPAGATOR = TraceContextTextMapPropagator()
_EMPTY_CONTEXT = otel_context.Context()
_SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
_NOT_SAMPLED = trace.TraceFlags(trace.TraceFlags.DEFAULT)
_FOLLOWS_REMOTE_PARENT = "remoteParentSampled:AlwaysOnSampler,remoteParentNotSampled:AlwaysOffSampler"
# The last version-00 traceparent parsed and its span context (immutable: safe to share).
_last_parsed: tuple[str, trace.SpanContext | None] = ("", None)
_TRACEPARENT_00 = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def _random_span_id() -> int:
    span_id = getrandbits(64)
    while not span_id:
        span_id = getrandbits(64)
    return span_id


class TracingUnavailable(RuntimeError):
    """An exporter was configured but cannot be built (e.g. the OTLP extra is not installed)."""


# ---- propagation ---------------------------------------------------------------------------------

def trace_headers(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """The W3C trace headers among gRPC invocation metadata (keys are lower case on the wire)."""
    found: dict[str, str] = {}
    if metadata:
        for key, value in metadata:
            if key in TRACE_HEADERS and isinstance(value, str):
                found[key] = value
    return found


def span_context_from_carrier(carrier: Mapping[str, str] | None) -> trace.SpanContext | None:
    """The remote parent span context in ``carrier`` (traceparent/tracestate); None when it holds
    no valid one (the caller then starts a root span).

    The common case (a version-00 traceparent, no tracestate: what Corral itself writes unless a
    caller sent a tracestate) is parsed here, ~4x faster than the propagator (this runs once per
    attempt), and the last one parsed is remembered (the tasks of one batch share their parent);
    anything else goes through the W3C propagator. Both give the same result."""
    if not carrier:
        return None
    traceparent = carrier.get("traceparent")
    if not traceparent:
        return None
    if len(carrier) == 1:
        global _last_parsed
        last = _last_parsed
        if last[0] == traceparent:  # every task of one SubmitTasks call has the same parent
            return last[1]
        if _TRACEPARENT_00.fullmatch(traceparent) is not None:
            trace_id = int(traceparent[3:35], 16)
            span_id = int(traceparent[36:52], 16)
            parent = None
            if trace_id and span_id:
                parent = trace.SpanContext(trace_id, span_id, is_remote=True,
                                           trace_flags=trace.TraceFlags(int(traceparent[53:55], 16)))
            _last_parsed = (traceparent, parent)
            return parent
    ctx = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return ctx if ctx.is_valid else None


def context_from_headers(headers: Mapping[str, str] | None) -> otel_context.Context | None:
    """The caller's context from W3C headers, through the OpenTelemetry propagator API (once per
    RPC: no need for the fast path); None without a valid parent."""
    if not headers or "traceparent" not in headers:
        return None
    ctx = _PROPAGATOR.extract(headers)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def context_from_carrier(carrier: Mapping[str, str] | None) -> otel_context.Context | None:
    """The OpenTelemetry context holding the remote span of ``carrier``; None without a valid one."""
    parent = span_context_from_carrier(carrier)
    return None if parent is None else trace.set_span_in_context(trace.NonRecordingSpan(parent))


def carrier_of(span_or_context: trace.Span | otel_context.Context | None = None) -> dict[str, str]:
    """traceparent (and tracestate) of a span, or of the span in a context (default: the current
    one); {} when there is no valid span."""
    if isinstance(span_or_context, trace.Span):
        ctx = trace.set_span_in_context(span_or_context)
    else:
        ctx = span_or_context
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier


def inject_metadata(metadata: list[tuple[str, str]] | None = None,
                    context: otel_context.Context | None = None) -> list[tuple[str, str]]:
    """gRPC metadata carrying the current (or given) trace context, for a client call."""
    metadata = list(metadata or [])
    metadata.extend(carrier_of(context).items())
    return metadata


def fill_trace_context(specs: Sequence[Any], carrier: Mapping[str, str]) -> None:
    """Set ``spec.trace_context`` of every spec whose map is empty (a given one is kept)."""
    if not carrier:
        return
    items = list(carrier.items())
    for spec in specs:
        tc = spec.trace_context
        if not tc:
            for key, value in items:  # per key: a third of the cost of tc.update(carrier)
                tc[key] = value


# ---- set-up --------------------------------------------------------------------------------------

class Tracing:
    """What ``configure_tracing`` set up: the provider, a tracer, and the span processors."""

    def __init__(self, provider: Any, processors: Sequence[Any]) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("corral")
        self.processors = tuple(processors)

    def recorder(self, name: str, kind: trace.SpanKind) -> "SpanRecorder":
        return SpanRecorder(self, name, kind)


def configure_tracing(service_name: str, *, instance_id: str = "", otlp_endpoint: str = "",
                      trace_file: str = "") -> Tracing | None:
    """Tracing exporting to what is configured, or None when nothing is (tracing off).

    Also makes its provider the global one, so spans that handler code starts (inside an attempt)
    join the same traces and exporters. Raises ``TracingUnavailable`` when ``otlp_endpoint`` is set
    but the OTLP exporter is not installed."""
    if not otlp_endpoint and not trace_file:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    attributes = {"service.name": service_name}
    if instance_id:
        attributes["service.instance.id"] = instance_id
    provider = TracerProvider(resource=Resource.create(attributes))
    processors = []
    if otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise TracingUnavailable(
                f"an OTLP endpoint is configured ({otlp_endpoint}) but the OTLP exporter is not installed: "
                f"pip install 'corral[otlp]' ({exc})") from None
        processors.append(SpanBatcher(OTLPSpanExporter(endpoint=otlp_endpoint)))
    if trace_file:
        exporter = DiscardingSpanExporter() if trace_file == os.devnull else JsonLinesSpanExporter(trace_file)
        processors.append(SpanBatcher(exporter))
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return Tracing(provider, processors)


def _span_context(trace_id: int, span_id: int, flags: trace.TraceFlags, trace_state: Any) -> trace.SpanContext:
    """``trace.SpanContext(trace_id, span_id, False, flags, trace_state)`` for ids known to be valid
    (a valid parent's or a generated trace id, a non-zero 64-bit span id): the tuple it is, without
    the constructor's checks (a third of its cost). tests/unit/test_telemetry.py compares both."""
    return _new_tuple(_SpanContext, (trace_id, span_id, False, flags, trace_state, True))


_new_tuple = tuple.__new__
_SpanContext = trace.SpanContext
time_ns = time.time_ns
# The key of the current span in an OpenTelemetry context ("current-span-<uuid>"), found once
# through the public API: ``Context({CURRENT_SPAN_KEY: span})`` = ``set_span_in_context(span, Context())``.
CURRENT_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, otel_context.Context())))


def _current_context_var() -> contextvars.ContextVar | None:
    """The ContextVar holding OpenTelemetry's current context, when the runtime context is the
    API's default (contextvars) one; None otherwise."""
    try:
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
    except ImportError:  # pragma: no cover - the API always has it
        return None
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    return var if type(runtime) is ContextVarsRuntimeContext and isinstance(var, contextvars.ContextVar) else None


# ``otel_context.attach`` / ``detach``, straight to the ContextVar when the runtime context is the
# default one (the same thing without two Python calls and a try each: once per attempt).
_CONTEXT_VAR = _current_context_var()
attach_context = otel_context.attach if _CONTEXT_VAR is None else _CONTEXT_VAR.set
detach_context = otel_context.detach if _CONTEXT_VAR is None else _CONTEXT_VAR.reset


class RecordedSpan(ReadableSpan, trace.NonRecordingSpan):
    """One span of a ``SpanRecorder``, from its start to its export: ONE object per span.

    While the span runs it is what the OpenTelemetry context holds (a non-recording API span, as
    ``NonRecordingSpan``: ``get_span_context()`` gives its context, so spans started under it are its
    children); once ended, it is the SDK ``ReadableSpan`` the span processors and exporters get.
    The fields shared by all spans of a recorder (name, kind, resource, scope) are class attributes
    of the recorder's own subclass, so an instance holds only its context, parent, times,
    attributes and status. ``recording``: sampled (a span that is not is never exported)."""

    _events: Sequence[Any] = ()
    _links: Sequence[Any] = ()
    _instrumentation_info = None
    _attributes: Mapping[str, Any] | None = None
    _status: Status = Status(StatusCode.UNSET)
    _end_time: int | None = None

    def __init__(self, context: trace.SpanContext, parent: trace.SpanContext | None, start_ns: int,
                 recording: bool) -> None:  # noqa: D107 - no super().__init__: the fields are set here
        self._context = context
        self._parent = parent
        self._start_time = start_ns
        self.recording = recording

    def __repr__(self) -> str:
        return f"RecordedSpan({self._name!r}, {self._context!r})"


class SpanRecorder:
    """Spans of one name and kind, started and ended by our own code, at a fraction of the cost of
    ``tracer.start_span`` (the actor makes one per attempt). Same semantics, through the public SDK
    pieces: the provider's sampler (parent-based by default) and id generator decide, and the span
    processors get the span as an SDK ``ReadableSpan`` when it ends. What it skips: a live SDK Span
    (attributes are given once, at the end; no events), ``on_start`` (a no-op for batch processors)
    and span limits (the attributes are a fixed few). One object per span (``RecordedSpan``), and
    with ``SpanBatcher`` processors (what ``configure_tracing`` sets up) ending a span is one queue
    append.

    While the span runs, ``context_of(span)`` is an OpenTelemetry context whose current span is it,
    so spans started under it (by handler code, with the normal tracer) are its children."""

    def __init__(self, tracing: Tracing, name: str, kind: trace.SpanKind) -> None:
        provider = tracing.provider
        self.name = name
        self.kind = kind
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.resource = provider.resource
        self.processors = tracing.processors
        self.scope = InstrumentationScope("corral")
        self.span_class = type("RecordedSpan", (RecordedSpan,), {
            "__module__": __name__, "_name": name, "_kind": kind, "_resource": self.resource,
            "_instrumentation_scope": self.scope})
        # A parent-based sampler with the default delegates for remote parents (the SDK's default,
        # whatever the root sampler) samples a span with a remote parent iff the parent is sampled:
        # decided here without the sampler's call (same result, a third of this method's cost).
        self.follows_remote_parent = _FOLLOWS_REMOTE_PARENT in self.sampler.get_description()
        # The SDK's default id generator is random.getrandbits(64) (non-zero): called directly.
        self.random_ids = type(self.ids) is RandomIdGenerator
        self._last_parent: tuple = (None,)
        self._last_carrier: tuple = (None,)
        # Ending a span: one queue append when the only processor is a SpanBatcher (what
        # configure_tracing sets up for one exporter); otherwise each processor's on_end().
        self.batcher = self.processors[0] if len(self.processors) == 1 and isinstance(
            self.processors[0], SpanBatcher) else None

    def start(self, parent: trace.SpanContext | None) -> RecordedSpan:
        if parent is not None:
            if self.follows_remote_parent:
                last = self._last_parent  # the tasks of one batch share their parent
                if last[0] is not parent:
                    sampled = parent.trace_flags.sampled
                    last = self._last_parent = (parent, parent.is_remote, parent.trace_id,
                                                _SAMPLED if sampled else _NOT_SAMPLED, parent.trace_state, sampled)
                if last[1]:  # a remote parent: its sampled flag decides
                    span_id = (getrandbits(64) or _random_span_id()) if self.random_ids else self.ids.generate_span_id()
                    # = _span_context(...), inlined
                    return self.span_class(_new_tuple(_SpanContext, (last[2], span_id, False, last[3], last[4], True)),
                                           parent, time_ns(), last[5])
            trace_id = parent.trace_id
            parent_context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        else:
            trace_id = self.ids.generate_trace_id()
            parent_context = _EMPTY_CONTEXT
        result = self.sampler.should_sample(parent_context, trace_id, self.name, self.kind)
        flags = _SAMPLED if result.decision.is_sampled() else _NOT_SAMPLED
        context = trace.SpanContext(trace_id, self.ids.generate_span_id(), is_remote=False, trace_flags=flags,
                                    trace_state=result.trace_state)
        return self.span_class(context, parent, time_ns(), result.decision.is_recording())

    def start_from_carrier(self, carrier: Mapping[str, str]) -> RecordedSpan:
        """``start(span_context_from_carrier(carrier))``, with the common case in one step: the
        tasks of one submission share their traceparent, so the last one's parsing and sampling
        decision are reused when the carrier holds the same traceparent (and nothing else)."""
        traceparent = carrier.get("traceparent")
        last = self._last_carrier
        if traceparent == last[0] and traceparent is not None and len(carrier) == 1:
            span_id = (getrandbits(64) or _random_span_id()) if self.random_ids else self.ids.generate_span_id()
            return self.span_class(_new_tuple(_SpanContext, (last[1], span_id, False, last[2], last[3], True)),
                                   last[4], time_ns(), last[5])
        parent = span_context_from_carrier(carrier)
        span = self.start(parent)
        if parent is not None and parent.is_remote and self.follows_remote_parent and len(carrier) == 1:
            context = span.context
            self._last_carrier = (traceparent, context.trace_id, context.trace_flags, context.trace_state, parent,
                                  span.recording)
        return span

    @staticmethod
    def context_of(span: RecordedSpan, parent: otel_context.Context | None = None) -> otel_context.Context:
        """A context holding the span (added to ``parent``; by default to an empty context, not
        the current one: an attempt inherits nothing from the session's context)."""
        if parent is None:
            return otel_context.Context({CURRENT_SPAN_KEY: span})  # = set_span_in_context(span, Context())
        return trace.set_span_in_context(span, parent)

    def end(self, span: RecordedSpan, attributes: Mapping[str, Any], status: Any = None, end_ns: int = 0) -> None:
        """End ``span`` now (or at ``end_ns``, ns since the epoch) with ``attributes`` and ``status``."""
        if not span.recording:
            return
        span._end_time = end_ns or time_ns()
        span._attributes = attributes
        if status is not None:
            span._status = status
        batcher = self.batcher
        if batcher is not None:
            queue = batcher.queue  # SpanBatcher.add, inlined
            queue.append(span)
            if len(queue) >= batcher.batch_size:
                batcher.wake()
        else:
            for processor in self.processors:
                processor.on_end(span)


class SpanBatcher(SpanProcessor):
    """Exports finished spans in batches from a daemon thread: the SDK's ``BatchSpanProcessor``
    (same ``OTEL_BSP_*`` settings and defaults: schedule delay, queue size, batch size), at less
    cost per span on the caller's thread (``add``: a length check and a deque append; no pid check
    or per-span bookkeeping), which matters for the actor's span per attempt.

    Takes the SDK's spans (``on_end``: those of handler code, sampled ones only) and
    ``SpanRecorder``'s (``add``: already known to be sampled). The worker wakes every schedule delay,
    or as soon as a batch is full, and exports everything queued, a batch at a time, with
    instrumentation suppressed (as the SDK's processor does). When the queue is full a span is
    dropped and counted (``dropped``; one warning). ``force_flush`` exports what is queued;
    ``shutdown`` exports the rest and shuts the exporter down.

    One lock-free queue, many producers (any thread may end a span); one consumer."""

    def __init__(self, exporter: SpanExporter, *, max_queue_size: int | None = None,
                 schedule_delay_millis: float | None = None, max_export_batch_size: int | None = None) -> None:
        self.exporter = exporter
        self.max_queue_size = max_queue_size or _env_int(OTEL_BSP_MAX_QUEUE_SIZE, 2048)
        self.schedule_delay_s = (schedule_delay_millis or _env_int(OTEL_BSP_SCHEDULE_DELAY, 5000)) / 1000.0
        self.batch_size = min(max_export_batch_size or _env_int(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, 512),
                              self.max_queue_size)
        self.dropped = 0
        # Full: the oldest span is dropped (as the SDK's processor does).
        self.queue: deque = deque(maxlen=self.max_queue_size)
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._shutdown = False
        self._thread = threading.Thread(target=self._worker, name="CorralSpanBatcher", daemon=True)
        self._thread.start()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None and context.trace_flags.sampled:
            self.add(span)

    def add(self, span: ReadableSpan) -> None:
        """Queue a finished, sampled span (``SpanRecorder.end`` inlines this)."""
        queue = self.queue
        queue.append(span)
        if len(queue) >= self.batch_size:
            self.wake()

    def wake(self) -> None:
        """A batch is full: wake the worker (and count a dropped span when the queue is full)."""
        if len(self.queue) >= self.max_queue_size:
            if not self.dropped:
                log.warning("span queue full (%d spans): dropping the oldest (OTEL_BSP_MAX_QUEUE_SIZE)",
                            self.max_queue_size)
            self.dropped += 1
        if not self._wake.is_set():
            self._wake.set()

    def _worker(self) -> None:
        while not self._shutdown:
            self._wake.wait(self.schedule_delay_s)
            self._wake.clear()
            self._export_queued()

    def _export_queued(self) -> None:
        with self._export_lock:
            queue = self.queue
            while queue:
                n = min(len(queue), self.batch_size)
                batch = list(starmap(queue.popleft, repeat((), n)))  # n pops, no Python frame per span
                token = otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
                try:
                    self.exporter.export(batch)
                except Exception:  # noqa: BLE001 - an exporter's failure must not stop the worker
                    log.exception("exporting %d spans failed", n)
                finally:
                    otel_context.detach(token)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if not self._shutdown:
            self._export_queued()
        return True

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self._export_queued()
        self.exporter.shutdown()


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, "") or default)
    except ValueError:
        log.warning("%s is not an integer; using %d", name, default)
        return default
    return value if value > 0 else default


def shutdown_tracing() -> None:
    """Flush and stop the global provider's exporters (a no-op when tracing is off)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


# ---- the JSON-lines exporter ----------------------------------------------------------------------

def span_to_dict(span: Any) -> dict[str, Any]:
    """A finished SDK span as a flat JSON-able dict (ids in hex, times in ns since the epoch)."""
    ctx = span.context
    parent = span.parent
    status = span.status
    return {
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else "",
        "parent_is_remote": bool(parent is not None and parent.is_remote),
        "kind": span.kind.name,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "attributes": dict(span.attributes or {}),
        "status": status.status_code.name,
        "status_description": status.description or "",
        "service_name": span.resource.attributes.get("service.name", ""),
    }


class DiscardingSpanExporter(SpanExporter):
    """``trace_file`` = /dev/null: spans are made, sampled and batched as with any exporter, then
    dropped unserialized (to measure what tracing itself costs, e.g. in tests/bench)."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line (see ``span_to_dict``).

    For tests and debugging: several processes may append to one file (each line is one
    ``write`` to a file opened for appending)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by shutdown()

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        lines = "".join(json.dumps(span_to_dict(s), default=str) + "\n" for s in spans)
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.write(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def read_span_file(path: str) -> list[dict[str, Any]]:
    """The spans a ``JsonLinesSpanExporter`` wrote (a torn last line is ignored)."""
    spans = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    spans.append(json.loads(line))
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return spans

