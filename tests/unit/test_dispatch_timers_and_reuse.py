"""Timers and ids reused after retention forgot a task, on a real dispatch loop in process (real
projection and LMDB WAL, no gRPC), driven step by step with an injected wall clock: a forgotten
task's edges and timers never act on a new task under its id, and schedule-to-start decides the
same live and after a restart."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.v1 import task_pb2
from coordinator.coordinator import replay
from coordinator.core.projection import Projection
from coordinator.core.spec import SpecLimits, normalize_spec
from coordinator.core.states import State
from coordinator.dispatch import commands as C
from coordinator.storage.wal import WriteAheadLog

from .test_dispatch_schedules import Clock
from .test_dispatch_schedules import Harness as SchedulesHarness

pytestmark = pytest.mark.timeout(30)
T0 = 1_700_000_000_000


class Harness(SchedulesHarness):
    """The schedules tests' loop harness, with retention on and plain task submissions."""

    def __init__(self, path: Path, clock: Clock, retention_ms: int, **kwargs) -> None:
        super().__init__(path, clock, retention_ms=retention_ms, **kwargs)

    async def submit(self, task_id: str, **fields) -> tuple[str, bool, int]:
        spec = task_pb2.TaskSpec(task_id=task_id, type=fields.pop("type", "t"), **fields)
        normalize_spec(spec, "task", SpecLimits(), self.clock.ms)
        [result] = await self.call(lambda f: C.SubmitTasks([spec], ["task"], f))
        return result


def replayed(path: Path) -> Projection:
    wal = WriteAheadLog(path, sync=False)
    try:
        projection = Projection(track_expiry=True)
        replay(wal, projection, truncate_corrupt=False)
        return projection
    finally:
        wal.close()


def test_forgetting_a_dependent_after_its_forgotten_prerequisites_id_was_reused(tmp_path):
    """P is forgotten before its (finished) dependent D; a new task takes P's id and gets a
    dependent of its own; forgetting D then must not touch the new P's edges."""
    async def go():
        h = Harness(tmp_path, Clock(T0), retention_ms=1_000)
        await h.submit("P", type="nobody")
        await h.call(lambda f: C.CancelTask("P", "stop", f))  # P ends at T0
        h.clock.ms = T0 + 500
        _, _, state = await h.submit("D", depends_on=["P"])  # canceled at once: P was canceled
        assert state == State.CANCELED
        await h.step(T0 + 1_000)  # P is due, D not yet: P alone is forgotten
        assert "P" not in h.projection.tasks and "D" in h.projection.tasks
        await h.submit("P", type="nobody")  # the id is free again
        await h.submit("D2", depends_on=["P"])
        assert h.projection.dependents == {"P": ["D2"]}
        await h.step(T0 + 2_000)  # D is due (and the next sweep)
        assert h.loop.fatal_error is None
        assert "D" not in h.projection.tasks
        assert h.projection.dependents == {"P": ["D2"]}
        fingerprint = h.projection.fingerprint()
        h.close()
        assert replayed(tmp_path).fingerprint() == fingerprint

    asyncio.run(go())


def test_a_forgotten_tasks_schedule_to_start_timer_does_not_fail_a_new_task_with_its_id(tmp_path):
    """X (schedule-to-start 60 s) is canceled and forgotten; a new X without that timeout is READY
    when the old X's timer comes due: the timer was the old task's, not the new one's."""
    async def go():
        h = Harness(tmp_path, Clock(T0), retention_ms=1_000)
        s2s = task_pb2.TaskSpec()
        s2s.schedule_to_start_timeout.FromMilliseconds(60_000)
        await h.submit("X", type="nobody", schedule_to_start_timeout=s2s.schedule_to_start_timeout)
        await h.call(lambda f: C.CancelTask("X", "stop", f))
        await h.step(T0 + 1_000)
        assert "X" not in h.projection.tasks
        await h.submit("X", type="nobody")  # no schedule-to-start timeout
        await h.step(T0 + 60_000)  # the old X's timer is due
        assert h.projection.tasks["X"].state == State.READY, h.projection.tasks["X"].state_reason
        h.close()

    asyncio.run(go())


def test_a_forgotten_tasks_total_timeout_timer_does_not_fail_a_new_task_with_its_id(tmp_path):
    async def go():
        h = Harness(tmp_path, Clock(T0), retention_ms=1_000)
        s2c = task_pb2.TaskSpec()
        s2c.schedule_to_close_timeout.FromMilliseconds(60_000)
        await h.submit("X", type="nobody", schedule_to_close_timeout=s2c.schedule_to_close_timeout)
        await h.call(lambda f: C.CancelTask("X", "stop", f))
        await h.step(T0 + 1_000)
        assert "X" not in h.projection.tasks
        await h.submit("X", type="nobody")  # no total timeout
        await h.step(T0 + 60_000)  # the old X's close timer is due
        assert h.projection.tasks["X"].state == State.READY, h.projection.tasks["X"].state_reason
        h.close()

    asyncio.run(go())


def test_a_forgotten_tasks_attempt_deadline_timer_does_not_end_a_new_tasks_attempt(tmp_path):
    """X's attempt 1 (timeout 60 s) succeeds at once, X is forgotten; a new X's attempt 1 (timeout
    1 h) is running when the old attempt's deadline timer comes due."""
    from corral.v1 import actor_service_pb2
    from coordinator.dispatch.actor_link import ActorLink

    def leases(link):
        out = []
        while not link.queue.empty():
            out.extend(link.queue.get_nowait().leases)
        return out

    async def go():
        h = Harness(tmp_path, Clock(T0), retention_ms=1_000)
        link = ActorLink()
        hello = actor_service_pb2.Hello(identity=task_pb2.ExecutorIdentity(
            actor_id="a1", incarnation="1", task_types=["t"], slots=1))
        await h.call(lambda f: C.ActorHello(link, hello, f))
        short = task_pb2.TaskSpec()
        short.execution_timeout.FromMilliseconds(60_000)
        await h.submit("X", execution_timeout=short.execution_timeout)
        [lease] = leases(link)
        request = actor_service_pb2.ConnectRequest()
        request.results.add(lease=lease.ref, outcome=task_pb2.ATTEMPT_OUTCOME_SUCCEEDED)
        await h.loop._step([C.ActorUpdate(link, request)])
        assert h.projection.tasks["X"].state == State.SUCCEEDED
        await h.step(T0 + 1_000)
        assert "X" not in h.projection.tasks
        long = task_pb2.TaskSpec()
        long.execution_timeout.FromMilliseconds(3_600_000)
        await h.submit("X", execution_timeout=long.execution_timeout)
        [lease] = leases(link)
        assert lease.ref.attempt == 1
        # Heartbeats keep the lease alive (liveness is on the monotonic clock, not moved here).
        await h.step(T0 + 70_000)  # past the old attempt's deadline + grace
        task = h.projection.tasks["X"]
        assert task.state == State.RUNNING, task.state_reason
        h.close()

    asyncio.run(go())


def test_schedule_to_start_after_a_declared_dependency_is_the_same_live_and_after_a_restart(tmp_path):
    """X (schedule-to-start 10 s) is READY, then made to wait for P (DeclareDependency); its timer
    comes due while it waits; P succeeds and X is READY again, past its limit. The live loop and a
    coordinator restarted from the same WAL (timers rebuilt by replay) must decide the same."""
    from corral.v1 import actor_service_pb2
    from coordinator.dispatch.actor_link import ActorLink

    async def go():
        h = Harness(tmp_path, Clock(T0), retention_ms=0)
        link = ActorLink()
        hello = actor_service_pb2.Hello(identity=task_pb2.ExecutorIdentity(
            actor_id="a1", incarnation="1", task_types=["p"], slots=1))
        await h.call(lambda f: C.ActorHello(link, hello, f))
        s2s = task_pb2.TaskSpec()
        s2s.schedule_to_start_timeout.FromMilliseconds(10_000)
        await h.submit("X", type="x", schedule_to_start_timeout=s2s.schedule_to_start_timeout)
        await h.submit("P", type="p")
        leases = []
        while not link.queue.empty():
            leases.extend(link.queue.get_nowait().leases)
        [lease] = leases
        await h.call(lambda f: C.DeclareDependency("X", ["P"], f))
        assert h.projection.tasks["X"].state == State.WAITING_FOR_DEPENDENCIES
        await h.step(T0 + 10_000)  # X's timer is due while it waits
        h.clock.ms = T0 + 11_000
        request = actor_service_pb2.ConnectRequest()
        request.results.add(lease=lease.ref, outcome=task_pb2.ATTEMPT_OUTCOME_SUCCEEDED)
        await h.loop._step([C.ActorUpdate(link, request)])  # X is promoted out of WAITING
        assert h.projection.tasks["X"].state != State.WAITING_FOR_DEPENDENCIES
        await h.step(T0 + 12_000)
        live = h.projection.tasks["X"].state
        h.close()
        restarted = Harness(tmp_path, Clock(T0 + 12_000), retention_ms=0)
        await restarted.step()
        assert restarted.projection.tasks["X"].state == live
        restarted.close()

    asyncio.run(go())
