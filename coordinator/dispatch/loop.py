"""The dispatch loop: the single writer of the coordinator's state.

Owns: every mutation of the projection and the fleet, and the order of effects. One asyncio task
runs steps; a step is

    take every queued command  ->  check each against the state, emitting WAL records
    expire leases, fire timers, fire due schedule occurrences (dispatch/schedules.py), forget
    finished tasks past retention  ->  more records
    select ready tasks for actors with free slots  ->  LeaseGranted records (not if paused/draining)
    append all of the step's records in ONE LMDB transaction (one fsync: group commit)
    then, and only then: resolve replies, send leases/acks/cancels, notify watchers and
    WatchEvents subscribers (dispatch/operations.py, dispatch/event_hub.py).

Invariants:
- Nothing is acknowledged (reply, lease, ack) before the WAL batch holding its records is durable.
- Each record is applied to the projection as it is emitted, with the same `Projection.apply`
  that replay uses, so the live state is exactly what replaying the committed WAL rebuilds. If a
  commit fails the projection is ahead of the WAL: the loop stops and the process must exit;
  nothing of that step is sent, and its callers (like those still queued) get UNAVAILABLE.
- A submission and the lease that grants it can share one transaction (low latency at light load).
- Decisions come from coordinator/core/decisions.py, given `now_ms` from the injected clock and
  draws from the injected random source.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from bisect import bisect_right
from typing import Any, Callable

import grpc

from corral.v1 import actor_service_pb2, admin_service_pb2, task_pb2, wal_pb2

from ..core import admission as admission_mod
from ..core import decisions
from ..core import children
from ..core import graph
from ..core import retention
from ..core.admission import Admission
from ..core.durations import to_ms
from ..core.errors import (AlreadyExists, CorralError, FailedPrecondition, InvalidField, NotFound,
                           ResourceExhausted, Unavailable)
from ..core.fleet import ConnectedActor, Fleet
from ..core.projection import TIMER_ATTEMPT_DEADLINE, Projection
from ..core.spec import spec_fingerprint
from ..core.states import SUCCEEDED, TERMINAL_STATES, WAITING_FOR_CHILDREN, State, is_terminal
from ..core.views import task_view
from ..storage.wal import HIGHEST_TOKEN_KEY, WriteAheadLog
from . import commands as C
from . import operations
from . import snapshotter as snapshotter_mod
from . import schedules as schedule_ops
from .actor_link import ActorLink
from .event_hub import DEFAULT_MAX_QUEUED_EVENTS, EventHub

log = logging.getLogger("corral.dispatch")
WalRecord = wal_pb2.WalRecord
# Steps with at most this many records commit on the loop's thread (see _step).
INLINE_COMMIT_MAX_RECORDS = 32
# Finished tasks past their retention are looked for at most this often (one record per sweep).
RETENTION_SWEEP_MS = 1_000
# A ListTasks call looks at most at this many tasks that its filters reject; then its page ends
# (short, possibly empty) with a next_page_token after the last one looked at.
LIST_SCAN_MAX_SKIPPED = 10_000

CANCEL_REQUESTED = actor_service_pb2.CANCEL_REASON_REQUESTED
CANCEL_TIMED_OUT = actor_service_pb2.CANCEL_REASON_TIMED_OUT
CANCEL_LEASE_LOST = actor_service_pb2.CANCEL_REASON_LEASE_LOST


def new_task_id(now_ms: int) -> str:
    """Time-ordered and unique: 12 hex digits of milliseconds, 16 of randomness."""
    return f"{now_ms:012x}{os.urandom(8).hex()}"


class Step:
    """What one step has done so far; effects wait for the commit."""

    __slots__ = ("now_ms", "lease_ms", "records", "replies", "outbox", "watched_views", "grants", "ended")

    def __init__(self, now_ms: int, lease_ms: int) -> None:
        self.now_ms = now_ms  # wall clock: what records say and durable timers use
        self.lease_ms = lease_ms  # monotonic: lease liveness, immune to wall-clock steps
        self.records: list[wal_pb2.WalRecord] = []
        self.replies: list[tuple[asyncio.Future, Any]] = []
        self.outbox: dict[ActorLink, actor_service_pb2.ConnectResponse] = {}
        # (task_id, view after each of its records) for watched tasks, delivered after the commit.
        self.watched_views: list[tuple[str, task_pb2.Task]] = []
        # For metrics (telemetry/metrics.py), read once after the commit.
        self.grants: list = []
        self.ended: list[str] = []  # ids of tasks whose attempt ended in this step

    def message_for(self, link: ActorLink) -> actor_service_pb2.ConnectResponse:
        msg = self.outbox.get(link)
        if msg is None:
            msg = self.outbox[link] = actor_service_pb2.ConnectResponse()
        return msg


class DispatchLoop:
    def __init__(
        self,
        wal: WriteAheadLog,
        projection: Projection,
        fleet: Fleet,
        *,
        coordinator_id: str,
        heartbeat_interval_ms: int,
        max_queued_commands: int = 100_000,
        max_queued_events: int = DEFAULT_MAX_QUEUED_EVENTS,
        max_actors: int = 0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        metrics: Any = None,
        admission: Admission | None = None,
        max_task_depth: int = children.DEFAULT_MAX_DEPTH,
        retention_ms: int = 0,
        snapshotter: Any = None,
    ) -> None:
        self.wal = wal
        self.projection = projection
        self.fleet = fleet
        self.coordinator_id = coordinator_id
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_queued_commands = max_queued_commands
        self.max_actors = max_actors  # actors connected at once (--max-actors); 0: no limit
        self.clock = clock
        self.monotonic = monotonic
        self.rand = rand
        self._inbox: list[Any] = []
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._stopping = False
        self._fatal: BaseException | None = None
        self._watchers: dict[str, list[asyncio.Queue]] = {}
        self._streams_closed = False  # close_streams ran (shutdown): no new WatchTask
        self.steps = 0
        self._deadline_hold_until_ms = 0
        self.stale_results_rejected = 0
        self.lease_expiries = 0
        # telemetry.metrics.LoopMetrics, or None (metrics off): called once per step.
        self.metrics = metrics
        # Operations (dispatch/operations.py): a drain (this process only; a pause is in the
        # projection, durable), and the WatchEvents subscribers, published to after each commit.
        self.drain = operations.DrainState()
        self.events = EventHub(max_queued_events)
        # Queued-task bound and per-type rate limits (core/admission.py); defaults: no rate limits.
        self.admission = admission if admission is not None else Admission()
        # Children (core/children.py): the deepest allowed child, and the handlers waiting for a
        # child to end (child id -> [(actor stream, parent lease)]; volatile: actors re-send them).
        self.max_task_depth = max_task_depth
        self._child_waits: dict[str, list[tuple[ActorLink, actor_service_pb2.LeaseRef]]] = {}
        # Retention (core/retention.py): finished tasks are forgotten this long after they
        # finished (0: never), by a sweep at most every RETENTION_SWEEP_MS.
        self.retention_ms = retention_ms
        self._next_sweep_ms = 0
        self.tasks_forgotten = 0
        # Snapshots (dispatch/snapshotter.py), or None: taken after a step's commit when due.
        self.snapshotter = snapshotter
        # Schedules (dispatch/schedules.py): occurrences due before `started_ms` were missed while
        # no coordinator ran (their misfire policy decides); later ones are always created.
        self.started_ms = 0
        schedule_ops.on_start(self)

    # ---- the servicers' side -----------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def lease_ms(self) -> int:
        return int(self.monotonic() * 1000)

    def submit(self, command: Any) -> None:
        """Queue a command for the next step (called from servicers on the same event loop)."""
        if self._fatal is not None or self._stopping:
            raise Unavailable("coordinator is shutting down")
        if len(self._inbox) >= self.max_queued_commands:
            raise ResourceExhausted(f"dispatch queue is full ({self.max_queued_commands} commands); retry later")
        self._inbox.append(command)
        self._wakeup.set()

    async def call(self, make: Callable[[asyncio.Future], Any]) -> Any:
        """Submit the command built by `make(future)` and await its reply."""
        future = asyncio.get_running_loop().create_future()
        self.submit(make(future))
        return await future

    @property
    def inbox_full(self) -> bool:
        return len(self._inbox) >= self.max_queued_commands

    async def wait_for_room(self) -> None:
        """For stream readers: wait until the next step has taken the queued commands, so a
        flooding actor is slowed by gRPC flow control instead of growing the inbox."""
        while self.inbox_full and not self._stopping:
            self._room.clear()
            await self._room.wait()

    def post(self, command: Any) -> None:
        """Submit a command that has no reply; dropped silently if the loop is shutting down."""
        if self._fatal is None and not self._stopping:
            self._inbox.append(command)
            self._wakeup.set()

    # ---- running -----------------------------------------------------------------------------

    def restore_leases(self) -> int:
        """After replay: give every RUNNING attempt a fresh lease so its actor can re-present it."""
        now = self.lease_ms()
        # Attempts may have finished while we were down: give their actors one TTL to reconnect
        # and report before any attempt deadline that passed meanwhile is enforced.
        self._deadline_hold_until_ms = self.now_ms() + self.fleet.lease_ttl_ms
        n = 0
        for task in self.projection.tasks.values():
            if task.state == State.RUNNING:
                a = task.current_attempt
                self.fleet.bind(task.task_id, a.number, a.fencing_token, (a.actor_id, a.actor_incarnation), now)
                n += 1
        return n

    async def run(self) -> None:
        try:
            while not self._stopping:
                if not self._inbox:
                    timeout = self._seconds_to_next_timer()
                    if timeout is None or timeout > 0:
                        try:
                            await asyncio.wait_for(self._wakeup.wait(), timeout)
                        except asyncio.TimeoutError:
                            pass
                self._wakeup.clear()
                commands, self._inbox = self._inbox, []
                self._room.set()
                await self._step(commands)
        except BaseException as exc:  # noqa: BLE001 - anything here leaves the projection unsafe
            if not isinstance(exc, asyncio.CancelledError):
                self._fatal = exc
                log.critical("dispatch loop failed; the coordinator must restart: %r", exc)
            self._fail_pending(exc)
            raise

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        self._room.set()

    def close_streams(self, reason: str) -> None:
        """Shutdown: end every actor stream and watch, so the server's grace is not spent waiting
        on streams that never end by themselves. Actors reconnect to the next coordinator."""
        for actor in list(self.fleet.actors.values()):
            actor.session.close(grpc.StatusCode.UNAVAILABLE, reason)
        self._streams_closed = True  # a WatchTask handled from now on is refused
        for queues in self._watchers.values():
            for q in queues:
                q.put_nowait(None)
        self._watchers.clear()
        self.events.close_all(grpc.StatusCode.UNAVAILABLE, f"{reason}; watch again")

    @property
    def fatal_error(self) -> BaseException | None:
        return self._fatal

    def _fail_pending(self, exc: BaseException) -> None:
        for command in self._inbox:
            reply = getattr(command, "reply", None)
            if reply is not None and not reply.done():
                reply.set_exception(Unavailable(f"coordinator stopped: {exc!r}"))
        self._inbox = []

    @staticmethod
    def _fail_replies(step: Step, exc: BaseException) -> None:
        for future, _ in step.replies:
            if not future.done():
                future.set_exception(Unavailable(f"coordinator stopped: {exc!r}"))

    def _seconds_to_next_timer(self) -> float | None:
        waits = []
        if self.snapshotter is not None and self.snapshotter.backlog:
            waits.append(snapshotter_mod.IDLE_STEP_MS)  # an idle loop serializes snapshot rows
        due = self.projection.next_timer_ms()
        if due is not None:
            waits.append(due - self.now_ms())
        expiry = self.fleet.next_expiry_ms()
        if expiry is not None:
            waits.append(expiry - self.lease_ms())
        if self.projection.schedules:
            occurrence = schedule_ops.next_due_ms(self)
            if occurrence is not None:
                waits.append(occurrence - self.now_ms())
        if self.retention_ms:
            due = retention.next_due_ms(self.projection, self.retention_ms)
            if due is not None:
                waits.append(max(due, self._next_sweep_ms) - self.now_ms())
        if self.admission.rate_limited:  # an empty bucket refills: READY tasks may be held back
            token = self.admission.next_token_ms(self.lease_ms())
            if token is not None:
                waits.append(token - self.lease_ms())
        return max(0.0, min(waits) / 1000.0) if waits else None

    # ---- one step ----------------------------------------------------------------------------

    async def _step(self, commands: list[Any]) -> None:
        step = Step(self.now_ms(), self.lease_ms())
        highest_token_before = self.projection.highest_token
        for command in commands:
            try:
                self._handle(command, step)
            except CorralError as exc:
                reply = getattr(command, "reply", None)
                if reply is not None and not reply.done():
                    reply.set_exception(exc)
        self._expire_leases(step)
        self._fire_timers(step)
        if self.projection.schedules and not self.drain.draining:  # due occurrences create tasks
            schedule_ops.fire_due(self, step)
        if self.retention_ms and step.now_ms >= self._next_sweep_ms:
            self._forget_expired(step)
        if not (self.projection.paused or self.drain.draining):  # Pause, Drain: no new leases
            self._grant(step)
        commit_s = 0.0
        if step.records:
            commit_started = time.perf_counter()
            highest = self.projection.highest_token
            meta = {HIGHEST_TOKEN_KEY: highest.to_bytes(8, "big")} if highest != highest_token_before else None
            try:
                if len(step.records) <= INLINE_COMMIT_MAX_RECORDS and not self.wal.background_writers:
                    # Light load: a thread hop costs more latency than the loop loses while it fsyncs.
                    self.wal.append_batch(step.records, step.now_ms, meta)
                else:
                    # Heavy load: commands keep arriving (and group) while another thread fsyncs.
                    await asyncio.to_thread(self.wal.append_batch, step.records, step.now_ms, meta)
            except BaseException as exc:
                # No effect of this step is sent; its callers learn that the coordinator stopped
                # (UNAVAILABLE: not done) instead of waiting for a reply that never comes.
                self._fail_replies(step, exc)
                raise
            commit_s = time.perf_counter() - commit_started
        self.steps += 1
        # Leases first: they are on the submit-to-start path; client replies are not.
        for link, message in step.outbox.items():
            link.send(message)
        for future, value in step.replies:
            if not future.done():
                future.set_result(value.make() if type(value) is _Deferred else value)
        if step.watched_views:
            self._notify_watchers(step.watched_views)
        if self.events.subscribers and step.records:  # WatchEvents; nobody subscribed: this check only
            self.events.publish(step.records, self.projection)
        if self.drain.waiters:  # a shutdown waits for attempts in flight to end
            self.drain.check(self)
        if self.metrics is not None:  # after the effects: they wait for nothing of this
            self.metrics.step_committed(step.now_ms, len(step.records), commit_s, step.grants, step.ended)
        snapshotter = self.snapshotter
        if snapshotter is not None:
            # Rows of finished tasks are serialized when the loop is idle (nothing queued), or
            # while busy once the backlog is large (so a snapshot's capture stays short).
            snapshotter.after_step(len(step.records), idle=not self._inbox)
        if snapshotter is not None and snapshotter.due(self.wal.last_seq):
            # After the commit: the projection is exactly the WAL up to last_seq.
            snapshotter.start(self.wal.last_seq, step.now_ms)

    def _handle(self, command: Any, step: Step) -> None:
        handler = self._handlers.get(type(command))
        if handler is None:
            raise TypeError(f"unknown command {command!r}")
        handler(self, command, step)

    # ---- emitting records --------------------------------------------------------------------

    def _emit(self, record: wal_pb2.WalRecord, task_id: str, step: Step) -> None:
        projection = self.projection
        projection.apply(record, step.now_ms)  # = _emit_one, inlined (three times per task)
        step.records.append(record)
        task = projection.tasks.get(task_id)
        if task_id in self._watchers:
            step.watched_views.append((task_id, task_view(task)))
        # Every path that ends a task emits its record here, so what follows from an ending
        # happens at once, in this step: dependents' promotions / cascading cancels (task graphs,
        # core/graph.py), and the parent/children consequences (core/children.py).
        if task is None:
            return
        state = task.state
        if state in TERMINAL_STATES:
            dependents = self.projection.dependents
            if dependents and task_id in dependents:
                # Each dependent the cascade ends has its own tree consequences (its parent may
                # wait for it); the cascade itself carries the dependency chain on (iteratively).
                graph.cascade(self.projection, task_id, step.now_ms,
                              lambda r, tid: self._emit_cascaded(r, tid, step))
            if task.parent_id or task.children or self._child_waits:
                self._after_tree_member_ended(task, step)
        elif state == WAITING_FOR_CHILDREN:
            ending = children.resolve(self.projection, task)  # e.g. a child had failed already
            if ending is not None:
                self._emit(ending, task_id, step)

    def _emit_cascaded(self, record: wal_pb2.WalRecord, task_id: str, step: Step) -> None:
        """A record of a dependency cascade (graph.cascade walks the chain itself)."""
        self._emit_one(record, task_id, step)
        task = self.projection.tasks[task_id]
        if is_terminal(task.state) and (task.parent_id or task.children or self._child_waits):
            self._after_tree_member_ended(task, step)

    def _after_tree_member_ended(self, task, step: Step) -> None:
        """A task in a tree ended: tell handlers waiting for it, cancel the children of a parent
        that failed or was canceled (not detached ones), and finish a parent waiting for it."""
        waits = self._child_waits.pop(task.task_id, None) if self._child_waits else None
        if waits:
            for link, ref in waits:
                parent = self.projection.tasks.get(ref.task_id)
                if (parent is not None and parent.state == State.RUNNING
                        and parent.attempts[-1].fencing_token == ref.fencing_token):
                    step.message_for(link).child_outcomes.append(children.outcome_message(task, ref))
        if task.children and task.state != SUCCEEDED:
            self._cancel_descendants(task.task_id, False,
                                     f"parent {task.task_id} ended {State(task.state).name}", step)
        if task.parent_id:
            parent = self.projection.tasks.get(task.parent_id)
            if parent is not None and parent.state == WAITING_FOR_CHILDREN:
                ending = children.resolve(self.projection, parent)
                if ending is not None:
                    self._emit(ending, parent.task_id, step)

    def _cancel_descendants(self, task_id: str, include_detached: bool, reason: str, step: Step) -> None:
        """Cancel the subtree under `task_id` (running descendants: the cancel is pushed)."""
        for descendant in children.descendants(self.projection, task_id, include_detached=include_detached):
            record = children.cancel_record(descendant, reason)
            if record is None:
                continue
            self._emit(record, descendant.task_id, step)
            if record.HasField("cancel_requested"):
                a = descendant.current_attempt
                self._push_cancel(descendant.task_id, a.number, a.fencing_token, CANCEL_REQUESTED, reason, step)

    def _emit_one(self, record: wal_pb2.WalRecord, task_id: str, step: Step) -> None:
        self.projection.apply(record, step.now_ms)
        step.records.append(record)
        if task_id in self._watchers:
            # One view per record, so a watcher sees every committed state, even two in one step.
            step.watched_views.append((task_id, task_view(self.projection.tasks[task_id])))

    def _emit_attempt_ended(self, record: wal_pb2.WalRecord, step: Step) -> None:
        task_id = record.attempt_ended.task_id
        self._emit(record, task_id, step)
        self.fleet.release(task_id)
        step.ended.append(task_id)
        if self._child_waits:
            self._drop_child_waits_of(task_id, record.attempt_ended.fencing_token)

    def _drop_child_waits_of(self, task_id: str, fencing_token: int) -> None:
        """An attempt ended: the waits its handler had for its children are moot."""
        task = self.projection.tasks.get(task_id)
        if task is None or not task.children:
            return
        waits = self._child_waits
        for child_id in task.children:
            entries = waits.get(child_id)
            if not entries:
                continue
            kept = [w for w in entries if not (w[1].task_id == task_id and w[1].fencing_token == fencing_token)]
            if kept:
                waits[child_id] = kept
            else:
                del waits[child_id]

    def _push_cancel(self, task_id: str, attempt: int, token: int, reason: int, message: str, step: Step) -> None:
        # Every RUNNING attempt has a lease in the fleet (granted, or restored after a restart).
        lease = self.fleet.leases.get(task_id)
        actor = self.fleet.actors.get(lease.actor_key) if lease is not None else None
        if actor is not None:
            cancel = step.message_for(actor.session).cancels.add(reason=reason, message=message)
            cancel.lease.task_id = task_id
            cancel.lease.attempt = attempt
            cancel.lease.fencing_token = token

    # ---- commands from clients ---------------------------------------------------------------

    def _on_submit(self, cmd: C.SubmitTasks, step: Step) -> None:
        step.replies.append((cmd.reply, self._submit_specs(cmd.specs, cmd.fields, step)))

    def _submit_specs(self, specs, fields, step: Step) -> list[tuple[str, bool, int]]:
        """Write validated specs (all or nothing): [(task_id, created, state)] in their order."""
        if self.drain.draining:
            raise Unavailable(self.drain.refusal())
        tasks = self.projection.tasks
        idempotency = self.projection.idempotency
        now = step.now_ms
        # Phase 1: decide every spec (new or existing) before writing anything: all or nothing.
        plan: list[tuple[task_pb2.TaskSpec, str | None]] = []  # (spec, existing task id)
        batch_ids: dict[str, bytes] = {}
        batch_keys: dict[str, str] = {}
        with_prerequisites = False
        for spec, field in zip(specs, fields):
            if spec.depends_on:
                with_prerequisites = True
            existing_id = None
            key = spec.idempotency_key
            if key:
                owner = idempotency.get(key) or batch_keys.get(key)
                if owner is not None:
                    if spec.task_id and spec.task_id != owner:
                        raise AlreadyExists(f"{field}.idempotency_key: {key!r} belongs to task {owner}")
                    spec.task_id = owner
            if spec.task_id:
                fp = spec_fingerprint(spec)
                task = tasks.get(spec.task_id)
                known = spec_fingerprint(task.spec) if task is not None else batch_ids.get(spec.task_id)
                if known is not None:
                    if known != fp:
                        what = f"idempotency_key {key!r}" if key else f"task_id {spec.task_id!r}"
                        raise AlreadyExists(f"{field}: {what} already exists with a different spec")
                    existing_id = spec.task_id
            else:
                spec.task_id = new_task_id(now)
                fp = spec_fingerprint(spec) if key else b""
            if existing_id is None:
                # Later specs of this batch may name this one (by id or key): remember it.
                batch_ids[spec.task_id] = fp
                if key:
                    batch_keys[key] = spec.task_id
            plan.append((spec, existing_id))
        write_order = None
        if with_prerequisites:
            # Task graphs (core/graph.py): unknown prerequisites and cycles are refused here, before
            # anything is written; prerequisites within the batch are written before their dependents.
            new = [i for i, (_, existing) in enumerate(plan) if existing is None]
            order = graph.plan_batch([plan[i][0] for i in new], [fields[i] for i in new], tasks.__contains__)
            if order is not None:
                # Repeats (existing_id set) go last: one may repeat a task of this batch that the
                # new order writes after its own position.
                placed = {new[k] for k in order}
                write_order = [new[k] for k in order] + [i for i in range(len(plan)) if i not in placed]
        # The global bound on queued tasks (core/admission.py): refused before anything is written.
        self.admission.check_queued(self.projection, len(plan),
                                    lambda: sum(1 for _, existing in plan if existing is None))
        # Phase 2: write (prerequisites first); results stay in request order.
        results: list = [None] * len(plan)
        for i in (write_order if write_order is not None else range(len(plan))):
            results[i] = self._write_submission(plan[i][0], plan[i][1], now, step)
        return results

    def _write_submission(self, spec: task_pb2.TaskSpec, existing_id: str | None, now: int,
                          step: Step) -> tuple[str, bool, int]:
        """Phase 2 of a submission, for one spec: its records; returns (task_id, created, state)."""
        tasks = self.projection.tasks
        if existing_id is not None:  # existed before, or earlier in this batch (written above)
            return existing_id, False, tasks[existing_id].state
        ready_at = to_ms(spec.not_before) if spec.HasField("not_before") else now
        state = State.SCHEDULED if ready_at > now else State.READY
        doomed = None
        if spec.depends_on:
            state, doomed = graph.submission_state(self.projection, spec.depends_on, state)
        # Built in place: nested constructors would copy the spec twice.
        record = WalRecord()
        event = record.task_submitted
        event.task_id = spec.task_id
        event.spec.CopyFrom(spec)
        event.state = state
        event.ready_at_unix_ms = ready_at
        self._emit(record, spec.task_id, step)
        if doomed is not None:
            # A prerequisite already FAILED or was CANCELED: accepted, and canceled at once. First,
            # so that a newcomer that will never run supersedes nothing (CANCEL_IN_PROGRESS).
            self._emit(graph.canceled_record(spec.task_id, tasks[doomed]), spec.task_id, step)
        elif spec.concurrency_key:
            self._apply_key_policy(tasks[spec.task_id], step)
        return spec.task_id, True, tasks[spec.task_id].state  # DROP_NEW may have ended it at once

    def _on_declare_dependency(self, cmd: C.DeclareDependency, step: Step) -> None:
        """TaskService.DeclareDependency: add prerequisites to a task that has not started."""
        projection = self.projection
        new = graph.check_declare(projection, cmd.task_id, cmd.depends_on)  # raises: nothing written
        task = projection.tasks[cmd.task_id]
        for record in graph.declare_records(projection, task, new):
            self._emit(record, task.task_id, step)
        step.replies.append((cmd.reply, _Deferred(lambda: task_view(task))))

    def _on_get(self, cmd: C.GetTask, step: Step) -> None:
        task = self.projection.tasks.get(cmd.task_id)
        if task is None:
            raise NotFound(f"task {cmd.task_id!r} not found")
        # Rendered after the commit, so the reader never sees state that is not yet durable.
        step.replies.append((cmd.reply, _Deferred(lambda: task_view(task))))

    def _on_list(self, cmd: C.ListTasks, step: Step) -> None:
        if cmd.after_ordinal > self.projection.submitted_count:
            # Ordinals are durable and only grow: no ListTasks of this store returned this token.
            raise InvalidField("page_token", "is not a token returned by ListTasks on this coordinator's "
                                             "store (it names a task beyond every one submitted); list from the start")
        req = cmd.request
        states = frozenset(req.states)
        task_type = req.type
        schedule_id = req.schedule_id
        page: list = []
        last_ordinal = 0
        more = False
        tasks = self.projection.tasks
        if req.parent_task_id:  # a parent's children, in submission order
            parent = tasks.get(req.parent_task_id)
            if parent is None:
                raise NotFound(f"parent_task_id: task {req.parent_task_id!r} not found")
            # Children are listed in submission (= ordinal) order, each one a known task (a
            # forgotten child leaves the list): seek in O(log n) instead of filtering them all.
            kids = parent.children or ()
            start = bisect_right(kids, cmd.after_ordinal, key=lambda c: tasks[c].ordinal)
            candidates = (tasks[kids[i]] for i in range(start, len(kids)))
        else:
            # The ordinal index: seek in O(log n), then walk in submission order.
            candidates = self.projection.by_ordinal.after(cmd.after_ordinal)
        skipped = 0
        for task in candidates:
            if ((states and task.state not in states) or (task_type and task.type != task_type)
                    or (schedule_id and task.spec.schedule_id != schedule_id)):
                skipped += 1
                if skipped >= LIST_SCAN_MAX_SKIPPED:
                    # Bounded work per call: a short (even empty) page whose token resumes after
                    # the last task looked at (it did not match; nothing is skipped or repeated).
                    more = True
                    last_ordinal = task.ordinal
                    break
                continue
            if len(page) == cmd.page_size:
                more = True
                break
            page.append(task)
            last_ordinal = task.ordinal
        # Rendered now, when the filters were checked (later records of this step may move a
        # task out of them); the reply still waits for the step's commit, like every reply.
        step.replies.append((cmd.reply, ([task_view(t) for t in page], last_ordinal if more else 0)))

    def _on_cancel(self, cmd: C.CancelTask, step: Step) -> None:
        task = self.projection.tasks.get(cmd.task_id)
        if task is None:
            raise NotFound(f"task {cmd.task_id!r} not found")
        if is_terminal(task.state):
            raise FailedPrecondition(f"task {cmd.task_id!r} is already {State(task.state).name}; nothing to cancel")
        reason = cmd.reason or "canceled by request"
        subtree_reason = f"ancestor {task.task_id} canceled: {reason}"
        if task.state == State.RUNNING:
            # Descendants first: the parent stays RUNNING (cancel requested) until its actor
            # reports, so a child's cancel cannot end it in the meantime.
            if task.children:  # the whole subtree, detached children too, running ones included
                self._cancel_descendants(task.task_id, True, subtree_reason, step)
            if task.state == State.RUNNING and not task.cancel_requested:
                self._emit(wal_pb2.WalRecord(cancel_requested=wal_pb2.CancelRequested(
                    task_id=task.task_id, reason=reason)), task.task_id, step)
                a = task.current_attempt
                self._push_cancel(task.task_id, a.number, a.fencing_token, CANCEL_REQUESTED, reason, step)
        else:
            # The task itself first: cancelling a WAITING_FOR_CHILDREN parent's children first
            # would end it FAILED (child_failed) before its own CANCELED could be written.
            self._emit(wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
                task_id=task.task_id, state=State.CANCELED, reason=reason,
                error=task_pb2.TaskError(message=reason, kind="canceled"))), task.task_id, step)
            if task.children:  # what its ending did not reach: detached children's subtrees
                self._cancel_descendants(task.task_id, True, subtree_reason, step)
        step.replies.append((cmd.reply, _Deferred(lambda: task_view(task))))

    def _on_watch(self, cmd: C.WatchTask, step: Step) -> None:
        if self._streams_closed:  # shutting down: close_streams ran, a new watch would outlive it
            raise Unavailable("coordinator is shutting down; watch again")
        task = self.projection.tasks.get(cmd.task_id)
        if task is None:
            raise NotFound(f"task {cmd.task_id!r} not found")
        if not is_terminal(task.state):
            self._watchers.setdefault(cmd.task_id, []).append(cmd.queue)
        # The first view is the task as of the registration, rendered now: the records of this
        # step that follow reach the watcher's queue one view each (after the commit, like this
        # reply), so a view rendered after the step would show them twice, the first out of order.
        step.replies.append((cmd.reply, task_view(task)))

    def _on_unwatch(self, cmd: C.UnwatchTask, step: Step) -> None:
        queues = self._watchers.get(cmd.task_id)
        if queues and cmd.queue in queues:
            queues.remove(cmd.queue)
            if not queues:
                del self._watchers[cmd.task_id]

    def _notify_watchers(self, views: list[tuple[str, task_pb2.Task]]) -> None:
        for task_id, view in views:
            queues = self._watchers.get(task_id)
            if not queues:
                continue
            for q in queues:
                q.put_nowait(view)
            if is_terminal(view.state):
                del self._watchers[task_id]

    def _on_status(self, cmd: C.ClusterStatus, step: Step) -> None:
        step.replies.append((cmd.reply, _Deferred(self._status)))

    def _status(self) -> admin_service_pb2.GetClusterStatusResponse:
        resp = admin_service_pb2.GetClusterStatusResponse(
            coordinator_id=self.coordinator_id, highest_fencing_token=self.projection.highest_token)
        for state in State:
            resp.tasks_by_state.add(state=state, count=self.projection.state_counts.get(state, 0))
        for actor in self.fleet.actors.values():
            resp.actors.append(actor_status(actor))
        for task_type, ready in sorted(self.projection.ready_by_type().items(), key=lambda kv: (-kv[1], kv[0])):
            resp.queue_depths.add(task_type=task_type, ready=ready)
        resp.wal.last_seq = self.wal.last_seq
        resp.wal.commits = self.wal.commits
        schedule_ops.fill_status(self.projection.schedule_book, resp.schedules)
        operations.fill_status(self, resp)
        return resp

    # ---- commands from actors ----------------------------------------------------------------

    def _on_actor_hello(self, cmd: C.ActorHello, step: Step) -> None:
        identity = cmd.hello.identity
        key = (identity.actor_id, identity.incarnation)
        fleet = self.fleet
        if key in fleet.actors:
            raise AlreadyExists(
                f"hello.identity: actor {identity.actor_id!r} incarnation {identity.incarnation!r} is already connected")
        if key in self.projection.retired_incarnations:
            raise FailedPrecondition(
                f"hello.identity.incarnation: incarnation {identity.incarnation!r} of actor {identity.actor_id!r} was "
                f"superseded by a newer process with the same actor id; this process must stop")
        now = step.now_ms
        previous = fleet.by_actor_id.get(identity.actor_id)
        if previous is None and self.max_actors and len(fleet.by_actor_id) >= self.max_actors:
            raise ResourceExhausted(f"{len(fleet.by_actor_id)} actors are connected, the limit (--max-actors); "
                                    f"retry later")
        if previous is not None:
            # A new incarnation of the same actor: the old process is gone (restarted pod).
            fleet.disconnect(previous.key)
            previous.session.close(grpc.StatusCode.ABORTED,
                                   f"superseded by incarnation {identity.incarnation!r} of actor {identity.actor_id!r}")
        for lease in list(fleet.leases.values()):
            if lease.actor_key[0] == identity.actor_id and lease.actor_key[1] != identity.incarnation:
                self._lose_lease(lease, f"actor {identity.actor_id!r} restarted "
                                        f"(incarnation {lease.actor_key[1]!r} is gone)", step)
        actor = ConnectedActor(identity, now, cmd.link)
        cmd.link.actor_key = key
        fleet.connect(actor)
        known = self.projection.actors_seen.get(identity.actor_id)
        if known is None or known.SerializeToString(deterministic=True) != identity.SerializeToString(deterministic=True):
            self._emit(wal_pb2.WalRecord(actor_registered=wal_pb2.ActorRegistered(identity=identity)), "", step)
        msg = step.message_for(cmd.link)
        welcome = msg.welcome
        welcome.coordinator_id = self.coordinator_id
        welcome.lease_ttl_ms = fleet.lease_ttl_ms
        welcome.heartbeat_interval_ms = self.heartbeat_interval_ms
        adopted: set[str] = set()
        for ref in cmd.hello.held_leases:
            lease = fleet.leases.get(ref.task_id)
            why = decisions.fence(self.projection, fleet, key, ref.task_id, ref.attempt, ref.fencing_token,
                                  step.lease_ms)
            if why is None and lease is not None:
                fleet.adopt(lease, actor, step.lease_ms)
                welcome.adopted.add().CopyFrom(ref)
                adopted.add(ref.task_id)
                self._repeat_cancel_request(ref, cmd.link, step)
            else:
                msg.cancels.add(lease=ref, reason=CANCEL_LEASE_LOST, message=why or "lease unknown")
        # A lease granted to this very process that its hello does not re-present never reached it
        # (granted on a stream that was already broken): the attempt is lost now, not a TTL later.
        for lease in fleet.leases_of(key):
            if lease.task_id not in adopted:
                self._lose_lease(lease, f"actor {identity.actor_id!r} reconnected without the lease of attempt "
                                        f"{lease.attempt} (it never reached the actor)", step)
        step.replies.append((cmd.reply, actor))

    def _lose_lease(self, lease, why: str, step: Step) -> None:
        """End `lease`'s attempt LOST (`why`), or just drop the lease if its attempt is over."""
        record = decisions.lost_attempt_record(self.projection, lease.task_id, lease.attempt, lease.token,
                                               step.now_ms, self.rand, why)
        if record is not None:
            self._emit_attempt_ended(record, step)
        else:
            self.fleet.release(lease.task_id)

    def _repeat_cancel_request(self, ref: actor_service_pb2.LeaseRef, link: ActorLink, step: Step) -> None:
        """A canceled task's attempt is still running: (re)send the cancel. The first push may
        have found the actor disconnected; actors ignore a cancel they already acted on."""
        task = self.projection.tasks[ref.task_id]
        if task.cancel_requested:
            step.message_for(link).cancels.add(
                lease=ref, reason=CANCEL_REQUESTED, message=task.cancel_reason or "canceled by request")

    def _on_actor_update(self, cmd: C.ActorUpdate, step: Step) -> None:
        link = cmd.link
        key = link.actor_key
        if key is None or key not in self.fleet.actors:
            return  # the stream was superseded or closed; its messages no longer count
        now = step.now_ms
        projection = self.projection
        fleet = self.fleet
        request = cmd.request
        actor = fleet.actors[key]
        actor.suspect = False  # it speaks, so it is alive
        if request.draining and not actor.draining:
            actor.draining = True
            log.info("actor %s (incarnation %s) is draining: no more leases for it", key[0], key[1])
        if request.heartbeats:
            for ref in request.heartbeats:
                why = decisions.fence(projection, fleet, key, ref.task_id, ref.attempt, ref.fencing_token,
                                      step.lease_ms)
                if why is None:
                    fleet.extend(fleet.leases[ref.task_id], step.lease_ms)
                    self._repeat_cancel_request(ref, link, step)
                else:
                    step.message_for(link).cancels.add(lease=ref, reason=CANCEL_LEASE_LOST, message=why)
        if request.results:
            msg = step.message_for(link)
            for result in request.results:
                ref = result.lease
                why = decisions.fence(projection, fleet, key, ref.task_id, ref.attempt, ref.fencing_token,
                                      step.lease_ms)
                if why is None and result.outcome not in decisions.REPORTABLE_OUTCOMES:
                    why = f"results[].outcome: {result.outcome} is not a reportable outcome"
                if why is not None:
                    self.stale_results_rejected += 1
                    msg.acks.add(lease=ref, accepted=False, reason=why)
                    continue
                record = decisions.end_attempt_with_result(projection.tasks[ref.task_id], result, now, self.rand)
                self._emit_attempt_ended(record, step)
                msg.acks.add(lease=ref, accepted=True)
        if request.child_submissions:
            self._on_child_submissions(cmd, key, step)
        if request.child_waits:
            self._on_child_waits(cmd, key, step)

    def _on_child_submissions(self, cmd: C.ActorUpdate, key, step: Step) -> None:
        """Children submitted by running handlers, each fenced by its parent's lease."""
        msg = step.message_for(cmd.link)
        rejected = cmd.rejected or {}
        for i, submission in enumerate(cmd.request.child_submissions):
            answer = msg.child_submitted.add(request_id=submission.request_id)
            error = rejected.get(i)
            if error is None:
                try:
                    answer.task_id, answer.created, answer.state = self._submit_child(submission, i, key, step)
                except CorralError as exc:
                    error = exc
            if error is not None:
                answer.code = error.code
                answer.message = str(error)

    def _submit_child(self, submission: actor_service_pb2.ChildSubmission, index: int, key,
                      step: Step) -> tuple[str, bool, int]:
        ref = submission.parent
        why = decisions.fence(self.projection, self.fleet, key, ref.task_id, ref.attempt, ref.fencing_token,
                              step.lease_ms)
        if why is not None:
            raise FailedPrecondition(f"child_submissions[{index}].parent: {why}; a stale attempt cannot submit children")
        parent = self.projection.tasks[ref.task_id]
        spec = submission.task
        existing = children.check_submission(self.projection, parent, spec, self.max_task_depth)
        if existing is not None:
            return existing, False, self.projection.tasks[existing].state
        children.prepare_child_spec(parent, spec)
        return self._submit_specs([spec], [f"child_submissions[{index}].task"], step)[0]

    def _on_child_waits(self, cmd: C.ActorUpdate, key, step: Step) -> None:
        """Handlers waiting for children: answered when each child is terminal (now, if it is)."""
        tasks = self.projection.tasks
        for wait in cmd.request.child_waits:
            ref = wait.parent
            why = decisions.fence(self.projection, self.fleet, key, ref.task_id, ref.attempt, ref.fencing_token,
                                  step.lease_ms)
            for child_id in wait.task_ids:
                child = tasks.get(child_id)
                if why is None and (child is None or child.parent_id != ref.task_id):
                    why = f"task {child_id!r} is not a child of task {ref.task_id!r}"
                if why is not None:
                    outcome = step.message_for(cmd.link).child_outcomes.add(parent=ref, task_id=child_id)
                    outcome.error.message = why
                    outcome.error.kind = "child_wait_refused"
                elif is_terminal(child.state):
                    step.message_for(cmd.link).child_outcomes.append(children.outcome_message(child, ref))
                else:
                    self._child_waits.setdefault(child_id, []).append((cmd.link, ref))

    def _on_actor_gone(self, cmd: C.ActorGone, step: Step) -> None:
        key = cmd.link.actor_key
        if key is None:
            return
        actor = self.fleet.actors.get(key)
        if actor is not None and actor.session is cmd.link:
            # Its leases stay live until they expire: the actor may reconnect and re-present them.
            self.fleet.disconnect(key)
        if self._child_waits:  # the actor re-sends its waits on its next stream
            link = cmd.link
            for child_id in list(self._child_waits):
                kept = [w for w in self._child_waits[child_id] if w[0] is not link]
                if kept:
                    self._child_waits[child_id] = kept
                else:
                    del self._child_waits[child_id]

    # ---- time and selection ------------------------------------------------------------------

    def _expire_leases(self, step: Step) -> None:
        now = step.now_ms
        for lease in list(self.fleet.pop_expired(step.lease_ms)):
            self.lease_expiries += 1
            record = decisions.lost_attempt_record(
                self.projection, lease.task_id, lease.attempt, lease.token, now, self.rand,
                f"lease expired: no heartbeat from actor {lease.actor_key[0]!r} for {self.fleet.lease_ttl_ms} ms")
            self._push_cancel(lease.task_id, lease.attempt, lease.token, CANCEL_LEASE_LOST, "lease expired", step)
            holder = self.fleet.actors.get(lease.actor_key)
            if holder is not None:
                holder.suspect = True
            if record is not None:
                self._emit_attempt_ended(record, step)
            else:
                self.fleet.release(lease.task_id)

    def _fire_timers(self, step: Step) -> None:
        now = step.now_ms
        projection = self.projection
        for kind, task_id, attempt in projection.pop_due_timers(now):
            if kind == TIMER_ATTEMPT_DEADLINE and now < self._deadline_hold_until_ms:
                projection.defer_timer(self._deadline_hold_until_ms, kind, task_id, attempt)
                continue
            record = decisions.timer_record(projection, kind, task_id, attempt, now, self.rand)
            if record is None:
                continue
            if record.HasField("attempt_ended"):
                ended = record.attempt_ended
                self._push_cancel(task_id, ended.attempt, ended.fencing_token, CANCEL_TIMED_OUT,
                                  ended.reason or "attempt deadline passed", step)
                self._emit_attempt_ended(record, step)
            else:
                self._emit(record, task_id, step)

    def _forget_expired(self, step: Step) -> None:
        """Retention: TasksForgotten records for finished tasks past it (bounded work per step)."""
        due, more = retention.due_forgets(self.projection, step.now_ms, self.retention_ms)
        for record in retention.forget_records(due):
            self._emit_one(record, "", step)
        self.tasks_forgotten += len(due)
        self._next_sweep_ms = step.now_ms if more else step.now_ms + min(RETENTION_SWEEP_MS, self.retention_ms)

    def _apply_key_policy(self, task, step: Step) -> None:
        """A keyed newcomer's policy (core/admission.py): CANCEL_IN_PROGRESS cancels the earlier
        tasks with its key (pushing the cancel to running ones' actors); DROP_NEW ends it."""
        tasks = self.projection.tasks
        for record in admission_mod.on_submitted(self.projection, task):
            # Decided before any was applied: an earlier one may have ended this task already
            # (a canceled parent cancels its children), so each is checked as it is written.
            if record.HasField("cancel_requested"):
                task_id = record.cancel_requested.task_id
                other = tasks[task_id]
                if other.state != State.RUNNING or other.cancel_requested:
                    continue
                self._emit(record, task_id, step)
                a = self.projection.tasks[task_id].current_attempt
                self._push_cancel(task_id, a.number, a.fencing_token, CANCEL_REQUESTED,
                                  record.cancel_requested.reason, step)
            else:
                task_id = record.task_state_changed.task_id
                if is_terminal(tasks[task_id].state):
                    continue
                self._emit(record, task_id, step)

    def _grant(self, step: Step) -> None:
        admission = self.admission
        if admission.rate_limited:
            budget = admission.grant_budget(step.lease_ms)
            grants = decisions.select_grants(self.projection, self.fleet, budget)
            admission.granted((task.type for task, _ in grants), step.lease_ms)
        else:
            grants = decisions.select_grants(self.projection, self.fleet)
        if not grants:
            return
        step.grants = grants
        now = step.now_ms
        projection = self.projection
        fleet = self.fleet
        for task, actor in grants:
            token = projection.highest_token + 1
            attempt = len(task.attempts) + 1
            deadline = now + task.execution_timeout_ms
            key = actor.key
            record = WalRecord()
            event = record.lease_granted
            event.task_id = task.task_id
            event.attempt = attempt
            event.fencing_token = token
            event.actor_id, event.actor_incarnation = key
            event.deadline_unix_ms = deadline
            self._emit(record, task.task_id, step)
            fleet.bind(task.task_id, attempt, token, key, step.lease_ms)
            spec = task.spec
            lease = step.message_for(actor.session).leases.add(
                task_type=task.type, execution_timeout_ms=task.execution_timeout_ms, deadline_unix_ms=deadline)
            ref = lease.ref
            ref.task_id = task.task_id
            ref.attempt = attempt
            ref.fencing_token = token
            payload = spec.WhichOneof("payload")
            if payload == "input":
                lease.input.CopyFrom(spec.input)
            elif payload == "input_bytes":
                lease.input_bytes = spec.input_bytes
            if spec.labels:
                lease.labels.update(spec.labels)
            if task.prerequisites:  # task graphs: the prerequisites' outputs
                graph.fill_prerequisites(projection, task, lease)
            trace_context = spec.trace_context
            if trace_context:
                # The attempt's span on the actor is a child of the task's submission span.
                lease_context = lease.trace_context
                for name in trace_context:  # per key: half the cost of .update()
                    lease_context[name] = trace_context[name]

    _handlers: dict[type, Callable[["DispatchLoop", Any, Step], None]] = {
        C.SubmitTasks: _on_submit,
        C.GetTask: _on_get,
        C.ListTasks: _on_list,
        C.CancelTask: _on_cancel,
        C.DeclareDependency: _on_declare_dependency,
        C.WatchTask: _on_watch,
        C.UnwatchTask: _on_unwatch,
        C.ClusterStatus: _on_status,
        C.ActorHello: _on_actor_hello,
        C.ActorUpdate: _on_actor_update,
        C.ActorGone: _on_actor_gone,
        **operations.HANDLERS,  # Pause, Resume, Drain, WatchEvents
        **schedule_ops.HANDLERS,  # Create/Get/List/Pause/Resume/DeleteSchedule
    }


class _Deferred:
    """A reply value computed after the commit (so it shows only durable state)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def actor_status(actor: ConnectedActor) -> admin_service_pb2.ActorStatus:
    status = admin_service_pb2.ActorStatus(
        identity=actor.identity, free_slots=actor.free_slots, leases_held=len(actor.held),
        draining=actor.draining, suspect=actor.suspect)
    status.connected_at.FromMilliseconds(actor.connected_ms)
    return status
