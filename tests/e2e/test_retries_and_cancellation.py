"""Retries, cancellation and execution timeouts, through a real coordinator and a real actor.

One actor ("rc-actor", 4 slots, 0.5 s grace) serves every test of this module; tests that ask
for a type no actor serves use "rc-nobody".
"""
from __future__ import annotations

import socket
import threading
import time

import pytest
from google.protobuf import json_format

from corral.v1 import task_pb2, task_service_pb2

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

S = task_pb2
ACTOR = "rc-actor"
GRACE_S = 0.5


def spec(task_type: str, input=None, *, max_attempts: int = 0, backoff_ms: int | None = None,
         exponential: bool = False, execution_timeout_ms: int | None = None, **fields) -> task_pb2.TaskSpec:
    s = task_pb2.TaskSpec(type=task_type, **fields)
    if input is not None:
        json_format.ParseDict(input, s.input)
    if max_attempts:
        s.retry.max_attempts = max_attempts
    if backoff_ms is not None:
        s.retry.backoff.kind = S.BACKOFF_KIND_EXPONENTIAL if exponential else S.BACKOFF_KIND_FIXED
        s.retry.backoff.initial.FromMilliseconds(backoff_ms)
        s.retry.backoff.jitter = S.JITTER_NONE
    if execution_timeout_ms is not None:
        s.execution_timeout.FromMilliseconds(execution_timeout_ms)
    return s


def submit(cluster, s: task_pb2.TaskSpec) -> str:
    return cluster.tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=s), timeout=10).task_id


def cancel(cluster, task_id: str, reason: str = "") -> task_pb2.Task:
    return cluster.tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task_id, reason=reason), timeout=10).task


def ms(ts) -> int:
    return ts.ToMilliseconds()


def gaps_ms(task: task_pb2.Task) -> list[int]:
    """Time from the end of each attempt to the start of the next."""
    return [ms(b.started_at) - ms(a.ended_at) for a, b in zip(task.attempts, task.attempts[1:])]


def assert_actor_still_serves(cluster) -> None:
    task_id = submit(cluster, spec("echo", {"after": "timeout"}))
    task = cluster.wait_state(task_id, timeout_s=10)
    assert task.state == S.TASK_STATE_SUCCEEDED, task
    assert json_format.MessageToDict(task.output) == {"after": "timeout"}
    assert [a.actor_id for a in task.attempts] == [ACTOR]


@pytest.fixture(scope="module")
def rc(shared_cluster):
    shared_cluster.start_actor(ACTOR, slots=4, extra=("--grace-s", str(GRACE_S)))
    return shared_cluster


# ---- retries -----------------------------------------------------------------------------------

def test_retryable_failure_runs_exactly_max_attempts_spaced_by_fixed_backoff_then_fails(rc):
    backoff_ms = 150
    task_id = submit(rc, spec("fail", {"message": "boom-fixed"}, max_attempts=3, backoff_ms=backoff_ms))
    task = rc.wait_state(task_id, timeout_s=15)

    assert task.state == S.TASK_STATE_FAILED, task
    assert task.error.message == "boom-fixed"
    assert not task.error.non_retryable
    assert task.failed_attempts == 3 and task.lost_attempts == 0
    assert [a.number for a in task.attempts] == [1, 2, 3]
    assert all(a.outcome == S.ATTEMPT_OUTCOME_FAILED for a in task.attempts), task.attempts
    assert all(a.error.message == "boom-fixed" for a in task.attempts)
    assert all(a.actor_id == ACTOR for a in task.attempts)
    tokens = [a.fencing_token for a in task.attempts]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3, tokens
    assert all(gap >= backoff_ms for gap in gaps_ms(task)), gaps_ms(task)


def test_exponential_backoff_doubles_the_wait_between_attempts(rc):
    task_id = submit(rc, spec("fail", {"message": "boom-exp"}, max_attempts=3, backoff_ms=100, exponential=True))
    task = rc.wait_state(task_id, timeout_s=15)
    assert task.state == S.TASK_STATE_FAILED and len(task.attempts) == 3, task
    first, second = gaps_ms(task)
    assert first >= 100 and second >= 200, (first, second)


def test_non_retryable_failure_fails_after_one_attempt(rc):
    task_id = submit(rc, spec("fail", {"message": "x", "non_retryable": True}, max_attempts=5, backoff_ms=10))
    task = rc.wait_state(task_id, timeout_s=15)
    assert task.state == S.TASK_STATE_FAILED, task
    [attempt] = task.attempts
    assert attempt.outcome == S.ATTEMPT_OUTCOME_FAILED
    assert attempt.error.non_retryable and attempt.error.message == "x"
    assert task.error.message == "x" and task.error.non_retryable


def test_task_waiting_to_retry_shows_last_error_and_cancels_immediately(rc):
    task_id = submit(rc, spec("fail", {"message": "retry-later"}, max_attempts=3, backoff_ms=30_000))
    task = rc.wait_state(task_id, (S.TASK_STATE_RETRY_WAIT,), timeout_s=10)
    [attempt] = task.attempts
    assert attempt.outcome == S.ATTEMPT_OUTCOME_FAILED
    assert task.error.message == "retry-later"
    assert ms(task.ready_at) >= ms(attempt.ended_at) + 30_000

    canceled = cancel(rc, task_id, reason="no more retries")
    assert canceled.state == S.TASK_STATE_CANCELED, canceled
    task = rc.get(task_id)
    assert task.state == S.TASK_STATE_CANCELED and len(task.attempts) == 1, task


# ---- cancellation ------------------------------------------------------------------------------

def test_cancel_reaches_a_running_handler_and_ends_the_attempt_canceled(rc):
    task_id = submit(rc, spec("sleep", {"seconds": 30}))
    rc.wait_state(task_id, (S.TASK_STATE_RUNNING,), timeout_s=10)

    started = time.monotonic()
    reply = cancel(rc, task_id, reason="stop it")
    assert reply.state in (S.TASK_STATE_RUNNING, S.TASK_STATE_CANCELED), reply
    if reply.state == S.TASK_STATE_RUNNING:
        assert reply.cancel_requested
    task = rc.wait_state(task_id, timeout_s=5)
    elapsed = time.monotonic() - started

    assert task.state == S.TASK_STATE_CANCELED, task
    assert elapsed < 5, elapsed
    [attempt] = task.attempts
    assert attempt.outcome == S.ATTEMPT_OUTCOME_CANCELED, attempt
    assert task.cancel_requested
    assert "stop it" in task.error.message or "stop it" in task.state_reason, task


def test_cancel_of_waiting_task_is_immediate_and_it_never_runs(rc):
    ready_id = submit(rc, spec("rc-nobody", {"i": 1}))  # no actor serves this type: READY forever
    assert rc.get(ready_id).state == S.TASK_STATE_READY
    scheduled = spec("echo", {"i": 2})
    scheduled.not_before.FromMilliseconds(int(time.time() * 1000) + 3_600_000)
    scheduled_id = submit(rc, scheduled)
    assert rc.get(scheduled_id).state == S.TASK_STATE_SCHEDULED

    for task_id in (ready_id, scheduled_id):
        reply = cancel(rc, task_id, reason="changed my mind")
        assert reply.state == S.TASK_STATE_CANCELED, reply
        task = rc.get(task_id)
        assert task.state == S.TASK_STATE_CANCELED and not task.attempts, task
        assert task.error.message == "changed my mind", task.error


# ---- execution timeouts ------------------------------------------------------------------------

def test_cooperative_handler_past_its_execution_timeout_is_timed_out_and_retried(rc):
    started = time.monotonic()
    task_id = submit(rc, spec("sleep", {"seconds": 20}, execution_timeout_ms=400, max_attempts=2, backoff_ms=50))
    task = rc.wait_state(task_id, timeout_s=10)
    elapsed = time.monotonic() - started

    assert task.state == S.TASK_STATE_FAILED, task
    assert [a.outcome for a in task.attempts] == [S.ATTEMPT_OUTCOME_TIMED_OUT] * 2, task.attempts
    assert task.failed_attempts == 2
    assert elapsed < 5, f"a 0.4 s timeout took {elapsed:.1f} s to be enforced twice"
    for a in task.attempts:
        assert ms(a.ended_at) - ms(a.started_at) >= 400 - 50  # not before the timeout (clock granularity)
    assert_actor_still_serves(rc)


def test_cancel_of_handler_ignoring_cancellation_ends_canceled_after_grace(rc):
    task_id = submit(rc, spec("spin", {"seconds": 6}))
    rc.wait_state(task_id, (S.TASK_STATE_RUNNING,), timeout_s=10)
    started = time.monotonic()
    cancel(rc, task_id)
    task = rc.wait_state(task_id, timeout_s=5)
    elapsed = time.monotonic() - started
    assert task.state == S.TASK_STATE_CANCELED, task
    assert task.attempts[-1].outcome == S.ATTEMPT_OUTCOME_CANCELED
    assert len(task.attempts) == 1
    assert elapsed < GRACE_S + 3, f"cancel of spin(6 s) took {elapsed:.1f} s"


def test_handler_ignoring_cancellation_is_abandoned_and_timed_out_after_grace(rc):
    started = time.monotonic()
    task_id = submit(rc, spec("spin", {"seconds": 30}, execution_timeout_ms=1000, max_attempts=1))
    task = rc.wait_state(task_id, timeout_s=15)
    elapsed = time.monotonic() - started

    assert task.state == S.TASK_STATE_FAILED, task
    [attempt] = task.attempts
    assert attempt.outcome == S.ATTEMPT_OUTCOME_TIMED_OUT, attempt
    assert elapsed < 1.0 + GRACE_S + 3, f"spin(30 s) with a 1 s timeout ended after {elapsed:.1f} s"
    assert ms(attempt.ended_at) - ms(attempt.started_at) >= 1000 - 50
    # The abandoned thread is still spinning; the actor must keep serving (and heartbeating).
    assert_actor_still_serves(rc)


# ---- a cancel requested while the actor is cut off ---------------------------------------------

class TcpProxy:
    """A loopback TCP forwarder whose link can be cut (both directions closed) and restored.

    Real sockets: the actor's gRPC stream really breaks, the coordinator really sees it go.
    While cut, new connections are accepted and closed at once (the actor keeps retrying).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"
        self.enabled = True
        self.closed = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.enabled or self.closed:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.enabled = False
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def restore(self) -> None:
        self.enabled = True

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut()
        for t in self._threads:
            t.join(timeout=5)


@pytest.fixture
def proxy_cluster(make_cluster):
    cluster = make_cluster(lease_ttl_s=5.0)  # long enough that the lease outlives the cut
    cluster.start_coordinator()
    proxy = TcpProxy(cluster.port)
    yield cluster, proxy
    proxy.close()


def test_cancel_requested_while_actor_is_disconnected_is_delivered_when_it_reconnects(proxy_cluster):
    cluster, proxy = proxy_cluster
    cluster.start_actor("cut-actor", slots=1, extra=("--coordinator", proxy.target, "--grace-s", "0.5"))
    task_id = submit(cluster, spec("sleep", {"seconds": 30}))
    cluster.wait_state(task_id, (S.TASK_STATE_RUNNING,), timeout_s=10)

    proxy.cut()
    wait_for(lambda: "cut-actor" not in cluster.connected_actor_ids(), 5, "the coordinator to see the actor go")
    reply = cancel(cluster, task_id, reason="canceled while cut off")
    assert reply.state == S.TASK_STATE_RUNNING and reply.cancel_requested, reply  # the lease is still live
    proxy.restore()
    wait_for(lambda: "cut-actor" in cluster.connected_actor_ids(), 5, "the actor to reconnect")

    task = cluster.wait_state(task_id, timeout_s=10)  # the sleep honours cancellation; grace is 0.5 s
    assert task.state == S.TASK_STATE_CANCELED, task
    [attempt] = task.attempts
    if attempt.outcome == S.ATTEMPT_OUTCOME_LOST:
        # Rare (seen ~1 in 20 under load): the actor's first stream through the proxy broke just
        # after the grant, so the lease never reached it (lost when the actor reconnected without
        # it); the pending cancel decides how the task ends (CANCELED, error kind "canceled", on
        # the attempt too), not re-run.
        assert (attempt.error.kind, attempt.error.message) == ("canceled", "canceled while cut off"), task
    else:
        assert attempt.outcome == S.ATTEMPT_OUTCOME_CANCELED, attempt  # stopped by the cancel
