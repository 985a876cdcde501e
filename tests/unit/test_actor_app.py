"""App: the task-type -> handler registry."""

from __future__ import annotations

import functools

import pytest

from actor import App, AttemptContext
from actor import demo


def test_decorator_registers_and_returns_the_function() -> None:
    app = App()

    @app.handler("echo")
    def echo(input, ctx):
        return input

    spec = app.get("echo")
    assert spec is not None and spec.fn is echo and spec.is_async is False
    assert echo(1, None) == 1  # the decorator returned the original function
    assert "echo" in app and len(app) == 1


def test_register_detects_async_handlers() -> None:
    app = App()

    async def a(input, ctx):
        return input

    class AsyncCallable:
        async def __call__(self, input, ctx):
            return input

    app.register("a", a)
    app.register("partial", functools.partial(a))
    app.register("obj", AsyncCallable())
    app.register("sync", lambda input, ctx: input)
    assert [app.get(t).is_async for t in ("a", "partial", "obj", "sync")] == [True, True, True,
                                                                              False]


def test_task_types_in_registration_order_and_unknown_type_is_none() -> None:
    app = App()
    for t in ("b", "a", "c"):
        app.register(t, lambda i, c: None)
    assert app.task_types == ["b", "a", "c"]
    assert app.get("missing") is None


def test_duplicate_type_raises_and_keeps_first_handler() -> None:
    app = App()
    first = app.register("t", lambda i, c: 1)
    with pytest.raises(ValueError, match="already registered"):
        app.register("t", lambda i, c: 2)
    with pytest.raises(ValueError):
        app.handler("t")(lambda i, c: 3)
    assert app.get("t").fn is first


def test_bad_registrations() -> None:
    app = App()
    with pytest.raises(ValueError):
        app.register("", lambda i, c: None)
    with pytest.raises(TypeError):
        app.register("x", "not callable")  # type: ignore[arg-type]
    assert app.task_types == []


def test_apps_are_independent_and_carry_capabilities() -> None:
    a, b = App(capabilities=["gpu"]), App()
    a.register("t", lambda i, c: None)
    assert b.task_types == [] and b.capabilities == []
    assert a.capabilities == ["gpu"]


def test_demo_app_registers_the_documented_types() -> None:
    assert set(demo.app.task_types) == {"echo", "sleep", "fail", "noop", "spin", "fencing_token"}
    assert demo.app.get("spin").is_async is False
    assert demo.app.get("sleep").is_async is True
    assert demo.app.get("noop").is_async is True


def test_context_remaining_s() -> None:
    import math
    import time

    ctx = AttemptContext("t", "x", 1, 7, time.monotonic() + 10, 0)
    assert 9 < ctx.remaining_s() <= 10
    past = AttemptContext("t", "x", 1, 7, time.monotonic() - 1, 0)
    assert past.remaining_s() == 0.0
    assert AttemptContext("t", "x", 1, 7, math.inf, 0).remaining_s() == math.inf
    with pytest.raises(AttributeError):
        ctx.attempt = 2  # type: ignore[misc]
