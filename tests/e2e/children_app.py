"""An actor app for the child-task end-to-end tests (tests/e2e/test_children.py).

Owns ``app`` with the handlers:
- ``fanout`` (async) and ``fanout_sync`` (a thread): submit ``input["n"]`` children of type
  ``input["child_type"]`` (keys ``c0``, ``c1``, ...; input ``{"i": i, **input["child_input"]}``;
  ``detached`` / ``allow_failure`` from the input). With ``input["wait"]`` they wait for every
  child and return the outputs; otherwise they return the children's ids and ``created`` flags.
  ``input["fail_first_attempt"]``: attempt 1 raises after submitting (so attempt 2 resubmits the
  same keys). ``input["then_sleep"]``: after submitting, sleep until canceled.
- ``nest``: submits one ``nest`` child with ``depth_left - 1`` until 0, waits for it and returns
  its depth; a refused submission (depth bound) returns the refusal's message.
- ``double`` (returns ``input["i"] * 2``), ``boom`` (fails, non-retryable), ``sleep`` (sleeps
  until canceled or ``input["seconds"]`` pass).
"""
from __future__ import annotations

from typing import Any

from actor import ChildFailed, ChildRefused, NonRetryableError
from actor.app import App
from actor.context import AttemptContext
from actor.errors import AttemptCanceled

app = App()


def _child_options(input: dict) -> dict[str, Any]:
    return {"detached": bool(input.get("detached")), "allow_failure": bool(input.get("allow_failure"))}


@app.handler("fanout")
async def fanout(input: dict, ctx: AttemptContext) -> dict[str, Any]:
    handles = [await ctx.submit_child_async(input["child_type"], {"i": i, **input.get("child_input", {})},
                                            key=f"c{i}", **_child_options(input))
               for i in range(int(input["n"]))]
    if input.get("fail_first_attempt") and ctx.attempt == 1:
        raise RuntimeError("first attempt fails after submitting its children")
    if input.get("then_sleep"):
        await ctx.cancel_token.wait(60)
        raise AttemptCanceled(ctx.cancel_token.reason)
    if input.get("wait"):
        outputs = []
        for h in handles:
            try:
                outputs.append(await ctx.wait_child_async(h))
            except ChildFailed as exc:
                outputs.append({"failed": exc.kind})
        return {"outputs": outputs}
    return {"children": [h.task_id for h in handles], "created": [h.created for h in handles]}


@app.handler("fanout_sync")
def fanout_sync(input: dict, ctx: AttemptContext) -> dict[str, Any]:
    handles = [ctx.submit_child(input["child_type"], {"i": i, **input.get("child_input", {})}, key=f"c{i}",
                                **_child_options(input))
               for i in range(int(input["n"]))]
    if input.get("wait"):
        return {"outputs": [ctx.wait_child(h, timeout_s=30) for h in handles]}
    return {"children": [h.task_id for h in handles], "created": [h.created for h in handles]}


@app.handler("nest")
async def nest(input: dict, ctx: AttemptContext) -> dict[str, Any]:
    left = int(input["depth_left"])
    if left == 0:
        return {"deepest": ctx.task_id}
    try:
        child = await ctx.submit_child_async("nest", {"depth_left": left - 1}, key="n")
    except ChildRefused as exc:
        return {"refused": str(exc), "code": exc.code}
    return await ctx.wait_child_async(child)


@app.handler("double")
async def double(input: dict, ctx: AttemptContext) -> int:
    return int(input["i"]) * 2


@app.handler("boom")
async def boom(input: Any, ctx: AttemptContext) -> None:
    raise NonRetryableError("boom on purpose")


@app.handler("sleep")
async def sleep(input: dict, ctx: AttemptContext) -> dict[str, float]:
    seconds = float(input.get("seconds", 0))
    if await ctx.cancel_token.wait(seconds):
        raise AttemptCanceled(ctx.cancel_token.reason)
    return {"slept": seconds}
