"""Structured logs: ``log_format`` text (the default) or json (one JSON object per line).

Owns ``JsonFormatter`` and the task fields of a log line. A line about a task carries
``task_id``, ``attempt`` and ``trace_id``, from (first found wins):

1. the record itself: ``log.info(..., extra=task_fields(task_id, attempt, trace_id))``;
2. the task being run in the current context (``TASK_CONTEXT``: the actor sets it around a
   handler, so a handler's own log lines carry its task without doing anything);
3. for ``trace_id`` only: the current OpenTelemetry span, if it is valid (its ``span_id`` is
   added when it belongs to the line's trace).

Text logs are unchanged; the task fields are only rendered in JSON.
"""
from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# (task_id, attempt, trace_id) of the attempt whose code runs in this context (actor side).
TASK_CONTEXT: contextvars.ContextVar[tuple[str, int, str] | None] = contextvars.ContextVar(
    "corral_task", default=None)


def trace_id_of(carrier: Mapping[str, str]) -> str:
    """The trace id (32 hex digits) of a W3C ``traceparent`` in ``carrier``; "" if none or malformed.

    Cheap (string checks only): used for log lines, where a full propagator parse is not needed."""
    tp = carrier.get("traceparent", "") if carrier else ""
    if len(tp) < 55 or tp[2] != "-" or tp[35] != "-":
        return ""
    trace_id = tp[3:35]
    if trace_id == "0" * 32:
        return ""
    try:
        int(trace_id, 16)
    except ValueError:
        return ""
    return trace_id.lower()


def task_fields(task_id: str, attempt: int | None = None, trace_id: str = "") -> dict[str, Any]:
    """``extra=`` for a log line about a task."""
    fields: dict[str, Any] = {"task_id": task_id}
    if attempt is not None:
        fields["attempt"] = attempt
    if trace_id:
        fields["trace_id"] = trace_id
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (RFC 3339, UTC, ms), level, logger, message, then the
    task fields when known, then ``exception`` / ``stack`` when present."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        task_id = getattr(record, "task_id", None)
        attempt = getattr(record, "attempt", None)
        trace_id = getattr(record, "trace_id", None)
        span_id = None
        if task_id is None:
            current = TASK_CONTEXT.get()
            if current is not None:
                task_id, attempt, trace_id = current[0], current[1], trace_id or current[2]
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            current_trace_id = format(ctx.trace_id, "032x")
            if not trace_id:
                trace_id = current_trace_id
            if trace_id == current_trace_id:
                span_id = format(ctx.span_id, "016x")
        if task_id is not None:
            out["task_id"] = task_id
        if attempt is not None:
            out["attempt"] = attempt
        if trace_id:
            out["trace_id"] = trace_id
        if span_id:
            out["span_id"] = span_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _rfc3339(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


def check_log_format(value: str) -> str | None:
    return None if value.lower() in LOG_FORMATS else "must be text or json"


def configure_logging(level: str, log_format: str = "text", stream: Any = None) -> None:
    """Root logging to ``stream`` (stderr) at ``level``, as text or JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format.lower() == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def use_json_logs() -> None:
    """Switch every handler of the root logger to JSON lines (for a process whose logging is
    already set up, e.g. the actor runner's)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())
