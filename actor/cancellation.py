"""Cooperative cancellation for one attempt.

Owns ``CancellationToken``: the flag a handler polls or waits on to learn that its attempt was
canceled (by the coordinator, by the attempt deadline, or by actor shutdown).

Invariants:
- The token goes from "not canceled" to "canceled" at most once; ``cancel()`` is idempotent and the
  first reason wins.
- ``cancel()`` is thread-safe and may be called from any thread. It wakes every waiter: threads
  blocked in ``wait_sync()`` and coroutines awaiting ``wait()`` on any event loop (the asyncio side
  is woken with ``loop.call_soon_threadsafe``).
- A token is cheap to create: the threading.Event and the asyncio waiters are created lazily, only
  when somebody actually waits, so per-attempt cost stays small for tiny tasks.
"""

from __future__ import annotations

import asyncio
import threading

from actor.errors import AttemptCanceled


class CancellationToken:
    """Tells a handler (async or sync, in any thread) that its attempt should stop."""

    __slots__ = ("_lock", "_canceled", "_reason", "_thread_event", "_async_waiters")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._canceled = False
        self._reason = ""
        self._thread_event: threading.Event | None = None
        # Futures of coroutines blocked in wait(), each bound to its own loop.
        self._async_waiters: list[asyncio.Future[None]] = []

    @property
    def canceled(self) -> bool:
        """True once the attempt was asked to stop."""
        return self._canceled

    @property
    def reason(self) -> str:
        """Why the attempt was asked to stop ("" while not canceled)."""
        return self._reason

    def raise_if_canceled(self) -> None:
        """Raise ``AttemptCanceled(reason)`` if the attempt was asked to stop."""
        if self._canceled:
            raise AttemptCanceled(self._reason or "canceled")

    def cancel(self, reason: str = "canceled") -> bool:
        """Ask the attempt to stop. Returns True if this call canceled it (False if already done)."""
        with self._lock:
            if self._canceled:
                return False
            self._reason = reason
            self._canceled = True
            thread_event = self._thread_event
            waiters, self._async_waiters = self._async_waiters, []
        if thread_event is not None:
            thread_event.set()
        for fut in waiters:
            loop = fut.get_loop()
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # that loop is closed: nobody is left to wake
                pass
        return True

    def wait_sync(self, timeout_s: float | None = None) -> bool:
        """Block the calling thread until canceled or ``timeout_s`` passes. Returns ``canceled``.

        For sync handlers running in a worker thread; never call it on the event loop thread.
        """
        if self._canceled:
            return True
        with self._lock:
            if self._canceled:
                return True
            if self._thread_event is None:
                self._thread_event = threading.Event()
            event = self._thread_event
        event.wait(timeout_s)
        return self._canceled

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Wait (asynchronously) until canceled or ``timeout_s`` passes. Returns ``canceled``."""
        if self._canceled:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._canceled:
                return True
            self._async_waiters.append(fut)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        except TimeoutError:
            pass
        finally:
            if not fut.done():
                with self._lock:
                    try:
                        self._async_waiters.remove(fut)
                    except ValueError:
                        pass
                fut.cancel()
        return self._canceled

    def __repr__(self) -> str:
        state = f"canceled: {self._reason!r}" if self._canceled else "active"
        return f"<CancellationToken {state}>"


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
