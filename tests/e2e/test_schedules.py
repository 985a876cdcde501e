"""Schedules with real processes: an interval schedule's occurrences become tasks that run and are
linked to it (ListTasks schedule_id), pause stops occurrences, delete removes the schedule, bad
specs are INVALID_ARGUMENT naming the field, and after a `kill -9` of the coordinator the
occurrences missed while it was down follow each schedule's misfire policy."""
from __future__ import annotations

import time

import grpc
import pytest

from corral.v1 import schedule_pb2, task_pb2, task_service_pb2

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SUCCEEDED = task_pb2.TASK_STATE_SUCCEEDED


def every_second(schedule_id: str, policy: int = 0) -> schedule_pb2.ScheduleSpec:
    spec = schedule_pb2.ScheduleSpec(schedule_id=schedule_id, misfire_policy=policy,
                                     task=task_pb2.TaskSpec(type="echo"))
    spec.task.input.string_value = schedule_id
    spec.interval.FromMilliseconds(1_000)
    return spec


def create(cluster, spec: schedule_pb2.ScheduleSpec) -> schedule_pb2.Schedule:
    return cluster.tasks.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=spec), timeout=10).schedule


def get(cluster, schedule_id: str) -> schedule_pb2.Schedule:
    return cluster.tasks.GetSchedule(schedule_pb2.GetScheduleRequest(schedule_id=schedule_id), timeout=10).schedule


def tasks_of(cluster, schedule_id: str) -> list[task_pb2.Task]:
    return list(cluster.tasks.ListTasks(task_service_pb2.ListTasksRequest(
        schedule_id=schedule_id, page_size=1000), timeout=10).tasks)


def occurrences(tasks: list[task_pb2.Task]) -> set[int]:
    return {t.spec.scheduled_for.ToMilliseconds() for t in tasks}


def test_interval_schedule_runs_tasks_pause_stops_it_delete_removes_it(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator()
    cluster.start_actor("sched-1")
    created = cluster.tasks.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=every_second("tick")), timeout=10)
    assert created.created and created.schedule.state == schedule_pb2.SCHEDULE_STATE_ACTIVE
    again = cluster.tasks.CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=every_second("tick")), timeout=10)
    assert not again.created and again.schedule.spec == created.schedule.spec

    # Occurrences become tasks that run to completion, linked to the schedule.
    def two_succeeded():
        succeeded = [t for t in tasks_of(cluster, "tick") if t.state == SUCCEEDED]
        return succeeded if len(succeeded) >= 2 else None

    done = wait_for(two_succeeded, 15, "two occurrences of 'tick' to succeed")
    for task in done:
        assert task.spec.schedule_id == "tick"
        assert task.task_id.startswith("tick:")
        assert task.spec.type == "echo"
    assert len(occurrences(tasks_of(cluster, "tick"))) == len(tasks_of(cluster, "tick"))  # one task each
    other = cluster.submit("echo", {"n": 1})
    assert other not in {t.task_id for t in tasks_of(cluster, "tick")}

    # Pause: no more occurrences. Proof that time passed on the coordinator: a task delayed by
    # 2.5 s (several intervals) becomes READY and succeeds meanwhile.
    paused = cluster.tasks.PauseSchedule(schedule_pb2.PauseScheduleRequest(schedule_id="tick", reason="test"),
                                         timeout=10).schedule
    assert paused.state == schedule_pb2.SCHEDULE_STATE_PAUSED
    count = len(tasks_of(cluster, "tick"))
    assert count == paused.tasks_created
    marker = cluster.submit("echo", {"marker": True}, not_before={"seconds": int(time.time() + 2.5)})
    cluster.wait_state(marker, (SUCCEEDED,), timeout_s=20)
    assert len(tasks_of(cluster, "tick")) == count
    listed = cluster.tasks.ListSchedules(schedule_pb2.ListSchedulesRequest(), timeout=10).schedules
    assert [s.spec.schedule_id for s in listed] == ["tick"]

    # Resume: occurrences again.
    resumed = cluster.tasks.ResumeSchedule(schedule_pb2.ResumeScheduleRequest(schedule_id="tick"), timeout=10).schedule
    assert resumed.state == schedule_pb2.SCHEDULE_STATE_ACTIVE
    wait_for(lambda: len(tasks_of(cluster, "tick")) > count, 10, "an occurrence after resume")

    # Delete: gone; its tasks stay.
    cluster.tasks.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(schedule_id="tick"), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        get(cluster, "tick")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert cluster.tasks.ListSchedules(schedule_pb2.ListSchedulesRequest(), timeout=10).schedules == []
    assert len(tasks_of(cluster, "tick")) > count


def test_bad_schedules_are_invalid_argument_naming_the_field(cluster):
    def refused(spec: schedule_pb2.ScheduleSpec) -> str:
        with pytest.raises(grpc.RpcError) as info:
            create(cluster, spec)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return info.value.details()

    cron = schedule_pb2.ScheduleSpec(schedule_id="c", task=task_pb2.TaskSpec(type="echo"),
                                     cron=schedule_pb2.CronTiming(expression="61 * * * *"))
    assert refused(cron).startswith("schedule.cron.expression:")
    cron.cron.expression = "0 * * * *"
    cron.cron.time_zone = "Nowhere/Special"
    assert refused(cron).startswith("schedule.cron.time_zone:")
    short = every_second("short")
    short.interval.FromMilliseconds(500)
    assert refused(short).startswith("schedule.interval:")
    odd = every_second("odd")
    odd.interval.nanos = 2**31 - 1  # not a valid Duration: nanos past a second
    assert refused(odd).startswith("schedule.interval:")
    odd = every_second("odd")
    odd.end_time.seconds, odd.end_time.nanos = 4_000_000_000, 2**31 - 1  # not a valid Timestamp
    assert refused(odd).startswith("schedule.end_time:")
    bad_template = every_second("tpl")
    bad_template.task.type = ""
    assert refused(bad_template).startswith("schedule.task.type:")
    with pytest.raises(grpc.RpcError) as info:
        cluster.tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(
            task=task_pb2.TaskSpec(type="echo", schedule_id="tick")), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("task.schedule_id:")
    create(cluster, every_second("same"))
    different = every_second("same")
    different.interval.FromMilliseconds(2_000)
    with pytest.raises(grpc.RpcError) as info:
        create(cluster, different)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_start_time_too_far_ahead_is_invalid_argument_and_the_coordinator_keeps_serving(cluster):
    """A cron schedule whose start_time is past what datetime (year 9999) or a Timestamp can hold
    used to raise in the dispatch loop (ValueError/OverflowError from evaluating the cron
    expression there): one CreateSchedule stopped the coordinator."""
    for seconds in (10**12, 253_402_300_000, 253_402_300_799 - 3600):  # year 33658; 10000-01-01; 9999-12-31T23:00
        spec = schedule_pb2.ScheduleSpec(schedule_id="far", task=task_pb2.TaskSpec(type="echo"),
                                         cron=schedule_pb2.CronTiming(expression="0 0 1 1 *"))
        spec.start_time.seconds = seconds
        with pytest.raises(grpc.RpcError) as info:
            create(cluster, spec)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
        assert info.value.details().startswith("schedule.start_time:"), info.value.details()
    far_interval = every_second("far-interval")
    far_interval.start_time.seconds = 10**12
    with pytest.raises(grpc.RpcError) as info:
        create(cluster, far_interval)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("schedule.start_time:"), info.value.details()
    # Nothing was written, and the coordinator still serves (and replays) fine.
    assert create(cluster, every_second("after-far")).state == schedule_pb2.SCHEDULE_STATE_ACTIVE
    assert cluster.coordinator.poll() is None
    cluster.kill(cluster.coordinator)
    cluster.start_coordinator()
    assert get(cluster, "after-far").spec.schedule_id == "after-far"


def test_misfire_policies_after_the_coordinator_was_killed(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator()
    policies = {"all": schedule_pb2.MISFIRE_POLICY_RUN_ALL, "once": schedule_pb2.MISFIRE_POLICY_RUN_ONCE,
                "skip": schedule_pb2.MISFIRE_POLICY_SKIP}
    for name, policy in policies.items():
        create(cluster, every_second(name, policy))
    wait_for(lambda: all(get(cluster, name).tasks_created >= 1 for name in policies), 15, "a first occurrence each")
    cluster.kill(cluster.coordinator)  # kill -9: no drain, nothing more is written
    killed_at = time.time() * 1000
    # Down long enough that at least two occurrences of each schedule fall while no coordinator
    # runs (a bounded wait on the wall clock, which is what the coordinator's occurrences follow).
    wait_for(lambda: time.time() * 1000 >= killed_at + 2_300, 10, "occurrences to be missed")
    restarted_at = time.time() * 1000  # the new process starts later than this
    cluster.start_coordinator()
    for name in policies:
        tasks = tasks_of(cluster, name)
        # The last occurrence created before the kill; those after it and before the restart
        # were certainly missed while down (one more may fall during the process's start-up).
        last = max(t.spec.scheduled_for.ToMilliseconds() for t in tasks if t.created_at.ToMilliseconds() < killed_at)
        missed = {last + k * 1_000 for k in range(1, 100) if last + k * 1_000 < restarted_at}
        assert len(missed) >= 2, (name, missed)
        after = wait_for(lambda n=name: (lambda s: s if s.last_occurrence.ToMilliseconds() >= max(missed) else None)(
            get(cluster, n)), 10, f"{name} to handle its missed occurrences")
        created = occurrences(tasks_of(cluster, name)) & missed
        if name == "all":
            assert created == missed and after.occurrences_skipped == 0
        elif name == "once":
            assert len(created) <= 1 and after.occurrences_skipped >= len(missed) - 1 >= 1
            assert "RUN_ONCE" in after.last_skip_reason
        else:
            assert created == set() and after.occurrences_skipped >= len(missed)
            assert "SKIP" in after.last_skip_reason
        tasks = tasks_of(cluster, name)
        assert len(occurrences(tasks)) == len(tasks)  # never two tasks for one occurrence
