"""Schedule edge cases on a real dispatch loop in process (real projection and LMDB WAL, no gRPC),
driven step by step with an injected clock (harness of test_dispatch_schedules): resuming a
schedule whose timing cannot be evaluated here, and an occurrence after retention forgot its task."""
from __future__ import annotations


import pytest

from corral.v1 import schedule_pb2, task_pb2
from coordinator.core.errors import FailedPrecondition
from coordinator.dispatch import commands as C

from .test_dispatch_schedules import T0, Clock, Harness, every, sync

pytestmark = pytest.mark.timeout(30)


@sync
async def test_resuming_a_schedule_whose_timing_cannot_be_evaluated_is_refused_not_fatal(tmp_path):
    """The loop paused a schedule whose zone this machine does not know; resuming it must be a
    refusal (FAILED_PRECONDITION), not an exception out of the step (which stops the loop)."""
    h = Harness(tmp_path, Clock(T0))
    spec = schedule_pb2.ScheduleSpec(schedule_id="z", cron=schedule_pb2.CronTiming(
        expression="* * * * *", time_zone="Europe/Berlin"), task=task_pb2.TaskSpec(type="t"))
    await h.create(spec)
    h.projection.schedules["z"].spec.cron.time_zone = "Nowhere/Gone"  # as if read elsewhere
    await h.step(T0 + 60_000)
    assert (await h.schedule("z")).state == schedule_pb2.SCHEDULE_STATE_PAUSED
    with pytest.raises(FailedPrecondition, match="Nowhere/Gone"):
        await h.call(lambda f: C.ResumeSchedule("z", f))
    assert (await h.schedule("z")).state == schedule_pb2.SCHEDULE_STATE_PAUSED
    h.close()


@pytest.mark.xfail(strict=True, reason="'nothing is created twice' relies on the occurrence's task still existing; "
                   "retention forgets it, and nothing else durable remembers a deleted schedule's occurrences")
@sync
async def test_an_occurrence_is_not_created_again_after_its_task_was_forgotten(tmp_path):
    """As test_an_existing_task_id_is_never_created_twice (schedule deleted, clock stepped back,
    created again), with retention: the first occurrence's task has been forgotten meanwhile."""
    h = Harness(tmp_path, Clock(T0), retention_ms=1_000)
    spec = every(1)
    spec.start_time.FromMilliseconds(T0 + 1_000)
    await h.create(spec)
    await h.step(T0 + 1_000)
    [task] = await h.tasks_of("s")
    await h.call(lambda f: C.CancelTask(task.task_id, "done", f))
    await h.call(lambda f: C.DeleteSchedule("s", f))
    await h.step(T0 + 2_100)
    assert await h.tasks_of("s") == []  # forgotten
    spec = every(1)
    spec.start_time.FromMilliseconds(T0 + 1_000)
    h.clock.ms = T0 + 900  # the clock steps back
    await h.create(spec)
    await h.step(T0 + 1_000)
    assert await h.tasks_of("s") == []  # occurrence T0+1s already had its task
    h.close()
