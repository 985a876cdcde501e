"""AdminService servicer: cluster status and actors, answered by the dispatch loop; Pause, Resume
and Drain (dispatch/operations.py)."""
from __future__ import annotations

from corral.v1 import admin_service_pb2, admin_service_pb2_grpc

from ..core.errors import CorralError, InvalidField
from ..dispatch import commands as C
from ..dispatch.loop import DispatchLoop
from .status import abort


class AdminService(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(self, loop: DispatchLoop) -> None:
        self.loop = loop

    async def GetClusterStatus(self, request, context):
        try:
            return await self.loop.call(lambda f: C.ClusterStatus(f))
        except CorralError as exc:
            await abort(context, exc)

    async def ListActors(self, request, context):
        try:
            status = await self.loop.call(lambda f: C.ClusterStatus(f))
            return admin_service_pb2.ListActorsResponse(actors=status.actors)
        except CorralError as exc:
            await abort(context, exc)

    async def Pause(self, request, context):
        try:
            check_reason(request.reason)
            return await self.loop.call(lambda f: C.PauseDispatch(request.reason, f))
        except CorralError as exc:
            await abort(context, exc)

    async def Resume(self, request, context):
        try:
            check_reason(request.reason)
            return await self.loop.call(lambda f: C.ResumeDispatch(request.reason, f))
        except CorralError as exc:
            await abort(context, exc)

    async def Drain(self, request, context):
        try:
            check_reason(request.reason)
            return await self.loop.call(lambda f: C.DrainDispatch(request.reason, f))
        except CorralError as exc:
            await abort(context, exc)


MAX_REASON_CHARS = 1024


def check_reason(reason: str) -> None:
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidField("reason", f"must be at most {MAX_REASON_CHARS} characters")
