"""Demo handlers used by the quick start, the end-to-end tests and the benchmarks.

Owns ``app``: echo, sleep, fail, noop, spin and fencing_token.

Invariants: every handler is deterministic given its input; only ``spin`` ignores cancellation (on
purpose: it exercises hard timeouts and proves a CPU-bound sync handler cannot starve heartbeats).
"""

from __future__ import annotations

import time
from typing import Any

from actor.app import App
from actor.context import AttemptContext
from actor.errors import AttemptCanceled, NonRetryableError

app = App()


def _field(input: Any, name: str, default: Any = None) -> Any:
    return input.get(name, default) if isinstance(input, dict) else default


@app.handler("echo")
async def echo(input: Any, ctx: AttemptContext) -> Any:
    """Return the input unchanged (JSON or bytes)."""
    return input


@app.handler("sleep")
async def sleep(input: Any, ctx: AttemptContext) -> dict[str, float]:
    """Sleep ``input["seconds"]``; stop early (AttemptCanceled) when canceled."""
    seconds = float(_field(input, "seconds", 0.0))
    if await ctx.cancel_token.wait(seconds):
        raise AttemptCanceled(ctx.cancel_token.reason)
    return {"slept": seconds}


@app.handler("fail")
async def fail(input: Any, ctx: AttemptContext) -> None:
    """Raise ``input["message"]``: retryable, or non-retryable if ``input["non_retryable"]``."""
    message = str(_field(input, "message", "demo failure"))
    if _field(input, "non_retryable", False):
        raise NonRetryableError(message)
    raise RuntimeError(message)


@app.handler("noop")
async def noop(input: Any, ctx: AttemptContext) -> None:
    """Do nothing (benchmarks)."""
    return None


@app.handler("spin")
def spin(input: Any, ctx: AttemptContext) -> dict[str, Any]:
    """Busy-loop on the CPU for ``input["seconds"]``, IGNORING cancellation (sync handler)."""
    seconds = float(_field(input, "seconds", 0.0))
    end = time.monotonic() + seconds
    iterations = 0
    while time.monotonic() < end:
        iterations += 1
    return {"spun": seconds, "iterations": iterations}


@app.handler("fencing_token")
async def fencing_token(input: Any, ctx: AttemptContext) -> dict[str, int]:
    """Return the attempt's fencing token and attempt number."""
    return {"token": ctx.fencing_token, "attempt": ctx.attempt}
