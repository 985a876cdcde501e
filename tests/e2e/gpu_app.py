"""An actor app that advertises the "gpu" capability (for the required_capabilities e2e test).

Run with `corral actor --app tests.e2e.gpu_app` (the harness puts the repo root on PYTHONPATH).
"""
from __future__ import annotations

from typing import Any

from actor.app import App
from actor.context import AttemptContext

app = App(capabilities=["gpu"])


@app.handler("echo")
async def echo(input: Any, ctx: AttemptContext) -> Any:
    """Return the input unchanged, like actor.demo's echo."""
    return input
