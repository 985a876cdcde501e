"""TaskService's schedule RPCs (Create/Get/List/Pause/Resume/DeleteSchedule): a thin adapter.

Owns: request validation (core/schedules.py `normalize_schedule`; errors name the field) and the
mapping of the loop's replies to responses. A mixin of `TaskService` (so the `submitter` role and
every interceptor cover it like the other TaskService RPCs); it never touches state: each request
becomes a command (dispatch/schedules.py) answered after the step's WAL commit.
"""
from __future__ import annotations

import base64

from corral.v1 import schedule_pb2

from ..core.errors import CorralError, InvalidField
from ..core.schedules import SCHEDULE_ID_RE, normalize_schedule
from ..dispatch import commands as C
from .status import abort

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
MAX_REASON_CHARS = 1024


def require_schedule_id(schedule_id: str) -> None:
    if not schedule_id:
        raise InvalidField("schedule_id", "is required")
    if not SCHEDULE_ID_RE.fullmatch(schedule_id):
        raise InvalidField("schedule_id", "must be 1-100 characters of [A-Za-z0-9._-]")


def encode_page_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(f"s:{last_id}".encode()).decode() if last_id else ""


def decode_page_token(token: str) -> str:
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not text.startswith("s:") or not SCHEDULE_ID_RE.fullmatch(text[2:]):
        raise InvalidField("page_token", "is not a token returned by ListSchedules")
    return text[2:]


class ScheduleRpcs:
    """Mixed into TaskService, which provides `loop` and `limits`."""

    async def CreateSchedule(self, request, context):
        try:
            if not request.HasField("schedule"):
                raise InvalidField("schedule", "is required")
            spec = schedule_pb2.ScheduleSpec()
            spec.CopyFrom(request.schedule)
            normalize_schedule(spec, "schedule", self.limits, self.loop.now_ms())
            schedule, created = await self.loop.call(lambda f: C.CreateSchedule(spec, f))
            return schedule_pb2.CreateScheduleResponse(schedule=schedule, created=created)
        except CorralError as exc:
            await abort(context, exc)

    async def GetSchedule(self, request, context):
        try:
            require_schedule_id(request.schedule_id)
            schedule = await self.loop.call(lambda f: C.GetSchedule(request.schedule_id, f))
            return schedule_pb2.GetScheduleResponse(schedule=schedule)
        except CorralError as exc:
            await abort(context, exc)

    async def ListSchedules(self, request, context):
        try:
            if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
                raise InvalidField("page_size", f"must be between 0 and {MAX_PAGE_SIZE}, got {request.page_size}")
            after = decode_page_token(request.page_token)
            size = request.page_size or DEFAULT_PAGE_SIZE
            schedules, last = await self.loop.call(lambda f: C.ListSchedules(after, size, f))
            return schedule_pb2.ListSchedulesResponse(schedules=schedules, next_page_token=encode_page_token(last))
        except CorralError as exc:
            await abort(context, exc)

    async def PauseSchedule(self, request, context):
        try:
            require_schedule_id(request.schedule_id)
            if len(request.reason) > MAX_REASON_CHARS:
                raise InvalidField("reason", f"must be at most {MAX_REASON_CHARS} characters")
            schedule = await self.loop.call(lambda f: C.PauseSchedule(request.schedule_id, request.reason, f))
            return schedule_pb2.PauseScheduleResponse(schedule=schedule)
        except CorralError as exc:
            await abort(context, exc)

    async def ResumeSchedule(self, request, context):
        try:
            require_schedule_id(request.schedule_id)
            schedule = await self.loop.call(lambda f: C.ResumeSchedule(request.schedule_id, f))
            return schedule_pb2.ResumeScheduleResponse(schedule=schedule)
        except CorralError as exc:
            await abort(context, exc)

    async def DeleteSchedule(self, request, context):
        try:
            require_schedule_id(request.schedule_id)
            await self.loop.call(lambda f: C.DeleteSchedule(request.schedule_id, f))
            return schedule_pb2.DeleteScheduleResponse()
        except CorralError as exc:
            await abort(context, exc)
