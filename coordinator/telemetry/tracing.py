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
from corral_telemetry.tracing import carrier_of, context_from_headers, fill_trace_context, trace_headers

from ..core.errors import CorralError

SERVICE = "corral.v1.TaskService"
MAX_IDS_ATTRIBUTE = 100


class SubmissionTracing:
    def __init__(self, tracer: trace.Tracer | None) -> None:
        self.tracer = tracer

    async def submit(self, method: str, grpc_context: Any, specs: Sequence[Any],
                     call: Callable[[], Awaitable[list[tuple[str, bool, int]]]]) -> list[tuple[str, bool, int]]:
        """Run ``call()`` (the submission of ``specs``) inside the submission span."""
        headers = trace_headers(grpc_context.invocation_metadata() if grpc_context is not None else None)
        tracer = self.tracer
        if tracer is None:
            if headers and trace_id_of(headers):
                fill_trace_context(specs, headers)
            return await call()
        span = tracer.start_span(
            f"{SERVICE}/{method}", context=context_from_headers(headers), kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method,
                        "corral.task.count": len(specs)})
        try:
            fill_trace_context(specs, carrier_of(span))
            results = await call()
        except CorralError as exc:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        else:
            if span.is_recording():
                span.set_attributes(result_attributes(results))
            return results
        finally:
            span.end()


def result_attributes(results: Sequence[tuple[str, bool, int]]) -> dict[str, Any]:
    """Span attributes for the submission's results: the task id (one task) or the ids (a batch,
    the first MAX_IDS_ATTRIBUTE) and how many were created (not already there)."""
    if len(results) == 1:
        task_id, created, _state = results[0]
        return {"corral.task.id": task_id, "corral.task.created": created}
    return {"corral.task.ids": [r[0] for r in results[:MAX_IDS_ATTRIBUTE]],
            "corral.task.created_count": sum(1 for r in results if r[1])}
