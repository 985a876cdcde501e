"""Commands: what the gRPC servicers hand to the dispatch loop.

Owns: the loop's input vocabulary. A command is validated by its servicer before it is
submitted (shape, sizes, enum values); the loop checks it against the state (existence,
duplicates, fencing) and resolves its `reply` future only after the step's WAL batch is durable.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from corral.v1 import actor_service_pb2, task_pb2, task_service_pb2


@dataclass(slots=True)
class SubmitTasks:
    specs: list[task_pb2.TaskSpec]
    # Field path per spec for error messages ("task" or "tasks[3]").
    fields: list[str]
    reply: asyncio.Future


@dataclass(slots=True)
class GetTask:
    task_id: str
    reply: asyncio.Future


@dataclass(slots=True)
class ListTasks:
    request: task_service_pb2.ListTasksRequest
    after_ordinal: int
    page_size: int
    reply: asyncio.Future


@dataclass(slots=True)
class CancelTask:
    task_id: str
    reason: str
    reply: asyncio.Future


@dataclass(slots=True)
class DeclareDependency:
    task_id: str
    depends_on: list[str]
    reply: asyncio.Future


@dataclass(slots=True)
class WatchTask:
    task_id: str
    queue: asyncio.Queue
    reply: asyncio.Future


@dataclass(slots=True)
class UnwatchTask:
    task_id: str
    queue: asyncio.Queue


@dataclass(slots=True)
class ActorHello:
    link: Any  # ActorLink
    hello: actor_service_pb2.Hello
    reply: asyncio.Future


@dataclass(slots=True)
class ActorUpdate:
    link: Any
    request: actor_service_pb2.ConnectRequest
    # Child submissions the servicer refused (index in request.child_submissions -> CorralError).
    rejected: dict | None = None


@dataclass(slots=True)
class ActorGone:
    link: Any


@dataclass(slots=True)
class ClusterStatus:
    reply: asyncio.Future
    extra: dict = field(default_factory=dict)


# ---- operations on the loop (dispatch/operations.py) --------------------------------------------

@dataclass(slots=True)
class PauseDispatch:
    reason: str
    reply: asyncio.Future


@dataclass(slots=True)
class ResumeDispatch:
    reason: str
    reply: asyncio.Future


@dataclass(slots=True)
class DrainDispatch:
    reason: str
    reply: asyncio.Future


@dataclass(slots=True)
class WatchEvents:
    subscriber: Any  # event_hub.Subscriber
    reply: asyncio.Future


@dataclass(slots=True)
class UnwatchEvents:
    subscriber: Any
