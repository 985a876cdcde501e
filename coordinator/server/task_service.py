"""TaskService servicer: a thin adapter from gRPC to dispatch-loop commands.

Owns: request validation (shape, sizes, enum values; errors name the field) and the mapping of
replies to responses. It never touches state: every request becomes a command that the loop
answers after its WAL batch is durable.
"""
from __future__ import annotations

import asyncio
import base64

import grpc

from corral.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

from ..core.errors import CorralError, InvalidField
from ..core.events import EventFilter
from ..core.graph import MAX_PREREQUISITES
from ..core.spec import TASK_ID_RE, SpecLimits, normalize_spec
from ..core.states import State
from ..dispatch import commands as C
from ..dispatch.event_hub import StreamEnd, Subscriber
from ..dispatch.loop import DispatchLoop
from ..telemetry.tracing import SubmissionTracing
from .schedule_rpcs import ScheduleRpcs, require_schedule_id
from .status import abort

MAX_TASKS_PER_BATCH = 10_000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
MAX_TASK_ID_CHARS = 128
VALID_STATES = frozenset(int(s) for s in State)


def require_task_id(task_id: str) -> None:
    if not task_id:
        raise InvalidField("task_id", "is required")
    if len(task_id) > MAX_TASK_ID_CHARS:
        raise InvalidField("task_id", f"must be at most {MAX_TASK_ID_CHARS} characters")


def encode_page_token(ordinal: int) -> str:
    return base64.urlsafe_b64encode(f"o:{ordinal}".encode()).decode() if ordinal else ""


def decode_page_token(token: str) -> int:
    """The ordinal in a token `encode_page_token` made (exactly: nothing else decodes). Whether the
    ordinal belongs to this store's history is checked by the dispatch loop (DispatchLoop._on_list)."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        ordinal = int(text[2:]) if text.startswith("o:") and text[2:].isdigit() else 0
        if ordinal <= 0 or encode_page_token(ordinal) != token:
            raise ValueError
        return ordinal
    except (ValueError, UnicodeError):
        raise InvalidField("page_token", "is not a token returned by ListTasks") from None


class TaskService(ScheduleRpcs, task_service_pb2_grpc.TaskServiceServicer):
    """TaskService; the schedule RPCs come from ScheduleRpcs (server/schedule_rpcs.py)."""

    def __init__(self, loop: DispatchLoop, limits: SpecLimits, tracing: SubmissionTracing | None = None) -> None:
        self.loop = loop
        self.limits = limits
        self.tracing = tracing or SubmissionTracing(None)

    async def _submit(self, specs: list[task_pb2.TaskSpec], fields: list[str], context=None, method: str = ""):
        now_ms = self.loop.now_ms()
        for spec, field in zip(specs, fields):
            normalize_spec(spec, field, self.limits, now_ms)
        # The submission span (when tracing) and each task's trace context: see telemetry/tracing.py.
        return await self.tracing.submit(method, context, specs,
                                         lambda: self.loop.call(lambda f: C.SubmitTasks(specs, fields, f)))

    async def SubmitTask(self, request, context):
        try:
            if not request.HasField("task"):
                raise InvalidField("task", "is required")
            [(task_id, created, state)] = await self._submit([request.task], ["task"], context, "SubmitTask")
            return task_service_pb2.SubmitTaskResponse(task_id=task_id, created=created, state=state)
        except CorralError as exc:
            await abort(context, exc)

    async def SubmitTasks(self, request, context):
        try:
            n = len(request.tasks)
            if n == 0:
                raise InvalidField("tasks", "must hold at least one task")
            if n > MAX_TASKS_PER_BATCH:
                raise InvalidField("tasks", f"holds {n} tasks, more than the limit of {MAX_TASKS_PER_BATCH} per call")
            specs = list(request.tasks)
            results = await self._submit(specs, [f"tasks[{i}]" for i in range(n)], context, "SubmitTasks")
            resp = task_service_pb2.SubmitTasksResponse()
            add = resp.results.add
            for task_id, created, state in results:
                add(task_id=task_id, created=created, state=state)
            return resp
        except CorralError as exc:
            await abort(context, exc)

    async def GetTask(self, request, context):
        try:
            require_task_id(request.task_id)
            view = await self.loop.call(lambda f: C.GetTask(request.task_id, f))
            return task_service_pb2.GetTaskResponse(task=view)
        except CorralError as exc:
            await abort(context, exc)

    async def ListTasks(self, request, context):
        try:
            for i, state in enumerate(request.states):
                if state not in VALID_STATES:
                    raise InvalidField(f"states[{i}]", f"unknown state {state}")
            if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
                raise InvalidField("page_size", f"must be between 0 and {MAX_PAGE_SIZE}, got {request.page_size}")
            if request.parent_task_id and not TASK_ID_RE.fullmatch(request.parent_task_id):
                raise InvalidField("parent_task_id", "must be a task id (1-128 characters of [A-Za-z0-9._:-])")
            if request.schedule_id:
                require_schedule_id(request.schedule_id)
            after = decode_page_token(request.page_token)
            size = request.page_size or DEFAULT_PAGE_SIZE
            views, last = await self.loop.call(lambda f: C.ListTasks(request, after, size, f))
            return task_service_pb2.ListTasksResponse(tasks=views, next_page_token=encode_page_token(last))
        except CorralError as exc:
            await abort(context, exc)

    async def CancelTask(self, request, context):
        try:
            require_task_id(request.task_id)
            if len(request.reason) > 1024:
                raise InvalidField("reason", "must be at most 1024 characters")
            view = await self.loop.call(lambda f: C.CancelTask(request.task_id, request.reason, f))
            return task_service_pb2.CancelTaskResponse(task=view)
        except CorralError as exc:
            await abort(context, exc)

    async def DeclareDependency(self, request, context):
        try:
            require_task_id(request.task_id)
            depends_on = list(request.depends_on)
            if not depends_on:
                raise InvalidField("depends_on", "must name at least one task")
            if len(depends_on) > MAX_PREREQUISITES:
                raise InvalidField("depends_on", f"at most {MAX_PREREQUISITES} prerequisites, got {len(depends_on)}")
            for j, prerequisite_id in enumerate(depends_on):
                if not TASK_ID_RE.fullmatch(prerequisite_id):
                    raise InvalidField(f"depends_on[{j}]", "must be a task id (1-128 characters of [A-Za-z0-9._:-])")
            view = await self.loop.call(lambda f: C.DeclareDependency(request.task_id, depends_on, f))
            return task_service_pb2.DeclareDependencyResponse(task=view)
        except CorralError as exc:
            await abort(context, exc)

    async def WatchTask(self, request, context):
        queue: asyncio.Queue = asyncio.Queue()
        try:
            require_task_id(request.task_id)
            view = await self.loop.call(lambda f: C.WatchTask(request.task_id, queue, f))
        except CorralError as exc:
            await abort(context, exc)
            return
        except asyncio.CancelledError:
            self.loop.post(C.UnwatchTask(request.task_id, queue))  # the loop may register it anyway
            raise
        try:
            await context.write(task_service_pb2.WatchTaskResponse(task=view))
            while view.state not in (State.SUCCEEDED, State.FAILED, State.CANCELED):
                view = await queue.get()
                if view is None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "coordinator is shutting down; watch again")
                await context.write(task_service_pb2.WatchTaskResponse(task=view))
        finally:
            self.loop.post(C.UnwatchTask(request.task_id, queue))

    async def WatchEvents(self, request, context):
        try:
            subscriber = Subscriber(EventFilter.from_request(request), peer=context.peer())
            last_seq = await self.loop.call(lambda f: C.WatchEvents(subscriber, f))
        except CorralError as exc:
            await abort(context, exc)
            return
        except asyncio.CancelledError:
            self.loop.post(C.UnwatchEvents(subscriber))  # the loop may register it anyway
            raise
        write = closed = None
        try:
            # Subscribed: every event with a seq above this one follows (clients may wait for it).
            await context.send_initial_metadata((("corral-wal-seq", str(last_seq)),))
            queue = subscriber.queue
            closing = subscriber.closing
            while True:
                item = await queue.get()
                if type(item) is StreamEnd:  # dropped (fell behind) or shutting down
                    # Not `await context.abort(...)`: behind a write the client never reads, that
                    # waits as long as the write would. Returning ends this handler (and frees its
                    # stream slot) now; gRPC sends the status when the transport lets it.
                    context.set_code(item.code)
                    context.set_details(item.details)
                    return
                subscriber.take(item)
                if closing.is_set():
                    continue  # ended meanwhile: its StreamEnd comes next
                # A client that stops reading blocks this write (flow control) for good: once the
                # hub ends the subscriber, stop waiting and end the stream with the hub's status.
                write = asyncio.ensure_future(context.write(item))
                if closed is None:
                    closed = asyncio.ensure_future(closing.wait())
                await asyncio.wait((write, closed), return_when=asyncio.FIRST_COMPLETED)
                if write.done():
                    write.result()  # raises what the write raised
                else:
                    write.cancel()  # the subscriber's StreamEnd is next on the queue
        finally:
            for waiting in (write, closed):
                if waiting is not None and not waiting.done():
                    waiting.cancel()
            self.loop.post(C.UnwatchEvents(subscriber))
