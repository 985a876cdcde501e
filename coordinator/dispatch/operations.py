"""Operations on the dispatch loop: pause, resume, drain, and the drain before a shutdown.

Owns: the loop's command handlers for AdminService Pause/Resume/Drain and TaskService
WatchEvents (registered in DispatchLoop._handlers, called inside a step like every handler), the
drain state, and waiting until a drain is done.

- **Pause** is durable: a `DispatchPaused` WAL record, applied by `Projection.apply` (so replay
  restores it). While paused the loop grants no lease; everything else goes on: in-flight attempts
  heartbeat and end, submissions and cancels are accepted, timers fire (including
  schedule-to-start timeouts: a pause does not move a task's deadlines). `DispatchResumed` ends it.
- **Drain** belongs to this process only (not in the WAL): no submission is accepted
  (UNAVAILABLE, naming the reason) and no lease is granted, while attempts in flight finish.
  Resume ends an operator's drain; a shutdown's drain (SIGTERM) cannot be undone.
- **Shutdown** (`drain_for_shutdown`): drain, then wait until no connected actor holds a lease
  (checked after a step's commit, so every result that arrived is durable and acknowledged), at
  most the grace. Attempts still running then stay RUNNING in the WAL; their actors re-present
  them to the next coordinator.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from corral.v1 import admin_service_pb2, wal_pb2

from ..core.errors import Unavailable
from ..core.states import State
from . import commands as C

if TYPE_CHECKING:
    from .loop import DispatchLoop, Step

log = logging.getLogger("corral.dispatch")

SHUTDOWN_REASON = "coordinator is shutting down"


class DrainState:
    __slots__ = ("draining", "reason", "shutdown", "waiters")

    def __init__(self) -> None:
        self.draining = False
        self.reason = ""
        self.shutdown = False  # draining because the process is stopping: Resume cannot end it
        self.waiters: list[asyncio.Future] = []

    def begin(self, reason: str, shutdown: bool = False) -> bool:
        """Start draining; False if it already was (a shutdown still takes over the reason)."""
        changed = not self.draining
        if changed or (shutdown and not self.shutdown):
            self.reason = reason
        self.draining = True
        self.shutdown = self.shutdown or shutdown
        return changed

    def end(self) -> bool:
        """Resume: end an operator's drain. False if not draining, or draining for a shutdown."""
        if not self.draining or self.shutdown:
            return False
        self.draining = False
        self.reason = ""
        return True

    def refusal(self) -> str:
        return f"coordinator is draining ({self.reason}): not accepting new tasks; retry later or elsewhere"

    def check(self, loop: "DispatchLoop") -> None:
        """After a step's commit: wake the waiters if no connected actor holds a lease."""
        for actor in loop.fleet.actors.values():
            if actor.held:
                return
        for future in self.waiters:
            if not future.done():
                future.set_result(None)
        self.waiters.clear()


def running_attempts(loop: "DispatchLoop") -> int:
    return loop.projection.state_counts.get(State.RUNNING, 0)


def leases_on_connected_actors(loop: "DispatchLoop") -> int:
    return sum(len(a.held) for a in loop.fleet.actors.values())


# ---- command handlers (called by the loop inside a step) -----------------------------------------

def on_pause(loop: "DispatchLoop", cmd: C.PauseDispatch, step: "Step") -> None:
    changed = not loop.projection.paused
    if changed:
        reason = cmd.reason or "paused by an operator"
        loop._emit(wal_pb2.WalRecord(dispatch_paused=wal_pb2.DispatchPaused(reason=reason)), "", step)
        log.info("dispatch paused (%s): no new leases until resumed", reason)
    step.replies.append((cmd.reply, admin_service_pb2.PauseResponse(
        changed=changed, running_attempts=running_attempts(loop))))


def on_resume(loop: "DispatchLoop", cmd: C.ResumeDispatch, step: "Step") -> None:
    resumed = loop.projection.paused
    if resumed:
        loop._emit(wal_pb2.WalRecord(dispatch_resumed=wal_pb2.DispatchResumed(
            reason=cmd.reason or "resumed by an operator")), "", step)
    undrained = loop.drain.end()
    if resumed or undrained:
        log.info("dispatch resumed (%s)%s", cmd.reason or "by an operator",
                 "; the drain is over: accepting tasks again" if undrained else "")
    step.replies.append((cmd.reply, admin_service_pb2.ResumeResponse(
        changed=resumed or undrained, draining=loop.drain.draining)))


def on_drain(loop: "DispatchLoop", cmd: C.DrainDispatch, step: "Step") -> None:
    changed = loop.drain.begin(cmd.reason or "drained by an operator")
    if changed:
        log.info("draining (%s): no new tasks or leases; %d attempts running", loop.drain.reason,
                 running_attempts(loop))
    step.replies.append((cmd.reply, admin_service_pb2.DrainResponse(
        changed=changed, running_attempts=running_attempts(loop))))


def on_watch_events(loop: "DispatchLoop", cmd: C.WatchEvents, step: "Step") -> None:
    if loop.events.closed:  # streams were closed for the shutdown: none may outlive it
        raise Unavailable("coordinator is shutting down; watch again")
    loop.events.subscribe(cmd.subscriber)
    # Every record of this step and later ones is published to it: every seq above this one.
    step.replies.append((cmd.reply, loop.wal.last_seq))


def on_unwatch_events(loop: "DispatchLoop", cmd: C.UnwatchEvents, step: "Step") -> None:
    loop.events.unsubscribe(cmd.subscriber)


HANDLERS: dict[type, Any] = {
    C.PauseDispatch: on_pause,
    C.ResumeDispatch: on_resume,
    C.DrainDispatch: on_drain,
    C.WatchEvents: on_watch_events,
    C.UnwatchEvents: on_unwatch_events,
}


def fill_status(loop: "DispatchLoop", resp: admin_service_pb2.GetClusterStatusResponse) -> None:
    resp.paused = loop.projection.paused
    resp.pause_reason = loop.projection.pause_reason
    resp.draining = loop.drain.draining
    resp.drain_reason = loop.drain.reason
    resp.event_subscribers = len(loop.events.subscribers)


# ---- shutdown ------------------------------------------------------------------------------------

def begin_drain(loop: "DispatchLoop", reason: str, shutdown: bool = False) -> bool:
    """From outside a step (the coordinator's shutdown): a flag only; the next step sees it."""
    changed = loop.drain.begin(reason, shutdown)
    loop._wakeup.set()
    return changed


async def wait_drained(loop: "DispatchLoop") -> None:
    """Until, after some step's commit, no connected actor holds a lease."""
    future = asyncio.get_running_loop().create_future()
    loop.drain.waiters.append(future)
    loop._wakeup.set()  # a step, even an empty one, checks
    await future


async def drain_for_shutdown(loop: "DispatchLoop", loop_task: asyncio.Task | None, grace_s: float,
                             hurry: asyncio.Event | None = None) -> None:
    """SIGTERM: refuse new work, grant nothing, let in-flight attempts finish within `grace_s`.

    Ends early when the loop dies or `hurry` is set (a second signal)."""
    started = time.monotonic()
    begin_drain(loop, SHUTDOWN_REASON, shutdown=True)
    held = leases_on_connected_actors(loop)
    if held:
        log.info("draining before shutdown: waiting up to %.1f s for %d attempts on connected actors", grace_s, held)
    waiter = asyncio.ensure_future(wait_drained(loop))
    others = [asyncio.ensure_future(hurry.wait())] if hurry is not None else []
    if loop_task is not None:
        others.append(loop_task)
    try:
        await asyncio.wait([waiter, *others], timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
        drained = waiter.done() and not waiter.cancelled()
    finally:
        for task in (waiter, *others):
            if task is not loop_task:
                task.cancel()
    left = leases_on_connected_actors(loop)
    if drained:
        if held:
            log.info("drained in %.2f s: every attempt on a connected actor has ended", time.monotonic() - started)
    else:
        log.warning("drain ended after %.2f s with %d attempts still running: they stay RUNNING, and their "
                    "actors re-present them to the next coordinator", time.monotonic() - started, left)
