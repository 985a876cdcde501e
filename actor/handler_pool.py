"""The thread pool that runs sync handlers.

Owns ``HandlerThreadPool``: a ``concurrent.futures.Executor`` sized to the actor's slot count, so
that blocking or CPU-bound handler code never runs on the event loop (heartbeats keep flowing).

Why not ``ThreadPoolExecutor``: a sync handler that ignores cancellation is *abandoned* after its
grace period (the slot is released and the outcome reported) but its thread keeps running. With a
fixed-size ``ThreadPoolExecutor`` every abandoned thread would permanently shrink the pool, and new
attempts would queue behind it (and time out without ever running); its non-daemon threads would
also block interpreter exit on shutdown.

Invariants:
- Threads are created on demand, reused, and never exceed ``max_workers + abandoned`` where
  ``abandoned`` counts abandoned work items still running; when such an item finally returns the
  extra capacity is given back (the surplus idle thread exits).
- Threads are daemon threads: an abandoned handler can never keep the process alive.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

log = logging.getLogger(__name__)


class _WorkFuture(Future):  # type: ignore[type-arg]
    """A Future that remembers whether its work item was abandoned."""

    abandoned: bool = False


_WorkItem = tuple[_WorkFuture, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class HandlerThreadPool(Executor):
    """Runs sync handlers; capacity grows by one for every abandoned item still running."""

    def __init__(self, max_workers: int, *, thread_name_prefix: str = "corral-handler") -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._queue: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0  # live worker threads
        self._idle = 0  # threads waiting for work that no queued item has claimed yet
        self._pending = 0  # queued items no thread has claimed yet (pool at capacity)
        self._abandoned = 0  # abandoned work items still running
        self._shutdown = False
        self._counter = 0

    @property
    def capacity(self) -> int:
        """Threads allowed right now: ``max_workers`` plus one per running abandoned item."""
        return self._max_workers + self._abandoned

    @property
    def abandoned_running(self) -> int:
        return self._abandoned

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:  # type: ignore[type-arg]
        fut = _WorkFuture()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            # The handler runs in a copy of the caller's context (its trace span, its task's log
            # fields: actor/telemetry.py), as an async handler's task would.
            self._queue.put((fut, contextvars.copy_context().run, (fn, *args), kwargs))
            if self._idle > 0:
                self._idle -= 1  # that idle thread will take this item
            elif self._threads < self.capacity:
                self._spawn_locked()
            else:
                self._pending += 1
        return fut

    def abandon(self, fut: Future) -> None:  # type: ignore[type-arg]
        """Stop counting ``fut``'s thread against the pool: a replacement thread may start."""
        if not isinstance(fut, _WorkFuture):
            return
        with self._lock:
            if fut.abandoned or fut.done():
                return
            fut.abandoned = True
            self._abandoned += 1
            if self._pending > 0 and not self._shutdown:
                self._pending -= 1
                self._spawn_locked()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; threads exit once the queue is drained.

        Never blocks (``wait`` is accepted for API compatibility and ignored): an abandoned handler
        may never return, and the threads are daemons.
        """
        with self._lock:
            self._shutdown = True
            threads = self._threads
            if cancel_futures:
                self._pending = 0
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in range(threads):
            self._queue.put(None)

    def _spawn_locked(self) -> None:
        self._threads += 1
        self._counter += 1
        t = threading.Thread(
            target=self._worker, name=f"{self._prefix}-{self._counter}", daemon=True
        )
        t.start()

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                with self._lock:
                    self._threads -= 1
                return
            fut, fn, args, kwargs = item
            if fut.set_running_or_notify_cancel():
                try:
                    value = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the future
                    fut.set_exception(exc)
                else:
                    fut.set_result(value)
            with self._lock:
                if fut.abandoned:
                    self._abandoned -= 1
                    log.info("an abandoned sync handler finally returned (thread %s)",
                             threading.current_thread().name)
                if self._pending > 0:
                    self._pending -= 1  # take the next queued item
                elif self._shutdown or self._threads > self.capacity:
                    self._threads -= 1  # shutting down, or surplus after an abandoned item
                    return
                else:
                    self._idle += 1
            del item, fut, fn, args, kwargs
