"""An actor app for end-to-end tests whose one handler kills its own actor process.

Owns ``app`` with the handler ``crash``: ``os._exit(1)`` (no cleanup, no result, no goodbye on the
stream), the way an OOM kill or a segfault in native code takes a worker down.
"""
from __future__ import annotations

import os
from typing import Any

from actor.app import App
from actor.context import AttemptContext

app = App()


@app.handler("crash")
async def crash(input: Any, ctx: AttemptContext) -> None:
    """Kill the actor process running this attempt."""
    os._exit(1)
