"""Review findings on schedules, on a real dispatch loop in process (real projection and LMDB
WAL, no gRPC), driven step by step with an injected clock (harness of test_dispatch_schedules)."""
from __future__ import annotations

import pytest

from corral.v1 import schedule_pb2, task_pb2
from coordinator.core.errors import FailedPrecondition
from coordinator.dispatch import commands as C

from .test_dispatch_schedules import T0, Clock, Harness, every, fingerprint_after_replay, sync

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
