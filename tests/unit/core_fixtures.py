"""Shared builders for the pure-core unit tests (tests/unit/test_core_*.py).

`Sim` drives the pure core exactly as coordinator/dispatch/loop.py does: every record a decision
returns is applied to the Projection at once, with now_ms equal to the step's time, and (when a
WAL is given) the step's records are appended in one `append_batch(records, at_unix_ms=now)`.
No network, no clock, no randomness beyond the injected `draw`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from google.protobuf import struct_pb2

from corral.v1 import actor_service_pb2, task_pb2, wal_pb2
from coordinator.core import decisions
from coordinator.core.fleet import ActorKey, ConnectedActor, Fleet, Lease
from coordinator.core.projection import Projection
from coordinator.core.spec import SpecLimits, normalize_spec
from coordinator.core.states import State, is_terminal

T0 = 1_700_000_000_000  # a fixed wall clock (ms) for every test
LEASE_TTL_MS = 10_000
GRACE_MS = 2_000


def spec(type: str = "t", *, task_id: str = "", priority: int = 0, max_attempts: int = 0,
         max_lost_attempts: int = 0, caps: Iterable[str] = (), timeout_ms: int | None = None,
         schedule_to_start_ms: int | None = None, not_before_ms: int | None = None,
         backoff: task_pb2.Backoff | None = None, idempotency_key: str = "",
         labels: dict[str, str] | None = None, now_ms: int = T0, normalize: bool = True) -> task_pb2.TaskSpec:
    """A TaskSpec, normalised (defaults filled) unless normalize=False."""
    s = task_pb2.TaskSpec(task_id=task_id, type=type, priority=priority, idempotency_key=idempotency_key)
    s.retry.max_attempts = max_attempts
    s.retry.max_lost_attempts = max_lost_attempts
    if backoff is not None:
        s.retry.backoff.CopyFrom(backoff)
    s.required_capabilities.extend(caps)
    if timeout_ms is not None:
        s.execution_timeout.FromMilliseconds(timeout_ms)
    if schedule_to_start_ms is not None:
        s.schedule_to_start_timeout.FromMilliseconds(schedule_to_start_ms)
    if not_before_ms is not None:
        s.not_before.FromMilliseconds(not_before_ms)
    if labels:
        s.labels.update(labels)
    if normalize:
        normalize_spec(s, "task", SpecLimits(), now_ms)
    return s


def identity(actor_id: str = "a1", incarnation: str = "i1", *, types: Iterable[str] = ("t",),
             caps: Iterable[str] = (), slots: int = 1) -> task_pb2.ExecutorIdentity:
    return task_pb2.ExecutorIdentity(actor_id=actor_id, incarnation=incarnation, task_types=list(types),
                                     capabilities=list(caps), slots=slots, host="h", version="v")


def submitted(task_id: str, s: task_pb2.TaskSpec, now_ms: int) -> wal_pb2.WalRecord:
    """The TaskSubmitted record the loop writes for `s` at `now_ms`."""
    s = task_pb2.TaskSpec.FromString(s.SerializeToString())
    s.task_id = task_id
    ready_at = s.not_before.ToMilliseconds() if s.HasField("not_before") else now_ms
    state = State.SCHEDULED if ready_at > now_ms else State.READY
    return wal_pb2.WalRecord(task_submitted=wal_pb2.TaskSubmitted(
        task_id=task_id, spec=s, state=state, ready_at_unix_ms=ready_at))


def granted(task_id: str, attempt: int, token: int, actor_key: ActorKey, deadline_ms: int) -> wal_pb2.WalRecord:
    return wal_pb2.WalRecord(lease_granted=wal_pb2.LeaseGranted(
        task_id=task_id, attempt=attempt, fencing_token=token, actor_id=actor_key[0],
        actor_incarnation=actor_key[1], deadline_unix_ms=deadline_ms))


def const_draw(value: float = 0.5) -> Callable[[], float]:
    return lambda: value


class FakeSession:
    """Stands in for the dispatch layer's ActorLink: the core never looks inside."""

    def __init__(self, name: str) -> None:
        self.name = name


class Sim:
    """The dispatch loop's use of the core, minus asyncio and gRPC."""

    def __init__(self, wal=None, *, lease_ttl_ms: int = LEASE_TTL_MS, grace_ms: int = GRACE_MS,
                 draw: Callable[[], float] = const_draw(0.5), now_ms: int = T0) -> None:
        self.projection = Projection(deadline_grace_ms=grace_ms)
        self.fleet = Fleet(lease_ttl_ms)
        self.wal = wal
        self.draw = draw
        self.now = now_ms
        self.pending: list[wal_pb2.WalRecord] = []
        self.all_records: list[wal_pb2.WalRecord] = []
        self.stale_rejected: list[str] = []

    # ---- steps ---------------------------------------------------------------------------------

    @contextmanager
    def step(self, now_ms: int | None = None) -> Iterator["Sim"]:
        """One dispatch step at `now_ms`: records are applied as emitted, committed at the end."""
        if now_ms is not None:
            assert now_ms >= self.now, "simulated time never goes backwards"
            self.now = now_ms
        yield self
        self.commit()

    def commit(self) -> None:
        if self.pending and self.wal is not None:
            self.wal.append_batch(self.pending, self.now)
        self.pending = []

    def emit(self, record: wal_pb2.WalRecord) -> wal_pb2.WalRecord:
        self.projection.apply(record, self.now)
        self.pending.append(record)
        self.all_records.append(record)
        return record

    def emit_attempt_ended(self, record: wal_pb2.WalRecord) -> wal_pb2.WalRecord:
        self.emit(record)
        self.fleet.release(record.attempt_ended.task_id)
        return record

    # ---- clients -------------------------------------------------------------------------------

    def submit(self, task_id: str, s: task_pb2.TaskSpec | None = None, **spec_kw) -> wal_pb2.WalRecord:
        if s is None:
            s = spec(now_ms=self.now, **spec_kw)
        return self.emit(submitted(task_id, s, self.now))

    def cancel(self, task_id: str, reason: str = "") -> None:
        """What DispatchLoop._on_cancel writes."""
        task = self.projection.tasks[task_id]
        assert not is_terminal(task.state)
        reason = reason or "canceled by request"
        if task.state == State.RUNNING:
            if not task.cancel_requested:
                self.emit(wal_pb2.WalRecord(cancel_requested=wal_pb2.CancelRequested(task_id=task_id, reason=reason)))
        else:
            self.emit(wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
                task_id=task_id, state=State.CANCELED, reason=reason,
                error=task_pb2.TaskError(message=reason, kind="canceled"))))

    # ---- actors --------------------------------------------------------------------------------

    def connect(self, ident: task_pb2.ExecutorIdentity) -> ConnectedActor:
        actor = ConnectedActor(ident, self.now, FakeSession(ident.actor_id))
        self.fleet.connect(actor)
        known = self.projection.actors_seen.get(ident.actor_id)
        if known is None or known.SerializeToString(deterministic=True) != ident.SerializeToString(deterministic=True):
            self.emit(wal_pb2.WalRecord(actor_registered=wal_pb2.ActorRegistered(identity=ident)))
        return actor

    def grant(self) -> list[tuple[str, int, int, ActorKey]]:
        """Select and grant as DispatchLoop._grant does; returns (task_id, attempt, token, actor key)."""
        out = []
        for task, actor in decisions.select_grants(self.projection, self.fleet):
            out.append(self.grant_to(task.task_id, actor.key))
        return out

    def grant_to(self, task_id: str, actor_key: ActorKey) -> tuple[str, int, int, ActorKey]:
        task = self.projection.tasks[task_id]
        token = self.projection.highest_token + 1
        attempt = len(task.attempts) + 1
        self.emit(granted(task_id, attempt, token, actor_key, self.now + task.execution_timeout_ms))
        self.fleet.bind(task_id, attempt, token, actor_key, self.now)
        return task_id, attempt, token, actor_key

    def lease(self, task_id: str) -> Lease:
        return self.fleet.leases[task_id]

    def heartbeat(self, task_id: str, attempt: int, token: int, actor_key: ActorKey) -> str | None:
        why = decisions.fence(self.projection, self.fleet, actor_key, task_id, attempt, token, self.now)
        if why is None:
            self.fleet.extend(self.fleet.leases[task_id], self.now)
        return why

    def report(self, task_id: str, outcome: int, *, error: task_pb2.TaskError | None = None,
               output=None, output_bytes: bytes | None = None, attempt: int | None = None,
               token: int | None = None, actor_key: ActorKey | None = None) -> str | None:
        """An actor's AttemptResult, fenced as DispatchLoop._on_actor_update does. None if accepted."""
        task = self.projection.tasks[task_id]
        cur = task.current_attempt
        attempt = cur.number if attempt is None else attempt
        token = cur.fencing_token if token is None else token
        actor_key = (cur.actor_id, cur.actor_incarnation) if actor_key is None else actor_key
        result = actor_service_pb2.AttemptResult(outcome=outcome)
        result.lease.task_id = task_id
        result.lease.attempt = attempt
        result.lease.fencing_token = token
        if error is not None:
            result.error.CopyFrom(error)
        if output is not None:
            result.output.CopyFrom(output)
        if output_bytes is not None:
            result.output_bytes = output_bytes
        why = decisions.fence(self.projection, self.fleet, actor_key, task_id, attempt, token, self.now)
        if why is None and outcome not in decisions.REPORTABLE_OUTCOMES:
            why = f"outcome {outcome} is not reportable"
        if why is not None:
            self.stale_rejected.append(why)
            return why
        self.emit_attempt_ended(decisions.end_attempt_with_result(task, result, self.now, self.draw))
        return None

    # ---- time ----------------------------------------------------------------------------------

    def expire(self) -> list[str]:
        """DispatchLoop._expire_leases: task ids whose attempt was recorded LOST."""
        lost = []
        for lease in list(self.fleet.pop_expired(self.now)):
            record = decisions.lost_attempt_record(self.projection, lease.task_id, lease.attempt, lease.token,
                                                   self.now, self.draw, "lease expired")
            if record is not None:
                self.emit_attempt_ended(record)
                lost.append(lease.task_id)
            else:
                self.fleet.release(lease.task_id)
        return lost

    def fire_timers(self) -> list[wal_pb2.WalRecord]:
        """DispatchLoop._fire_timers: the records the due timers produced."""
        out = []
        for kind, task_id, attempt in self.projection.pop_due_timers(self.now):
            record = decisions.timer_record(self.projection, kind, task_id, attempt, self.now, self.draw)
            if record is None:
                continue
            if record.HasField("attempt_ended"):
                self.emit_attempt_ended(record)
            else:
                self.emit(record)
            out.append(record)
        return out

    def tick(self) -> None:
        """The time-driven part of a step, in the loop's order: expiry, timers, grants."""
        self.expire()
        self.fire_timers()
        self.grant()

    # ---- reading -------------------------------------------------------------------------------

    def state(self, task_id: str) -> int:
        return self.projection.tasks[task_id].state


def json_value(obj) -> struct_pb2.Value:
    v = struct_pb2.Value()
    if isinstance(obj, dict):
        v.struct_value.update(obj)
    elif isinstance(obj, str):
        v.string_value = obj
    else:
        v.number_value = obj
    return v


def replay(records: Iterable[wal_pb2.WalRecord], grace_ms: int = GRACE_MS) -> Projection:
    p = Projection(deadline_grace_ms=grace_ms)
    for record in records:
        p.apply(record, record.at_unix_ms)
    return p
