"""ActorLink: the dispatch loop's handle on one actor's stream.

Owns: the bounded queue of outgoing ConnectResponse messages for one stream. The loop puts at
most one message per step per actor (leases, acks and cancels batched together); the stream's
writer drains it. A reader that cannot keep up is closed rather than letting the queue grow.
"""
from __future__ import annotations

import asyncio

import grpc

from corral.v1 import actor_service_pb2

MAX_QUEUED_MESSAGES = 1024


class LinkClosed:
    """Queue sentinel: end the stream with this status."""

    __slots__ = ("code", "details")

    def __init__(self, code: grpc.StatusCode | None, details: str) -> None:
        self.code = code
        self.details = details


class ActorLink:
    __slots__ = ("queue", "actor_key", "closed", "peer")

    def __init__(self, peer: str = "") -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.actor_key: tuple[str, str] | None = None
        self.closed = False
        self.peer = peer

    def send(self, message: actor_service_pb2.ConnectResponse) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= MAX_QUEUED_MESSAGES:
            self.close(grpc.StatusCode.RESOURCE_EXHAUSTED, "actor is not reading its stream; closing it")
            return
        self.queue.put_nowait(message)

    def close(self, code: grpc.StatusCode | None, details: str) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(LinkClosed(code, details))
