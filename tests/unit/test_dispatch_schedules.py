"""Schedules in a real dispatch loop, in process (real projection and LMDB WAL; no gRPC), driven
step by step with an injected clock: occurrences create linked tasks, pause/resume/delete, the
misfire policies after a restart, the queued-task bound, and replay == live."""
from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest

from corral.v1 import schedule_pb2, task_pb2, task_service_pb2, wal_pb2
from coordinator.coordinator import replay
from coordinator.core import schedules as S
from coordinator.core.admission import Admission
from coordinator.core.durations import set_ms, to_ms
from coordinator.core.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from coordinator.core.fleet import Fleet
from coordinator.core.projection import Projection
from coordinator.core.spec import SpecLimits
from coordinator.core.states import State
from coordinator.dispatch import commands as C
from coordinator.dispatch.loop import DispatchLoop
from coordinator.storage.wal import WriteAheadLog

pytestmark = pytest.mark.timeout(30)
T0 = 1_700_000_000_000
S1 = 1_000


def sync(test):
    """Run an async test function with asyncio.run (pytest fixtures still injected)."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        asyncio.run(test(*args, **kwargs))
    return run


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


class Harness:
    """A loop over a WAL in `path` (expiry tracked when `retention_ms` is given); `step()` runs one
    step at the clock's time, `call()` one step for one command."""

    def __init__(self, path: Path, clock: Clock, **kwargs) -> None:
        self.path = path
        self.wal = WriteAheadLog(path, sync=False)
        self.projection = Projection(track_expiry=bool(kwargs.get("retention_ms")))
        replay(self.wal, self.projection, truncate_corrupt=False)
        self.clock = clock
        self.loop = DispatchLoop(self.wal, self.projection, Fleet(lease_ttl_ms=60_000), coordinator_id="unit",
                                 heartbeat_interval_ms=20_000, clock=clock, **kwargs)

    async def call(self, make):
        future = asyncio.get_running_loop().create_future()
        await self.loop._step([make(future)])
        return future.result()

    async def step(self, at_ms: int | None = None) -> None:
        if at_ms is not None:
            self.clock.ms = at_ms
        await self.loop._step([])

    async def create(self, spec: schedule_pb2.ScheduleSpec) -> tuple[schedule_pb2.Schedule, bool]:
        S.normalize_schedule(spec, "schedule", SpecLimits(), self.clock.ms)
        return await self.call(lambda f: C.CreateSchedule(spec, f))

    async def schedule(self, schedule_id: str) -> schedule_pb2.Schedule:
        return await self.call(lambda f: C.GetSchedule(schedule_id, f))

    async def tasks_of(self, schedule_id: str) -> list[task_pb2.Task]:
        request = task_service_pb2.ListTasksRequest(schedule_id=schedule_id)
        views, _ = await self.call(lambda f: C.ListTasks(request, 0, 1000, f))
        return views

    def close(self) -> None:
        self.wal.close()


def every(seconds: float, schedule_id: str = "s", policy: int = 0, task_type: str = "t") -> schedule_pb2.ScheduleSpec:
    spec = schedule_pb2.ScheduleSpec(schedule_id=schedule_id, misfire_policy=policy,
                                     task=task_pb2.TaskSpec(type=task_type, labels={"from": "schedule"}))
    set_ms(spec.interval, int(seconds * 1000))
    return spec


def fingerprint_after_replay(path: Path) -> str:
    wal = WriteAheadLog(path, sync=False)
    try:
        projection = Projection()
        replay(wal, projection, truncate_corrupt=False)
        return projection.fingerprint()
    finally:
        wal.close()


@sync
async def test_interval_occurrences_create_linked_tasks(tmp_path):
    h = Harness(tmp_path, Clock(T0))
    schedule, created = await h.create(every(2))
    assert created and schedule.state == schedule_pb2.SCHEDULE_STATE_ACTIVE
    assert to_ms(schedule.next_occurrence) == T0 + 2_000
    # The loop sleeps until the next occurrence.
    assert h.loop._seconds_to_next_timer() == pytest.approx(2.0)
    await h.step(T0 + 1_999)
    assert await h.tasks_of("s") == []
    await h.step(T0 + 2_003)
    await h.step(T0 + 4_000)
    tasks = await h.tasks_of("s")
    assert [t.task_id for t in tasks] == [S.occurrence_task_id("s", T0 + 2_000), S.occurrence_task_id("s", T0 + 4_000)]
    for task, occurrence in zip(tasks, (T0 + 2_000, T0 + 4_000)):
        assert task.spec.schedule_id == "s" and to_ms(task.spec.scheduled_for) == occurrence
        assert task.spec.type == "t" and dict(task.spec.labels) == {"from": "schedule"}
        assert task.state == State.READY
    schedule = await h.schedule("s")
    assert schedule.tasks_created == 2 and schedule.occurrences_skipped == 0
    assert to_ms(schedule.last_occurrence) == T0 + 4_000 and to_ms(schedule.next_occurrence) == T0 + 6_000
    assert schedule.last_task_id == tasks[-1].task_id
    # Other tasks are not in the filter; a filter on an unknown schedule finds nothing.
    assert await h.tasks_of("other") == []
    h.close()
    assert fingerprint_after_replay(tmp_path) == h.projection.fingerprint()


@sync
async def test_create_is_idempotent_for_the_same_spec_only(tmp_path):
    h = Harness(tmp_path, Clock(T0))
    first, created = await h.create(every(5))
    h.clock.ms += 700
    again, created_again = await h.create(every(5))
    assert created and not created_again
    assert again == first  # anchored at the first creation
    with pytest.raises(AlreadyExists):
        await h.create(every(6))
    h.close()


@sync
async def test_pause_resume_and_delete(tmp_path):
    h = Harness(tmp_path, Clock(T0))
    await h.create(every(1))
    await h.step(T0 + 1_000)
    paused = await h.call(lambda f: C.PauseSchedule("s", "maintenance", f))
    assert paused.state == schedule_pb2.SCHEDULE_STATE_PAUSED and paused.pause_reason == "maintenance"
    assert not paused.HasField("next_occurrence")
    assert h.loop._seconds_to_next_timer() is None  # nothing to wake up for
    for t in range(2, 6):
        await h.step(T0 + t * 1_000)
    assert len(await h.tasks_of("s")) == 1
    again = await h.call(lambda f: C.PauseSchedule("s", "", f))  # no change, no record
    assert again.pause_reason == "maintenance"
    h.clock.ms = T0 + 5_500
    resumed = await h.call(lambda f: C.ResumeSchedule("s", f))
    assert resumed.state == schedule_pb2.SCHEDULE_STATE_ACTIVE
    assert to_ms(resumed.next_occurrence) == T0 + 6_000  # occurrences while paused are not created
    await h.step(T0 + 6_000)
    tasks = await h.tasks_of("s")
    assert [to_ms(t.spec.scheduled_for) for t in tasks] == [T0 + 1_000, T0 + 6_000]
    assert (await h.schedule("s")).occurrences_skipped == 0
    await h.call(lambda f: C.DeleteSchedule("s", f))
    with pytest.raises(NotFound):
        await h.schedule("s")
    with pytest.raises(NotFound):
        await h.call(lambda f: C.PauseSchedule("s", "", f))
    await h.step(T0 + 9_000)
    assert len(await h.tasks_of("s")) == 2  # its tasks stay; no more are created
    listed, token = await h.call(lambda f: C.ListSchedules("", 100, f))
    assert listed == [] and token == ""
    h.close()
    assert fingerprint_after_replay(tmp_path) == h.projection.fingerprint()


@sync
async def test_list_schedules_pages_by_id(tmp_path):
    h = Harness(tmp_path, Clock(T0))
    for name in ("c", "a", "b"):
        await h.create(every(60, schedule_id=name))
    page, token = await h.call(lambda f: C.ListSchedules("", 2, f))
    assert [s.spec.schedule_id for s in page] == ["a", "b"] and token == "b"
    page, token = await h.call(lambda f: C.ListSchedules(token, 2, f))
    assert [s.spec.schedule_id for s in page] == ["c"] and token == ""
    h.close()


@sync
async def test_completed_schedule_cannot_be_paused_or_resumed(tmp_path):
    h = Harness(tmp_path, Clock(T0))
    spec = every(1)
    spec.end_time.FromMilliseconds(T0 + 2_500)
    await h.create(spec)
    await h.step(T0 + 5_000)
    schedule = await h.schedule("s")
    assert schedule.state == schedule_pb2.SCHEDULE_STATE_COMPLETED and schedule.tasks_created == 2
    assert h.loop._seconds_to_next_timer() is None
    with pytest.raises(FailedPrecondition):
        await h.call(lambda f: C.PauseSchedule("s", "", f))
    with pytest.raises(FailedPrecondition):
        await h.call(lambda f: C.ResumeSchedule("s", f))
    h.close()


@pytest.mark.parametrize("policy, missed_created", [
    (schedule_pb2.MISFIRE_POLICY_RUN_ALL, [2, 3, 4]),
    (schedule_pb2.MISFIRE_POLICY_RUN_ONCE, [4]),
    (schedule_pb2.MISFIRE_POLICY_SKIP, []),
])
@sync
async def test_misfire_policy_after_a_restart(tmp_path, policy, missed_created):
    clock = Clock(T0)
    h = Harness(tmp_path, clock)
    await h.create(every(1, policy=policy))
    await h.step(T0 + 1_000)
    h.close()  # down from T0+1.5s to T0+4.5s: occurrences 2, 3 and 4 s are missed
    clock.ms = T0 + 4_500
    h = Harness(tmp_path, clock)
    assert h.loop.started_ms == T0 + 4_500
    assert h.loop._seconds_to_next_timer() == 0  # due at once
    await h.step(T0 + 4_600)
    await h.step(T0 + 5_000)  # due since the start: created whatever the policy
    seconds = [(to_ms(t.spec.scheduled_for) - T0) // 1_000 for t in await h.tasks_of("s")]
    assert seconds == [1] + missed_created + [5]
    schedule = await h.schedule("s")
    assert schedule.occurrences_skipped == 3 - len(missed_created)
    assert schedule.tasks_created == len(seconds)
    # A second restart re-decides nothing: the records carry the decisions.
    live = h.projection.fingerprint()
    h.close()
    assert fingerprint_after_replay(tmp_path) == live
    h = Harness(tmp_path, Clock(T0 + 5_100))
    await h.step()
    assert len(await h.tasks_of("s")) == len(seconds)
    h.close()


@sync
async def test_occurrences_over_the_queued_task_bound_are_skipped_with_the_reason(tmp_path):
    h = Harness(tmp_path, Clock(T0), admission=Admission(max_queued_tasks=2))
    await h.create(every(1, policy=schedule_pb2.MISFIRE_POLICY_RUN_ALL))
    await h.step(T0 + 1_000)
    await h.step(T0 + 2_000)
    await h.step(T0 + 3_000)  # READY tasks stay queued (no actor): the third is refused
    schedule = await h.schedule("s")
    assert schedule.tasks_created == 2 and schedule.occurrences_skipped == 1
    assert "max_queued_tasks" in schedule.last_skip_reason
    assert to_ms(schedule.next_occurrence) == T0 + 4_000
    h.close()
    assert fingerprint_after_replay(tmp_path) == h.projection.fingerprint()


@sync
async def test_a_draining_loop_creates_no_occurrence_and_no_schedule(tmp_path):
    h = Harness(tmp_path, Clock(T0))
    await h.create(every(1))
    h.loop.drain.begin("test")
    assert h.loop._seconds_to_next_timer() is None
    await h.step(T0 + 3_000)
    assert await h.tasks_of("s") == []
    with pytest.raises(Unavailable):
        await h.create(every(1, schedule_id="other"))
    h.loop.drain.end()
    await h.step(T0 + 3_100)  # once the drain ends they are created (due while running)
    assert len(await h.tasks_of("s")) == 3
    h.close()


@sync
async def test_an_existing_task_id_is_never_created_twice(tmp_path):
    """A schedule deleted and created again with the same id and timing: occurrences whose task
    the first one already created are skipped, not created twice."""
    h = Harness(tmp_path, Clock(T0))
    spec = every(1)
    spec.start_time.FromMilliseconds(T0 + 1_000)
    await h.create(spec)
    await h.step(T0 + 1_000)
    await h.call(lambda f: C.DeleteSchedule("s", f))
    spec = every(1)
    spec.start_time.FromMilliseconds(T0 + 1_000)
    h.clock.ms = T0 + 900  # e.g. a clock stepped back
    await h.create(spec)
    await h.step(T0 + 1_000)
    await h.step(T0 + 2_000)
    assert len(await h.tasks_of("s")) == 2
    schedule = await h.schedule("s")
    assert schedule.tasks_created == 1 and schedule.occurrences_skipped == 1
    assert schedule.last_skip_reason == "its task already exists"
    h.close()
    assert fingerprint_after_replay(tmp_path) == h.projection.fingerprint()


@sync
async def test_cron_schedule_in_a_time_zone(tmp_path):
    # 2024-03-30 12:00 UTC; Europe/Berlin springs forward the next night.
    start = 1_711_800_000_000
    h = Harness(tmp_path, Clock(start))
    spec = schedule_pb2.ScheduleSpec(schedule_id="nightly", cron=schedule_pb2.CronTiming(
        expression="30 2 * * *", time_zone="Europe/Berlin"), task=task_pb2.TaskSpec(type="t"))
    schedule, _ = await h.create(spec)
    first = to_ms(schedule.next_occurrence)
    assert first == 1_711_846_800_000  # 2024-03-31 03:00 CEST (02:30 does not exist)
    await h.step(first)
    schedule = await h.schedule("nightly")
    assert to_ms(schedule.next_occurrence) == 1_711_931_400_000  # 2024-04-01 02:30 CEST
    [task] = await h.tasks_of("nightly")
    assert task.task_id == "nightly:2024-03-31T01:00:00.000Z"
    h.close()
    assert fingerprint_after_replay(tmp_path) == h.projection.fingerprint()


@sync
async def test_records_of_one_firing_share_one_commit(tmp_path):
    h = Harness(tmp_path, Clock(T0))
    await h.create(every(1, policy=schedule_pb2.MISFIRE_POLICY_RUN_ALL))
    commits = h.wal.commits
    await h.step(T0 + 3_000)  # three occurrences due at once
    assert h.wal.commits == commits + 1
    records = list(h.wal.records())
    kinds = [r.WhichOneof("event") for r in records]
    assert kinds == ["schedule_created", "schedule_fired", "task_submitted", "task_submitted", "task_submitted"]
    fired: wal_pb2.ScheduleFired = records[1].schedule_fired
    assert list(fired.created_occurrences_unix_ms) == [T0 + 1_000, T0 + 2_000, T0 + 3_000]
    assert list(fired.task_ids) == [r.task_submitted.task_id for r in records[2:]]
    h.close()


@sync
async def test_a_timing_this_machine_cannot_evaluate_pauses_the_schedule(tmp_path):
    """Validated at creation, but e.g. restored on a machine whose zone database lacks the zone:
    the schedule is paused with the reason; the loop goes on."""
    h = Harness(tmp_path, Clock(T0))
    spec = schedule_pb2.ScheduleSpec(schedule_id="z", cron=schedule_pb2.CronTiming(
        expression="* * * * *", time_zone="Europe/Berlin"), task=task_pb2.TaskSpec(type="t"))
    await h.create(spec)
    await h.create(every(1))
    h.projection.schedules["z"].spec.cron.time_zone = "Nowhere/Gone"  # as if read elsewhere
    await h.step(T0 + 60_000)
    z = await h.schedule("z")
    assert z.state == schedule_pb2.SCHEDULE_STATE_PAUSED
    assert "Nowhere/Gone" in z.pause_reason
    assert len(await h.tasks_of("s")) == 60  # the other schedule fired (60 occurrences due)
    assert h.loop.fatal_error is None
    h.close()
