"""The schedules in the projection: their durable state, changed only by applying WAL records.

Owns: `schedules` (schedule id -> `corral.v1.Schedule`, the projection's `Projection.schedules`),
which holds EVERYTHING durable about each schedule in that one message (spec, state, next and last
occurrence, counts, times), and `due`, a heap of (next occurrence ms, schedule id) for the loop's
timer: an index derived from the messages, with lazy deletion (an entry counts only if its
schedule is still ACTIVE with that next occurrence). `rebuild_index()` recomputes it from the
messages alone (for a projection restored from a snapshot of `schedules`).

Invariants: `apply_*` are the only writers, called by `Projection.apply` for the records
ScheduleCreated/Fired/Paused/Resumed/Deleted; records carry every decision (the next occurrence
included), so applying never evaluates a cron expression and replay rebuilds exactly what the
live loop had (`digest` is part of `Projection.fingerprint`).
"""
from __future__ import annotations

import hashlib
import heapq

from corral.v1 import schedule_pb2, wal_pb2

from .durations import set_ms, to_ms

ACTIVE = schedule_pb2.SCHEDULE_STATE_ACTIVE
PAUSED = schedule_pb2.SCHEDULE_STATE_PAUSED
COMPLETED = schedule_pb2.SCHEDULE_STATE_COMPLETED

RECORD_KINDS = ("schedule_created", "schedule_fired", "schedule_paused", "schedule_resumed", "schedule_deleted")


class BadScheduleRecord(Exception):
    """A schedule record that cannot apply (unknown schedule, created twice, fired while not active)."""


class ScheduleBook:
    def __init__(self) -> None:
        self.schedules: dict[str, schedule_pb2.Schedule] = {}
        self.due: list[tuple[int, str]] = []

    # ---- the index ---------------------------------------------------------------------------

    def _index(self, schedule: schedule_pb2.Schedule) -> None:
        if schedule.state == ACTIVE:
            heapq.heappush(self.due, (to_ms(schedule.next_occurrence), schedule.spec.schedule_id))

    def _live(self, entry: tuple[int, str]) -> bool:
        schedule = self.schedules.get(entry[1])
        return (schedule is not None and schedule.state == ACTIVE
                and to_ms(schedule.next_occurrence) == entry[0])

    def rebuild_index(self) -> None:
        self.due = [(to_ms(s.next_occurrence), sid) for sid, s in self.schedules.items() if s.state == ACTIVE]
        heapq.heapify(self.due)

    def next_due_ms(self) -> int | None:
        """When the earliest ACTIVE schedule's next occurrence is due; None if none is active."""
        due = self.due
        while due and not self._live(due[0]):
            heapq.heappop(due)
        return due[0][0] if due else None

    def pop_due(self, now_ms: int) -> list[str]:
        """Ids of the ACTIVE schedules whose next occurrence is due at `now_ms`, earliest first,
        removed from the index (applying their ScheduleFired puts them back)."""
        due = self.due
        ids: list[str] = []
        while due and due[0][0] <= now_ms:
            entry = heapq.heappop(due)
            if self._live(entry) and entry[1] not in ids:
                ids.append(entry[1])
        return ids

    # ---- applying records --------------------------------------------------------------------

    def _get(self, schedule_id: str) -> schedule_pb2.Schedule:
        schedule = self.schedules.get(schedule_id)
        if schedule is None:
            raise BadScheduleRecord(f"record refers to unknown schedule {schedule_id!r}")
        return schedule

    def apply_created(self, ev: wal_pb2.ScheduleCreated, now_ms: int) -> None:
        schedule_id = ev.schedule.spec.schedule_id
        if schedule_id in self.schedules:
            raise BadScheduleRecord(f"schedule {schedule_id!r} created twice")
        schedule = schedule_pb2.Schedule()
        schedule.CopyFrom(ev.schedule)
        self.schedules[schedule_id] = schedule
        self._index(schedule)

    def apply_fired(self, ev: wal_pb2.ScheduleFired, now_ms: int) -> None:
        schedule = self._get(ev.schedule_id)
        if schedule.state != ACTIVE:
            raise BadScheduleRecord(f"schedule {ev.schedule_id!r} fired while not active")
        schedule.tasks_created += len(ev.task_ids)
        if ev.task_ids:
            schedule.last_task_id = ev.task_ids[-1]
        if ev.skipped:
            schedule.occurrences_skipped += ev.skipped
            schedule.last_skip_reason = ev.skip_reason
        if ev.last_occurrence_unix_ms:
            set_ms(schedule.last_occurrence, ev.last_occurrence_unix_ms)
        self._set_next(schedule, ev.next_occurrence_unix_ms)
        set_ms(schedule.updated_at, now_ms)

    def apply_paused(self, ev: wal_pb2.SchedulePaused, now_ms: int) -> None:
        schedule = self._get(ev.schedule_id)
        if schedule.state != ACTIVE:
            raise BadScheduleRecord(f"schedule {ev.schedule_id!r} paused while not active")
        schedule.state = PAUSED
        schedule.pause_reason = ev.reason
        schedule.ClearField("next_occurrence")
        set_ms(schedule.updated_at, now_ms)

    def apply_resumed(self, ev: wal_pb2.ScheduleResumed, now_ms: int) -> None:
        schedule = self._get(ev.schedule_id)
        if schedule.state != PAUSED:
            raise BadScheduleRecord(f"schedule {ev.schedule_id!r} resumed while not paused")
        schedule.pause_reason = ""
        self._set_next(schedule, ev.next_occurrence_unix_ms)
        set_ms(schedule.updated_at, now_ms)

    def apply_deleted(self, ev: wal_pb2.ScheduleDeleted, now_ms: int) -> None:
        self._get(ev.schedule_id)
        del self.schedules[ev.schedule_id]

    def _set_next(self, schedule: schedule_pb2.Schedule, next_ms: int) -> None:
        if next_ms:
            schedule.state = ACTIVE
            set_ms(schedule.next_occurrence, next_ms)
            self._index(schedule)
        else:
            schedule.state = COMPLETED
            schedule.ClearField("next_occurrence")

    def appliers(self) -> dict:
        return {
            "schedule_created": self.apply_created,
            "schedule_fired": self.apply_fired,
            "schedule_paused": self.apply_paused,
            "schedule_resumed": self.apply_resumed,
            "schedule_deleted": self.apply_deleted,
        }

    # ---- comparing -------------------------------------------------------------------------------

    def digest(self) -> bytes:
        """Everything durable (the messages), for `Projection.fingerprint`."""
        h = hashlib.sha256()
        for schedule_id in sorted(self.schedules):
            h.update(self.schedules[schedule_id].SerializeToString(deterministic=True))
        return h.digest()
