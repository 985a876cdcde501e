"""Concurrency keys: validation of the spec fields, and the key-occupancy index of the projection.

Owns: which tasks hold which concurrency key, and which READY tasks wait for one. Tasks sharing a
key run at most `concurrency_limit` at once, cluster-wide. The index is maintained only by
`Projection.apply` (through `ConcurrencyIndex.transition`), so WAL replay rebuilds it exactly;
`summary()` is part of `Projection.fingerprint()`.

How a key gates dispatch (the cost does not grow with the number of waiting tasks):
- A keyed READY task is either *admitted* (in the normal ready queues, where `select_grants` may
  grant it) or *waiting* (in its key's own heap, invisible to selection). A key admits its
  waiting tasks, best first, only while its occupants are fewer than the head's limit. So a key
  with 100,000 waiting tasks costs selection nothing, and never holds up other keys or queues.
- The occupants of a key are its RUNNING tasks, its RETRY_WAIT tasks with hold_key_during_retry,
  and its admitted READY tasks (a reservation: selection can therefore never grant more than
  the limit in one step, without knowing about keys).
- A task that holds its key and goes READY again (lost attempt, handed back, retry with
  hold_key_during_retry) keeps its place: its hold becomes an admission, no newcomer can take
  the key in between.
- Admission is retried whenever the key may have room for its head: an occupant leaves, a task
  becomes READY, or a waiting task leaves (it may have been the head, whose own limit held back
  a task with a higher limit behind it).
- Waiting heaps use the ready queues' order (priority with aging, then FIFO: see
  `Projection.ready_entry`) and lazy deletion: an entry counts only if its task is still READY
  with the same ready_order and not admitted.

Pure: no I/O, no clock.
"""
from __future__ import annotations

import heapq
from typing import Any

from corral.v1 import task_pb2

from .errors import InvalidField
from .states import READY, RETRY_WAIT, RUNNING, is_terminal

QUEUE = task_pb2.CONCURRENCY_POLICY_QUEUE
CANCEL_IN_PROGRESS = task_pb2.CONCURRENCY_POLICY_CANCEL_IN_PROGRESS
DROP_NEW = task_pb2.CONCURRENCY_POLICY_DROP_NEW
POLICIES = frozenset({QUEUE, CANCEL_IN_PROGRESS, DROP_NEW})
POLICY_NAMES = {QUEUE: "QUEUE", CANCEL_IN_PROGRESS: "CANCEL_IN_PROGRESS", DROP_NEW: "DROP_NEW"}

MAX_KEY_CHARS = 256
MAX_LIMIT = 100_000
WAITING_COMPACT_SLACK = 1024


def normalize_concurrency(spec: task_pb2.TaskSpec, field: str) -> None:
    """Validate the concurrency fields of `spec` in place and fill their defaults."""
    key = spec.concurrency_key
    if not key:
        if spec.concurrency_limit:
            raise InvalidField(f"{field}.concurrency_limit", "needs a concurrency_key")
        if spec.concurrency_policy:
            raise InvalidField(f"{field}.concurrency_policy", "needs a concurrency_key")
        if spec.hold_key_during_retry:
            raise InvalidField(f"{field}.hold_key_during_retry", "needs a concurrency_key")
        return
    if len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise InvalidField(f"{field}.concurrency_key", f"must be 1-{MAX_KEY_CHARS} printable characters")
    limit = spec.concurrency_limit
    if limit < 0 or limit > MAX_LIMIT:
        raise InvalidField(f"{field}.concurrency_limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
    if limit == 0:
        spec.concurrency_limit = 1
    policy = spec.concurrency_policy
    if policy == task_pb2.CONCURRENCY_POLICY_UNSPECIFIED:
        spec.concurrency_policy = QUEUE
    elif policy not in POLICIES:
        raise InvalidField(f"{field}.concurrency_policy", f"unknown policy {policy}")


class KeyGate:
    """One concurrency key: its unfinished tasks, its occupants and its waiting READY tasks."""

    __slots__ = ("key", "members", "occupants", "waiting", "waiting_count")

    def __init__(self, key: str) -> None:
        self.key = key
        # Every task with this key that is not terminal (CANCEL_IN_PROGRESS cancels these).
        self.members: set[str] = set()
        # Tasks holding the key: RUNNING, RETRY_WAIT with hold, admitted READY.
        self.occupants: set[str] = set()
        # READY tasks waiting for room: (sort key, ready_order, task_id), lazily deleted.
        self.waiting: list[tuple[int, int, str]] = []
        self.waiting_count = 0  # live entries of `waiting`

    def live_waiting(self, tasks: dict) -> list[str]:
        """Task ids of the waiting entries that still count, best first (for tests and status)."""
        out = []
        for _sort, order, task_id in sorted(self.waiting):
            task = tasks.get(task_id)
            if (task is not None and task.state == READY and task.ready_order == order
                    and task_id not in self.occupants):
                out.append(task_id)
        return out


class ConcurrencyIndex:
    """The key-occupancy index. `projection` provides `tasks`, `ready_count` and `push_ready`."""

    def __init__(self, projection: Any) -> None:
        self.projection = projection
        self.gates: dict[str, KeyGate] = {}

    # ---- queries ----------------------------------------------------------------------------

    def occupancy(self, key: str) -> int:
        gate = self.gates.get(key)
        return len(gate.occupants) if gate is not None else 0

    def waiting(self, key: str) -> int:
        gate = self.gates.get(key)
        return gate.waiting_count if gate is not None else 0

    def would_admit(self, task, now_ms: int) -> bool:
        """Would `task` (a member, not READY) take its key at once if it became READY at `now_ms`?
        As `transition` would decide: below its own limit, and ahead of every waiting task (a
        waiting head always lacks room under its own limit, or it would have been admitted)."""
        gate = self.gates.get(task.concurrency_key)
        if gate is None:
            return True
        if len(gate.occupants) >= task.spec.concurrency_limit:
            return False
        if not gate.waiting_count:
            return True
        head = self._live_head(gate)
        # Its entry would have a later ready_order than any: ahead only with a smaller sort key.
        return head is None or self.projection.ready_sort_key(task, now_ms) < head[0]

    def holds(self, task_id: str, key: str) -> bool:
        gate = self.gates.get(key)
        return gate is not None and task_id in gate.occupants

    def summary(self) -> list[tuple]:
        """Everything about the keys that replay must rebuild, in a canonical form."""
        tasks = self.projection.tasks
        return [(key, sorted(gate.members), sorted(gate.occupants), gate.live_waiting(tasks))
                for key, gate in sorted(self.gates.items())]

    # ---- maintenance (called by Projection.apply only) ---------------------------------------

    def add_member(self, task) -> None:
        key = task.concurrency_key
        gate = self.gates.get(key)
        if gate is None:
            gate = self.gates[key] = KeyGate(key)
        gate.members.add(task.task_id)

    def transition(self, task, previous: int, state: int, now_ms: int) -> None:
        """Task `task` (with a key) moved from `previous` to `state` (already set on the task)."""
        projection = self.projection
        gate = self.gates[task.concurrency_key]
        task_id = task.task_id
        occupying = task_id in gate.occupants
        left_waiting = False
        if previous == READY:
            if occupying:
                projection.left_ready_queue(task)  # it was admitted: in a ready queue
            else:
                gate.waiting_count -= 1  # its waiting entry is stale from now on
                left_waiting = True  # it may have been the head: the next one's limit decides now
        if state == RUNNING:
            holds = True
        elif state == RETRY_WAIT:
            holds = task.spec.hold_key_during_retry
        elif state == READY:
            holds = occupying  # a holder going READY again keeps its place
        else:
            holds = False
        released = False
        if holds and not occupying:
            gate.occupants.add(task_id)
        elif occupying and not holds:
            gate.occupants.discard(task_id)
            released = True
        if state == READY:
            entry = projection.ready_entry(task, now_ms)
            if holds:
                projection.push_ready(task, entry)
            else:
                heapq.heappush(gate.waiting, entry)
                gate.waiting_count += 1
                if len(gate.waiting) > 2 * gate.waiting_count + WAITING_COMPACT_SLACK:
                    self._compact(gate)
        if is_terminal(state):
            gate.members.discard(task_id)
            if not gate.members:
                del self.gates[gate.key]
                return
        if released or left_waiting or state == READY:
            self._admit(gate)

    def _live_head(self, gate: KeyGate) -> tuple[int, int, str] | None:
        """The best waiting entry that still counts, dropping stale ones above it (lazy deletion)."""
        waiting = gate.waiting
        tasks = self.projection.tasks
        while waiting:
            entry = waiting[0]
            task = tasks.get(entry[2])
            if task is None or task.state != READY or task.ready_order != entry[1] or entry[2] in gate.occupants:
                heapq.heappop(waiting)
                continue
            return entry
        return None

    def _admit(self, gate: KeyGate) -> None:
        """Move waiting tasks, best first, into the ready queues while the key has room."""
        waiting = gate.waiting
        tasks = self.projection.tasks
        occupants = gate.occupants
        while gate.waiting_count:
            head = self._live_head(gate)  # stale entries above it are dropped
            if head is None:
                return
            task_id = head[2]
            task = tasks[task_id]
            if len(occupants) >= task.spec.concurrency_limit:
                return
            entry = heapq.heappop(waiting)
            gate.waiting_count -= 1
            occupants.add(task_id)
            self.projection.push_ready(task, entry)

    def _compact(self, gate: KeyGate) -> None:
        tasks = self.projection.tasks
        gate.waiting = [e for e in gate.waiting
                        if (t := tasks.get(e[2])) is not None and t.state == READY and t.ready_order == e[1]
                        and e[2] not in gate.occupants]
        heapq.heapify(gate.waiting)
