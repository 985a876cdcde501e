"""The handler registry of one actor application.

Owns ``App``: which task types this actor runs, the handler for each, and the capabilities it
advertises to the coordinator.

Invariants:
- One handler per task type; registering a type twice raises ``ValueError``.
- Whether a handler is async is decided once, at registration (``inspect``), never per call:
  async handlers run on the event loop, sync handlers run in the handler thread pool.
- No module-level state: every ``App()`` is an independent registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from actor.context import AttemptContext

# handler(input, ctx) -> output, or async handler(input, ctx) -> output.
Handler = Callable[[Any, AttemptContext], Any]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler and how it must be run."""

    task_type: str
    fn: Handler
    is_async: bool


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # callable objects with ``async def __call__``
    return call is not None and inspect.iscoroutinefunction(call)


class App:
    """Maps task types to handlers.

    >>> app = App(capabilities=["gpu"])
    >>> @app.handler("echo")
    ... def echo(input, ctx):
    ...     return input
    >>> app.task_types
    ['echo']
    """

    def __init__(self, *, capabilities: Iterable[str] = ()) -> None:
        self._handlers: dict[str, HandlerSpec] = {}
        self.capabilities: list[str] = list(capabilities)

    def register(self, task_type: str, fn: Handler) -> Handler:
        """Register ``fn`` as the handler of ``task_type``; returns ``fn``."""
        if not isinstance(task_type, str) or not task_type:
            raise ValueError(f"task type must be a non-empty string, got {task_type!r}")
        if not callable(fn):
            raise TypeError(f"handler for {task_type!r} is not callable: {fn!r}")
        if task_type in self._handlers:
            raise ValueError(f"a handler for task type {task_type!r} is already registered")
        self._handlers[task_type] = HandlerSpec(task_type, fn, _is_async_callable(fn))
        return fn

    def handler(self, task_type: str) -> Callable[[H], H]:
        """Decorator form of ``register``: ``@app.handler("echo")``."""

        def decorate(fn: H) -> H:
            self.register(task_type, fn)
            return fn

        return decorate

    def get(self, task_type: str) -> HandlerSpec | None:
        """The handler registered for ``task_type``, or None."""
        return self._handlers.get(task_type)

    @property
    def task_types(self) -> list[str]:
        """Registered task types, in registration order."""
        return list(self._handlers)

    def __contains__(self, task_type: object) -> bool:
        return task_type in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    def __repr__(self) -> str:
        return f"App(task_types={self.task_types!r}, capabilities={self.capabilities!r})"
