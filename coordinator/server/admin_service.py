"""AdminService servicer: cluster status and actors, answered by the dispatch loop."""
from __future__ import annotations

from corral.v1 import admin_service_pb2, admin_service_pb2_grpc

from ..core.errors import CorralError
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
