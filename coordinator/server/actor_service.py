"""ActorService servicer: one bidirectional stream per actor process.

Owns: the stream protocol's shape (hello first, exactly once), identity validation, and the
pumping of messages between the stream and the dispatch loop. A malformed stream is closed with a
status naming the problem; other actors are unaffected. All decisions (fencing, grants, adoption)
are the loop's.
"""
from __future__ import annotations

import asyncio
import logging

import grpc

from corral.v1 import actor_service_pb2_grpc

from ..core.errors import CorralError, InvalidField
from ..core.spec import TYPE_RE, SpecLimits, normalize_spec
from ..dispatch import commands as C
from ..dispatch.actor_link import ActorLink, LinkClosed
from ..dispatch.loop import DispatchLoop
from .status import status_of
from .tls import identity_problem

log = logging.getLogger("corral.actors")

HELLO_TIMEOUT_S = 30.0
MAX_SLOTS = 10_000
MAX_ID_CHARS = 128


def validate_identity(identity) -> None:
    if not identity.actor_id:
        raise InvalidField("hello.identity.actor_id", "is required")
    if len(identity.actor_id) > MAX_ID_CHARS:
        raise InvalidField("hello.identity.actor_id", f"must be at most {MAX_ID_CHARS} characters")
    if not identity.incarnation:
        raise InvalidField("hello.identity.incarnation", "is required")
    if len(identity.incarnation) > MAX_ID_CHARS:
        raise InvalidField("hello.identity.incarnation", f"must be at most {MAX_ID_CHARS} characters")
    if identity.slots < 1 or identity.slots > MAX_SLOTS:
        raise InvalidField("hello.identity.slots", f"must be between 1 and {MAX_SLOTS}, got {identity.slots}")
    if not identity.task_types:
        raise InvalidField("hello.identity.task_types", "must name at least one task type")
    for i, t in enumerate(identity.task_types):
        if not TYPE_RE.fullmatch(t):
            raise InvalidField(f"hello.identity.task_types[{i}]", "must be 1-128 characters of [A-Za-z0-9._:/-]")


def validate_child_submissions(request, limits: SpecLimits, now_ms: int) -> dict[int, CorralError] | None:
    """Check the child task specs of a stream message (filling their defaults, like SubmitTask).
    Refused ones are answered by the loop (ChildSubmitted with the status); others go on."""
    rejected: dict[int, CorralError] = {}
    for i, submission in enumerate(request.child_submissions):
        try:
            normalize_spec(submission.task, f"child_submissions[{i}].task", limits, now_ms, child=True)
        except InvalidField as exc:
            rejected[i] = exc
    return rejected or None


class ActorService(actor_service_pb2_grpc.ActorServiceServicer):
    def __init__(self, loop: DispatchLoop, check_cert_identity: bool = False,
                 limits: SpecLimits | None = None) -> None:
        self.loop = loop
        self.limits = limits if limits is not None else SpecLimits()
        # Mutual TLS: the hello's actor_id must be a name of the client certificate (server/tls.py).
        self.check_cert_identity = check_cert_identity

    async def Connect(self, request_iterator, context):
        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT_S)
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no hello within {HELLO_TIMEOUT_S:.0f} s")
            return
        if first is grpc.aio.EOF:
            return
        if not first.HasField("hello"):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "hello: the first message on the stream must introduce the actor")
            return
        link = ActorLink(peer=context.peer())
        try:
            validate_identity(first.hello.identity)
            if self.check_cert_identity:
                problem = identity_problem(context.auth_context(), first.hello.identity.actor_id)
                if problem:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)
                    return
            actor = await self.loop.call(lambda f: C.ActorHello(link, first.hello, f))
        except CorralError as exc:
            await context.abort(status_of(exc), str(exc))
            return
        except asyncio.CancelledError:
            # The RPC ended while the hello was queued: if the loop registers it anyway, this
            # (processed after it) unregisters it, so no actor is left that nobody reads.
            self.loop.post(C.ActorGone(link))
            raise
        identity = actor.identity
        log.info("actor %s (incarnation %s) connected from %s: slots=%d types=%s", identity.actor_id,
                 identity.incarnation, link.peer, identity.slots, list(identity.task_types))
        if (first.heartbeats or first.results or first.draining or first.child_submissions
                or first.child_waits):
            self._post_update(link, first)  # the hello's message may say more, like any other
        reader = asyncio.create_task(self._read(link, context))
        try:
            while True:
                message = await link.queue.get()
                if type(message) is LinkClosed:
                    if message.code is not None:
                        await context.abort(message.code, message.details)
                    return
                await context.write(message)
        finally:
            reader.cancel()
            self.loop.post(C.ActorGone(link))
            log.info("actor %s (incarnation %s) disconnected", identity.actor_id, identity.incarnation)

    def _post_update(self, link: ActorLink, request) -> None:
        """Everything but the hello goes to the loop this way: child specs are validated here."""
        rejected = (validate_child_submissions(request, self.limits, self.loop.now_ms())
                    if request.child_submissions else None)
        self.loop.post(C.ActorUpdate(link, request, rejected))

    async def _read(self, link: ActorLink, context) -> None:
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    link.close(None, "")
                    return
                if request.HasField("hello"):
                    link.close(grpc.StatusCode.FAILED_PRECONDITION, "hello: sent twice on one stream")
                    return
                if self.loop.inbox_full:
                    await self.loop.wait_for_room()
                self._post_update(link, request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stream broke; the writer ends it
            link.close(None, f"read failed: {exc!r}")
