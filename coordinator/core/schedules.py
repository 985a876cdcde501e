"""Schedules, the pure part: validation, occurrence times, and what to do when occurrences are due.

Owns:
- `normalize_schedule` — checks a ScheduleSpec (errors name the field, e.g. `schedule.cron.time_zone`)
  and fills its defaults (time zone "UTC", misfire RUN_ONCE, the template's task defaults via
  `spec.normalize_spec`), so the spec in the WAL is complete.
- Occurrence times (`Timing`): an interval (anchor + k * interval, plain arithmetic) or a cron
  expression in a time zone, evaluated by `cronsim` (a maintained library with Debian cron's
  semantics, including daylight-saving changes), never by a parser of our own.
- `plan_firing` — given the next occurrence, the time now and when this coordinator process
  started: which occurrences get a task, how many are skipped and why, and the next occurrence.
  Occurrences due before the process started were missed while it was down and follow the
  misfire policy (RUN_ALL: every one, oldest first; RUN_ONCE: the most recent; SKIP: none);
  those due since are always created. At most `MAX_TASKS_PER_FIRING` tasks per firing (the rest
  are skipped and counted) and at most `MAX_SCAN_PER_FIRING` occurrences looked at (past that,
  the rest are skipped without being counted one by one, and the next occurrence is the first
  after now).
- Occurrence task ids and specs (`occurrence_task_id`, `occurrence_spec`).

Invariants: no clock and no I/O (times are arguments, in Unix milliseconds); the occurrence after
t is strictly after t, so an occurrence is never produced twice. Replay never calls this module:
records carry its decisions (the next occurrence, what was created and skipped).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

# What evaluating a stored timing may raise (an unknown zone, an expression a library version refuses,
# a time past what datetime holds: year 9999).
TIMING_ERRORS = (CronSimError, ZoneInfoNotFoundError, ValueError, OverflowError)

from corral.v1 import schedule_pb2, task_pb2

from .durations import set_ms, to_ms
from .errors import InvalidField
from .spec import MAX_NANOS, SpecLimits, normalize_spec

SCHEDULE_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,100}$")
MIN_INTERVAL_MS = 1_000
MAX_INTERVAL_MS = 366 * 24 * 3600 * 1000
# Tasks one firing may create (a catch-up after a long outage under RUN_ALL); the rest are skipped.
MAX_TASKS_PER_FIRING = 1_000
# Occurrences one firing looks at; past that the rest are skipped without counting each.
MAX_SCAN_PER_FIRING = 100_000
MAX_EXPRESSION_CHARS = 256
# The end of google.protobuf.Timestamp's range (and of datetime's): 9999-12-31T23:59:59Z.
MAX_TIMESTAMP_SECONDS = 253_402_300_799
DEFAULT_TIME_ZONE = "UTC"

RUN_ALL = schedule_pb2.MISFIRE_POLICY_RUN_ALL
RUN_ONCE = schedule_pb2.MISFIRE_POLICY_RUN_ONCE
SKIP = schedule_pb2.MISFIRE_POLICY_SKIP
_POLICY_NAMES = {RUN_ALL: "RUN_ALL", RUN_ONCE: "RUN_ONCE", SKIP: "SKIP"}
# Fields of the template the coordinator sets, or that make no sense repeated per occurrence.
_TEMPLATE_MUST_BE_EMPTY = ("task_id", "idempotency_key", "not_before", "depends_on")

_UTC = timezone.utc


# ---- occurrence times ------------------------------------------------------------------------

class Timing:
    """When a schedule's occurrences are."""

    def iter_after(self, t_ms: int) -> Iterator[int]:
        """Occurrences strictly after `t_ms`, increasing (ends when there are none left)."""
        raise NotImplementedError

    def first_after(self, t_ms: int) -> int | None:
        return next(self.iter_after(t_ms), None)


class IntervalTiming(Timing):
    def __init__(self, anchor_ms: int, interval_ms: int) -> None:
        self.anchor_ms = anchor_ms
        self.interval_ms = interval_ms

    def iter_after(self, t_ms: int) -> Iterator[int]:
        anchor, step = self.anchor_ms, self.interval_ms
        k = 0 if t_ms < anchor else (t_ms - anchor) // step + 1
        o = anchor + k * step
        while True:
            yield o
            o += step


class CronTiming(Timing):
    def __init__(self, expression: str, time_zone: str) -> None:
        self.expression = expression
        self.zone = ZoneInfo(time_zone)
        CronSim(expression, datetime.now(self.zone))  # parse now: CronSimError for a bad one

    def iter_after(self, t_ms: int) -> Iterator[int]:
        start = datetime.fromtimestamp(t_ms / 1000, _UTC).astimezone(self.zone)
        last = t_ms
        try:
            for when in CronSim(self.expression, start):
                o = int(when.timestamp() * 1000)
                # Started inside a repeated (fall-back) hour, cronsim may give a wall-clock time
                # whose first instance is already past: never go back in time.
                if o > last:
                    last = o
                    yield o
        except StopIteration:  # pragma: no cover - cronsim ends its iterator itself
            return


def timing_of(schedule: schedule_pb2.Schedule) -> Timing:
    """The timing of a stored (normalised) schedule; the interval's anchor is its start_time, or
    else its creation time."""
    spec = schedule.spec
    if spec.WhichOneof("timing") == "cron":
        return CronTiming(spec.cron.expression, spec.cron.time_zone or DEFAULT_TIME_ZONE)
    anchor = to_ms(spec.start_time) if spec.HasField("start_time") else to_ms(schedule.created_at)
    return IntervalTiming(anchor, to_ms(spec.interval))


def first_occurrence(timing: Timing, spec: schedule_pb2.ScheduleSpec, now_ms: int) -> int | None:
    """The first occurrence of a schedule created at `now_ms`, before end_time; None if none.

    With start_time: the first at or after max(start_time, now) (no backfill). Without: the first
    strictly after now (an interval's first occurrence is one interval after its creation)."""
    if spec.HasField("start_time"):
        o = timing.first_after(max(to_ms(spec.start_time), now_ms) - 1)
    else:
        o = timing.first_after(now_ms)
    return o if o is not None and not _past_end(spec, o) else None


def next_after(timing: Timing, spec: schedule_pb2.ScheduleSpec, t_ms: int) -> int | None:
    """The first occurrence strictly after `t_ms` (and not before start_time), before end_time."""
    if spec.HasField("start_time"):
        t_ms = max(t_ms, to_ms(spec.start_time) - 1)
    o = timing.first_after(t_ms)
    return o if o is not None and not _past_end(spec, o) else None


def _past_end(spec: schedule_pb2.ScheduleSpec, o: int) -> bool:
    return spec.HasField("end_time") and o >= to_ms(spec.end_time)


# ---- what to do when occurrences are due -----------------------------------------------------

@dataclass
class Firing:
    """The decision for one schedule at one moment."""

    create: list[int] = field(default_factory=list)  # occurrences that get a task, increasing
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    last_ms: int = 0  # the latest occurrence handled (0: none was due)
    next_ms: int | None = None  # None: no occurrence is left

    @property
    def skip_reason(self) -> str:
        return "; ".join(self.reasons)

    def skip(self, n: int, reason: str) -> None:
        if n > 0:
            self.skipped += n
            self.reasons.append(reason)


def plan_firing(timing: Timing, spec: schedule_pb2.ScheduleSpec, next_ms: int, now_ms: int,
                missed_before_ms: int, *, max_tasks: int = MAX_TASKS_PER_FIRING,
                max_scan: int = MAX_SCAN_PER_FIRING) -> Firing:
    """Occurrences from `next_ms` (a due occurrence) to `now_ms` inclusive: which get a task.

    Those before `missed_before_ms` (when this coordinator process started) were missed while it
    was down: the spec's misfire policy decides. The others are all created. At most `max_tasks`
    are created (the oldest); at most `max_scan` occurrences are looked at."""
    policy = spec.misfire_policy or RUN_ONCE
    firing = Firing()
    missed: list[int] = []  # RUN_ALL: the oldest max_tasks; RUN_ONCE: the latest one
    missed_count = 0
    live: list[int] = []
    live_count = 0
    scanned = 0
    occurrences = timing.iter_after(next_ms - 1)
    o: int | None = next(occurrences, None)
    while True:
        if o is None or _past_end(spec, o):
            firing.next_ms = None
            break
        if o > now_ms:
            firing.next_ms = o
            break
        if scanned == max_scan:
            # More are due than we look at: skip the rest without counting them one by one.
            firing.skip(1, f"more than {max_scan} occurrences were due at once; the rest were skipped uncounted")
            firing.next_ms = next_after(timing, spec, now_ms)
            break
        scanned += 1
        firing.last_ms = o
        if o < missed_before_ms:
            missed_count += 1
            if policy == RUN_ALL:
                if len(missed) < max_tasks:
                    missed.append(o)
            elif policy == RUN_ONCE:
                missed[:] = [o]
        else:
            live_count += 1
            if len(live) < max_tasks:
                live.append(o)
        o = next(occurrences, None)
    chosen = missed + live
    firing.create = chosen[:max_tasks]
    # RUN_ALL wants every missed one: those it cannot have are over the cap, not the policy's.
    wanted = missed_count if policy == RUN_ALL else len(missed)
    name = _POLICY_NAMES.get(policy, str(policy))
    firing.skip(missed_count - wanted, f"missed while the coordinator was down (misfire policy {name})")
    firing.skip(wanted + live_count - len(firing.create), f"more than {max_tasks} occurrences were due at once")
    return firing


# ---- occurrence tasks ------------------------------------------------------------------------

def occurrence_task_id(schedule_id: str, occurrence_ms: int) -> str:
    """E.g. `nightly:2024-03-31T01:00:00.000Z` (UTC): deterministic, so an occurrence's task is
    never created twice; valid as a task id (schedule ids have no colon, at most 100 characters)."""
    when = datetime.fromtimestamp(occurrence_ms / 1000, _UTC)
    return f"{schedule_id}:{when.strftime('%Y-%m-%dT%H:%M:%S')}.{occurrence_ms % 1000:03d}Z"


def occurrence_spec(template: task_pb2.TaskSpec, schedule_id: str, occurrence_ms: int) -> task_pb2.TaskSpec:
    spec = task_pb2.TaskSpec()
    spec.CopyFrom(template)
    spec.task_id = occurrence_task_id(schedule_id, occurrence_ms)
    spec.schedule_id = schedule_id
    set_ms(spec.scheduled_for, occurrence_ms)
    return spec


# ---- validation ------------------------------------------------------------------------------

def normalize_schedule(spec: schedule_pb2.ScheduleSpec, field: str, limits: SpecLimits, now_ms: int) -> Timing:
    """Validate `spec` in place and fill its defaults; returns its timing (anchored at `now_ms`
    for an interval without start_time). Raises InvalidField naming the field."""
    if not spec.schedule_id:
        raise InvalidField(f"{field}.schedule_id", "is required")
    if not SCHEDULE_ID_RE.fullmatch(spec.schedule_id):
        raise InvalidField(f"{field}.schedule_id", "must be 1-100 characters of [A-Za-z0-9._-]")
    for name in ("start_time", "end_time"):
        if spec.HasField(name):
            ts = getattr(spec, name)
            if ts.seconds < 0 or ts.nanos < 0:
                raise InvalidField(f"{field}.{name}", "must be after 1970-01-01")
            if ts.seconds > MAX_TIMESTAMP_SECONDS or ts.nanos > MAX_NANOS:
                raise InvalidField(f"{field}.{name}", "must be a valid time before 9999-12-31T23:59:59Z")
    if spec.HasField("start_time") and spec.HasField("end_time") and to_ms(spec.end_time) <= to_ms(spec.start_time):
        raise InvalidField(f"{field}.end_time", "must be after start_time")
    kind = spec.WhichOneof("timing")
    if kind is None:
        raise InvalidField(f"{field}.cron", "a schedule needs either cron or interval")
    timing: Timing
    if kind == "cron":
        cron = spec.cron
        expression = cron.expression.strip()
        if not expression:
            raise InvalidField(f"{field}.cron.expression", "is required")
        if len(expression) > MAX_EXPRESSION_CHARS:
            raise InvalidField(f"{field}.cron.expression", f"must be at most {MAX_EXPRESSION_CHARS} characters")
        cron.expression = expression
        cron.time_zone = cron.time_zone.strip() or DEFAULT_TIME_ZONE
        try:
            zone_ok = ZoneInfo(cron.time_zone) is not None
        except (ZoneInfoNotFoundError, ValueError, OSError):
            zone_ok = False
        if not zone_ok:
            raise InvalidField(f"{field}.cron.time_zone", f"unknown time zone {cron.time_zone!r} "
                               f"(an IANA name such as 'Europe/Berlin', or 'UTC')")
        try:
            timing = CronTiming(cron.expression, cron.time_zone)
        except CronSimError as exc:
            raise InvalidField(f"{field}.cron.expression",
                               f"{exc} in {cron.expression!r} (5 fields: minute hour day-of-month month "
                               f"day-of-week)") from None
        if timing.first_after(now_ms) is None:
            raise InvalidField(f"{field}.cron.expression", f"{cron.expression!r} matches no time in the next 50 years")
        if spec.HasField("start_time"):
            # The loop computes the first occurrence from start_time (new_schedule): evaluate it
            # here, where an error is the client's, not in the loop, where it would stop it.
            try:
                first_occurrence(timing, spec, now_ms)
            except TIMING_ERRORS as exc:
                raise InvalidField(f"{field}.start_time", f"no occurrence can be computed from it: {exc}") from None
    else:
        interval = spec.interval
        if interval.seconds < 0 or interval.nanos < 0:
            raise InvalidField(f"{field}.interval", "must not be negative")
        if interval.nanos > MAX_NANOS:
            raise InvalidField(f"{field}.interval", f"nanos must be at most {MAX_NANOS}, got {interval.nanos}")
        ms = to_ms(interval)
        if ms < MIN_INTERVAL_MS or ms > MAX_INTERVAL_MS:
            raise InvalidField(f"{field}.interval", f"must be between 1s and 366 days, got {ms} ms")
        anchor = to_ms(spec.start_time) if spec.HasField("start_time") else now_ms
        timing = IntervalTiming(anchor, ms)
    if spec.misfire_policy == schedule_pb2.MISFIRE_POLICY_UNSPECIFIED:
        spec.misfire_policy = RUN_ONCE
    elif spec.misfire_policy not in _POLICY_NAMES:
        raise InvalidField(f"{field}.misfire_policy", f"unknown policy {spec.misfire_policy}")
    if not spec.HasField("task"):
        raise InvalidField(f"{field}.task", "is required (the template of every occurrence's task)")
    template = spec.task
    for name in _TEMPLATE_MUST_BE_EMPTY:
        value = getattr(template, name)
        if (name == "not_before" and template.HasField(name)) or (name != "not_before" and value):
            raise InvalidField(f"{field}.task.{name}", "must be empty in a schedule's template "
                               "(each occurrence's task gets its own id and starts when it is due)")
    normalize_spec(template, f"{field}.task", limits, now_ms)  # also refuses schedule_id/scheduled_for
    return timing


def spec_fingerprint(spec: schedule_pb2.ScheduleSpec) -> bytes:
    """Equal for two normalised specs that ask for the same schedule (CreateSchedule is idempotent)."""
    return spec.SerializeToString(deterministic=True)


def new_schedule(spec: schedule_pb2.ScheduleSpec, now_ms: int) -> schedule_pb2.Schedule:
    """The whole initial state of a schedule created at `now_ms` (what ScheduleCreated carries)."""
    schedule = schedule_pb2.Schedule()
    schedule.spec.CopyFrom(spec)
    set_ms(schedule.created_at, now_ms)
    set_ms(schedule.updated_at, now_ms)
    first = first_occurrence(timing_of(schedule), spec, now_ms)
    if first is None:
        schedule.state = schedule_pb2.SCHEDULE_STATE_COMPLETED
    else:
        schedule.state = schedule_pb2.SCHEDULE_STATE_ACTIVE
        set_ms(schedule.next_occurrence, first)
    return schedule
