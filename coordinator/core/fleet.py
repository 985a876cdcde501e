"""The fleet: connected actors, their free slots, and the liveness of every lease.

Owns: volatile state that is deliberately NOT in the WAL. Heartbeats only move a lease's expiry;
writing each one would cost an fsync for no durable fact. After a coordinator restart every
RUNNING attempt gets a fresh lease of one TTL (`restore`), which is the window its actor has to
reconnect and re-present it.

All times here are on the loop's monotonic clock (ms), so a wall-clock step (NTP, VM resume)
cannot expire every lease at once or stretch them.

Invariants:
- An actor is never granted more leases than its slots: free_slots = slots - leases bound to it.
- A lease is live iff it is in `leases` with expires_ms > now; it is bound to the actor identity
  (actor id + incarnation) it was granted to, and only that identity may heartbeat or end it.
- At most one connected incarnation per actor id.
"""
from __future__ import annotations

import heapq
from typing import Any, Iterator

from corral.v1 import task_pb2

ActorKey = tuple[str, str]  # (actor_id, incarnation)
EXPIRY_COMPACT_SLACK = 4096


class ConnectedActor:
    __slots__ = ("key", "identity", "slots", "task_types", "capabilities", "held", "connected_ms",
                 "session", "suspect", "draining")

    def __init__(self, identity: task_pb2.ExecutorIdentity, connected_ms: int, session: Any) -> None:
        self.key: ActorKey = (identity.actor_id, identity.incarnation)
        self.identity = identity
        self.slots = identity.slots
        self.task_types = frozenset(identity.task_types)
        self.capabilities = frozenset(identity.capabilities)
        self.held: set[str] = set()
        self.connected_ms = connected_ms
        # Opaque to the core: the dispatch layer's handle for sending to this actor.
        self.session = session
        # A lease of this actor expired while it stayed connected (stalled event loop, overload):
        # grant it nothing until it speaks again, so the re-dispatch goes to someone else.
        self.suspect = False
        # The actor said it is stopping.
        self.draining = False

    @property
    def grantable(self) -> bool:
        return not (self.suspect or self.draining) and len(self.held) < self.slots

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.held)


class Lease:
    __slots__ = ("task_id", "attempt", "token", "actor_key", "expires_ms")

    def __init__(self, task_id: str, attempt: int, token: int, actor_key: ActorKey, expires_ms: int) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.token = token
        self.actor_key = actor_key
        self.expires_ms = expires_ms


class Fleet:
    def __init__(self, lease_ttl_ms: int) -> None:
        self.lease_ttl_ms = lease_ttl_ms
        self.actors: dict[ActorKey, ConnectedActor] = {}
        self.by_actor_id: dict[str, ConnectedActor] = {}
        self.leases: dict[str, Lease] = {}
        self._expiry: list[tuple[int, str, int]] = []

    # ---- actors ------------------------------------------------------------------------------

    def connect(self, actor: ConnectedActor) -> None:
        self.actors[actor.key] = actor
        self.by_actor_id[actor.key[0]] = actor
        # Leases already bound to this identity (granted before a reconnect) count against it
        # only once re-presented: see adopt().

    def disconnect(self, key: ActorKey) -> ConnectedActor | None:
        actor = self.actors.pop(key, None)
        if actor is not None and self.by_actor_id.get(key[0]) is actor:
            del self.by_actor_id[key[0]]
        return actor

    def leases_of(self, key: ActorKey) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.actor_key == key]

    # ---- leases ------------------------------------------------------------------------------

    def bind(self, task_id: str, attempt: int, token: int, actor_key: ActorKey, now_ms: int) -> Lease:
        lease = Lease(task_id, attempt, token, actor_key, now_ms + self.lease_ttl_ms)
        self.leases[task_id] = lease
        heapq.heappush(self._expiry, (lease.expires_ms, task_id, token))
        if len(self._expiry) > 2 * len(self.leases) + EXPIRY_COMPACT_SLACK:
            # Released leases leave their entries behind until due: rebuild from the live ones.
            self._expiry = [(lease.expires_ms, lease.task_id, lease.token) for lease in self.leases.values()]
            heapq.heapify(self._expiry)
        actor = self.actors.get(actor_key)
        if actor is not None:
            actor.held.add(task_id)
        return lease

    def release(self, task_id: str) -> Lease | None:
        lease = self.leases.pop(task_id, None)
        if lease is not None:
            actor = self.actors.get(lease.actor_key)
            if actor is not None:
                actor.held.discard(task_id)
        return lease

    def adopt(self, lease: Lease, actor: ConnectedActor, now_ms: int) -> None:
        """A reconnected actor re-presented this lease: count it against its slots again."""
        actor.held.add(lease.task_id)
        self.extend(lease, now_ms)

    def extend(self, lease: Lease, now_ms: int) -> None:
        # The old heap entry stays; pop_expired skips entries whose expiry moved.
        lease.expires_ms = now_ms + self.lease_ttl_ms

    def live_lease(self, task_id: str, token: int, now_ms: int) -> Lease | None:
        lease = self.leases.get(task_id)
        if lease is None or lease.token != token or lease.expires_ms <= now_ms:
            return None
        return lease

    def pop_expired(self, now_ms: int) -> Iterator[Lease]:
        heap = self._expiry
        while heap and heap[0][0] <= now_ms:
            _, task_id, token = heapq.heappop(heap)
            lease = self.leases.get(task_id)
            if lease is None or lease.token != token:
                continue
            if lease.expires_ms > now_ms:
                heapq.heappush(heap, (lease.expires_ms, task_id, token))
                continue
            yield lease

    def next_expiry_ms(self) -> int | None:
        return self._expiry[0][0] if self._expiry else None

    def free_slots_total(self) -> int:
        return sum(a.free_slots for a in self.actors.values())
