"""A hand-driven actor for end-to-end tests: speaks the raw ActorService protocol over real gRPC.

Owns: one bidirectional `Connect` stream. Requests come from a queue (the test decides exactly
what is sent and when: a hello, heartbeats, results — or nothing at all, to let a lease expire);
responses are collected by a reader thread and waited on with bounded deadlines (a condition
variable, never a sleep).

    raw = RawActor(cluster.target, "stale", task_types=["fence-probe"])
    raw.welcome()
    lease = raw.lease(task_id, attempt=1)
    raw.report(lease.ref, task_pb2.ATTEMPT_OUTCOME_SUCCEEDED, output={"x": 1})
    ack = raw.ack_for(lease.ref)
"""
from __future__ import annotations

import queue
import threading
import time
import uuid
from typing import Any, Callable, Iterable, TypeVar

import grpc
from google.protobuf import json_format

from corral.v1 import actor_service_pb2, actor_service_pb2_grpc, task_pb2

T = TypeVar("T")
LeaseRef = actor_service_pb2.LeaseRef


def same_ref(a: LeaseRef, b: LeaseRef) -> bool:
    return (a.task_id, a.attempt, a.fencing_token) == (b.task_id, b.attempt, b.fencing_token)


class RawActor:
    def __init__(self, target: str, actor_id: str, *, task_types: Iterable[str] = ("fence-probe",), slots: int = 1,
                 incarnation: str | None = None, held_leases: Iterable[LeaseRef] = (),
                 stream_timeout_s: float = 120.0, channel: grpc.Channel | None = None,
                 with_hello: actor_service_pb2.ConnectRequest | None = None) -> None:
        self.actor_id = actor_id
        self.incarnation = incarnation or uuid.uuid4().hex
        self.identity = task_pb2.ExecutorIdentity(actor_id=actor_id, incarnation=self.incarnation,
                                                  task_types=list(task_types), slots=slots, host="raw-test")
        self.responses: list[actor_service_pb2.ConnectResponse] = []
        self.error: grpc.RpcError | None = None
        self.ended = False
        self._cond = threading.Condition()
        self._outbox: queue.Queue = queue.Queue()
        first = actor_service_pb2.ConnectRequest(
            hello=actor_service_pb2.Hello(identity=self.identity, held_leases=list(held_leases)))
        if with_hello is not None:  # more fields in the first message (heartbeats, results, ...)
            first.MergeFrom(with_hello)
        self._outbox.put(first)
        # `channel`: e.g. TLS with a token (tests/e2e/test_security.py); closed with the actor.
        self._channel = channel if channel is not None else grpc.insecure_channel(target)
        self._call = actor_service_pb2_grpc.ActorServiceStub(self._channel).Connect(
            self._requests(), timeout=stream_timeout_s)
        self._reader = threading.Thread(target=self._read, name=f"raw-actor-{actor_id}", daemon=True)
        self._reader.start()

    # ---- the stream --------------------------------------------------------------------------

    def _requests(self):
        while True:
            item = self._outbox.get()
            if item is None:
                return
            yield item

    def _read(self) -> None:
        try:
            for message in self._call:
                with self._cond:
                    self.responses.append(message)
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            with self._cond:
                self.error = exc
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def send(self, request: actor_service_pb2.ConnectRequest) -> None:
        self._outbox.put(request)

    def close(self) -> None:
        """Half-close the stream, then cancel it and close the channel."""
        self._outbox.put(None)
        self._call.cancel()
        self._reader.join(timeout=10)
        self._channel.close()

    def __enter__(self) -> "RawActor":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ---- waiting for responses ---------------------------------------------------------------

    def wait(self, find: Callable[[list[actor_service_pb2.ConnectResponse]], T | None], what: str,
             timeout_s: float = 15.0) -> T:
        """Until `find(responses so far)` returns something other than None; fail after the deadline
        or as soon as the stream has ended without it."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = find(self.responses)
                if found is not None:
                    return found
                if self.ended:
                    detail = f"{self.error.code().name}: {self.error.details()}" if self.error else "EOF"
                    raise AssertionError(f"raw actor {self.actor_id}: stream ended ({detail}) before {what}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"raw actor {self.actor_id}: timed out after {timeout_s} s waiting for {what}")
                self._cond.wait(remaining)

    def wait_ended(self, timeout_s: float = 15.0) -> grpc.RpcError | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self.ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"raw actor {self.actor_id}: stream still open after {timeout_s} s")
                self._cond.wait(remaining)
            return self.error

    def wait_answered(self, timeout_s: float = 15.0) -> bool:
        """Until the coordinator has answered the hello (a first response) or ended the stream;
        True if there is a response."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self.responses and not self.ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"raw actor {self.actor_id}: no answer to the hello after {timeout_s} s")
                self._cond.wait(remaining)
            return bool(self.responses)

    def welcome(self, timeout_s: float = 15.0) -> actor_service_pb2.Welcome:
        return self.wait(lambda rs: next((r.welcome for r in rs if r.HasField("welcome")), None),
                         "the welcome", timeout_s)

    def lease(self, task_id: str, attempt: int | None = None, timeout_s: float = 15.0) -> actor_service_pb2.Lease:
        def find(rs):
            for r in rs:
                for lease in r.leases:
                    if lease.ref.task_id == task_id and (attempt is None or lease.ref.attempt == attempt):
                        return lease
            return None
        return self.wait(find, f"a lease on task {task_id} attempt {attempt}", timeout_s)

    def leases(self) -> list[actor_service_pb2.Lease]:
        with self._cond:
            return [lease for r in self.responses for lease in r.leases]

    def ack_for(self, ref: LeaseRef, timeout_s: float = 15.0) -> actor_service_pb2.ResultAck:
        def find(rs):
            return next((a for r in rs for a in r.acks if same_ref(a.lease, ref)), None)
        return self.wait(find, f"an ack for {ref.task_id}/{ref.attempt}/{ref.fencing_token}", timeout_s)

    def cancels_for(self, ref: LeaseRef) -> list[actor_service_pb2.CancelAttempt]:
        with self._cond:
            return [c for r in self.responses for c in r.cancels if same_ref(c.lease, ref)]

    def cancel_for(self, ref: LeaseRef, *, after: int = 0, timeout_s: float = 15.0) -> actor_service_pb2.CancelAttempt:
        """The (after+1)-th CancelAttempt received for `ref`."""
        def find(rs):
            found = [c for r in rs for c in r.cancels if same_ref(c.lease, ref)]
            return found[after] if len(found) > after else None
        return self.wait(find, f"cancel #{after + 1} for {ref.task_id}/{ref.attempt}/{ref.fencing_token}", timeout_s)

    # ---- sending -----------------------------------------------------------------------------

    def heartbeat(self, *refs: LeaseRef) -> None:
        self.send(actor_service_pb2.ConnectRequest(heartbeats=list(refs)))

    def report(self, ref: LeaseRef, outcome: int, *, output: Any = None,
               error: task_pb2.TaskError | None = None) -> None:
        self.send(actor_service_pb2.ConnectRequest(results=[result(ref, outcome, output=output, error=error)]))


def result(ref: LeaseRef, outcome: int, *, output: Any = None,
           error: task_pb2.TaskError | None = None) -> actor_service_pb2.AttemptResult:
    msg = actor_service_pb2.AttemptResult(outcome=outcome)
    msg.lease.CopyFrom(ref)
    if output is not None:
        json_format.ParseDict(output, msg.output)
    if error is not None:
        msg.error.CopyFrom(error)
    return msg
