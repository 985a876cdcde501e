"""Handlers for tests/e2e/test_telemetry.py: one that logs and starts its own span (to show both
carry the attempt's task and trace), one that hangs until canceled (to lose its lease)."""
from __future__ import annotations

import logging

from opentelemetry import trace

from actor import App

app = App()
log = logging.getLogger("telemetry_app")


@app.handler("traced")
async def traced(input, ctx):
    with trace.get_tracer("telemetry_app").start_as_current_span("handler-work"):
        log.info("handler working on %s", ctx.task_id)
    return {"ok": True}


@app.handler("traced_sync")
def traced_sync(input, ctx):
    with trace.get_tracer("telemetry_app").start_as_current_span("handler-work-sync"):
        log.info("sync handler working on %s", ctx.task_id)
    return {"ok": True}


@app.handler("hang")
async def hang(input, ctx):
    await ctx.cancel_token.wait(3600)
    return None
