"""Schedules in the dispatch loop: the command handlers of the schedule RPCs, and firing.

Owns: the loop's handlers for TaskService Create/Get/List/Pause/Resume/DeleteSchedule (registered
in DispatchLoop._handlers, called inside a step like every handler), the schedules part of
GetClusterStatus (`fill_status`), and `fire_due`, which the
loop calls in every step after its timers (not while draining) for the schedules whose next
occurrence is due (the loop's sleep includes the earliest one: `next_due_ms`).

Firing one schedule writes, in the step's one commit: a `ScheduleFired` record (which occurrences
got a task, how many were skipped and why, the next occurrence), then one TaskSubmitted per
created occurrence, written by the loop's own submission path (`_write_submission`: concurrency
key policies and task events as for SubmitTask). The decisions come from core/schedules.py
(`plan_firing`: the misfire policy for occurrences due before this process started, the cap)
plus two checks against the state: an occurrence whose task id (`<schedule_id>:<occurrence>`)
already exists is skipped (so nothing is created twice, whatever happened before), and
occurrences that would take the queued tasks over `--max-queued-tasks` are skipped with that
reason instead of refusing anything.

Invariants: every change is a WAL record applied by `Projection.apply` (core/schedule_book.py);
replay never evaluates a cron expression. Replies are built in the step, from state that the
step's commit makes durable before they are sent.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from corral.v1 import schedule_pb2, wal_pb2

from ..core import schedules as S
from ..core.admission import queued_tasks
from ..core.durations import set_ms, to_ms
from ..core.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from ..core.schedule_book import ACTIVE, COMPLETED, PAUSED, ScheduleBook
from . import commands as C

if TYPE_CHECKING:
    from corral.v1 import admin_service_pb2

    from .loop import DispatchLoop, Step

log = logging.getLogger("corral.dispatch")

# Schedules one coordinator holds at most (CreateSchedule beyond it: RESOURCE_EXHAUSTED).
MAX_SCHEDULES = 10_000


def _copy(schedule: schedule_pb2.Schedule) -> schedule_pb2.Schedule:
    view = schedule_pb2.Schedule()
    view.CopyFrom(schedule)
    return view


def _schedule(loop: "DispatchLoop", schedule_id: str) -> schedule_pb2.Schedule:
    schedule = loop.projection.schedules.get(schedule_id)
    if schedule is None:
        raise NotFound(f"schedule {schedule_id!r} not found")
    return schedule


def fill_status(book: ScheduleBook, counts: "admin_service_pb2.ScheduleCounts") -> None:
    """GetClusterStatus.schedules: schedules by state (a walk of at most MAX_SCHEDULES) and the
    earliest next occurrence of an active one."""
    for schedule in book.schedules.values():
        if schedule.state == ACTIVE:
            counts.active += 1
        elif schedule.state == PAUSED:
            counts.paused += 1
        elif schedule.state == COMPLETED:
            counts.completed += 1
    next_ms = book.next_due_ms()
    if next_ms is not None:
        set_ms(counts.next_occurrence, next_ms)


# ---- firing ----------------------------------------------------------------------------------

def next_due_ms(loop: "DispatchLoop") -> int | None:
    """When the loop must wake for a schedule (None: no active schedule, or draining)."""
    if loop.drain.draining:
        return None
    return loop.projection.schedule_book.next_due_ms()


def fire_due(loop: "DispatchLoop", step: "Step") -> None:
    book = loop.projection.schedule_book
    for schedule_id in book.pop_due(step.now_ms):
        fire(loop, book.schedules[schedule_id], step)


def on_start(loop: "DispatchLoop") -> None:
    """When the loop is built (after replay, or a restored snapshot): occurrences due before now
    were missed while no coordinator ran; the index of next occurrences is rebuilt from the
    schedules' messages (whatever filled them)."""
    loop.started_ms = loop.now_ms()
    loop.projection.schedule_book.rebuild_index()


def fire(loop: "DispatchLoop", schedule: schedule_pb2.Schedule, step: "Step") -> None:
    now = step.now_ms
    spec = schedule.spec
    schedule_id = spec.schedule_id
    try:
        plan = S.plan_firing(S.timing_of(schedule), spec, to_ms(schedule.next_occurrence), now, loop.started_ms)
    except S.TIMING_ERRORS as exc:
        # E.g. a time zone this machine's zone database does not know (validated at creation,
        # elsewhere): pause it with the reason rather than fail the loop or retry at every step.
        log.error("schedule %s cannot be evaluated (%s): pausing it", schedule_id, exc)
        record = wal_pb2.WalRecord()
        record.schedule_paused.schedule_id = schedule_id
        record.schedule_paused.reason = f"paused by the coordinator: its timing cannot be evaluated here: {exc}"[:1024]
        loop._emit(record, "", step)
        return
    tasks = loop.projection.tasks
    limit = loop.admission.max_queued_tasks
    room = limit - queued_tasks(loop.projection) if limit else len(plan.create)
    created: list[tuple[int, str]] = []
    exist = 0
    for i, occurrence in enumerate(plan.create):
        task_id = S.occurrence_task_id(schedule_id, occurrence)
        if task_id in tasks:
            exist += 1
            continue
        if room <= 0:
            plan.skip(len(plan.create) - i,
                      f"max_queued_tasks (--max-queued-tasks / CORRAL_MAX_QUEUED_TASKS) is {limit} and was reached")
            break
        room -= 1
        created.append((occurrence, task_id))
    plan.skip(exist, "its task already exists")
    record = wal_pb2.WalRecord()
    event = record.schedule_fired
    event.schedule_id = schedule_id
    event.created_occurrences_unix_ms.extend(o for o, _ in created)
    event.task_ids.extend(task_id for _, task_id in created)
    event.skipped = plan.skipped
    event.skip_reason = plan.skip_reason
    event.last_occurrence_unix_ms = plan.last_ms
    event.next_occurrence_unix_ms = plan.next_ms or 0
    loop._emit(record, "", step)
    template = spec.task
    for occurrence, _ in created:
        loop._write_submission(S.occurrence_spec(template, schedule_id, occurrence), None, now, step)
    if plan.skipped:
        log.warning("schedule %s: %d occurrence(s) skipped: %s", schedule_id, plan.skipped, plan.skip_reason)


# ---- command handlers (called by the loop inside a step) ---------------------------------------

def on_create(loop: "DispatchLoop", cmd: C.CreateSchedule, step: "Step") -> None:
    if loop.drain.draining:
        raise Unavailable(loop.drain.refusal())
    schedules = loop.projection.schedules
    schedule_id = cmd.spec.schedule_id
    existing = schedules.get(schedule_id)
    if existing is not None:
        if S.spec_fingerprint(existing.spec) != S.spec_fingerprint(cmd.spec):
            raise AlreadyExists(f"schedule.schedule_id: schedule {schedule_id!r} already exists with a different spec")
        step.replies.append((cmd.reply, (_copy(existing), False)))
        return
    if len(schedules) >= MAX_SCHEDULES:
        raise ResourceExhausted(f"{len(schedules)} schedules exist, the limit; delete some first")
    record = wal_pb2.WalRecord()
    record.schedule_created.schedule.CopyFrom(S.new_schedule(cmd.spec, step.now_ms))
    loop._emit(record, "", step)
    step.replies.append((cmd.reply, (_copy(schedules[schedule_id]), True)))


def on_get(loop: "DispatchLoop", cmd: C.GetSchedule, step: "Step") -> None:
    step.replies.append((cmd.reply, _copy(_schedule(loop, cmd.schedule_id))))


def on_list(loop: "DispatchLoop", cmd: C.ListSchedules, step: "Step") -> None:
    schedules = loop.projection.schedules
    ids = sorted(i for i in schedules if i > cmd.after_id)
    page = ids[:cmd.page_size]
    more = len(ids) > len(page)
    step.replies.append((cmd.reply, ([_copy(schedules[i]) for i in page], page[-1] if more else "")))


def on_pause(loop: "DispatchLoop", cmd: C.PauseSchedule, step: "Step") -> None:
    schedule = _schedule(loop, cmd.schedule_id)
    if schedule.state == COMPLETED:
        raise FailedPrecondition(f"schedule {cmd.schedule_id!r} is COMPLETED: no occurrence is left to pause")
    if schedule.state == ACTIVE:
        record = wal_pb2.WalRecord()
        record.schedule_paused.schedule_id = cmd.schedule_id
        record.schedule_paused.reason = cmd.reason or "paused by request"
        loop._emit(record, "", step)
    step.replies.append((cmd.reply, _copy(schedule)))


def on_resume(loop: "DispatchLoop", cmd: C.ResumeSchedule, step: "Step") -> None:
    schedule = _schedule(loop, cmd.schedule_id)
    if schedule.state == COMPLETED:
        raise FailedPrecondition(f"schedule {cmd.schedule_id!r} is COMPLETED: no occurrence is left")
    if schedule.state == PAUSED:
        # From now on; never an occurrence at or before the last one handled.
        after = max(step.now_ms - 1, to_ms(schedule.last_occurrence))
        try:
            next_ms = S.next_after(S.timing_of(schedule), schedule.spec, after) or 0
        except S.TIMING_ERRORS as exc:  # e.g. paused by fire() for a zone this machine lacks
            raise FailedPrecondition(f"schedule {cmd.schedule_id!r}: its timing cannot be evaluated here: {exc}") from None
        record = wal_pb2.WalRecord()
        record.schedule_resumed.schedule_id = cmd.schedule_id
        record.schedule_resumed.next_occurrence_unix_ms = next_ms
        loop._emit(record, "", step)
    step.replies.append((cmd.reply, _copy(schedule)))


def on_delete(loop: "DispatchLoop", cmd: C.DeleteSchedule, step: "Step") -> None:
    _schedule(loop, cmd.schedule_id)
    record = wal_pb2.WalRecord()
    record.schedule_deleted.schedule_id = cmd.schedule_id
    loop._emit(record, "", step)
    step.replies.append((cmd.reply, None))


HANDLERS = {
    C.CreateSchedule: on_create,
    C.GetSchedule: on_get,
    C.ListSchedules: on_list,
    C.PauseSchedule: on_pause,
    C.ResumeSchedule: on_resume,
    C.DeleteSchedule: on_delete,
}
