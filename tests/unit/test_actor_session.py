"""ActorSession against an in-memory fake stream (no network)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import json_format

from actor import demo
from actor.errors import ActorRejected
from actor.session import ActorSession
from corral.v1 import actor_service_pb2 as pb
from corral.v1 import task_pb2

WAIT_S = 3.0


class FakeCall:
    """Stands in for grpc.aio's StreamStreamCall: the test plays the coordinator."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[pb.ConnectRequest] = asyncio.Queue()
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self.half_closed = False
        self.cancelled = False

    async def write(self, request: pb.ConnectRequest) -> None:
        if self.cancelled:
            raise rpc_error(grpc.StatusCode.CANCELLED)
        self.sent.put_nowait(request)

    async def read(self) -> Any:
        item = await self._responses.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def done_writing(self) -> None:
        self.half_closed = True
        self._responses.put_nowait(grpc.aio.EOF)  # a polite coordinator ends the call

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    # -- coordinator side --
    def respond(self, **fields: Any) -> None:
        self._responses.put_nowait(pb.ConnectResponse(**fields))

    def fail(self, code: grpc.StatusCode) -> None:
        self._responses.put_nowait(rpc_error(code))

    async def next_sent(self) -> pb.ConnectRequest:
        return await asyncio.wait_for(self.sent.get(), WAIT_S)

    async def next_results(self) -> list[pb.AttemptResult]:
        while True:
            msg = await self.next_sent()
            if msg.results:
                return list(msg.results)


class FakeChannel:
    async def close(self, grace: float | None = None) -> None:
        return None


class FakeSession(ActorSession):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("slots", 4)
        kwargs.setdefault("actor_id", "actor-1")
        kwargs.setdefault("reconnect_initial_s", 0.01)
        kwargs.setdefault("reconnect_max_s", 0.05)
        kwargs.setdefault("flush_timeout_s", 0.2)  # most tests do not ack every result
        super().__init__("fake:1", demo.app, **kwargs)
        self.calls: asyncio.Queue[FakeCall] = asyncio.Queue()

    def _make_channel(self) -> Any:
        return FakeChannel()

    def _open_stream(self, channel: Any) -> FakeCall:
        call = FakeCall()
        self.calls.put_nowait(call)
        return call

    async def next_call(self) -> FakeCall:
        return await asyncio.wait_for(self.calls.get(), WAIT_S)


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="test")


def ref(task_id: str, attempt: int = 1, token: int = 1) -> pb.LeaseRef:
    return pb.LeaseRef(task_id=task_id, attempt=attempt, fencing_token=token)


def lease(task_id: str, task_type: str, input: Any = None, *, token: int = 1,
          timeout_ms: int = 10_000) -> pb.Lease:
    msg = pb.Lease(ref=ref(task_id, token=token), task_type=task_type,
                   execution_timeout_ms=timeout_ms)
    if input is not None:
        json_format.ParseDict(input, msg.input)
    return msg


def key(r: pb.LeaseRef) -> tuple[str, int, int]:
    return (r.task_id, r.attempt, r.fencing_token)


async def until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Wait for a condition, bounded (polls the loop; never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


async def connect(session: FakeSession, **welcome: Any) -> tuple[FakeCall, pb.Hello]:
    call = await session.next_call()
    hello = (await call.next_sent()).hello
    welcome.setdefault("heartbeat_interval_ms", 10_000)
    call.respond(welcome=pb.Welcome(coordinator_id="c1", lease_ttl_ms=30_000, **welcome))
    assert await session.wait_connected(WAIT_S)
    return call, hello


async def finish(session: FakeSession, task: asyncio.Task[None]) -> None:
    session.stop()
    await asyncio.wait_for(task, WAIT_S)


def test_hello_welcome_lease_result_ack() -> None:
    async def go() -> None:
        session = FakeSession(labels={"zone": "a"})
        task = asyncio.create_task(session.run())
        call, hello = await connect(session)
        ident = hello.identity
        assert (ident.actor_id, ident.slots, dict(ident.labels)) == ("actor-1", 4, {"zone": "a"})
        assert list(ident.task_types) == demo.app.task_types
        assert len(ident.incarnation) == 32 and ident.host
        assert list(hello.held_leases) == []

        call.respond(leases=[lease("a", "echo", {"x": 1}), lease("b", "fail", {"message": "m"})])
        results: dict[str, pb.AttemptResult] = {}
        while len(results) < 2:
            for r in await call.next_results():
                results[r.lease.task_id] = r
        assert results["a"].outcome == task_pb2.ATTEMPT_OUTCOME_SUCCEEDED
        assert json_format.MessageToDict(results["a"].output) == {"x": 1}
        assert results["b"].outcome == task_pb2.ATTEMPT_OUTCOME_FAILED
        assert session.unacked_count == 2

        call.respond(acks=[pb.ResultAck(lease=ref("a"), accepted=True),
                           pb.ResultAck(lease=ref("b"), accepted=False, reason="stale")])
        await until(lambda: session.unacked_count == 0)
        assert (session.results_acked, session.results_rejected) == (1, 1)
        assert session.attempts_started == 2
        await finish(session, task)
        assert call.half_closed

    asyncio.run(go())


def test_results_are_batched() -> None:
    async def go() -> None:
        session = FakeSession(slots=200)
        task = asyncio.create_task(session.run())
        call, _ = await connect(session)
        call.respond(leases=[lease(f"t{i}", "noop") for i in range(200)])
        got = 0
        messages = 0
        while got < 200:
            got += len(await call.next_results())
            messages += 1
        assert messages <= 5  # 200 results in a handful of writes, not 200
        await finish(session, task)

    asyncio.run(go())


def test_heartbeats_cover_all_running_attempts_in_one_message() -> None:
    async def go() -> None:
        session = FakeSession()
        task = asyncio.create_task(session.run())
        call, _ = await connect(session, heartbeat_interval_ms=20)
        call.respond(leases=[lease("s1", "sleep", {"seconds": 30}),
                             lease("s2", "sleep", {"seconds": 30})])
        while True:
            msg = await call.next_sent()
            if msg.heartbeats:
                break
        assert sorted(r.task_id for r in msg.heartbeats) == ["s1", "s2"]
        assert session.heartbeats_sent >= 1
        session.stop(force=True)
        await asyncio.wait_for(task, WAIT_S)

    asyncio.run(go())


def test_requested_cancel_reports_canceled_and_lease_lost_reports_nothing() -> None:
    async def go() -> None:
        session = FakeSession()
        task = asyncio.create_task(session.run())
        call, _ = await connect(session)
        call.respond(leases=[lease("keep", "sleep", {"seconds": 30}),
                             lease("lost", "sleep", {"seconds": 30})])
        await until(lambda: session.running_count == 2)
        call.respond(cancels=[
            pb.CancelAttempt(lease=ref("lost"), reason=pb.CANCEL_REASON_LEASE_LOST),
            pb.CancelAttempt(lease=ref("keep"), reason=pb.CANCEL_REASON_REQUESTED,
                             message="user"),
        ])
        results = await call.next_results()
        assert [r.lease.task_id for r in results] == ["keep"]
        assert results[0].outcome == task_pb2.ATTEMPT_OUTCOME_CANCELED
        await until(lambda: session.results_dropped == 1)
        assert session.running_count == 0
        await finish(session, task)

    asyncio.run(go())


def test_reconnect_re_presents_held_leases_and_resends_unacked_results() -> None:
    async def go() -> None:
        session = FakeSession()
        task = asyncio.create_task(session.run())
        call, first_hello = await connect(session)
        call.respond(leases=[lease("run", "sleep", {"seconds": 30}, token=7),
                             lease("done", "echo", "v", token=8),
                             lease("gone", "sleep", {"seconds": 30}, token=9)])
        results = await call.next_results()
        assert [r.lease.task_id for r in results] == ["done"]  # never acked

        call.fail(grpc.StatusCode.UNAVAILABLE)  # coordinator restarts
        call2 = await session.next_call()
        hello = (await call2.next_sent()).hello
        assert hello.identity.incarnation == first_hello.identity.incarnation  # same process
        held = sorted(key(r) for r in hello.held_leases)
        assert held == [("done", 1, 8), ("gone", 1, 9), ("run", 1, 7)]
        assert session.running_count == 2  # attempts kept running across the reconnect

        # "gone" is not adopted: it must stop and never be reported.
        call2.respond(welcome=pb.Welcome(lease_ttl_ms=30_000, heartbeat_interval_ms=10_000,
                                         adopted=[ref("run", token=7), ref("done", token=8)]))
        resent = await call2.next_results()
        assert [r.lease.task_id for r in resent] == ["done"]
        assert session.connects == 2
        await until(lambda: session.results_dropped == 1)
        assert session.running_count == 1

        call2.respond(cancels=[pb.CancelAttempt(lease=ref("run", token=7),
                                                reason=pb.CANCEL_REASON_TIMED_OUT)])
        late = await call2.next_results()
        assert [(r.lease.task_id, r.outcome) for r in late] == [
            ("run", task_pb2.ATTEMPT_OUTCOME_TIMED_OUT)]
        await finish(session, task)

    asyncio.run(go())


def test_failures_before_welcome_are_retried() -> None:
    async def go() -> None:
        session = FakeSession()
        task = asyncio.create_task(session.run())
        for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ALREADY_EXISTS):
            call = await session.next_call()
            await call.next_sent()  # hello
            call.fail(code)
        call, _ = await connect(session)
        assert session.connects == 1
        await finish(session, task)

    asyncio.run(go())


@pytest.mark.parametrize("code", [grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.UNAUTHENTICATED])
def test_misconfiguration_stops_the_actor(code: grpc.StatusCode) -> None:
    async def go() -> None:
        session = FakeSession()
        task = asyncio.create_task(session.run())
        call = await session.next_call()
        await call.next_sent()
        call.fail(code)
        with pytest.raises(ActorRejected) as info:
            await asyncio.wait_for(task, WAIT_S)
        assert info.value.code_name == code.name
        assert session.calls.empty()  # no retry

    asyncio.run(go())


def test_graceful_stop_waits_for_running_attempts_and_flushes() -> None:
    async def go() -> None:
        session = FakeSession(grace_s=2.0, flush_timeout_s=2.0)
        task = asyncio.create_task(session.run())
        call, _ = await connect(session)
        call.respond(leases=[lease("s", "sleep", {"seconds": 0.05})])
        await until(lambda: session.running_count == 1)
        session.stop()
        results = await call.next_results()
        assert results[0].outcome == task_pb2.ATTEMPT_OUTCOME_SUCCEEDED
        call.respond(leases=[lease("late", "noop")])  # not started while stopping
        call.respond(acks=[pb.ResultAck(lease=ref("s"), accepted=True)])
        await asyncio.wait_for(task, WAIT_S)
        assert session.results_acked == 1
        assert session.leases_refused == 1
        assert call.half_closed

    asyncio.run(go())


def test_stop_is_bounded_by_grace_and_flush_timeout_with_a_handler_still_running() -> None:
    async def go() -> None:
        session = FakeSession(grace_s=0.05, flush_timeout_s=0.05)
        task = asyncio.create_task(session.run())
        call, _ = await connect(session)
        call.respond(leases=[lease("s", "sleep", {"seconds": 30})])
        await until(lambda: session.running_count == 1)
        t0 = time.monotonic()
        session.stop()
        await asyncio.wait_for(task, WAIT_S)
        assert time.monotonic() - t0 < 1.5
        assert session.results_sent == 1  # handed back (unacknowledged here: the flush gave up)

    asyncio.run(go())


def test_stopping_actor_announces_draining_and_hands_back_late_leases() -> None:
    async def go() -> None:
        session = FakeSession(grace_s=2.0, flush_timeout_s=2.0)
        task = asyncio.create_task(session.run())
        call, _ = await connect(session)
        call.respond(leases=[lease("s", "sleep", {"seconds": 0.2})])
        await until(lambda: session.running_count == 1)
        session.stop()
        announced = await call.next_sent()
        while not announced.draining:
            announced = await call.next_sent()
        # A lease granted before the coordinator saw the flag: handed back at once, never run.
        call.respond(leases=[lease("late", "noop", token=7)])
        outcomes: dict[str, int] = {}
        while len(outcomes) < 2:
            for result in await call.next_results():
                outcomes[result.lease.task_id] = result.outcome
        assert outcomes == {"late": task_pb2.ATTEMPT_OUTCOME_HANDED_BACK, "s": task_pb2.ATTEMPT_OUTCOME_SUCCEEDED}
        call.respond(acks=[pb.ResultAck(lease=ref("s"), accepted=True),
                           pb.ResultAck(lease=ref("late", token=7), accepted=True)])
        await asyncio.wait_for(task, WAIT_S)
        assert session.attempts_started == 1

    asyncio.run(go())


@pytest.mark.timeout(10)
def test_stop_hands_back_attempts_still_running_when_the_grace_ends() -> None:
    # The promise: SIGTERM -> finish *or hand back* in-flight attempts within the grace, and report:
    # the coordinator re-dispatches them at once (no lease TTL wait, no lost attempt counted).
    async def go() -> None:
        session = FakeSession(grace_s=0.1, flush_timeout_s=1.0)
        task = asyncio.create_task(session.run())
        call, _ = await connect(session)
        call.respond(leases=[lease("long", "sleep", {"seconds": 30})])  # honours its cancel token
        await until(lambda: session.running_count == 1)
        session.stop()
        reported = asyncio.create_task(call.next_results())
        await asyncio.wait({task, reported}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        assert reported.done() and not reported.exception(), \
            "the attempt interrupted by the stop was never reported (its lease must expire)"
        [result] = reported.result()
        assert result.lease.task_id == "long" and result.outcome == task_pb2.ATTEMPT_OUTCOME_HANDED_BACK, result
        assert "grace" in result.error.message
        reported.cancel()
        session.stop(force=True)
        await asyncio.wait_for(task, WAIT_S)

    asyncio.run(go())
