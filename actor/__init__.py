"""Corral actor library: write task handlers and run them against a coordinator.

Example (``myapp.py``), run with ``corral actor --coordinator localhost:7070 --app myapp``::

    from actor import App, AttemptContext, NonRetryableError

    app = App()

    @app.handler("resize")
    async def resize(input: dict, ctx: AttemptContext) -> dict:
        if "url" not in input:
            raise NonRetryableError("input needs a url")   # FAILED, not retried
        ctx.cancel_token.raise_if_canceled()                # honour cancellation
        return {"url": input["url"], "token": ctx.fencing_token}

Sync handlers (``def``) run in a thread pool sized to the slot count; async ones on the loop.

Child tasks (``ctx.submit_child(type, input, key=...)`` / ``ctx.wait_child(handle)``, or the
``*_async`` forms): see actor/children.py.
"""

from actor.app import App
from actor.cancellation import CancellationToken
from actor.children import ChildFailed, ChildHandle, ChildRefused
from actor.context import AttemptContext
from actor.errors import AttemptCanceled, NonRetryableError

__all__ = [
    "App",
    "AttemptCanceled",
    "AttemptContext",
    "CancellationToken",
    "ChildFailed",
    "ChildHandle",
    "ChildRefused",
    "NonRetryableError",
]
