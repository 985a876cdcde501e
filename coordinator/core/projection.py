"""The projection: the coordinator's durable state in memory, built only by applying WAL records.

Owns: tasks, the idempotency index, the ready queues, the durable timers (promotion, schedule-to-
start, attempt deadlines), the fencing-token high-water mark, the identities actors introduced,
whether dispatch is paused (AdminService Pause/Resume), and the schedules (`schedules`, kept by
core/schedule_book.py: one corral.v1.Schedule message each, plus an index of next occurrences).

Invariants:
- `apply` is the only writer. The live dispatch loop applies exactly the records it commits, and
  replay applies the same records in the same order, so replaying a WAL twice (or replay versus
  live) yields equal projections (`fingerprint`).
- Every state change is checked against the transition table (states.check_transition).
- Fencing tokens in LeaseGranted records strictly increase; a WAL that violates it is refused.
- Ready queues and timers are indexes with lazy deletion: an entry is acted on only if the task
  is still in the state (and order/attempt) the entry was made for. `ready_count` counts the
  READY tasks in the ready queues (keyed tasks waiting for their key are not there yet).
- Concurrency-key occupancy (core/concurrency.py) is maintained here, on every state change, so
  replay rebuilds it; it is part of the fingerprint.
- Ready-queue order is priority with aging, then FIFO (`ready_entry`).
- Task graphs (core/graph.py): `dependents` (prerequisite -> dependents, one entry per edge) and
  each task's `unfinished_prerequisites` are maintained here from TaskSubmitted (spec.depends_on),
  DependencyDeclared and the SUCCEEDED AttemptEnded of a prerequisite, so replay rebuilds them.
  What happens to the dependents (promotion, cascading cancels) is decided by graph.py and
  written by the loop as ordinary records.
- Children (core/children.py): `child_keys` ((parent id, child key) -> child id) and each task's
  parent/depth/children/unfinished_children/failed_child are maintained here from TaskSubmitted
  (spec.parent_task_id) and the children's terminal transitions, so replay rebuilds them. The
  handler's output of a parent that waits for its children is kept in `result` (the AttemptEnded
  to WAITING_FOR_CHILDREN) and becomes the task's output when it SUCCEEDS.
- Retention (core/retention.py): a TasksForgotten record removes finished tasks from every index
  (tasks, ListTasks index, idempotency keys, dependency edges, child keys, state counts).
  `expiry` (finished task ids in the order they finished; lazily cleaned) is derived state for
  finding them.
- `by_ordinal` (core/ordinal_index.py) is the ListTasks index: a page costs O(log n + page).
- A ready queue whose live entries are all gone is dropped (`ready_live` counts them per key), so
  client-chosen (type, capabilities) keys do not accumulate.
- Snapshots (core/snapshot.py): `unsaved_finished` / `forgotten_ordinals` (None unless a
  snapshotter enabled them) list the finished tasks whose snapshot row must be (re)written and
  the rows to delete. A change to a finished task must append it to `unsaved_finished`.
"""
from __future__ import annotations

import hashlib
import heapq
from collections import deque
from typing import Iterable

from corral.v1 import task_pb2, wal_pb2

from .concurrency import ConcurrencyIndex
from .durations import to_ms
from .model import AttemptRecord, TaskRecord
from .ordinal_index import OrdinalIndex
from .schedule_book import BadScheduleRecord, ScheduleBook
from .states import (_ALLOWED, READY, SUCCEEDED, TERMINAL_STATES, WAITING, WAITING_FOR_CHILDREN, State, check_transition,
                     is_terminal)
# Durable timer kinds.
TIMER_PROMOTE = 1          # SCHEDULED / RETRY_WAIT -> READY at ready_at_ms
TIMER_SCHEDULE_TO_START = 2  # READY too long before its first attempt
TIMER_ATTEMPT_DEADLINE = 3   # RUNNING past its attempt deadline (+ grace)
TIMER_CLOSE = 4              # not terminal at its total (schedule-to-close) deadline
_TERMINAL_INTS = frozenset(int(s) for s in (State.SUCCEEDED, State.FAILED, State.CANCELED))

QueueKey = tuple[str, frozenset[str]]
TIMERS_COMPACT_MIN = 4096
# Aging: a READY task's effective priority grows by 1 per this many ms waited (0: no aging).
DEFAULT_PRIORITY_AGING_MS = 60_000


class CorruptProjection(Exception):
    """A record that cannot apply to the current state (unknown task, token going backwards)."""


class Projection:
    def __init__(self, deadline_grace_ms: int = 2_000, priority_aging_ms: int = DEFAULT_PRIORITY_AGING_MS,
                 track_expiry: bool = False) -> None:
        self.deadline_grace_ms = deadline_grace_ms
        self.priority_aging_ms = priority_aging_ms
        self.tasks: dict[str, TaskRecord] = {}
        # ListTasks index: ordinal -> task (sorted), so a page seeks in O(log n).
        self.by_ordinal = OrdinalIndex()
        self.idempotency: dict[str, str] = {}
        self.ready_queues: dict[QueueKey, list[tuple[int, int, str]]] = {}
        # Live (not stale) entries per ready queue: an empty queue's key is dropped.
        self.ready_live: dict[QueueKey, int] = {}
        # Retention (core/retention.py): ids of finished tasks in the order they finished (only
        # when retention is on). Derived; entries of tasks since forgotten are skipped lazily.
        self.expiry: deque[str] | None = deque() if track_expiry else None
        # Snapshots (core/snapshot.py), None unless enabled: finished tasks whose row must be
        # written, and ordinals of forgotten tasks whose row must be deleted.
        self.unsaved_finished: list[TaskRecord] | None = None
        self.forgotten_ordinals: list[int] | None = None
        self.ready_count = 0
        self.timers: list[tuple[int, int, int, str, int]] = []
        self._timers_compact_at = TIMERS_COMPACT_MIN
        self._timer_order = 0
        self._ready_order = 0
        self.highest_token = 0
        self.last_seq = 0
        self.submitted_count = 0
        self.actors_seen: dict[str, task_pb2.ExecutorIdentity] = {}
        self.retired_incarnations: set[tuple[str, str]] = set()
        self.state_counts: dict[int, int] = {int(s): 0 for s in State}
        # Concurrency keys: occupants and waiting READY tasks per key (core/concurrency.py).
        self.concurrency = ConcurrencyIndex(self)
        # Task graphs: prerequisite id -> ids of the tasks that depend on it (core/graph.py).
        self.dependents: dict[str, list[str]] = {}
        # Children: (parent id, child key) -> child id (core/children.py).
        self.child_keys: dict[tuple[str, str], str] = {}
        self._appliers = {
            "task_submitted": self._apply_submitted,
            "lease_granted": self._apply_lease_granted,
            "attempt_ended": self._apply_attempt_ended,
            "task_state_changed": self._apply_state_changed,
            "cancel_requested": self._apply_cancel_requested,
            "actor_registered": self._apply_actor_registered,
            "dispatch_paused": self._apply_dispatch_paused,
            "dispatch_resumed": self._apply_dispatch_resumed,
            "dependency_declared": self._apply_dependency_declared,
            "tasks_forgotten": self._apply_tasks_forgotten,
        }
        # Schedules (core/schedule_book.py): one corral.v1.Schedule message per schedule holds all
        # of its durable state; the book also keeps the index of next occurrences for the loop.
        self.schedule_book = ScheduleBook()
        for kind, apply_schedule in self.schedule_book.appliers().items():
            self._appliers[kind] = _corrupt_on_bad_schedule(apply_schedule)
        # AdminService Pause/Resume: while paused the loop grants no lease (durable, so it
        # outlives a restart). Nothing else changes: timers fire, attempts end, tasks are accepted.
        self.paused = False
        self.pause_reason = ""

    # ---- applying records -------------------------------------------------------------------

    def apply(self, record: wal_pb2.WalRecord, now_ms: int) -> None:
        """Apply one record. `now_ms` is the record's time (at_unix_ms when replaying)."""
        kind = record.WhichOneof("event")
        applier = self._appliers.get(kind)  # type: ignore[arg-type]
        if applier is None:
            raise CorruptProjection(f"record {record.seq}: unknown event {kind!r}")
        applier(getattr(record, kind), now_ms)
        if record.seq:
            self.last_seq = record.seq

    def apply_all(self, records: Iterable[wal_pb2.WalRecord]) -> int:
        n = 0
        for record in records:
            self.apply(record, record.at_unix_ms)
            n += 1
        return n

    def _task(self, task_id: str) -> TaskRecord:
        task = self.tasks.get(task_id)
        if task is None:
            raise CorruptProjection(f"record refers to unknown task {task_id!r}")
        return task

    def _set_state(self, task: TaskRecord, state: int, now_ms: int) -> None:
        previous = task.state
        allowed = _ALLOWED.get(previous)  # = check_transition, inlined (three times per task)
        if allowed is None or state not in allowed:
            check_transition(task.task_id, previous, state)  # raises IllegalTransition
        counts = self.state_counts
        counts[previous] -= 1
        counts[state] += 1
        task.state = state
        task.updated_ms = now_ms
        if task.concurrency_key:
            # Keyed tasks: READY ones wait in their key's heap until it has room.
            self.concurrency.transition(task, previous, state, now_ms)
        elif state == READY:
            self.push_ready(task, self.ready_entry(task, now_ms))
        elif previous == READY:  # left_ready_queue, inlined: once per grant
            self.ready_count -= 1
            queue_key = task.queue_key
            ready_live = self.ready_live
            live = ready_live[queue_key] - 1
            if live:
                ready_live[queue_key] = live
            else:
                del ready_live[queue_key]
                del self.ready_queues[queue_key]
        if state in _TERMINAL_INTS:
            if task.parent_id:
                self._child_ended(task, state)
            if self.expiry is not None:
                self.expiry.append(task.task_id)
            if self.unsaved_finished is not None:
                self.unsaved_finished.append(task)

    def ready_entry(self, task: TaskRecord, now_ms: int) -> tuple[int, int, str]:
        """A task becomes READY: its ready-queue entry (sort key, ready_order, task_id).

        Sort key, smallest first: with aging, `now - priority * aging_ms`. Effective priority is
        priority + waited / aging (continuous), and comparing two tasks' effective priorities at
        any time gives the same answer as comparing these keys, so the key never changes and no
        queue is ever rescanned. Without aging: -priority. FIFO (ready_order) breaks ties."""
        self._ready_order += 1
        task.ready_order = self._ready_order
        if not task.started_once:
            if task.eligible_since_ms == 0:
                task.eligible_since_ms = now_ms
            if task.schedule_to_start_ms:
                # Armed again whenever it is READY again before its first attempt (out of
                # WAITING_FOR_DEPENDENCIES): a timer that came due meanwhile was dropped, while a
                # restart rebuilds it from eligible_since_ms; both must decide the same.
                self._add_timer(task.eligible_since_ms + task.schedule_to_start_ms, TIMER_SCHEDULE_TO_START,
                                task.task_id, 0)
        key = task.ready_key = self.ready_sort_key(task, now_ms)
        return (key, task.ready_order, task.task_id)

    def ready_sort_key(self, task: TaskRecord, now_ms: int) -> int:
        """The sort key `ready_entry` gives a task that becomes READY at `now_ms` (no side effect)."""
        aging = self.priority_aging_ms
        return now_ms - task.priority * aging if aging else -task.priority

    def push_ready(self, task: TaskRecord, entry: tuple[int, int, str]) -> None:
        """Put a READY task where selection finds it (for keyed tasks: once admitted)."""
        queue_key = task.queue_key
        queue = self.ready_queues.get(queue_key)
        if queue is None:
            queue = self.ready_queues[queue_key] = []
            self.ready_live[queue_key] = 1
        else:
            self.ready_live[queue_key] += 1
        heapq.heappush(queue, entry)
        self.ready_count += 1

    def left_ready_queue(self, task: TaskRecord) -> None:
        """A task in a ready queue is no longer READY: its entry is stale from now on (lazy
        deletion); a queue left with no live entry is dropped. Selection (decisions.select_grants)
        holds no queue across applies, so dropping one here is safe."""
        self.ready_count -= 1
        queue_key = task.queue_key
        live = self.ready_live[queue_key] - 1
        if live:
            self.ready_live[queue_key] = live
        else:
            del self.ready_live[queue_key]
            del self.ready_queues[queue_key]

    def ready_by_type(self) -> dict[str, int]:
        """READY tasks in the ready queues (admitted, waiting for a slot), by task type: exact,
        from the live-entry counts, in O(number of queues)."""
        depths: dict[str, int] = {}
        for (task_type, _caps), live in self.ready_live.items():
            depths[task_type] = depths.get(task_type, 0) + live
        return depths

    def _add_timer(self, due_ms: int, kind: int, task_id: str, attempt: int) -> None:
        self._timer_order += 1
        heapq.heappush(self.timers, (due_ms, self._timer_order, kind, task_id, attempt))
        if len(self.timers) > self._timers_compact_at:
            self._compact_timers()

    def _timer_applies(self, kind: int, task_id: str, attempt: int) -> bool:
        task = self.tasks.get(task_id)
        if task is None:
            return False
        if kind == TIMER_ATTEMPT_DEADLINE:
            return task.state == State.RUNNING and task.attempts[-1].number == attempt
        if kind == TIMER_PROMOTE:
            return task.state == State.SCHEDULED or task.state == State.RETRY_WAIT
        if kind == TIMER_CLOSE:
            return not is_terminal(task.state)
        return task.state == READY and not task.started_once

    def _compact_timers(self) -> None:
        """Drop timers that can no longer fire (every finished attempt leaves its deadline timer
        behind), so the heap stays proportional to the live tasks, not to the throughput."""
        self.timers = [t for t in self.timers if self._timer_applies(t[2], t[3], t[4])]
        heapq.heapify(self.timers)
        self._timers_compact_at = max(TIMERS_COMPACT_MIN, 2 * len(self.timers))

    def _apply_submitted(self, ev: wal_pb2.TaskSubmitted, now_ms: int) -> None:
        if ev.task_id in self.tasks:
            raise CorruptProjection(f"task {ev.task_id!r} submitted twice")
        spec = ev.spec  # records are immutable once committed: share, don't copy
        task = TaskRecord(ev.task_id, spec, State.SCHEDULED, now_ms, ev.ready_at_unix_ms)
        self.submitted_count += 1
        task.ordinal = self.submitted_count
        self.tasks[ev.task_id] = task
        by_ordinal = self.by_ordinal  # = OrdinalIndex.add, inlined: ordinals only grow here
        by_ordinal.ordinals.append(task.ordinal)
        by_ordinal.tasks.append(task)
        self.state_counts[State.SCHEDULED] += 1
        if spec.idempotency_key:
            self.idempotency[spec.idempotency_key] = ev.task_id
        if task.concurrency_key:
            self.concurrency.add_member(task)
        if spec.depends_on:
            self._add_prerequisites(task, spec.depends_on)
        if spec.parent_task_id:
            self._add_child(task, spec)
        if spec.HasField("schedule_to_close_timeout"):
            task.close_at_ms = max(now_ms, ev.ready_at_unix_ms) + to_ms(spec.schedule_to_close_timeout)
            self._add_timer(task.close_at_ms, TIMER_CLOSE, ev.task_id, 0)
        if ev.state == State.READY:
            self._set_state(task, State.READY, now_ms)
        elif ev.state == State.SCHEDULED:
            self._add_timer(ev.ready_at_unix_ms, TIMER_PROMOTE, ev.task_id, 0)
        elif ev.state == WAITING:
            self._set_state(task, WAITING, now_ms)
        else:
            raise CorruptProjection(f"task {ev.task_id!r} submitted in state {ev.state}")

    def _apply_lease_granted(self, ev: wal_pb2.LeaseGranted, now_ms: int) -> None:
        task = self._task(ev.task_id)
        if ev.fencing_token <= self.highest_token:
            raise CorruptProjection(
                f"fencing token {ev.fencing_token} for task {ev.task_id!r} is not above the high-water mark {self.highest_token}"
            )
        if ev.attempt != len(task.attempts) + 1:
            raise CorruptProjection(f"task {ev.task_id!r}: attempt {ev.attempt} out of order")
        self.highest_token = ev.fencing_token
        self._set_state(task, State.RUNNING, now_ms)  # leaves the ready queue (ready_count)
        task.started_once = True
        task.attempts.append(
            AttemptRecord(ev.attempt, ev.fencing_token, ev.actor_id, ev.actor_incarnation, now_ms, ev.deadline_unix_ms)
        )
        self._add_timer(ev.deadline_unix_ms + self.deadline_grace_ms, TIMER_ATTEMPT_DEADLINE, ev.task_id, ev.attempt)

    def _apply_attempt_ended(self, ev: wal_pb2.AttemptEnded, now_ms: int) -> None:
        task = self._task(ev.task_id)
        attempt = task.current_attempt
        if attempt is None or attempt.number != ev.attempt or attempt.fencing_token != ev.fencing_token:
            raise CorruptProjection(f"task {ev.task_id!r}: attempt {ev.attempt} token {ev.fencing_token} is not current")
        if task.state != State.RUNNING or attempt.outcome != task_pb2.ATTEMPT_OUTCOME_UNSPECIFIED:
            raise CorruptProjection(f"task {ev.task_id!r}: attempt {ev.attempt} has already ended")
        attempt.ended_ms = now_ms
        attempt.outcome = ev.outcome
        if ev.HasField("error"):
            attempt.error = ev.error
        outcome = ev.outcome
        if outcome == task_pb2.ATTEMPT_OUTCOME_FAILED or outcome == task_pb2.ATTEMPT_OUTCOME_TIMED_OUT:
            task.failed_attempts += 1
        elif outcome == task_pb2.ATTEMPT_OUTCOME_LOST or (
                outcome == task_pb2.ATTEMPT_OUTCOME_CANCELED and ev.next_state != State.CANCELED):
            # Lost, or handed back by its actor without a cancel request: both count as lost.
            task.lost_attempts += 1
        next_state = ev.next_state
        self._set_state(task, next_state, now_ms)
        task.state_reason = ev.reason
        if next_state == State.SUCCEEDED:
            task.result = ev
            task.error = None
            if self.dependents:
                self._prerequisite_succeeded(ev.task_id)
        elif next_state == WAITING_FOR_CHILDREN:
            task.result = ev  # the handler's output: the task's once its children have finished
            task.error = None
        elif ev.HasField("error"):
            task.error = ev.error
        if next_state == State.RETRY_WAIT:
            task.ready_at_ms = ev.ready_at_unix_ms
            self._add_timer(ev.ready_at_unix_ms, TIMER_PROMOTE, ev.task_id, 0)

    def _apply_state_changed(self, ev: wal_pb2.TaskStateChanged, now_ms: int) -> None:
        task = self._task(ev.task_id)
        if task.state == State.RUNNING or ev.state == State.RUNNING:
            raise CorruptProjection(
                f"task {ev.task_id!r}: TaskStateChanged cannot start or end an attempt ({task.state} -> {ev.state})")
        self._set_state(task, ev.state, now_ms)
        task.state_reason = ev.reason
        if ev.HasField("error"):
            task.error = ev.error
        if ev.state == SUCCEEDED and self.dependents:  # out of WAITING_FOR_CHILDREN
            self._prerequisite_succeeded(ev.task_id)
        if ev.state == State.SCHEDULED:  # out of WAITING_FOR_DEPENDENCIES, not_before still ahead
            self._add_timer(task.ready_at_ms, TIMER_PROMOTE, ev.task_id, 0)

    def _prerequisite_succeeded(self, task_id: str) -> None:
        dependents = self.dependents.get(task_id)
        if dependents:
            tasks = self.tasks
            unsaved = self.unsaved_finished
            for dependent_id in dependents:
                dependent = tasks[dependent_id]
                dependent.unfinished_prerequisites -= 1
                if unsaved is not None and dependent.state in TERMINAL_STATES:
                    unsaved.append(dependent)  # a finished task changed: rewrite its row

    def _add_child(self, task: TaskRecord, spec: task_pb2.TaskSpec) -> None:
        """Link a child (submitted by its parent's handler) to its parent."""
        parent = self.tasks.get(spec.parent_task_id)
        if parent is None:
            raise CorruptProjection(f"task {task.task_id!r} has unknown parent {spec.parent_task_id!r}")
        key = (parent.task_id, spec.child_key)
        if key in self.child_keys:
            raise CorruptProjection(f"task {parent.task_id!r} has two children with key {spec.child_key!r}")
        self.child_keys[key] = task.task_id
        task.parent_id = parent.task_id
        task.depth = parent.depth + 1
        if not parent.children:
            parent.children = []
        parent.children.append(task.task_id)
        if not spec.detached:
            parent.unfinished_children += 1

    def _child_ended(self, task: TaskRecord, state: int) -> None:
        """A child reached a terminal state: its parent's counters (not for detached children)."""
        spec = task.spec
        if spec.detached or not task.parent_id:  # not linked: its parent was forgotten
            return
        parent = self.tasks[task.parent_id]
        parent.unfinished_children -= 1
        if state != SUCCEEDED and not spec.allow_failure and not parent.failed_child:
            parent.failed_child = task.task_id
        if self.unsaved_finished is not None and parent.state in TERMINAL_STATES:
            self.unsaved_finished.append(parent)  # a finished task changed: rewrite its row

    def _add_prerequisites(self, task: TaskRecord, prerequisite_ids) -> None:
        """Index the edges task -> prerequisites; count the prerequisites not SUCCEEDED yet."""
        if not task.prerequisites:
            task.prerequisites = []
        tasks = self.tasks
        dependents = self.dependents
        for prerequisite_id in prerequisite_ids:
            prerequisite = tasks.get(prerequisite_id)
            if prerequisite is None:
                raise CorruptProjection(f"task {task.task_id!r} depends on unknown task {prerequisite_id!r}")
            if prerequisite_id in task.prerequisites or prerequisite_id == task.task_id:
                raise CorruptProjection(f"task {task.task_id!r}: bad or repeated prerequisite {prerequisite_id!r}")
            task.prerequisites.append(prerequisite_id)
            dependents.setdefault(prerequisite_id, []).append(task.task_id)
            if prerequisite.state != SUCCEEDED:
                task.unfinished_prerequisites += 1

    def _apply_dependency_declared(self, ev: wal_pb2.DependencyDeclared, now_ms: int) -> None:
        task = self._task(ev.task_id)
        if is_terminal(task.state) or task.started_once or task.state == State.RUNNING:
            raise CorruptProjection(f"dependency declared for task {ev.task_id!r}, which has started or ended")
        self._add_prerequisites(task, ev.depends_on)
        task.updated_ms = now_ms

    def _apply_cancel_requested(self, ev: wal_pb2.CancelRequested, now_ms: int) -> None:
        task = self._task(ev.task_id)
        if is_terminal(task.state):
            raise CorruptProjection(f"cancel requested for terminal task {ev.task_id!r}")
        task.cancel_requested = True
        task.cancel_reason = ev.reason
        task.updated_ms = now_ms

    def _apply_actor_registered(self, ev: wal_pb2.ActorRegistered, now_ms: int) -> None:
        identity = task_pb2.ExecutorIdentity()
        identity.CopyFrom(ev.identity)
        previous = self.actors_seen.get(identity.actor_id)
        if previous is not None and previous.incarnation != identity.incarnation:
            # A new process took the actor id: the old one is gone for good and may not come back.
            self.retired_incarnations.add((previous.actor_id, previous.incarnation))
        self.actors_seen[identity.actor_id] = identity

    def _apply_tasks_forgotten(self, ev: wal_pb2.TasksForgotten, now_ms: int) -> None:
        for task_id in ev.task_ids:
            task = self._task(task_id)
            if task.state not in TERMINAL_STATES:
                raise CorruptProjection(f"task {task_id!r} forgotten while {State(task.state).name}")
            self.forget(task)

    def forget(self, task: TaskRecord) -> None:
        """Remove a finished task from every index (retention; see core/retention.py)."""
        task_id = task.task_id
        del self.tasks[task_id]
        self.by_ordinal.remove(task.ordinal)
        self.state_counts[task.state] -= 1
        key = task.spec.idempotency_key
        if key and self.idempotency.get(key) == task_id:
            del self.idempotency[key]
        dependents = self.dependents
        if dependents:
            # A finished task's own dependents keep naming it in their prerequisites (their view
            # lists it; a lease built for them skips it: graph.fill_prerequisites).
            dependents.pop(task_id, None)
            for prerequisite_id in task.prerequisites:
                edges = dependents.get(prerequisite_id)
                # A prerequisite forgotten before this task took its edges with it; its id may
                # since name a new task, whose edges are not this task's.
                if edges is not None and task_id in edges:
                    edges.remove(task_id)
                    if not edges:
                        del dependents[prerequisite_id]
        if task.parent_id:  # children (core/children.py): the parent no longer lists it
            parent = self.tasks.get(task.parent_id)
            if parent is None or task_id not in parent.children:
                raise CorruptProjection(f"task {task_id!r} names parent {task.parent_id!r}, which does not list it")
            parent.children.remove(task_id)
            self.child_keys.pop((parent.task_id, task.spec.child_key), None)
            if self.unsaved_finished is not None and parent.state in TERMINAL_STATES:
                self.unsaved_finished.append(parent)  # a finished task changed: rewrite its row
        if task.children:
            # Its children's keys go with it, and its children are unlinked: a task submitted
            # later under the same id is not their parent (their spec still names the old one).
            child_keys = self.child_keys
            tasks = self.tasks
            unsaved = self.unsaved_finished
            for child_id in task.children:
                child = tasks.get(child_id)
                if child is not None:
                    child_keys.pop((task_id, child.spec.child_key), None)
                    child.parent_id = ""
                    if unsaved is not None and child.state in TERMINAL_STATES:
                        unsaved.append(child)  # a finished task changed: rewrite its row
        if self.forgotten_ordinals is not None:
            self.forgotten_ordinals.append(task.ordinal)

    def _apply_dispatch_paused(self, ev: wal_pb2.DispatchPaused, now_ms: int) -> None:
        self.paused = True
        self.pause_reason = ev.reason

    def _apply_dispatch_resumed(self, ev: wal_pb2.DispatchResumed, now_ms: int) -> None:
        self.paused = False
        self.pause_reason = ""

    @property
    def schedules(self) -> dict:
        """Schedule id -> corral.v1.Schedule: everything durable about each schedule."""
        return self.schedule_book.schedules

    @schedules.setter
    def schedules(self, value: dict) -> None:  # e.g. restored from a snapshot: re-index
        self.schedule_book.schedules = value
        self.schedule_book.rebuild_index()

    # ---- queries used by the decisions ------------------------------------------------------

    def pop_due_timers(self, now_ms: int) -> list[tuple[int, str, int]]:
        """(kind, task_id, attempt) of every timer due at `now_ms`, removed from the heap.

        A list, not a generator: acting on a timer may add timers (and compact the heap)."""
        timers = self.timers
        due = []
        while timers and timers[0][0] <= now_ms:
            _, _, kind, task_id, attempt = heapq.heappop(timers)
            due.append((kind, task_id, attempt))
        return due

    def defer_timer(self, due_ms: int, kind: int, task_id: str, attempt: int) -> None:
        """Put a popped timer back for later (an index change only; no state changes)."""
        self._add_timer(due_ms, kind, task_id, attempt)

    def next_timer_ms(self) -> int | None:
        return self.timers[0][0] if self.timers else None

    def fingerprint(self) -> str:
        """A digest of everything durable, equal for equal projections."""
        h = hashlib.sha256()
        # last_seq is the WAL's position, not state: live records get their seq at commit.
        h.update(repr((self.highest_token, sorted(self.idempotency.items()),
                       sorted(self.retired_incarnations))).encode())
        # Concurrency keys: members, occupants and waiting order (an index, but one that gates
        # dispatch, so live and replay must agree on it exactly).
        h.update(repr(self.concurrency.summary()).encode())
        if self.dependents:
            h.update(repr(sorted((k, tuple(v)) for k, v in self.dependents.items())).encode())
        if self.child_keys:
            h.update(repr(sorted(self.child_keys.items())).encode())
        for task_id in sorted(self.tasks):
            h.update(repr(self.tasks[task_id].as_tuple()).encode())
        for actor_id in sorted(self.actors_seen):
            h.update(self.actors_seen[actor_id].SerializeToString(deterministic=True))
        if self.paused:
            h.update(repr(("paused", self.pause_reason)).encode())
        if self.schedules:
            h.update(self.schedule_book.digest())
        return h.hexdigest()


def _corrupt_on_bad_schedule(apply_schedule):
    def apply(ev, now_ms: int) -> None:
        try:
            apply_schedule(ev, now_ms)
        except BadScheduleRecord as exc:
            raise CorruptProjection(str(exc)) from None
    return apply
