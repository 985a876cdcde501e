"""Schedules, pure logic (coordinator/core/schedules.py, schedule_book.py): occurrence times
(intervals, cron in a time zone across daylight-saving changes), misfire decisions, validation,
occurrence task ids, and the projection's schedule state. No clock, no I/O."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from google.protobuf import duration_pb2

from corral.v1 import schedule_pb2, task_pb2, wal_pb2
from coordinator.core import schedules as S
from coordinator.core.durations import set_ms, to_ms
from coordinator.core.errors import InvalidField
from coordinator.core.projection import CorruptProjection, Projection
from coordinator.core.schedule_book import ScheduleBook
from coordinator.core.spec import TASK_ID_RE, SpecLimits, normalize_spec

pytestmark = pytest.mark.timeout(30)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
S1 = 1_000


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def local(zone, *args, fold: int = 0) -> int:
    return ms(datetime(*args, tzinfo=zone, fold=fold))


def take(timing: S.Timing, after_ms: int, n: int) -> list[int]:
    out = []
    for o in timing.iter_after(after_ms):
        out.append(o)
        if len(out) == n:
            return out
    return out


def interval_spec(interval_ms: int = S1, policy: int = 0, **kw) -> schedule_pb2.ScheduleSpec:
    spec = schedule_pb2.ScheduleSpec(schedule_id="s", misfire_policy=policy, task=task_pb2.TaskSpec(type="t"), **kw)
    set_ms(spec.interval, interval_ms)
    return spec


def cron_spec(expression: str, time_zone: str = "", **kw) -> schedule_pb2.ScheduleSpec:
    return schedule_pb2.ScheduleSpec(schedule_id="s", cron=schedule_pb2.CronTiming(
        expression=expression, time_zone=time_zone), task=task_pb2.TaskSpec(type="t"), **kw)


# ---- occurrence times ------------------------------------------------------------------------

def test_interval_occurrences_are_anchor_plus_multiples_strictly_after():
    timing = S.IntervalTiming(T0, 5 * S1)
    assert take(timing, T0 - 1, 3) == [T0, T0 + 5_000, T0 + 10_000]
    assert take(timing, T0, 2) == [T0 + 5_000, T0 + 10_000]
    assert take(timing, T0 + 4_999, 1) == [T0 + 5_000]
    assert take(timing, T0 - 60_000, 1) == [T0]  # before the anchor: the anchor


def test_interval_first_occurrence_is_one_interval_after_creation_or_at_start_time():
    spec = interval_spec(2 * S1)
    assert S.first_occurrence(S.IntervalTiming(T0, 2_000), spec, T0) == T0 + 2_000
    spec.start_time.FromMilliseconds(T0 + 60_000)
    assert S.first_occurrence(S.IntervalTiming(T0 + 60_000, 2_000), spec, T0) == T0 + 60_000
    # A start_time in the past: no backfill; occurrences keep the start_time's phase.
    spec.start_time.FromMilliseconds(T0 - 3_500)
    assert S.first_occurrence(S.IntervalTiming(T0 - 3_500, 2_000), spec, T0) == T0 + 500


def test_cron_in_utc():
    timing = S.CronTiming("0 3 * * *", "UTC")
    day = ms(datetime.fromisoformat("2024-01-01T00:00:00+00:00"))
    assert take(timing, day, 2) == [day + 3 * 3_600_000, day + 27 * 3_600_000]
    # Strictly after: from an occurrence, the next day's.
    assert take(timing, day + 3 * 3_600_000, 1) == [day + 27 * 3_600_000]


def test_cron_spring_forward_runs_a_skipped_time_at_the_end_of_the_gap_once():
    # Europe/Berlin 2024-03-31: 02:00 CET -> 03:00 CEST; 02:30 does not exist that day.
    timing = S.CronTiming("30 2 * * *", "Europe/Berlin")
    got = take(timing, local(BERLIN, 2024, 3, 30, 12, 0), 3)
    assert got == [local(BERLIN, 2024, 3, 31, 3, 0), local(BERLIN, 2024, 4, 1, 2, 30), local(BERLIN, 2024, 4, 2, 2, 30)]
    # The day is 23 hours long: occurrences stay in local wall-clock time, not every 24 h.
    assert got[1] - local(BERLIN, 2024, 3, 30, 2, 30) == 47 * 3_600_000


def test_cron_fall_back_runs_a_fixed_time_once_and_wildcard_hours_twice():
    # Europe/Berlin 2024-10-27: 03:00 CEST -> 02:00 CET; 02:00-02:59 happens twice.
    before = local(BERLIN, 2024, 10, 27, 1, 0)
    fixed = take(S.CronTiming("30 2 * * *", "Europe/Berlin"), before, 2)
    assert fixed == [local(BERLIN, 2024, 10, 27, 2, 30, fold=0), local(BERLIN, 2024, 10, 28, 2, 30)]
    every_30 = take(S.CronTiming("*/30 * * * *", "Europe/Berlin"), before, 6)
    assert every_30 == [local(BERLIN, 2024, 10, 27, 1, 30), local(BERLIN, 2024, 10, 27, 2, 0, fold=0),
                        local(BERLIN, 2024, 10, 27, 2, 30, fold=0), local(BERLIN, 2024, 10, 27, 2, 0, fold=1),
                        local(BERLIN, 2024, 10, 27, 2, 30, fold=1), local(BERLIN, 2024, 10, 27, 3, 0)]
    assert every_30 == sorted(set(every_30))
    assert all(b - a == 1_800_000 for a, b in zip(every_30, every_30[1:]))


def test_cron_never_goes_back_in_time_when_asked_from_inside_a_repeated_hour():
    # From 02:10 CET (the second 02:10 of the day), 02:30 CEST is already past: cronsim would
    # return it; the next occurrence must be the next day's (02:30 is not run twice).
    inside = local(BERLIN, 2024, 10, 27, 2, 10, fold=1)
    got = S.CronTiming("30 2 * * *", "Europe/Berlin").first_after(inside)
    assert got == local(BERLIN, 2024, 10, 28, 2, 30)
    assert got > inside


def test_cron_next_after_each_occurrence_reproduces_the_iteration_across_dst():
    """The loop asks for the next occurrence after the last one handled (possibly after a
    restart): asking one at a time gives exactly the sequence of one iteration."""
    timing = S.CronTiming("15,45 1-3 * * *", "America/New_York")
    start = local(NEW_YORK, 2024, 11, 2, 12, 0)  # fall back on 2024-11-03 at 02:00 EDT
    sequence = take(timing, start, 30)
    one_by_one = [timing.first_after(start)]
    while len(one_by_one) < 30:
        one_by_one.append(timing.first_after(one_by_one[-1]))
    assert one_by_one == sequence
    assert sequence == sorted(set(sequence))


def test_end_time_and_start_time_bound_the_occurrences():
    spec = interval_spec(S1)
    spec.start_time.FromMilliseconds(T0)
    spec.end_time.FromMilliseconds(T0 + 3_000)
    timing = S.IntervalTiming(T0, S1)
    assert S.next_after(timing, spec, T0 - 10_000) == T0
    assert S.next_after(timing, spec, T0 + 1_000) == T0 + 2_000
    assert S.next_after(timing, spec, T0 + 2_000) is None  # T0 + 3000 is at the end: excluded


# ---- misfire decisions -----------------------------------------------------------------------

def plan(policy: int, next_ms: int, now_ms: int, started_ms: int, **kw) -> S.Firing:
    spec = interval_spec(S1, policy)
    return S.plan_firing(S.IntervalTiming(T0, S1), spec, next_ms, now_ms, started_ms, **kw)


def test_on_time_occurrence_is_created_whatever_the_policy():
    for policy in (S.RUN_ALL, S.RUN_ONCE, S.SKIP):
        firing = plan(policy, T0 + 5_000, T0 + 5_003, started_ms=T0)
        assert firing.create == [T0 + 5_000]
        assert firing.skipped == 0 and firing.skip_reason == ""
        assert firing.last_ms == T0 + 5_000 and firing.next_ms == T0 + 6_000


def test_misfire_run_all_creates_every_missed_occurrence_oldest_first():
    # Down from before T0+2000 until T0+5500 (started then); the loop's first step at T0+5600.
    firing = plan(S.RUN_ALL, T0 + 2_000, T0 + 5_600, started_ms=T0 + 5_500)
    assert firing.create == [T0 + 2_000, T0 + 3_000, T0 + 4_000, T0 + 5_000]
    assert firing.skipped == 0
    assert firing.last_ms == T0 + 5_000 and firing.next_ms == T0 + 6_000


def test_misfire_run_once_creates_the_most_recent_missed_occurrence():
    firing = plan(S.RUN_ONCE, T0 + 2_000, T0 + 5_600, started_ms=T0 + 5_500)
    assert firing.create == [T0 + 5_000]
    assert firing.skipped == 3
    assert "RUN_ONCE" in firing.skip_reason and "down" in firing.skip_reason


def test_misfire_unspecified_policy_means_run_once():
    firing = plan(schedule_pb2.MISFIRE_POLICY_UNSPECIFIED, T0 + 2_000, T0 + 5_600, started_ms=T0 + 5_500)
    assert firing.create == [T0 + 5_000] and firing.skipped == 3


def test_misfire_skip_creates_none_of_the_missed_but_those_due_since_the_start():
    # Started at T0+4500: T0+2000..T0+4000 were missed; T0+5000 fell while running.
    firing = plan(S.SKIP, T0 + 2_000, T0 + 5_600, started_ms=T0 + 4_500)
    assert firing.create == [T0 + 5_000]
    assert firing.skipped == 3
    assert "SKIP" in firing.skip_reason
    assert plan(S.SKIP, T0 + 2_000, T0 + 4_600, started_ms=T0 + 4_500).create == []


def test_run_all_catch_up_is_capped_and_the_rest_counted_as_skipped():
    firing = plan(S.RUN_ALL, T0 + 1_000, T0 + 10_000, started_ms=T0 + 10_000, max_tasks=4)
    assert firing.create == [T0 + 1_000, T0 + 2_000, T0 + 3_000, T0 + 4_000]
    assert firing.skipped == 6  # 5000..9000 (missed) and 10000 (due since the start)
    assert firing.last_ms == T0 + 10_000 and firing.next_ms == T0 + 11_000
    assert firing.skip_reason == "more than 4 occurrences were due at once"


def test_default_cap_is_1000():
    firing = plan(S.RUN_ALL, T0 + 1_000, T0 + 2_000_000, started_ms=T0 + 2_000_001)
    assert len(firing.create) == S.MAX_TASKS_PER_FIRING == 1_000
    assert firing.skipped == 2_000 - 1_000
    assert firing.create[0] == T0 + 1_000 and firing.create[-1] == T0 + 1_000_000


def test_scan_limit_jumps_to_the_first_occurrence_after_now():
    firing = plan(S.SKIP, T0 + 1_000, T0 + 50_500, started_ms=T0 + 60_000, max_scan=10)
    assert firing.create == []
    assert firing.skipped == 11  # 10 counted, plus one for "the rest, uncounted"
    assert firing.next_ms == T0 + 51_000
    assert "uncounted" in firing.skip_reason


def test_firing_stops_at_the_end_time():
    spec = interval_spec(S1, S.RUN_ALL)
    spec.end_time.FromMilliseconds(T0 + 3_500)
    firing = S.plan_firing(S.IntervalTiming(T0, S1), spec, T0 + 2_000, T0 + 9_000, T0)
    assert firing.create == [T0 + 2_000, T0 + 3_000]
    assert firing.next_ms is None


def test_cron_misfire_over_a_dst_change():
    spec = cron_spec("0 * * * *", "Europe/Berlin", misfire_policy=S.RUN_ALL)
    timing = S.CronTiming("0 * * * *", "Europe/Berlin")
    first = local(BERLIN, 2024, 10, 27, 1, 0)
    now = local(BERLIN, 2024, 10, 27, 4, 0) + 5
    firing = S.plan_firing(timing, spec, first, now, now)
    # 01:00, 02:00 CEST, 02:00 CET, 03:00, 04:00: five hours of real time, five occurrences.
    assert firing.create == [first + h * 3_600_000 for h in range(5)]


# ---- occurrence tasks ------------------------------------------------------------------------

def test_occurrence_task_ids_are_deterministic_valid_task_ids():
    task_id = S.occurrence_task_id("nightly-report.v2", ms(datetime.fromisoformat("2024-03-31T01:00:00.250+00:00")))
    assert task_id == "nightly-report.v2:2024-03-31T01:00:00.250Z"
    assert TASK_ID_RE.fullmatch(S.occurrence_task_id("x" * 100, T0))


def test_occurrence_spec_copies_the_template_and_links_the_schedule():
    template = task_pb2.TaskSpec(type="t", priority=3, labels={"a": "b"})
    spec = S.occurrence_spec(template, "s", T0)
    assert spec.schedule_id == "s" and to_ms(spec.scheduled_for) == T0
    assert spec.task_id == S.occurrence_task_id("s", T0)
    assert spec.priority == 3 and dict(spec.labels) == {"a": "b"}
    assert not template.task_id and not template.schedule_id  # the template is untouched


# ---- validation ------------------------------------------------------------------------------

def invalid(spec: schedule_pb2.ScheduleSpec) -> str:
    with pytest.raises(InvalidField) as info:
        S.normalize_schedule(spec, "schedule", SpecLimits(), T0)
    return info.value.field


def test_normalize_fills_defaults():
    spec = cron_spec(" */5 * * * * ")
    S.normalize_schedule(spec, "schedule", SpecLimits(), T0)
    assert spec.cron.expression == "*/5 * * * *"
    assert spec.cron.time_zone == "UTC"
    assert spec.misfire_policy == S.RUN_ONCE
    assert spec.task.retry.max_attempts == 3  # the template's task defaults


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s.ClearField("schedule_id"), "schedule.schedule_id"),
    (lambda s: setattr(s, "schedule_id", "has:colon"), "schedule.schedule_id"),
    (lambda s: setattr(s, "schedule_id", "x" * 101), "schedule.schedule_id"),
    (lambda s: s.ClearField("task"), "schedule.task"),
    (lambda s: setattr(s.task, "type", ""), "schedule.task.type"),
    (lambda s: setattr(s.task, "task_id", "fixed"), "schedule.task.task_id"),
    (lambda s: setattr(s.task, "idempotency_key", "k"), "schedule.task.idempotency_key"),
    (lambda s: s.task.not_before.FromMilliseconds(T0), "schedule.task.not_before"),
    (lambda s: s.task.depends_on.append("other"), "schedule.task.depends_on"),
    (lambda s: setattr(s.task, "schedule_id", "s"), "schedule.task.schedule_id"),
    (lambda s: s.task.scheduled_for.FromMilliseconds(T0), "schedule.task.scheduled_for"),
    (lambda s: setattr(s, "misfire_policy", 42), "schedule.misfire_policy"),
    (lambda s: (s.start_time.FromMilliseconds(T0), s.end_time.FromMilliseconds(T0)), "schedule.end_time"),
])
def test_bad_schedule_specs_name_the_field(mutate, field):
    spec = interval_spec(S1)
    mutate(spec)
    assert invalid(spec) == field


def test_bad_timings_name_the_field():
    assert invalid(schedule_pb2.ScheduleSpec(schedule_id="s", task=task_pb2.TaskSpec(type="t"))) == "schedule.cron"
    assert invalid(cron_spec("")) == "schedule.cron.expression"
    assert invalid(cron_spec("61 * * * *")) == "schedule.cron.expression"
    assert invalid(cron_spec("* * * *")) == "schedule.cron.expression"
    assert invalid(cron_spec("0 0 30 2 *")) == "schedule.cron.expression"
    assert invalid(cron_spec("0 * * * *", "Mars/Olympus_Mons")) == "schedule.cron.time_zone"
    assert invalid(cron_spec("0 * * * *", "../../etc/passwd")) == "schedule.cron.time_zone"
    assert invalid(interval_spec(999)) == "schedule.interval"
    assert invalid(interval_spec(S.MAX_INTERVAL_MS + 1)) == "schedule.interval"
    negative = interval_spec(S1)
    negative.interval.CopyFrom(duration_pb2.Duration(seconds=-5))
    assert invalid(negative) == "schedule.interval"


def test_submitted_tasks_may_not_claim_a_schedule():
    for mutate, name in ((lambda t: setattr(t, "schedule_id", "s"), "schedule_id"),
                         (lambda t: t.scheduled_for.FromMilliseconds(T0), "scheduled_for")):
        spec = task_pb2.TaskSpec(type="t")
        mutate(spec)
        with pytest.raises(InvalidField) as info:
            normalize_spec(spec, "task", SpecLimits(), T0)
        assert info.value.field == f"task.{name}"


def test_new_schedule_state():
    spec = interval_spec(2 * S1)
    S.normalize_schedule(spec, "schedule", SpecLimits(), T0)
    schedule = S.new_schedule(spec, T0)
    assert schedule.state == schedule_pb2.SCHEDULE_STATE_ACTIVE
    assert to_ms(schedule.next_occurrence) == T0 + 2_000
    assert to_ms(schedule.created_at) == T0
    ended = interval_spec(S1, end_time=None)
    ended.start_time.FromMilliseconds(T0 - 10_000)
    ended.end_time.FromMilliseconds(T0 - 5_000)
    assert S.new_schedule(ended, T0).state == schedule_pb2.SCHEDULE_STATE_COMPLETED


# ---- the projection's schedule state ---------------------------------------------------------

def created(schedule_id: str, next_ms: int) -> wal_pb2.WalRecord:
    spec = interval_spec(S1)
    spec.schedule_id = schedule_id
    record = wal_pb2.WalRecord()
    schedule = record.schedule_created.schedule
    schedule.spec.CopyFrom(spec)
    schedule.state = schedule_pb2.SCHEDULE_STATE_ACTIVE
    schedule.next_occurrence.FromMilliseconds(next_ms)
    schedule.created_at.FromMilliseconds(T0)
    return record


def fired(schedule_id: str, next_ms: int, task_ids=(), skipped: int = 0) -> wal_pb2.WalRecord:
    return wal_pb2.WalRecord(schedule_fired=wal_pb2.ScheduleFired(
        schedule_id=schedule_id, task_ids=list(task_ids), skipped=skipped, skip_reason="r" if skipped else "",
        last_occurrence_unix_ms=next_ms - S1, next_occurrence_unix_ms=next_ms))


def test_schedule_book_index_follows_the_records():
    p = Projection()
    p.apply(created("a", T0 + 3_000), T0)
    p.apply(created("b", T0 + 1_000), T0)
    book = p.schedule_book
    assert book.next_due_ms() == T0 + 1_000
    assert book.pop_due(T0 + 999) == []
    assert book.pop_due(T0 + 1_000) == ["b"]
    p.apply(fired("b", T0 + 2_000, ["b:1"]), T0 + 1_000)
    assert p.schedules["b"].tasks_created == 1 and p.schedules["b"].last_task_id == "b:1"
    assert book.next_due_ms() == T0 + 2_000
    p.apply(wal_pb2.WalRecord(schedule_paused=wal_pb2.SchedulePaused(schedule_id="b", reason="x")), T0 + 1_500)
    assert book.next_due_ms() == T0 + 3_000  # b's entry is stale: skipped
    assert not p.schedules["b"].HasField("next_occurrence")
    p.apply(wal_pb2.WalRecord(schedule_resumed=wal_pb2.ScheduleResumed(
        schedule_id="b", next_occurrence_unix_ms=T0 + 5_000)), T0 + 4_100)
    p.apply(wal_pb2.WalRecord(schedule_deleted=wal_pb2.ScheduleDeleted(schedule_id="a")), T0 + 4_200)
    assert book.pop_due(T0 + 10_000) == ["b"]
    p.apply(fired("b", 0, skipped=2), T0 + 10_000)
    assert p.schedules["b"].state == schedule_pb2.SCHEDULE_STATE_COMPLETED
    assert p.schedules["b"].occurrences_skipped == 2
    assert book.next_due_ms() is None


def test_rebuilt_index_matches_the_live_one():
    p = Projection()
    for i in range(20):
        p.apply(created(f"s{i}", T0 + (i * 7919) % 5000), T0)
    for i in range(0, 20, 3):
        p.apply(wal_pb2.WalRecord(schedule_paused=wal_pb2.SchedulePaused(schedule_id=f"s{i}")), T0)
    live = [p.schedule_book.pop_due(t) for t in range(T0, T0 + 5001, 250)]
    rebuilt = ScheduleBook()
    rebuilt.schedules.update(p.schedules)
    rebuilt.rebuild_index()
    assert [rebuilt.pop_due(t) for t in range(T0, T0 + 5001, 250)] == live
    # Assigning the schedules (a snapshot's) re-indexes them.
    restored = Projection()
    restored.schedules = {k: v for k, v in p.schedules.items()}
    assert [restored.schedule_book.pop_due(t) for t in range(T0, T0 + 5001, 250)] == live


def test_schedule_records_that_cannot_apply_are_corrupt():
    p = Projection()
    p.apply(created("a", T0), T0)
    with pytest.raises(CorruptProjection):
        p.apply(created("a", T0), T0)
    with pytest.raises(CorruptProjection):
        p.apply(fired("nope", T0), T0)
    with pytest.raises(CorruptProjection):
        p.apply(wal_pb2.WalRecord(schedule_resumed=wal_pb2.ScheduleResumed(schedule_id="a")), T0)


def test_schedules_are_part_of_the_fingerprint():
    a, b = Projection(), Projection()
    a.apply(created("a", T0), T0)
    b.apply(created("a", T0), T0)
    assert a.fingerprint() == b.fingerprint()
    b.apply(fired("a", T0 + S1, ["a:1"]), T0)
    assert a.fingerprint() != b.fingerprint()
