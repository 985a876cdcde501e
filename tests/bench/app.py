"""Handlers for the benchmark: no work, but they stamp when they started."""
from __future__ import annotations

import time

from actor import App

app = App()


@app.handler("stamp")
async def stamp(input, ctx):
    # Wall clock, comparable with the submitting process on the same machine.
    return {"started_unix": time.time()}
