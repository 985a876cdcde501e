"""Runs one attempt of one task and says how it ended.

Owns ``AttemptRunner`` (the mechanics: start the handler, arm the deadline, cancel, abandon after
grace) and ``decide_outcome`` (the policy: which ``AttemptOutcome`` and ``TaskError`` an ending maps
to; a pure function, unit-tested on its own).

Invariants:
- An attempt produces exactly one ``AttemptResult``, carrying the lease's (task id, attempt,
  fencing token). ``on_done`` is called exactly once, on the event-loop thread.
- Async handlers run as asyncio tasks on the loop; sync handlers run in the handler thread pool,
  never on the loop, so a CPU-bound handler cannot starve heartbeats.
- Whatever a handler raises (SystemExit and KeyboardInterrupt too) fails its attempt and nothing
  else; it never propagates into the session's event loop.
- At the deadline (``execution_timeout_ms`` measured with ``time.monotonic()`` from receipt of the
  lease) the cancel token is set with reason "timed out". A handler still running ``grace_s`` after
  its token was set is abandoned: an async handler's task is cancelled and not awaited, a sync
  handler's thread is left running (its pool slot is given back); the result is reported at once.
- Once an attempt was asked to stop, the stop cause decides the outcome (TIMED_OUT for timeouts,
  CANCELED otherwise) whatever the handler does afterwards; any output produced late is discarded.
- Per-attempt cost is one asyncio task (async) or one pool work item (sync), one timer handle when
  the lease has a timeout, and no threads.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from actor.app import App
from actor.context import AttemptContext
from actor.cancellation import CancellationToken
from actor.errors import AttemptCanceled, NonRetryableError
from actor.handler_pool import HandlerThreadPool
from actor.payload import (MAX_OUTPUT_BYTES, OUTPUT_TOO_LARGE, OutputNotSerializable, decode_input,
                           decode_prerequisites, encode_output)
from corral.v1 import actor_service_pb2, task_pb2
from corral_telemetry.logs import task_fields, trace_id_of

log = logging.getLogger(__name__)

SUCCEEDED = task_pb2.ATTEMPT_OUTCOME_SUCCEEDED
FAILED = task_pb2.ATTEMPT_OUTCOME_FAILED
CANCELED = task_pb2.ATTEMPT_OUTCOME_CANCELED
TIMED_OUT = task_pb2.ATTEMPT_OUTCOME_TIMED_OUT

UNKNOWN_TASK_TYPE = "UnknownTaskType"
KIND_TIMED_OUT = "TimedOut"
KIND_CANCELED = "Canceled"
TIMED_OUT_REASON = "timed out"
MAX_ERROR_MESSAGE_CHARS = 4096

LeaseKey = tuple[str, int, int]


def lease_key(ref: actor_service_pb2.LeaseRef) -> LeaseKey:
    """(task_id, attempt, fencing_token): the identity of one attempt on the wire."""
    return (ref.task_id, ref.attempt, ref.fencing_token)


class Ending(enum.Enum):
    """How the handler call ended, as seen by the runner."""

    RETURNED = "returned"
    RAISED = "raised"
    # Still running after the grace period that followed a stop request: given up on.
    ABANDONED = "abandoned"


class CancelCause(enum.Enum):
    """Why the attempt was asked to stop."""

    REQUESTED = "requested"  # the coordinator relayed CancelTask
    TIMED_OUT = "timed_out"  # local deadline, or the coordinator saw the deadline pass
    LEASE_LOST = "lease_lost"  # the lease is no longer current (the session drops the result)
    SHUTDOWN = "shutdown"  # the actor is stopping (the session drops the result)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome an ending maps to. ``kind == ""`` means: no TaskError."""

    outcome: int
    kind: str = ""
    message: str = ""
    non_retryable: bool = False
    # True only for SUCCEEDED: the handler's return value becomes the output.
    keep_output: bool = False


def _exc_message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def decide_outcome(
    ending: Ending,
    exc: BaseException | None = None,
    cause: CancelCause | None = None,
    stop_message: str = "",
    grace_s: float = 0.0,
) -> Decision:
    """Map how the handler ended (and whether it was asked to stop) to an outcome. Pure.

    - Not asked to stop: returned -> SUCCEEDED; raised AttemptCanceled -> CANCELED;
      NonRetryableError -> FAILED non-retryable; any other exception -> FAILED retryable, kind =
      the exception class name, message = str(exc).
    - Asked to stop: TIMED_OUT if the cause is a timeout, else CANCELED, whatever the handler did
      (returned late, raised, or was abandoned); the message says which.
    """
    if cause is not None:
        timed_out = cause is CancelCause.TIMED_OUT
        outcome = TIMED_OUT if timed_out else CANCELED
        kind = KIND_TIMED_OUT if timed_out else KIND_CANCELED
        detail = stop_message or (TIMED_OUT_REASON if timed_out else "canceled")
        if ending is Ending.ABANDONED:
            detail += (
                f"; the handler ignored cancellation for the {grace_s:g}s grace period "
                "and was abandoned"
            )
        elif ending is Ending.RETURNED:
            detail += "; the handler returned after the stop request (output discarded)"
        elif exc is not None and not isinstance(exc, (AttemptCanceled, asyncio.CancelledError)):
            detail += f"; the handler then raised {type(exc).__name__}: {_exc_message(exc)}"
        return Decision(outcome, kind, detail)

    if ending is Ending.RETURNED:
        return Decision(SUCCEEDED, keep_output=True)
    if ending is Ending.ABANDONED or exc is None:  # defensive: abandoning needs a stop request
        return Decision(FAILED, "Abandoned", "the handler was abandoned")
    if isinstance(exc, AttemptCanceled):
        return Decision(CANCELED, type(exc).__name__, str(exc) or "the handler canceled the attempt")
    return Decision(
        FAILED,
        type(exc).__name__,
        _exc_message(exc),
        non_retryable=isinstance(exc, NonRetryableError),
    )


def build_result(
    ref: actor_service_pb2.LeaseRef, decision: Decision, value: Any = None
) -> actor_service_pb2.AttemptResult:
    """The AttemptResult for ``decision`` (encoding ``value`` as output when kept)."""
    result = actor_service_pb2.AttemptResult(outcome=decision.outcome)
    result.lease.CopyFrom(ref)
    if decision.keep_output:
        try:
            encode_output(result, value)
            if value is not None and result.ByteSize() > MAX_OUTPUT_BYTES:
                raise OutputNotSerializable(
                    f"output is {result.ByteSize()} bytes encoded, over the limit of {MAX_OUTPUT_BYTES}",
                    kind=OUTPUT_TOO_LARGE)
        except OutputNotSerializable as exc:
            # Deterministic programming error: retrying would return the same value.
            decision = Decision(FAILED, exc.kind, str(exc), non_retryable=True)
            result = actor_service_pb2.AttemptResult(outcome=FAILED)
            result.lease.CopyFrom(ref)
    if decision.kind:
        error = result.error
        error.kind = decision.kind
        error.message = decision.message[:MAX_ERROR_MESSAGE_CHARS]
        error.non_retryable = decision.non_retryable
    return result


class _HandlerExit(Exception):
    """Carries a SystemExit / KeyboardInterrupt that an async handler raised (see _contained)."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(original)
        self.original = original


async def _contained(coro: Any) -> Any:
    """Await an async handler. asyncio re-raises SystemExit and KeyboardInterrupt from a task
    out of the event loop, which would end the actor and every attempt it runs; a handler's own
    are a failure of its attempt, as they are for a sync handler (the pool hands them over)."""
    try:
        return await coro
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _HandlerExit(exc) from None


OnDone = Callable[["AttemptRunner", actor_service_pb2.AttemptResult], None]


class AttemptRunner:
    """Runs one leased attempt: ``start()`` it on the loop, then ``await wait()`` or use ``on_done``.

    ``executor`` runs sync handlers; pass the actor's ``HandlerThreadPool`` (sized to its slots).
    Without one, a private one-thread pool is made for this attempt (convenient for tests).
    """

    __slots__ = (
        "lease", "key", "token", "cause", "result", "deadline", "received_at_s", "grace_s",
        "_app", "_executor", "_own_executor", "_on_done", "_loop", "_task", "_cf",
        "_deadline_timer", "_grace_timer", "_waiter", "_stop_message", "_started", "_child_channel",
    )

    def __init__(
        self,
        app: App,
        lease: actor_service_pb2.Lease,
        *,
        grace_s: float = 5.0,
        executor: Executor | None = None,
        on_done: OnDone | None = None,
        received_at_s: float | None = None,
        child_channel: Any = None,
    ) -> None:
        self.lease = lease
        self._child_channel = child_channel  # actor/children.py ChildChannel (the session's)
        self.key: LeaseKey = lease_key(lease.ref)
        self.token = CancellationToken()
        self.cause: CancelCause | None = None
        self.result: actor_service_pb2.AttemptResult | None = None
        self.received_at_s = time.monotonic() if received_at_s is None else received_at_s
        timeout_ms = lease.execution_timeout_ms
        self.deadline = self.received_at_s + timeout_ms / 1000.0 if timeout_ms > 0 else math.inf
        self.grace_s = grace_s
        self._app = app
        self._executor = executor
        self._own_executor: HandlerThreadPool | None = None
        self._on_done = on_done
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cf: Future[Any] | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[actor_service_pb2.AttemptResult] | None = None
        self._stop_message = ""
        self._started = False

    @property
    def ref(self) -> actor_service_pb2.LeaseRef:
        return self.lease.ref

    @property
    def done(self) -> bool:
        return self.result is not None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the handler. Must be called on the event loop, once."""
        if self._started:
            raise RuntimeError("attempt already started")
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        lease = self.lease
        spec = self._app.get(lease.task_type)
        if spec is None:
            self._finish(Decision(
                FAILED, UNKNOWN_TASK_TYPE,
                f"no handler registered for task type {lease.task_type!r} "
                f"(this actor runs {self._app.task_types})",
                non_retryable=True,
            ))
            return
        try:
            value = decode_input(lease)
            prerequisites = decode_prerequisites(lease) if lease.prerequisites else {}
        except Exception as exc:  # noqa: BLE001 - a malformed payload fails the attempt
            self._finish_ending(Ending.RAISED, exc=exc)
            return
        ctx = AttemptContext(
            task_id=lease.ref.task_id,
            task_type=lease.task_type,
            attempt=lease.ref.attempt,
            fencing_token=lease.ref.fencing_token,
            deadline=self.deadline,
            deadline_unix_ms=lease.deadline_unix_ms or self._unix_deadline_ms(),
            labels=dict(lease.labels),
            cancel_token=self.token,
            prerequisites=prerequisites,
            child_channel=self._child_channel,
        )
        if self.deadline != math.inf:
            delay_s = self.deadline - time.monotonic()
            self._deadline_timer = loop.call_at(loop.time() + delay_s, self._on_deadline)
        if self.token.canceled:  # cancel() arrived before start()
            self._arm_grace()
        if spec.is_async:
            try:
                coro = spec.fn(value, ctx)
            except Exception as exc:  # noqa: BLE001 - e.g. a wrong handler signature
                self._finish_ending(Ending.RAISED, exc=exc)
                return
            if not inspect.isawaitable(coro):
                self._finish_ending(Ending.RETURNED, value=coro)
                return
            self._task = loop.create_task(_contained(coro))  # type: ignore[arg-type]
            self._task.add_done_callback(self._on_task_done)
        else:
            executor = self._executor
            if executor is None:
                executor = self._own_executor = HandlerThreadPool(1)
            self._cf = executor.submit(spec.fn, value, ctx)
            self._cf.add_done_callback(self._on_cf_done_any_thread)

    async def wait(self) -> actor_service_pb2.AttemptResult:
        """Wait for the result (after ``start()``)."""
        if self.result is not None:
            return self.result
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._waiter)

    async def run(self) -> actor_service_pb2.AttemptResult:
        """``start()`` then ``wait()``."""
        self.start()
        return await self.wait()

    def cancel(self, reason: str = "canceled", cause: CancelCause = CancelCause.REQUESTED) -> bool:
        """Ask the handler to stop (sets its token); abandon it after ``grace_s``.

        The first stop cause decides the outcome. Returns False if the attempt already ended.
        """
        if self.result is not None:
            return False
        if self.cause is None:
            self.cause = cause
            self._stop_message = reason
        self.token.cancel(reason)
        if self._started:
            self._arm_grace()
        return True

    # -- internals ----------------------------------------------------------------------------

    def _unix_deadline_ms(self) -> int:
        if self.deadline == math.inf:
            return 0
        return int((time.time() + (self.deadline - time.monotonic())) * 1000)

    def _arm_grace(self) -> None:
        if self._grace_timer is None and self.result is None and self._loop is not None:
            self._grace_timer = self._loop.call_later(max(0.0, self.grace_s), self._abandon)

    def _on_deadline(self) -> None:
        self._deadline_timer = None
        if self.result is not None:
            return
        timeout_s = self.lease.execution_timeout_ms / 1000.0
        if self.cause is None:
            self.cause = CancelCause.TIMED_OUT
            self._stop_message = f"{TIMED_OUT_REASON}: execution timeout of {timeout_s:g}s exceeded"
        self.token.cancel(TIMED_OUT_REASON)
        self._arm_grace()

    def _abandon(self) -> None:
        self._grace_timer = None
        if self.result is not None:
            return
        if self._task is not None:
            self._task.cancel()  # not awaited: the result is reported now
        if self._cf is not None and not self._cf.cancel():  # cancel() works only if not started
            executor = self._own_executor or self._executor
            if isinstance(executor, HandlerThreadPool):
                executor.abandon(self._cf)
        log.warning(
            "task %s attempt %d (%s): handler still running %gs after it was asked to stop "
            "(%s); abandoned", self.key[0], self.key[1], self.lease.task_type, self.grace_s,
            self.token.reason, extra=self.log_fields(),
        )
        self._finish_ending(Ending.ABANDONED)

    def _on_task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            if self.result is None:
                self._finish_ending(Ending.RAISED, exc=asyncio.CancelledError())
            return
        exc = task.exception()  # also marks it retrieved when we already gave up on it
        if self.result is not None:
            return
        if type(exc) is _HandlerExit:
            exc = exc.original
        if exc is not None:
            self._finish_ending(Ending.RAISED, exc=exc)
        else:
            self._finish_ending(Ending.RETURNED, value=task.result())

    def _on_cf_done_any_thread(self, cf: Future[Any]) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._on_cf_done, cf)
        except RuntimeError:  # the loop is closed (an abandoned handler returned at exit)
            pass

    def _on_cf_done(self, cf: Future[Any]) -> None:
        if self._own_executor is not None:
            self._own_executor.shutdown(wait=False)
        if self.result is not None:
            return
        if cf.cancelled():
            self._finish_ending(Ending.RAISED, exc=asyncio.CancelledError())
            return
        exc = cf.exception()
        if exc is not None:
            self._finish_ending(Ending.RAISED, exc=exc)
        else:
            self._finish_ending(Ending.RETURNED, value=cf.result())

    def _finish_ending(
        self, ending: Ending, *, value: Any = None, exc: BaseException | None = None
    ) -> None:
        decision = decide_outcome(ending, exc, self.cause, self._stop_message, self.grace_s)
        if (
            decision.outcome == FAILED
            and exc is not None
            and log.isEnabledFor(logging.INFO)
        ):
            log.info(
                "task %s attempt %d (%s) failed: %s: %s", self.key[0], self.key[1],
                self.lease.task_type, decision.kind, decision.message,
                exc_info=exc if log.isEnabledFor(logging.DEBUG) else None, extra=self.log_fields(),
            )
        self._finish(decision, value)

    def _finish(self, decision: Decision, value: Any = None) -> None:
        if self.result is not None:
            return
        result = build_result(self.lease.ref, decision, value)
        self.result = result
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(result)
        if self._on_done is not None:
            try:
                self._on_done(self, result)
            except Exception:  # noqa: BLE001 - never let a callback break the runner
                log.exception("on_done callback failed for task %s", self.key[0], extra=self.log_fields())

    def log_fields(self) -> dict[str, Any]:
        """``extra=`` for a log line about this attempt: task_id, attempt, trace_id."""
        return task_fields(self.key[0], self.key[1], trace_id_of(self.lease.trace_context))

    def __repr__(self) -> str:
        state = "done" if self.result is not None else ("stopping" if self.cause else "running")
        return (f"<AttemptRunner {self.key[0]}#{self.key[1]} token={self.key[2]} "
                f"type={self.lease.task_type} {state}>")
