"""Per-client limits enforced at the edge of the server.

Owns: the count of open watch streams (WatchTask, WatchEvents) per client address and the
server interceptor that refuses one more than `max_streams_per_peer` with RESOURCE_EXHAUSTED.
The limit is per address (the peer's IP, without its port), so a client cannot escape it by
opening more connections.
"""
from __future__ import annotations

import inspect
from collections import Counter
from typing import Any, Awaitable, Callable

import grpc

LIMITED_METHODS = frozenset({
    "/corral.v1.TaskService/WatchTask",
    "/corral.v1.TaskService/WatchEvents",
})


def peer_address(peer: str) -> str:
    """'ipv4:10.0.0.1:5000' -> 'ipv4:10.0.0.1'; 'ipv6:[::1]:5000' -> 'ipv6:[::1]'; others unchanged."""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, sep, port = peer.rpartition(":")
        if sep and port.isdigit() and host not in ("ipv4", "ipv6"):
            return host
    return peer


class StreamLimitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, max_per_peer: int) -> None:
        self.max_per_peer = max_per_peer
        self.open: Counter[str] = Counter()

    def _acquire(self, context) -> str | None:
        address = peer_address(context.peer())
        if self.open[address] >= self.max_per_peer:
            return None
        self.open[address] += 1
        return address

    def _release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]

    async def _refuse(self, context) -> None:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"this client already has {self.max_per_peer} watch streams open "
                            f"(--max-streams-per-peer); close one first")

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method not in LIMITED_METHODS or not handler.response_streaming:
            return handler
        inner = handler.unary_stream
        if inner is None:
            return handler
        limiter = self

        if inspect.isasyncgenfunction(inner):
            async def limited(request, context):
                address = limiter._acquire(context)
                if address is None:
                    await limiter._refuse(context)
                    return
                try:
                    async for item in inner(request, context):
                        yield item
                finally:
                    limiter._release(address)
        else:
            async def limited(request, context):  # type: ignore[misc]
                address = limiter._acquire(context)
                if address is None:
                    await limiter._refuse(context)
                    return None
                try:
                    return await inner(request, context)
                finally:
                    limiter._release(address)

        return grpc.unary_stream_rpc_method_handler(limited, request_deserializer=handler.request_deserializer,
                                                    response_serializer=handler.response_serializer)
