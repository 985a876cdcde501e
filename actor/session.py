"""The actor's one bidirectional stream to the coordinator.

Owns ``ActorSession``: connecting (hello / welcome), starting leased attempts, relaying cancels,
heartbeating running attempts, reporting results until they are acknowledged, reconnecting, and
graceful stop.

Invariants:
- Exactly one writer per stream: only the writer task calls ``call.write`` (after the hello).
  Everything else appends to ``_outbox`` / sets ``_heartbeat_due`` and wakes it. Each write carries
  every pending result (up to a size cap) plus, when due, one heartbeat for ALL running attempts.
- A result is kept in ``_unacked`` until a ``ResultAck`` for its (task id, attempt, token) arrives
  (accepted or rejected), and is re-sent after every reconnect. Results of attempts whose lease was
  lost (LEASE_LOST cancel, or not adopted after a reconnect) are dropped, never reported.
- Stopping: attempts get ``grace_s`` to finish; those still running then are handed back
  (``ATTEMPT_OUTCOME_HANDED_BACK``: the coordinator makes them READY at once, counted against no
  limit) and their handlers' late results are dropped, so a rolling restart neither waits a lease
  TTL for them nor spends their ``max_lost_attempts``.
- Running attempts survive reconnects. The hello re-presents every lease this process still holds:
  running attempts and finished attempts whose result is not acknowledged yet.
- Leases are never refused for lack of slots (the coordinator does the slot accounting); an
  over-grant is only logged. Leases arriving while stopping are not started: they are handed back.
- INVALID_ARGUMENT, PERMISSION_DENIED and UNAUTHENTICATED end ``run()`` with ``ActorRejected``;
  every other stream failure is retried forever with exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

import grpc
import grpc.aio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential,
    wait_random,
)

from actor.app import App
from actor.attempt_runner import AttemptRunner, CancelCause, LeaseKey, lease_key
from actor.children import ChildChannel
from actor.errors import ActorRejected
from actor.handler_pool import HandlerThreadPool
from corral.v1 import actor_service_pb2, actor_service_pb2_grpc, task_pb2
from corral_telemetry.logs import task_fields, trace_id_of

log = logging.getLogger(__name__)

FATAL_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    # e.g. this incarnation was superseded by a newer process with the same actor id.
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
})
DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A results batch is cut at this many results or this many bytes (at least one result per write).
MAX_RESULTS_PER_MESSAGE = 2000
MAX_RESULT_BYTES_PER_MESSAGE = 1024 * 1024


def default_actor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _package_version() -> str:
    try:
        return metadata.version("corral")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class ProtocolError(Exception):
    """The coordinator broke the stream protocol (e.g. no welcome first). Retried."""


class _StreamEnded(Exception):
    """The coordinator closed the stream (OK status / EOF)."""


_EXPECTED_FAILURES = (grpc.aio.AioRpcError, _StreamEnded, ProtocolError, TimeoutError, OSError)
# A stream that dies sooner than this after its welcome is retried with backoff, not at once.
MIN_HEALTHY_STREAM_S = 1.0


def _is_retryable(exc: BaseException) -> bool:
    # Anything but a definitive refusal: a worker that gives up loses its running attempts.
    return isinstance(exc, Exception) and not isinstance(exc, ActorRejected)


class ActorSession:
    """Connects an ``App`` to a coordinator and runs the attempts it leases.

    >>> session = ActorSession("localhost:7070", app, slots=8)
    >>> await session.run()          # until session.stop() (or a fatal rejection)
    """

    def __init__(
        self,
        target: str,
        app: App,
        *,
        slots: int = 1,
        actor_id: str | None = None,
        incarnation: str | None = None,
        labels: Mapping[str, str] | None = None,
        version: str | None = None,
        grace_s: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        call_metadata: Sequence[tuple[str, str]] = (),
        host: str | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        welcome_timeout_s: float = 10.0,
        flush_timeout_s: float = 5.0,
        reconnect_initial_s: float = 0.05,
        reconnect_max_s: float = 2.0,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if not app.task_types:
            raise ValueError("the app registers no task types: nothing to run")
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        self.target = target
        self.app = app
        self.slots = slots
        self.actor_id = actor_id or default_actor_id()
        # Unique to this process start (one session per process): kept across reconnects.
        self.incarnation = incarnation or uuid.uuid4().hex
        self.labels = dict(labels or {})
        self.version = version or _package_version()
        self.grace_s = grace_s
        self.credentials = credentials
        # Sent with the stream, e.g. (("authorization", "Bearer TOKEN"),) (actor/security.py).
        self.call_metadata = tuple(call_metadata)
        self.host = host or socket.gethostname()
        self.channel_options = list(channel_options)
        self.welcome_timeout_s = welcome_timeout_s
        self.flush_timeout_s = flush_timeout_s
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s

        # From the last welcome.
        self.coordinator_id = ""
        self.lease_ttl_ms = 0
        self.heartbeat_interval_s = DEFAULT_HEARTBEAT_INTERVAL_S

        # Counters (read by tests and benchmarks).
        self.connects = 0
        self.attempts_started = 0
        self.attempts_finished = 0
        self.results_sent = 0
        self.results_acked = 0  # acks with accepted=True
        self.results_rejected = 0  # acks with accepted=False
        self.results_dropped = 0  # lease lost / not adopted / still running at stop
        self.heartbeats_sent = 0  # heartbeat messages (each covers all running attempts)
        self.messages_sent = 0
        self.leases_refused = 0  # arrived while stopping

        self._running: dict[LeaseKey, AttemptRunner] = {}
        self._orphans: dict[LeaseKey, AttemptRunner] = {}  # stopping; result will be dropped
        self._unacked: dict[LeaseKey, actor_service_pb2.AttemptResult] = {}
        self._outbox: list[actor_service_pb2.AttemptResult] = []
        self._draining_announced = False
        self._heartbeat_due = False
        # Answer a lease-lost cancel with a message: the coordinator stops granting to an actor
        # whose lease expired while it stayed connected ("suspect") until it hears from it again.
        self._alive_due = False
        self._online = False  # welcomed on the current stream
        self._draining = False
        self._closing = False
        self._force = False
        self._stop_flag = False
        self._ran = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: HandlerThreadPool | None = None
        self._wake = asyncio.Event()  # writer: something to send
        self._changed = asyncio.Event()  # an attempt finished / a result was acked / stop
        self._connected = asyncio.Event()
        self._stop_requested = asyncio.Event()
        # actor.telemetry.ActorTelemetry (set by actor.telemetry.install), or None: off.
        self.telemetry: Any = None
        # Child tasks submitted and awaited by handlers (actor/children.py).
        self.children = ChildChannel()
        self.children.wake = self._wake.set

    # -- public API -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._online

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def unacked_count(self) -> int:
        return len(self._unacked)

    def stats(self) -> dict[str, int]:
        return {
            "connects": self.connects,
            "attempts_started": self.attempts_started,
            "attempts_finished": self.attempts_finished,
            "running": len(self._running),
            "results_sent": self.results_sent,
            "results_acked": self.results_acked,
            "results_rejected": self.results_rejected,
            "results_dropped": self.results_dropped,
            "results_unacked": len(self._unacked),
            "heartbeats_sent": self.heartbeats_sent,
            "messages_sent": self.messages_sent,
            "leases_refused": self.leases_refused,
        }

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until the session is welcomed on a stream; False after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    def stop(self, *, force: bool = False) -> None:
        """Ask ``run()`` to return: graceful (wait up to ``grace_s`` for running attempts, flush
        results), or with ``force`` right away. Safe from any thread and before ``run()``."""
        self._stop_flag = True
        if force:
            self._force = True
        loop = self._loop
        if loop is None:
            return
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            self._signal_stop()
        else:
            try:
                loop.call_soon_threadsafe(self._signal_stop)
            except RuntimeError:  # loop already closed
                pass

    async def run(self) -> None:
        """Connect (and reconnect) until ``stop()``; then drain and close.

        Raises ``ActorRejected`` when the coordinator refuses this actor for good.
        """
        if self._ran:
            raise RuntimeError("ActorSession.run() may be called only once")
        self._ran = True
        loop = self._loop = asyncio.get_running_loop()
        self.children.loop = loop
        self._pool = HandlerThreadPool(self.slots)
        if self._stop_flag:
            self._signal_stop()
        conn = loop.create_task(self._connection_loop(), name=f"corral-actor-{self.actor_id}")
        stop_wait = loop.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait({conn, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if conn.done():
                conn.result()  # raises ActorRejected (or a bug); the loop never returns alone
            else:
                await self._drain()
        finally:
            stop_wait.cancel()
            await self._close(conn)

    # -- stop -------------------------------------------------------------------------------------

    def _signal_stop(self) -> None:
        self._stop_requested.set()
        self._changed.set()

    async def _wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._force:
                return False
            self._changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                pass
        return True

    async def _drain(self) -> None:
        self._draining = True
        self._wake.set()  # the writer tells the coordinator: no more leases
        log.info("actor %s stopping: waiting up to %gs for %d running attempt(s)",
                 self.actor_id, self.grace_s, len(self._running))
        if not await self._wait_until(lambda: not self._running, self.grace_s):
            running = list(self._running.values())
            log.warning("actor %s: handing back %d attempt(s) still running after the %gs grace",
                        self.actor_id, len(running), self.grace_s)
            for runner in running:
                self._orphan(runner, "actor shutting down", CancelCause.SHUTDOWN)
                self._report_handed_back(runner.ref, "actor stopped before the attempt finished "
                                                     f"(grace {self.grace_s:g}s); handed back")
        if self._unacked:
            await self._wait_until(lambda: not self._unacked, self.flush_timeout_s)
            if self._unacked:
                log.warning("actor %s: %d result(s) not acknowledged at stop",
                            self.actor_id, len(self._unacked))

    async def _close(self, conn: asyncio.Task[None]) -> None:
        self._draining = True
        self._closing = True
        self._wake.set()  # the writer half-closes the stream once its outbox is empty
        if self._online and not conn.done():
            await asyncio.wait({conn}, timeout=1.0)
        if not conn.done():
            conn.cancel()
        try:
            await conn
        except asyncio.CancelledError:
            if not conn.cancelled():
                raise
        except Exception:  # noqa: BLE001 - already surfaced by run() when it mattered
            pass
        for runner in list(self._running.values()):
            self._orphan(runner, "actor shutting down", CancelCause.SHUTDOWN)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        log.info("actor %s stopped (%s)", self.actor_id, self.stats())

    # -- connection -------------------------------------------------------------------------------

    def _make_channel(self) -> grpc.aio.Channel:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *self.channel_options,
        ]
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=options)
        return grpc.aio.secure_channel(self.target, self.credentials, options=options)

    def _open_stream(self, channel: grpc.aio.Channel) -> Any:
        """Open ``ActorService.Connect``; returns a call with ``write``/``read``/``cancel``."""
        return actor_service_pb2_grpc.ActorServiceStub(channel).Connect(metadata=self.call_metadata or None)

    async def _connection_loop(self) -> None:
        while not self._closing:
            retrying = AsyncRetrying(
                retry=retry_if_exception(_is_retryable),
                # initial * 2^(n-1) capped at max, plus up to `initial` of jitter.
                wait=wait_exponential(multiplier=self.reconnect_initial_s,
                                      max=self.reconnect_max_s)
                + wait_random(0, self.reconnect_initial_s),
                before_sleep=self._log_retry,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    await self._connect_once()

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay_s = state.next_action.sleep if state.next_action else 0.0
        level = logging.WARNING if state.attempt_number in (1, 10) or \
            state.attempt_number % 100 == 0 else logging.DEBUG
        unexpected = exc is not None and not isinstance(exc, _EXPECTED_FAILURES)
        if self._draining and not self._running and not self._unacked:
            level = logging.DEBUG  # stopping with nothing to report: the stream is not needed
        if unexpected:
            level = logging.ERROR
        log.log(level, "actor %s: cannot connect to %s (attempt %d): %s; retrying in %.2fs",
                self.actor_id, self.target, state.attempt_number, _describe(exc), delay_s,
                exc_info=exc if unexpected else None)

    def _build_hello(self) -> tuple[actor_service_pb2.ConnectRequest, set[LeaseKey]]:
        identity = task_pb2.ExecutorIdentity(
            actor_id=self.actor_id,
            incarnation=self.incarnation,
            host=self.host,
            version=self.version,
            task_types=self.app.task_types,
            capabilities=self.app.capabilities,
            labels=self.labels,
            slots=self.slots,
        )
        hello = actor_service_pb2.Hello(identity=identity)
        held: set[LeaseKey] = set()
        for key, runner in self._running.items():
            hello.held_leases.append(runner.ref)
            held.add(key)
        for key, result in self._unacked.items():
            if key not in held:
                hello.held_leases.append(result.lease)
                held.add(key)
        return actor_service_pb2.ConnectRequest(hello=hello), held

    async def _connect_once(self) -> None:
        """One stream. Raises on failure before the welcome (retried with backoff); returns when
        closing, or when an established stream is lost (the caller reconnects at once)."""
        if self._closing:
            return
        channel = self._make_channel()
        call = None
        welcomed_at: float | None = None
        try:
            call = self._open_stream(channel)
            hello, held = self._build_hello()
            await call.write(hello)
            try:
                async with asyncio.timeout(self.welcome_timeout_s):
                    first = await call.read()
            except TimeoutError:
                raise ProtocolError(f"no welcome within {self.welcome_timeout_s:g}s") from None
            if first is grpc.aio.EOF:
                raise _StreamEnded("the coordinator closed the stream before the welcome")
            if not first.HasField("welcome"):
                raise ProtocolError("the first response from the coordinator is not a welcome")
            self._on_welcome(first.welcome, held)
            welcomed_at = time.monotonic()
            log.info("actor %s connected to %s (slots=%d, types=%s)", self.actor_id, self.target,
                     self.slots, self.app.task_types)
            self._handle_response(first, time.monotonic(), first_message=True)
            await self._serve(call)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in FATAL_CODES:
                raise ActorRejected(
                    f"coordinator {self.target} refused actor {self.actor_id}: "
                    f"{exc.code().name}: {exc.details()}", code_name=exc.code().name,
                ) from None
            if not self._lost_healthy_stream(welcomed_at):
                raise
            log.warning("actor %s: stream to %s lost (%s); reconnecting", self.actor_id,
                        self.target, _describe(exc))
        except _StreamEnded as exc:
            if not self._lost_healthy_stream(welcomed_at):
                raise
            log.warning("actor %s: %s; reconnecting", self.actor_id, exc)
        finally:
            self._online = False
            self._connected.clear()
            self._outbox = []  # everything unacked is re-sent after the next welcome
            self._heartbeat_due = False
            if call is not None:
                call.cancel()
            await channel.close(grace=None)

    def _lost_healthy_stream(self, welcomed_at: float | None) -> bool:
        """True: reconnect at once (fresh backoff). False: re-raise into the backoff."""
        return (
            welcomed_at is not None
            and not self._closing
            and time.monotonic() - welcomed_at >= MIN_HEALTHY_STREAM_S
        )

    async def _serve(self, call: Any) -> None:
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._reader(call))
        writer = loop.create_task(self._writer(call))
        heartbeater = loop.create_task(self._heartbeater())
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raises a stream error
            if reader in done and not self._closing:
                raise _StreamEnded("the coordinator closed the stream")
            if writer in done:  # closing: half-closed; let the coordinator end the call
                await asyncio.wait({reader}, timeout=1.0)
        finally:
            for task in (reader, writer, heartbeater):
                task.cancel()
            await asyncio.gather(reader, writer, heartbeater, return_exceptions=True)

    def _on_welcome(self, welcome: actor_service_pb2.Welcome, held: set[LeaseKey]) -> None:
        self.coordinator_id = welcome.coordinator_id
        self.lease_ttl_ms = welcome.lease_ttl_ms
        if welcome.heartbeat_interval_ms > 0:
            self.heartbeat_interval_s = welcome.heartbeat_interval_ms / 1000.0
        elif welcome.lease_ttl_ms > 0:
            self.heartbeat_interval_s = welcome.lease_ttl_ms / 3000.0
        else:
            self.heartbeat_interval_s = DEFAULT_HEARTBEAT_INTERVAL_S
        adopted = {lease_key(ref) for ref in welcome.adopted}
        for key in held - adopted:
            runner = self._running.get(key)
            if runner is not None:
                self._orphan(runner, "lease not adopted after reconnect", CancelCause.LEASE_LOST)
            if self._unacked.pop(key, None) is not None:
                self.results_dropped += 1
        if held:
            log.info("actor %s: %d held lease(s) re-presented, %d adopted", self.actor_id,
                     len(held), len(held & adopted))
        self.connects += 1
        self._outbox = list(self._unacked.values())
        self.children.on_connected()
        self._online = True
        self._connected.set()
        self._draining_announced = False  # a new stream: tell it again if we are draining
        if self._outbox or self._draining or self.children.has_outgoing:
            self._wake.set()
        self._changed.set()

    # -- the stream's two directions -------------------------------------------------------------

    async def _reader(self, call: Any) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            self._handle_response(msg, time.monotonic())

    async def _writer(self, call: Any) -> None:
        wake = self._wake
        while True:
            announce = self._draining and not self._draining_announced
            if (not self._outbox and not self._heartbeat_due and not announce and not self._alive_due
                    and not self.children.has_outgoing):
                if self._closing:
                    await call.done_writing()
                    return
                wake.clear()
                await wake.wait()
                continue
            req = actor_service_pb2.ConnectRequest()
            if announce:
                req.draining = True  # no more leases for us
                self._draining_announced = True
            if self._outbox:
                req.results.extend(self._take_batch())
            if self._heartbeat_due:
                self._heartbeat_due = False
                if self._running:
                    req.heartbeats.extend(r.lease.ref for r in self._running.values())
            if self.children.has_outgoing:
                self.children.fill(req)
            alive, self._alive_due = self._alive_due, False
            if not req.results and not req.heartbeats and not req.draining and not (
                    req.child_submissions or req.child_waits) and not alive:
                continue
            await call.write(req)
            self.messages_sent += 1
            self.results_sent += len(req.results)
            if req.heartbeats:
                self.heartbeats_sent += 1

    def _take_batch(self) -> list[actor_service_pb2.AttemptResult]:
        # Always size-capped: each result is at most MAX_OUTPUT_BYTES (payload.py), so a batch
        # of them can still exceed the message limit.
        outbox = self._outbox
        size = 0
        n = 0
        for result in outbox:
            if n >= MAX_RESULTS_PER_MESSAGE:
                break
            size += result.ByteSize()
            if n and size > MAX_RESULT_BYTES_PER_MESSAGE:
                break
            n += 1
        batch, self._outbox = outbox[:n], outbox[n:]
        return batch

    async def _heartbeater(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            if self._running:
                self._heartbeat_due = True
                self._wake.set()

    # -- coordinator -> actor -----------------------------------------------------------------

    def _handle_response(
        self, msg: actor_service_pb2.ConnectResponse, received_at_s: float,
        first_message: bool = False,
    ) -> None:
        if not first_message and msg.HasField("welcome"):
            log.warning("actor %s: unexpected welcome on an established stream; ignored",
                        self.actor_id)
        for lease in msg.leases:
            self._start_lease(lease, received_at_s)
        for cancel in msg.cancels:
            self._on_cancel(cancel)
        for ack in msg.acks:
            self._on_ack(ack)
        if msg.child_submitted or msg.child_outcomes:
            for answer in msg.child_submitted:
                self.children.on_submitted(answer)
            for outcome in msg.child_outcomes:
                self.children.on_outcome(outcome)

    def _start_lease(self, lease: actor_service_pb2.Lease, received_at_s: float) -> None:
        key = lease_key(lease.ref)
        if key in self._running or key in self._orphans or key in self._unacked:
            log.warning("actor %s: duplicate lease for task %s attempt %d token %d; ignored",
                        self.actor_id, *key, extra=_lease_log_fields(lease))
            return
        if self._draining:
            # Granted before the coordinator saw our draining flag: hand it back at once, so it is
            # re-dispatched now instead of after a lease TTL.
            self.leases_refused += 1
            log.info("actor %s: stopping; handing back task %s attempt %d", self.actor_id, key[0], key[1],
                     extra=_lease_log_fields(lease))
            self._report_handed_back(lease.ref, "actor is stopping; lease handed back")
            return
        if len(self._running) >= self.slots:
            log.warning("actor %s: coordinator granted more leases than slots (%d running, "
                        "%d slots); running task %s anyway", self.actor_id, len(self._running),
                        self.slots, key[0], extra=_lease_log_fields(lease))
        runner = AttemptRunner(
            self.app, lease, grace_s=self.grace_s, executor=self._pool,
            on_done=self._on_attempt_done, received_at_s=received_at_s, child_channel=self.children,
        )
        self._running[key] = runner
        self.attempts_started += 1
        if self.telemetry is None:
            runner.start()
        else:
            self.telemetry.start_attempt(runner)  # inside the attempt's span

    def _on_cancel(self, cancel: actor_service_pb2.CancelAttempt) -> None:
        key = lease_key(cancel.lease)
        reason = cancel.reason
        if reason == actor_service_pb2.CANCEL_REASON_LEASE_LOST:
            if self._online:  # we are alive after all: say so, so leases come our way again
                self._alive_due = True
                self._wake.set()
            runner = self._running.get(key)
            if runner is not None:
                self._orphan(runner, cancel.message or "lease lost", CancelCause.LEASE_LOST)
            if self._unacked.pop(key, None) is not None:
                self.results_dropped += 1
                self._changed.set()
            return
        runner = self._running.get(key)
        if runner is None:  # finished already (its result is on its way) or unknown
            log.debug("actor %s: cancel for an attempt not running here: %s", self.actor_id, key)
            return
        if reason == actor_service_pb2.CANCEL_REASON_TIMED_OUT:
            runner.cancel(cancel.message or "timed out", CancelCause.TIMED_OUT)
        else:
            runner.cancel(cancel.message or "canceled", CancelCause.REQUESTED)

    def _on_ack(self, ack: actor_service_pb2.ResultAck) -> None:
        key = lease_key(ack.lease)
        if self._unacked.pop(key, None) is None:
            return  # duplicate ack (e.g. for a result re-sent after a reconnect)
        if ack.accepted:
            self.results_acked += 1
        else:
            self.results_rejected += 1
            log.info("actor %s: result for task %s attempt %d rejected: %s", self.actor_id,
                     key[0], key[1], ack.reason or "no reason given", extra=task_fields(key[0], key[1]))
        self._changed.set()

    # -- attempts ---------------------------------------------------------------------------------

    def _report_handed_back(self, ref: actor_service_pb2.LeaseRef, message: str) -> None:
        """Report the lease `ref` HANDED_BACK (the actor is stopping), until acknowledged."""
        result = actor_service_pb2.AttemptResult(outcome=task_pb2.ATTEMPT_OUTCOME_HANDED_BACK)
        result.lease.CopyFrom(ref)
        result.error.message = message
        result.error.kind = "HandedBack"
        self._unacked[lease_key(ref)] = result
        if self._online:
            self._outbox.append(result)
            self._wake.set()

    def _orphan(self, runner: AttemptRunner, reason: str, cause: CancelCause) -> None:
        """Stop ``runner`` and forget its result (lease lost, or actor stopping)."""
        if self._running.pop(runner.key, None) is not None:
            self._orphans[runner.key] = runner
            self._changed.set()
        runner.cancel(reason, cause)

    def _on_attempt_done(self, runner: AttemptRunner, result: actor_service_pb2.AttemptResult
                         ) -> None:
        key = runner.key
        self.attempts_finished += 1
        self._changed.set()
        if self.children.active:
            self.children.forget_attempt(key)
        if self.telemetry is not None:
            self.telemetry.attempt_done(runner, result, key not in self._running)  # not running: dropped
        if self._running.pop(key, None) is None:
            if self._orphans.pop(key, None) is not None:
                self.results_dropped += 1
            return
        self._unacked[key] = result
        if self._online:
            self._outbox.append(result)
            self._wake.set()


def _lease_log_fields(lease: actor_service_pb2.Lease) -> dict[str, Any]:
    return task_fields(lease.ref.task_id, lease.ref.attempt, trace_id_of(lease.trace_context))


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}" if exc is not None else "?"


Actor = ActorSession
