"""An actor app for the task-graph end-to-end tests (tests/e2e/test_task_graphs.py).

Owns ``app`` with the handlers ``collect`` (sleeps ``input["sleep"]`` seconds, then returns its
``input["name"]`` and every prerequisite output it sees in ``ctx.prerequisites``; with
``input["names_only"]`` only each prerequisite's ``name``), ``boom`` (fails,
non-retryable) and ``sleep`` (sleeps until canceled or ``input["seconds"]`` pass).
"""
from __future__ import annotations

from typing import Any

from actor.app import App
from actor.context import AttemptContext
from actor.errors import AttemptCanceled, NonRetryableError

app = App()


@app.handler("collect")
async def collect(input: Any, ctx: AttemptContext) -> dict[str, Any]:
    seconds = float(input.get("sleep", 0)) if isinstance(input, dict) else 0.0
    if seconds and await ctx.cancel_token.wait(seconds):
        raise AttemptCanceled(ctx.cancel_token.reason)
    name = input.get("name", ctx.task_id) if isinstance(input, dict) else ctx.task_id
    if isinstance(input, dict) and input.get("names_only"):  # deep graphs: outputs would nest
        return {"name": name, "prerequisites": {k: (v or {}).get("name") for k, v in ctx.prerequisites.items()}}
    return {"name": name, "prerequisites": ctx.prerequisites}


@app.handler("boom")
async def boom(input: Any, ctx: AttemptContext) -> None:
    raise NonRetryableError("boom on purpose")


@app.handler("sleep")
async def sleep(input: Any, ctx: AttemptContext) -> dict[str, float]:
    seconds = float(input.get("seconds", 0)) if isinstance(input, dict) else 0.0
    if await ctx.cancel_token.wait(seconds):
        raise AttemptCanceled(ctx.cancel_token.reason)
    return {"slept": seconds}
