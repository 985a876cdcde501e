"""AttemptRunner and decide_outcome: one attempt, from lease to AttemptResult."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import pytest
from google.protobuf import json_format

from actor import App, AttemptCanceled, CancellationToken, NonRetryableError
from actor import demo
from actor.attempt_runner import (
    AttemptRunner,
    CancelCause,
    Ending,
    decide_outcome,
)
from actor.handler_pool import HandlerThreadPool
from corral.v1 import actor_service_pb2, task_pb2

SUCCEEDED = task_pb2.ATTEMPT_OUTCOME_SUCCEEDED
FAILED = task_pb2.ATTEMPT_OUTCOME_FAILED
CANCELED = task_pb2.ATTEMPT_OUTCOME_CANCELED
TIMED_OUT = task_pb2.ATTEMPT_OUTCOME_TIMED_OUT


def make_lease(
    task_type: str,
    input: Any = None,
    *,
    input_bytes: bytes | None = None,
    timeout_ms: int = 10_000,
    task_id: str = "t1",
    attempt: int = 1,
    token: int = 42,
    labels: dict[str, str] | None = None,
) -> actor_service_pb2.Lease:
    lease = actor_service_pb2.Lease(
        ref=actor_service_pb2.LeaseRef(task_id=task_id, attempt=attempt, fencing_token=token),
        task_type=task_type,
        execution_timeout_ms=timeout_ms,
        labels=labels or {},
    )
    if input_bytes is not None:
        lease.input_bytes = input_bytes
    elif input is not None:
        json_format.ParseDict(input, lease.input)
    return lease


def run_one(app: App, lease: actor_service_pb2.Lease, grace_s: float = 1.0,
            executor: HandlerThreadPool | None = None) -> actor_service_pb2.AttemptResult:
    async def go() -> actor_service_pb2.AttemptResult:
        runner = AttemptRunner(app, lease, grace_s=grace_s, executor=executor)
        return await asyncio.wait_for(runner.run(), 5)

    return asyncio.run(go())


def output_of(result: actor_service_pb2.AttemptResult) -> Any:
    return json_format.MessageToDict(result.output)


# -- success -------------------------------------------------------------------------------


def test_async_handler_succeeds_with_json_round_trip() -> None:
    payload = {"a": [1, "x", None, True], "b": {"c": 2.5}}
    result = run_one(demo.app, make_lease("echo", payload))
    assert result.outcome == SUCCEEDED
    assert result.WhichOneof("result") == "output"
    assert output_of(result) == payload  # 1 == 1.0: numbers come back as floats
    assert not result.HasField("error")
    assert (result.lease.task_id, result.lease.attempt, result.lease.fencing_token) == ("t1", 1, 42)


def test_json_ints_arrive_as_floats() -> None:
    seen: list[Any] = []
    app = App()
    app.register("t", lambda input, ctx: seen.append(input))
    run_one(app, make_lease("t", {"n": 3}))
    assert seen == [{"n": 3.0}] and isinstance(seen[0]["n"], float)


def test_sync_handler_runs_in_a_worker_thread() -> None:
    threads: list[int] = []
    app = App()

    @app.handler("sync")
    def sync(input, ctx):
        threads.append(threading.get_ident())
        return {"doubled": input["x"] * 2}

    pool = HandlerThreadPool(2)
    result = run_one(app, make_lease("sync", {"x": 21}), executor=pool)
    assert result.outcome == SUCCEEDED
    assert output_of(result) == {"doubled": 42}
    assert threads and threads[0] != threading.get_ident()


def test_bytes_round_trip() -> None:
    data = bytes(range(256))
    result = run_one(demo.app, make_lease("echo", input_bytes=data))
    assert result.outcome == SUCCEEDED
    assert result.WhichOneof("result") == "output_bytes"
    assert result.output_bytes == data


def test_none_output_sets_no_result_field() -> None:
    result = run_one(demo.app, make_lease("noop"))
    assert result.outcome == SUCCEEDED
    assert result.WhichOneof("result") is None


def test_context_carries_the_lease() -> None:
    seen = {}
    app = App()

    @app.handler("ctx")
    async def h(input, ctx):
        seen.update(task_id=ctx.task_id, type=ctx.task_type, attempt=ctx.attempt,
                    token=ctx.fencing_token, labels=ctx.labels, remaining=ctx.remaining_s(),
                    deadline_unix_ms=ctx.deadline_unix_ms)

    before_ms = time.time() * 1000
    run_one(app, make_lease("ctx", attempt=3, token=99, timeout_ms=2000, labels={"k": "v"}))
    assert seen["task_id"] == "t1" and seen["type"] == "ctx"
    assert (seen["attempt"], seen["token"], seen["labels"]) == (3, 99, {"k": "v"})
    assert 0 < seen["remaining"] <= 2.0
    assert before_ms + 1500 < seen["deadline_unix_ms"] < before_ms + 3000


def test_fencing_token_demo_handler() -> None:
    result = run_one(demo.app, make_lease("fencing_token", attempt=2, token=1234))
    assert output_of(result) == {"token": 1234, "attempt": 2}


def test_zero_timeout_means_no_deadline() -> None:
    deadlines: list[float] = []
    app = App()
    app.register("t", lambda input, ctx: deadlines.append(ctx.deadline))
    assert run_one(app, make_lease("t", timeout_ms=0)).outcome == SUCCEEDED
    assert deadlines == [math.inf]


# -- failures ----------------------------------------------------------------------------------


def test_exception_is_failed_retryable_with_kind() -> None:
    result = run_one(demo.app, make_lease("fail", {"message": "boom"}))
    assert result.outcome == FAILED
    assert (result.error.kind, result.error.message) == ("RuntimeError", "boom")
    assert result.error.non_retryable is False
    assert result.WhichOneof("result") is None


@pytest.mark.parametrize("is_async", [True, False])
def test_non_retryable_error(is_async: bool) -> None:
    app = App()
    if is_async:
        async def h(input, ctx):
            raise NonRetryableError("bad input")
    else:
        def h(input, ctx):
            raise NonRetryableError("bad input")
    app.register("t", h)
    result = run_one(app, make_lease("t"))
    assert result.outcome == FAILED
    assert result.error.non_retryable is True
    assert (result.error.kind, result.error.message) == ("NonRetryableError", "bad input")


def test_demo_fail_non_retryable_flag() -> None:
    result = run_one(demo.app, make_lease("fail", {"message": "no", "non_retryable": True}))
    assert (result.outcome, result.error.non_retryable) == (FAILED, True)


def test_unknown_task_type_is_failed_non_retryable() -> None:
    result = run_one(demo.app, make_lease("nope"))
    assert result.outcome == FAILED
    assert result.error.kind == "UnknownTaskType"
    assert result.error.non_retryable is True
    assert "nope" in result.error.message


def test_non_serializable_output_is_failed_not_a_crash() -> None:
    app = App()
    app.register("t", lambda input, ctx: {"when": object()})
    result = run_one(app, make_lease("t"))
    assert result.outcome == FAILED
    assert result.error.kind == "OutputNotSerializable"
    assert result.WhichOneof("result") is None


def test_wrong_handler_signature_is_failed() -> None:
    app = App()

    async def h(input):  # missing ctx
        return input

    app.register("t", h)
    result = run_one(app, make_lease("t"))
    assert (result.outcome, result.error.kind) == (FAILED, "TypeError")


# -- timeouts and cancellation -------------------------------------------------------------------


def test_async_handler_honouring_the_token_times_out_quickly() -> None:
    start = time.monotonic()
    result = run_one(demo.app, make_lease("sleep", {"seconds": 30}, timeout_ms=50), grace_s=5.0)
    elapsed = time.monotonic() - start
    assert result.outcome == TIMED_OUT
    assert result.error.kind == "TimedOut"
    assert "timed out" in result.error.message
    assert elapsed < 1.0  # did not wait for the 5 s grace, let alone 30 s


def test_sync_handler_ignoring_the_token_is_abandoned_after_grace() -> None:
    pool = HandlerThreadPool(1)
    start = time.monotonic()
    result = run_one(demo.app, make_lease("spin", {"seconds": 1.5}, timeout_ms=50),
                     grace_s=0.1, executor=pool)
    elapsed = time.monotonic() - start
    assert result.outcome == TIMED_OUT
    assert "abandoned" in result.error.message
    assert 0.15 <= elapsed < 1.0  # deadline + grace, not the 1.5 s the handler wants
    assert pool.capacity == 2  # the abandoned thread no longer counts against the pool


def test_async_handler_ignoring_cancel_is_abandoned_and_reported_canceled() -> None:
    app = App()
    events: dict[str, asyncio.Event] = {}

    @app.handler("stubborn")
    async def stubborn(input, ctx):
        events["started"].set()
        try:
            await asyncio.sleep(30)  # ignores the token
        except asyncio.CancelledError:
            events["task_cancelled"].set()
            raise

    async def go() -> tuple[actor_service_pb2.AttemptResult, float]:
        events["started"] = asyncio.Event()
        events["task_cancelled"] = asyncio.Event()
        runner = AttemptRunner(app, make_lease("stubborn"), grace_s=0.1)
        runner.start()
        await asyncio.wait_for(events["started"].wait(), 2)
        t0 = time.monotonic()
        runner.cancel("user asked")
        result = await asyncio.wait_for(runner.wait(), 2)
        elapsed = time.monotonic() - t0
        # The abandoned task is cancelled (not awaited by the runner).
        await asyncio.wait_for(events["task_cancelled"].wait(), 2)
        return result, elapsed

    result, elapsed = asyncio.run(go())
    assert result.outcome == CANCELED
    assert "user asked" in result.error.message and "abandoned" in result.error.message
    assert 0.09 <= elapsed < 1.0


def test_cancel_of_a_cooperative_handler_is_canceled() -> None:
    async def go() -> tuple[actor_service_pb2.AttemptResult, float]:
        runner = AttemptRunner(demo.app, make_lease("sleep", {"seconds": 30}), grace_s=5.0)
        runner.start()
        t0 = time.monotonic()
        assert runner.cancel("requested by user") is True
        result = await asyncio.wait_for(runner.wait(), 2)
        assert runner.cancel("again") is False  # already ended
        return result, time.monotonic() - t0

    result, elapsed = asyncio.run(go())
    assert result.outcome == CANCELED
    assert result.error.kind == "Canceled"
    assert result.error.message == "requested by user"
    assert elapsed < 1.0


def test_handler_that_returns_after_cancel_is_canceled_and_output_dropped() -> None:
    app = App()

    @app.handler("t")
    async def h(input, ctx):
        await ctx.cancel_token.wait()
        return {"late": True}

    async def go() -> actor_service_pb2.AttemptResult:
        runner = AttemptRunner(app, make_lease("t"), grace_s=5.0)
        runner.start()
        runner.cancel("stop", CancelCause.REQUESTED)
        return await asyncio.wait_for(runner.wait(), 2)

    result = asyncio.run(go())
    assert result.outcome == CANCELED
    assert result.WhichOneof("result") is None
    assert "output discarded" in result.error.message


def test_coordinator_timed_out_cancel_reports_timed_out() -> None:
    async def go() -> actor_service_pb2.AttemptResult:
        runner = AttemptRunner(demo.app, make_lease("sleep", {"seconds": 30}), grace_s=5.0)
        runner.start()
        runner.cancel("deadline passed", CancelCause.TIMED_OUT)
        return await asyncio.wait_for(runner.wait(), 2)

    assert asyncio.run(go()).outcome == TIMED_OUT


def test_sync_handler_sees_cancellation_through_wait_sync() -> None:
    app = App()

    @app.handler("t")
    def h(input, ctx):
        if ctx.cancel_token.wait_sync(timeout_s=10):
            ctx.cancel_token.raise_if_canceled()
        return "not canceled"

    pool = HandlerThreadPool(1)
    start = time.monotonic()
    result = run_one(app, make_lease("t", timeout_ms=50), grace_s=5.0, executor=pool)
    assert result.outcome == TIMED_OUT
    assert time.monotonic() - start < 1.0
    assert pool.abandoned_running == 0  # it stopped by itself: nothing abandoned


def test_cpu_bound_sync_handler_does_not_block_the_event_loop() -> None:
    async def go() -> tuple[actor_service_pb2.AttemptResult, int, float]:
        pool = HandlerThreadPool(1)
        runner = AttemptRunner(demo.app, make_lease("spin", {"seconds": 1.0}), executor=pool)
        runner.start()
        ticks = 0
        max_gap = 0.0
        last = time.monotonic()
        while not runner.done:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            max_gap = max(max_gap, now - last)
            last = now
            ticks += 1
        return await runner.wait(), ticks, max_gap

    result, ticks, max_gap = asyncio.run(go())
    assert result.outcome == SUCCEEDED
    assert output_of(result)["iterations"] > 0
    # The loop kept running while the handler spun for a whole second (it shares the GIL with the
    # spinning thread, so on a loaded machine ticks are fewer than 200; blocked would be 1).
    assert ticks >= 10
    assert max_gap < 0.5


# -- the decision function (pure) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("ending", "exc", "cause", "outcome", "kind", "non_retryable"),
    [
        (Ending.RETURNED, None, None, SUCCEEDED, "", False),
        (Ending.RAISED, ValueError("x"), None, FAILED, "ValueError", False),
        (Ending.RAISED, NonRetryableError("x"), None, FAILED, "NonRetryableError", True),
        (Ending.RAISED, AttemptCanceled("x"), None, CANCELED, "AttemptCanceled", False),
        (Ending.RETURNED, None, CancelCause.REQUESTED, CANCELED, "Canceled", False),
        (Ending.RAISED, AttemptCanceled("x"), CancelCause.REQUESTED, CANCELED, "Canceled", False),
        (Ending.RAISED, ValueError("x"), CancelCause.REQUESTED, CANCELED, "Canceled", False),
        (Ending.ABANDONED, None, CancelCause.REQUESTED, CANCELED, "Canceled", False),
        (Ending.ABANDONED, None, CancelCause.TIMED_OUT, TIMED_OUT, "TimedOut", False),
        (Ending.RAISED, NonRetryableError("x"), CancelCause.TIMED_OUT, TIMED_OUT, "TimedOut",
         False),
        (Ending.RETURNED, None, CancelCause.TIMED_OUT, TIMED_OUT, "TimedOut", False),
        (Ending.RETURNED, None, CancelCause.LEASE_LOST, CANCELED, "Canceled", False),
    ],
)
def test_decide_outcome(ending, exc, cause, outcome, kind, non_retryable) -> None:
    decision = decide_outcome(ending, exc, cause, "why", grace_s=1.0)
    assert (decision.outcome, decision.kind, decision.non_retryable) == (outcome, kind,
                                                                         non_retryable)
    assert decision.keep_output is (outcome == SUCCEEDED)
    if cause is not None:
        assert decision.message.startswith("why")


def test_decide_outcome_messages() -> None:
    assert decide_outcome(Ending.RAISED, KeyError("k")).message == "'k'"
    assert decide_outcome(Ending.RAISED, RuntimeError()).message == "RuntimeError"
    abandoned = decide_outcome(Ending.ABANDONED, None, CancelCause.TIMED_OUT, "timed out", 2.0)
    assert "2s grace" in abandoned.message
    raised = decide_outcome(Ending.RAISED, ValueError("db"), CancelCause.REQUESTED, "stop")
    assert "ValueError: db" in raised.message


# -- cancellation token -------------------------------------------------------------------------


def test_token_cancel_is_idempotent_and_first_reason_wins() -> None:
    token = CancellationToken()
    token.raise_if_canceled()  # no-op
    assert token.cancel("first") is True
    assert token.cancel("second") is False
    assert (token.canceled, token.reason) == (True, "first")
    with pytest.raises(AttemptCanceled, match="first"):
        token.raise_if_canceled()


def test_token_wakes_thread_waiters_from_another_thread() -> None:
    token = CancellationToken()
    woke = threading.Event()

    def waiter() -> None:
        if token.wait_sync(timeout_s=5):
            woke.set()

    t = threading.Thread(target=waiter)
    t.start()
    assert token.wait_sync(timeout_s=0.01) is False  # times out while not canceled
    token.cancel("go")
    assert woke.wait(2)
    t.join(2)


def test_token_wakes_async_waiters_from_another_thread() -> None:
    async def go() -> tuple[bool, bool, float]:
        token = CancellationToken()
        timed_out = await token.wait(timeout_s=0.01)
        t0 = time.monotonic()
        threading.Timer(0.02, token.cancel, args=("from thread",)).start()
        woke = await asyncio.wait_for(token.wait(), 2)
        return timed_out, woke, time.monotonic() - t0

    timed_out, woke, elapsed = asyncio.run(go())
    assert timed_out is False and woke is True and elapsed < 1.0


# -- handler pool ------------------------------------------------------------------------------


def test_pool_abandoned_item_frees_capacity_then_gives_it_back() -> None:
    pool = HandlerThreadPool(1)
    release = threading.Event()
    stuck = pool.submit(release.wait, 5)
    pool.abandon(stuck)
    assert pool.capacity == 2
    # With max_workers=1 this would wait behind the stuck item if the slot were not freed.
    assert pool.submit(lambda: "ran").result(timeout=2) == "ran"
    release.set()
    assert stuck.result(timeout=2) is True
    deadline = time.monotonic() + 2
    while pool.abandoned_running and time.monotonic() < deadline:
        release.wait(0.005)
    assert pool.abandoned_running == 0 and pool.capacity == 1
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_pool_queues_beyond_capacity_and_runs_everything() -> None:
    pool = HandlerThreadPool(2)
    lock = threading.Lock()
    active = 0
    peak = 0

    def work(i: int) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        threading.Event().wait(0.005)
        with lock:
            active -= 1
        return i

    futures = [pool.submit(work, i) for i in range(20)]
    assert [f.result(timeout=5) for f in futures] == list(range(20))
    assert peak <= 2
    pool.shutdown()


def test_queued_sync_attempt_timed_out_before_it_started_never_runs() -> None:
    import threading

    ran = threading.Event()
    release = threading.Event()
    app = App()

    @app.handler("block")
    def block(input, ctx):  # ignores its token; holds the only pool thread
        release.wait(5)

    @app.handler("effect")
    def effect(input, ctx):
        ran.set()

    pool = HandlerThreadPool(1)

    async def go():
        first = AttemptRunner(app, make_lease("block", timeout_ms=10_000, task_id="b"), grace_s=5, executor=pool)
        second = AttemptRunner(app, make_lease("effect", timeout_ms=50, task_id="e"), grace_s=0.05, executor=pool)
        first.start()
        second.start()  # queued behind `block`: it times out and is abandoned before it starts
        result = await asyncio.wait_for(second.wait(), 5)
        release.set()
        await asyncio.wait_for(first.wait(), 5)
        return result

    result = asyncio.run(go())
    assert result.outcome == TIMED_OUT
    pool.shutdown(wait=True)
    assert not ran.is_set(), "an abandoned attempt that never started must never run"


# -- handler misbehaviour that must never escape the runner ----------------------------------------


def _run_guarded(app: App, lease: actor_service_pb2.Lease, grace_s: float = 1.0) -> actor_service_pb2.AttemptResult:
    """run_one, but an exception escaping the event loop (SystemExit, KeyboardInterrupt) fails
    the test instead of ending pytest."""
    try:
        return run_one(app, lease, grace_s=grace_s)
    except BaseException as exc:  # noqa: BLE001 - what escaped the loop is the bug under test
        pytest.fail(f"{type(exc).__name__} escaped the attempt runner's event loop: {exc!r}")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
@pytest.mark.parametrize("is_async", [True, False])
def test_handler_raising_system_exit_or_keyboard_interrupt_fails_the_attempt(exc_type, is_async) -> None:
    # README: "Any exception is a retryable failure". An async handler's SystemExit must not
    # escape the event loop (it would end the actor and every attempt it runs).
    app = App()
    if is_async:
        async def h(input, ctx):
            raise exc_type(3)
    else:
        def h(input, ctx):
            raise exc_type(3)
    app.register("t", h)
    result = _run_guarded(app, make_lease("t"))
    assert (result.outcome, result.error.kind) == (FAILED, exc_type.__name__)
    assert result.error.non_retryable is False


@pytest.mark.timeout(10)
@pytest.mark.parametrize("value", [10**400, {"n": [10**400]}], ids=["int", "nested"])
def test_output_with_an_int_too_large_for_a_double_is_failed_not_stuck(value) -> None:
    # json_format raises OverflowError (not ValueError) for such an int: it must still be a
    # FAILED OutputNotSerializable, reported at once, not an exception out of the runner that
    # leaves the attempt running until its deadline (then reported TIMED_OUT, and retried).
    app = App()
    app.register("t", lambda input, ctx: value)
    start = time.monotonic()
    result = run_one(app, make_lease("t", timeout_ms=2_000), grace_s=0.1)
    assert (result.outcome, result.error.kind) == (FAILED, "OutputNotSerializable"), result
    assert result.error.non_retryable is True
    assert time.monotonic() - start < 1.0


@pytest.mark.timeout(10)
class _Float(float):  # e.g. numpy.float64 is a float subclass
    pass


@pytest.mark.parametrize("value", [float("nan"), {"x": float("inf")}, [1.0, float("-inf")],
                                   {"a": {"b": [{"c": (2.0, float("nan"))}]}}, {"x": _Float("nan")}],
                         ids=["nan", "inf", "-inf", "deep", "float-subclass"])
def test_nan_or_infinite_output_is_failed_not_serializable(value) -> None:
    # payload.py: output must be JSON-serializable, "no NaN/inf". A Value holding NaN cannot be
    # rendered as JSON (GetTask via grpcurl / `corral get --json`) nor decoded by a dependent
    # (its prerequisites) or a parent waiting for it (ValueError on every attempt).
    app = App()
    app.register("t", lambda input, ctx: value)
    result = run_one(app, make_lease("t"))
    assert (result.outcome, result.error.kind) == (FAILED, "OutputNotSerializable"), result
    assert result.error.non_retryable is True
