"""The coordinator's side of tracing: one span per SubmitTask / SubmitTasks call, and the trace
context each submitted task carries from then on.

Owns ``SubmissionTracing.submit``: extract the caller's W3C context from the gRPC invocation
metadata (traceparent/tracestate, via the OpenTelemetry propagator), start the submission span as
its child, store the span's context in ``spec.trace_context`` of every spec that has none (so it
is written to the WAL with the task, survives restarts, and rides on every lease of the task),
then run the submission. One span per call, whatever the batch size: a batch's task count and
(up to MAX_IDS_ATTRIBUTE) ids are attributes.

With tracing off (no exporter configured) there is no tracer: no span is made, and a caller's
traceparent, if it sent one, is copied into the specs as is, so the attempts still join the
caller's trace when the actors trace. The cost is then one scan of the call's metadata.

Child tasks (a later issue) inherit here: a task submitted by a handler will carry its attempt's
context in ``spec.trace_context`` (set by the actor from the attempt span), which this code keeps
because it is not empty, so the child's attempts continue the parent's trace.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from corral_telemetry.logs import trace_id_of
from corral_telemetry.tracing import (SpanRecorder, Tracing, carrier_of, context_from_headers, fill_trace_context,
                                      trace_headers)

from ..core.errors import CorralError

SERVICE = "corral.v1.TaskService"
MAX_IDS_ATTRIBUTE = 100


class SubmissionTracing:
    """One span per submission call (a ``SpanRecorder`` span: it sits on the submission's path,
    so it costs a third of an SDK tracer span); None: tracing off."""

    def __init__(self, tracing: Tracing | None) -> None:
        self.tracing = tracing
        self._recorders: dict[str, SpanRecorder] = {}

    async def submit(self, method: str, grpc_context: Any, specs: Sequence[Any],
                     call: Callable[[], Awaitable[list[tuple[str, bool, int]]]]) -> list[tuple[str, bool, int]]:
        """Run ``call()`` (the submission of ``specs``) inside the submission span."""
        headers = trace_headers(grpc_context.invocation_metadata() if grpc_context is not None else None)
        if self.tracing is None:
            if headers and trace_id_of(headers):
                fill_trace_context(specs, headers)
            return await call()
        recorder = self._recorders.get(method)
        if recorder is None:
            recorder = self._recorders[method] = self.tracing.recorder(f"{SERVICE}/{method}", SpanKind.SERVER)
        caller = context_from_headers(headers)  # through the W3C propagator
        span = recorder.start(trace.get_current_span(caller).get_span_context() if caller is not None else None)
        attributes: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method,
                                      "corral.task.count": len(specs)}
        status = None
        try:
            # Sampled or not, the span's context goes with the tasks (its flags carry the decision).
            fill_trace_context(specs, carrier_of(trace.NonRecordingSpan(span.context)))
            results = await call()
        except BaseException as exc:
            status = Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, CorralError):
                attributes["exception.type"] = type(exc).__name__
            raise
        else:
            attributes.update(result_attributes(results))
            return results
        finally:
            recorder.end(span, attributes, status)


def result_attributes(results: Sequence[tuple[str, bool, int]]) -> dict[str, Any]:
    """Span attributes for the submission's results: the task id (one task) or the ids (a batch,
    the first MAX_IDS_ATTRIBUTE) and how many were created (not already there)."""
    if len(results) == 1:
        task_id, created, _state = results[0]
        return {"corral.task.id": task_id, "corral.task.created": created}
    return {"corral.task.ids": [r[0] for r in results[:MAX_IDS_ATTRIBUTE]],
            "corral.task.created_count": sum(1 for r in results if r[1])}
