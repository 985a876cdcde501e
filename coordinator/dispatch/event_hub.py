"""WatchEvents subscribers: each step's committed task events, fanned out to bounded queues.

Owns: the set of subscribers, the per-subscriber bound, and dropping a subscriber that falls
behind. Used only by the dispatch loop (registration and publication happen in its steps) and by
the WatchEvents servicer (which reads a subscriber's queue and writes its stream).

Invariants:
- Events are published after the commit of the step that made them (the loop calls `publish`
  after its WAL append), in WAL order, one response per step per subscriber (if anything matched;
  several for a step of more than MAX_EVENTS_PER_RESPONSE events).
- The loop never waits for a subscriber: a queue holds at most `max_queued_events` events; a
  publication that would exceed it drops the subscriber instead (its queued events are discarded
  and its stream ends with RESOURCE_EXHAUSTED as soon as its writer gets to it). `Subscriber.closing`
  is set when a subscriber is ended, so a writer blocked on a client that stopped reading gives up
  its write and ends the stream (freeing its --max-streams-per-peer slot) instead of waiting on it.
- With no subscriber the loop pays one truthiness check per step (`if hub.subscribers`).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Iterable

import grpc

from corral.v1 import task_service_pb2, wal_pb2

from ..core.events import TASK_RECORD_KINDS, EventFilter, event_base, fill_event
from ..core.projection import Projection

log = logging.getLogger("corral.events")

DEFAULT_MAX_QUEUED_EVENTS = 10_000
# An event is at most ~21 KiB (64 labels of 63 + 256 characters): 1,000 stay far below the
# default 64 MiB message limit.
MAX_EVENTS_PER_RESPONSE = 1_000


class StreamEnd:
    """Put last on a subscriber's queue: end the stream with this status."""

    __slots__ = ("code", "details")

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details


class Subscriber:
    """One WatchEvents stream. `pending` counts the events queued and not yet taken by its writer."""

    __slots__ = ("filter", "queue", "pending", "peer", "ended", "closing")

    def __init__(self, event_filter: EventFilter, peer: str = "") -> None:
        self.filter = event_filter
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending = 0
        self.peer = peer
        self.ended = False
        self.closing = asyncio.Event()  # set by EventHub.end: a StreamEnd is on the queue

    def take(self, item) -> None:
        """The writer took `item` off the queue (call once per item, before writing it)."""
        if type(item) is task_service_pb2.WatchEventsResponse:
            self.pending -= len(item.events)


class EventHub:
    def __init__(self, max_queued_events: int = DEFAULT_MAX_QUEUED_EVENTS) -> None:
        self.max_queued_events = max_queued_events
        self.subscribers: list[Subscriber] = []
        self.dropped = 0  # subscribers dropped for falling behind, since start
        self.closed = False  # shutting down: close_all ran, no new subscriber

    def subscribe(self, subscriber: Subscriber) -> None:
        if not subscriber.ended and subscriber not in self.subscribers:
            self.subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscriber.ended = True
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)

    def publish(self, records: Iterable[wal_pb2.WalRecord], projection: Projection) -> None:
        """Hand the committed `records` of one step to every subscriber whose filter they match.

        An event is built once per record (in the first matching subscriber's response, in
        place) and copied into the others'; records nobody wants cost a filter check each."""
        subscribers = self.subscribers
        responses: list[task_service_pb2.WatchEventsResponse | None] = [None] * len(subscribers)
        tasks = projection.tasks
        kinds = TASK_RECORD_KINDS
        base = None
        base_ms = -1
        for record in records:
            kind = record.WhichOneof("event")
            if kind not in kinds:
                continue
            body = getattr(record, kind)
            task = tasks.get(body.task_id)
            if task is None:
                continue
            event = None
            for i, sub in enumerate(subscribers):
                event_filter = sub.filter
                if not (event_filter.everything or event_filter.matches(task)):
                    continue
                response = responses[i]
                if response is None:
                    response = responses[i] = task_service_pb2.WatchEventsResponse()
                if event is None:
                    if record.at_unix_ms != base_ms:  # once per step: its records share the time
                        base_ms = record.at_unix_ms
                        base = event_base(base_ms)
                    event = response.events.add()
                    fill_event(event, record, kind, body, task, base)
                else:
                    response.events.append(event)
        bound = self.max_queued_events
        for sub, response in zip(list(subscribers), responses):
            if response is None:
                continue
            n = len(response.events)
            if sub.pending + n > bound:
                self._drop(sub, f"event subscriber fell behind: more than {bound} events queued "
                                f"(--max-queued-events); subscribe again, with a narrower filter or a faster reader")
                continue
            sub.pending += n
            if n <= MAX_EVENTS_PER_RESPONSE:
                sub.queue.put_nowait(response)
            else:  # a big step: messages stay well under the gRPC message size limit
                events = response.events
                for start in range(0, n, MAX_EVENTS_PER_RESPONSE):
                    sub.queue.put_nowait(task_service_pb2.WatchEventsResponse(
                        events=events[start:start + MAX_EVENTS_PER_RESPONSE]))

    def _drop(self, sub: Subscriber, why: str) -> None:
        self.dropped += 1
        log.warning("dropped WatchEvents subscriber %s: %s", sub.peer or "?", why)
        self.end(sub, grpc.StatusCode.RESOURCE_EXHAUSTED, why)

    def end(self, sub: Subscriber, code: grpc.StatusCode, details: str) -> None:
        """Unsubscribe and end the stream: what is still queued is discarded."""
        self.unsubscribe(sub)
        queue = sub.queue
        while not queue.empty():
            queue.get_nowait()
        sub.pending = 0
        queue.put_nowait(StreamEnd(code, details))
        sub.closing.set()  # a writer stuck on a client that does not read stops waiting

    def close_all(self, code: grpc.StatusCode, details: str) -> None:
        self.closed = True
        for sub in list(self.subscribers):
            self.end(sub, code, details)
