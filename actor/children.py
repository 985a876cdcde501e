"""Child tasks from inside a handler: submit them and wait for their outcomes.

Owns the actor's side of child tasks: ``ChildHandle`` and ``ChildFailed`` (what handlers see),
``build_child_spec`` (handler arguments -> TaskSpec), and ``ChildChannel`` (the session's queue of
child submissions and waits, matched with the coordinator's answers).

Invariants:
- Every submission and wait names the parent attempt's lease (task, attempt, fencing token); the
  coordinator refuses those of a stale attempt, so a superseded attempt cannot spawn children.
- A submission is idempotent (the child key names the child under its parent), so after a
  reconnect every unanswered submission, and every outstanding wait, is sent again.
- A request carries a bounded batch (by count, and submissions by bytes); the rest follow in the
  next messages.
- All state is touched on the session's event loop only; handlers on pool threads reach it through
  ``run_coroutine_threadsafe``. When an attempt ends, its unanswered futures are canceled.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Mapping

from corral.v1 import actor_service_pb2, task_pb2

from .payload import python_to_value, value_to_python

LeaseKey = tuple[str, int, int]
# Bounded batches per stream message, like results: at most this many submissions (and waits),
# and submissions of at most this many bytes (at least one per message; each child's input is
# bounded by the coordinator's --max-input-bytes, 1 MiB by default), so a message stays far below
# the 64 MiB gRPC limit whatever else it carries.
MAX_CHILD_MESSAGES_PER_REQUEST = 256
MAX_CHILD_BYTES_PER_REQUEST = 1024 * 1024

_TERMINAL_NAMES = {task_pb2.TASK_STATE_SUCCEEDED: "SUCCEEDED", task_pb2.TASK_STATE_FAILED: "FAILED",
                   task_pb2.TASK_STATE_CANCELED: "CANCELED"}


class ChildRefused(Exception):
    """The coordinator refused a child submission (stale attempt, depth bound, bad spec...)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ChildFailed(Exception):
    """A child the handler waited for ended FAILED or CANCELED (or the wait was refused)."""

    def __init__(self, task_id: str, state: int, kind: str, message: str) -> None:
        super().__init__(f"child {task_id} ended {_TERMINAL_NAMES.get(state, 'without an outcome')}: {message}")
        self.task_id = task_id
        self.state = state
        self.kind = kind
        self.error_message = message


@dataclass(frozen=True, slots=True)
class ChildHandle:
    """A submitted child: pass it (or its task_id) to ``ctx.wait_child``."""

    task_id: str
    key: str
    # False: the parent already had a child with this key (e.g. submitted by an earlier attempt).
    created: bool
    state: int


def build_child_spec(task_type: str, input: Any, *, key: str, detached: bool = False,
                     allow_failure: bool = False, priority: int = 0,
                     labels: Mapping[str, str] | None = None, execution_timeout_s: float | None = None,
                     max_attempts: int | None = None, depends_on: tuple[str, ...] | list[str] = (),
                     spec: task_pb2.TaskSpec | None = None) -> task_pb2.TaskSpec:
    """The TaskSpec of a child. ``input``: JSON-like Python or bytes; ``spec``: a template for
    anything not covered by the arguments (its child fields are overwritten)."""
    out = task_pb2.TaskSpec()
    if spec is not None:
        out.CopyFrom(spec)
    out.type = task_type
    out.child_key = key
    out.detached = detached
    out.allow_failure = allow_failure
    if priority:
        out.priority = priority
    if labels:
        out.labels.update(labels)
    if execution_timeout_s is not None:
        out.execution_timeout.FromMilliseconds(int(execution_timeout_s * 1000))
    if max_attempts is not None:
        out.retry.max_attempts = max_attempts
    if depends_on:
        out.depends_on.extend(depends_on)
    if input is not None:
        if isinstance(input, (bytes, bytearray, memoryview)):
            out.input_bytes = bytes(input)
        else:
            out.input.CopyFrom(python_to_value(input))
    return out


def outcome_value(outcome: actor_service_pb2.ChildOutcome) -> Any:
    """A child's output (SUCCEEDED), or raises ChildFailed."""
    if outcome.state == task_pb2.TASK_STATE_SUCCEEDED:
        which = outcome.WhichOneof("result")
        if which == "output":
            return value_to_python(outcome.output)
        if which == "output_bytes":
            return bytes(outcome.output_bytes)
        return None
    raise ChildFailed(outcome.task_id, outcome.state, outcome.error.kind, outcome.error.message)


def _lease_key(ref: actor_service_pb2.LeaseRef) -> LeaseKey:
    return (ref.task_id, ref.attempt, ref.fencing_token)


class ChildChannel:
    """The session's queue of child submissions and waits (one per session, on its loop)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._next_request_id = 0
        # request id -> (submission, future of ChildSubmitted)
        self._submissions: dict[int, tuple[actor_service_pb2.ChildSubmission, asyncio.Future]] = {}
        # (parent attempt's lease key, child task id) -> (parent ref, futures of ChildOutcome):
        # an outcome answers the attempt that asked (outcome.parent), never another one.
        self._waits: dict[tuple[LeaseKey, str], tuple[actor_service_pb2.LeaseRef, list[asyncio.Future]]] = {}
        self._out_submissions: list[actor_service_pb2.ChildSubmission] = []
        self._out_waits: list[tuple[actor_service_pb2.LeaseRef, str]] = []
        self.wake: Any = None  # set by the session: called when something is queued to send

    # -- handler side (on the loop) ------------------------------------------------------------

    def submit(self, parent: actor_service_pb2.LeaseRef, spec: task_pb2.TaskSpec) -> asyncio.Future:
        self._next_request_id += 1
        submission = actor_service_pb2.ChildSubmission(parent=parent, request_id=self._next_request_id, task=spec)
        future = asyncio.get_running_loop().create_future()
        self._submissions[submission.request_id] = (submission, future)
        self._out_submissions.append(submission)
        self._wake()
        return future

    def wait(self, parent: actor_service_pb2.LeaseRef, task_id: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        key = (_lease_key(parent), task_id)
        entry = self._waits.get(key)
        if entry is None:
            self._waits[key] = (parent, [future])
            self._out_waits.append((parent, task_id))
            self._wake()
        else:
            entry[1].append(future)
        return future

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()

    # -- session side --------------------------------------------------------------------------

    @property
    def has_outgoing(self) -> bool:
        return bool(self._out_submissions or self._out_waits)

    @property
    def active(self) -> bool:
        return bool(self._submissions or self._waits)

    def fill(self, request: actor_service_pb2.ConnectRequest) -> None:
        """Move queued submissions and waits into `request` (bounded)."""
        n = MAX_CHILD_MESSAGES_PER_REQUEST
        if self._out_submissions:
            pending = self._out_submissions
            size = 0
            k = 0
            for submission in pending[:n]:
                size += submission.ByteSize()
                if k and size > MAX_CHILD_BYTES_PER_REQUEST:
                    break
                k += 1
            batch, self._out_submissions = pending[:k], pending[k:]
            request.child_submissions.extend(batch)
        if self._out_waits:
            batch_w, self._out_waits = self._out_waits[:n], self._out_waits[n:]
            for parent, task_id in batch_w:
                request.child_waits.add(parent=parent, task_ids=[task_id])

    def on_connected(self) -> None:
        """A new stream: send everything unanswered again (safe: submissions are idempotent)."""
        self._out_submissions = [s for s, _ in self._submissions.values()]
        self._out_waits = [(parent, task_id) for (_, task_id), (parent, _) in self._waits.items()]

    def on_submitted(self, answer: actor_service_pb2.ChildSubmitted) -> None:
        entry = self._submissions.pop(answer.request_id, None)
        if entry is not None and not entry[1].done():
            entry[1].set_result(answer)

    def on_outcome(self, outcome: actor_service_pb2.ChildOutcome) -> None:
        entry = self._waits.pop((_lease_key(outcome.parent), outcome.task_id), None)
        if entry is None:
            return
        for future in entry[1]:
            if not future.done():
                future.set_result(outcome)

    def forget_attempt(self, key: LeaseKey) -> None:
        """The attempt `key` ended: its unanswered submissions and waits are moot."""
        def of(ref: actor_service_pb2.LeaseRef) -> bool:
            return _lease_key(ref) == key

        for request_id, (submission, future) in list(self._submissions.items()):
            if of(submission.parent):
                del self._submissions[request_id]
                future.cancel()
        for wait_key, (parent, futures) in list(self._waits.items()):
            if wait_key[0] == key:
                del self._waits[wait_key]
                for future in futures:
                    future.cancel()
        self._out_submissions = [s for s in self._out_submissions if not of(s.parent)]
        self._out_waits = [w for w in self._out_waits if not of(w[0])]


class ChildTasks:
    """What ``AttemptContext.submit_child`` / ``wait_child`` use: the channel bound to one
    attempt's lease. Sync methods are for sync handlers (pool threads); ``*_async`` for async ones."""

    __slots__ = ("channel", "parent")

    def __init__(self, channel: ChildChannel, parent: actor_service_pb2.LeaseRef) -> None:
        self.channel = channel
        self.parent = parent

    async def submit_async(self, spec: task_pb2.TaskSpec) -> ChildHandle:
        answer = await self.channel.submit(self.parent, spec)
        if answer.code != 0:
            raise ChildRefused(answer.code, answer.message)
        return ChildHandle(answer.task_id, spec.child_key, answer.created, answer.state)

    async def wait_async(self, task_id: str) -> Any:
        return outcome_value(await self.channel.wait(self.parent, task_id))

    def _run(self, coro, timeout_s: float | None) -> Any:
        loop = self.channel.loop
        if loop is None:
            coro.close()
            raise RuntimeError("child tasks need a running actor session")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError("in an async handler use `await ctx.submit_child_async(...)` / "
                               "`await ctx.wait_child_async(...)`")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout_s)
