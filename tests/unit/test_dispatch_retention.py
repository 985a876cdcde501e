"""Retention and ListTasks paging on a real dispatch loop, in process (real projection, fleet and
LMDB WAL; a fake wall clock): finished tasks are forgotten by TasksForgotten records once their
retention passed, pages follow submission order across forgotten tasks, and a page costs the same
however many tasks come before it."""
from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from corral.v1 import task_service_pb2
from coordinator.core.errors import NotFound
from coordinator.core.fleet import Fleet
from coordinator.core.projection import Projection
from coordinator.core.states import State
from coordinator.dispatch import commands as C
from coordinator.dispatch.loop import DispatchLoop
from coordinator.storage.wal import WriteAheadLog

from .test_dispatch_operations import connect, leases_sent, report, submit

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@contextlib.asynccontextmanager
async def loop_with_retention(path, retention_ms: int, clock: Clock):
    wal = WriteAheadLog(path, sync=False)
    projection = Projection(track_expiry=True)
    loop = DispatchLoop(wal, projection, Fleet(lease_ttl_ms=60_000), coordinator_id="unit",
                        heartbeat_interval_ms=20_000, clock=clock, retention_ms=retention_ms)
    runner = asyncio.create_task(loop.run())
    try:
        yield loop
    finally:
        loop.stop()
        await runner
        wal.close()


async def page(loop: DispatchLoop, after: int, size: int, **request) -> tuple[list[str], int]:
    views, next_ordinal = await loop.call(lambda f: C.ListTasks(
        task_service_pb2.ListTasksRequest(**request), after, size, f))
    return [v.task_id for v in views], next_ordinal


async def wait_until(predicate, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_finished_tasks_are_forgotten_after_retention_and_pages_skip_them(tmp_path):
    async def main():
        clock = Clock()
        async with loop_with_retention(tmp_path / "wal", 10_000, clock) as loop:
            link = await connect(loop, slots=10)
            ids = await submit(loop, 10)
            await wait_until(lambda: len(leases_sent_buffer) == 10 or not leases_sent_buffer.extend(leases_sent(link)))
            for lease in leases_sent_buffer[:4]:  # 4 finish now, 6 keep running
                await report(loop, link, lease)
            await wait_until(lambda: loop.projection.state_counts[State.SUCCEEDED] == 4)
            finished = [lease.ref.task_id for lease in leases_sent_buffer[:4]]
            clock.t += 9.9
            await submit(loop, 1)  # a step: not due yet
            assert all(t in loop.projection.tasks for t in finished)
            clock.t += 1.1  # past the retention and the next sweep (at most one a second)
            loop.post(C.UnwatchTask("x", None))  # any command runs a step
            await wait_until(lambda: loop.tasks_forgotten == 4)
            for task_id in finished:
                with pytest.raises(NotFound):
                    await loop.call(lambda f, t=task_id: C.GetTask(t, f))
            records = list(loop.wal.records())
            forgotten = [r for r in records if r.HasField("tasks_forgotten")]
            assert len(forgotten) == 1 and sorted(forgotten[0].tasks_forgotten.task_ids) == sorted(finished)
            # Pages of 3 in submission order, across the holes.
            remaining = [t for t in ids if t not in finished] + [t for t in loop.projection.tasks if t not in ids]
            seen, after = [], 0
            while True:
                got, after = await page(loop, after, 3)
                seen.extend(got)
                if not after:
                    break
            assert seen == remaining
            got, _ = await page(loop, 0, 100, states=[State.RUNNING])
            assert got == [t for t in remaining if loop.projection.tasks[t].state == State.RUNNING] and len(got) == 7

    leases_sent_buffer: list = []
    asyncio.run(main())


def test_a_list_page_does_not_scan_the_tasks_before_it(tmp_path):
    async def main():
        clock = Clock()
        async with loop_with_retention(tmp_path / "wal", 0, clock) as loop:
            for _ in range(20):
                await submit(loop, 1000)
            tasks = loop.projection.tasks
            last_ordinal = max(loop.projection.by_ordinal)

            def timed(after: int) -> float:
                best = float("inf")
                for _ in range(5):
                    t0 = time.perf_counter()
                    loop._on_list(C.ListTasks(task_service_pb2.ListTasksRequest(), after, 100,
                                              asyncio.get_running_loop().create_future()), _StepStub())
                    best = min(best, time.perf_counter() - t0)
                return best

            early, late = timed(0), timed(last_ordinal - 150)
            assert len(tasks) == 20_000
            # The old scan from the start took ~100x longer for the late page; allow noise.
            assert late < early * 5 + 0.002

    asyncio.run(main())


class _StepStub:
    def __init__(self) -> None:
        self.replies: list = []
