"""The dispatch loop's commit point, on real LMDB files: nothing of a step is sent before its WAL
batch committed; a failed commit stops the loop without acknowledging anything of that step (and
its callers are told, not left waiting); a batch larger than the map grows it."""
from __future__ import annotations

import asyncio
import errno

import pytest

from corral.v1 import actor_service_pb2, task_pb2
from coordinator.coordinator import replay
from coordinator.core.errors import Unavailable
from coordinator.core.fleet import Fleet
from coordinator.core.projection import Projection
from coordinator.core.spec import SpecLimits, normalize_spec
from coordinator.dispatch import commands as C
from coordinator.dispatch.actor_link import ActorLink
from coordinator.dispatch.loop import INLINE_COMMIT_MAX_RECORDS, DispatchLoop
from coordinator.storage.wal import WriteAheadLog

pytestmark = pytest.mark.timeout(30)


def start(wal: WriteAheadLog) -> tuple[DispatchLoop, asyncio.Task]:
    projection = Projection()
    replay(wal, projection, truncate_corrupt=False)
    loop = DispatchLoop(wal, projection, Fleet(lease_ttl_ms=60_000), coordinator_id="unit",
                        heartbeat_interval_ms=20_000)
    return loop, asyncio.create_task(loop.run())


async def connect(loop: DispatchLoop, slots: int) -> ActorLink:
    link = ActorLink()
    hello = actor_service_pb2.Hello(identity=task_pb2.ExecutorIdentity(
        actor_id="a1", incarnation="1", task_types=["t"], slots=slots))
    await loop.call(lambda f: C.ActorHello(link, hello, f))
    assert link.queue.get_nowait().HasField("welcome")
    return link


def submit_command(loop: DispatchLoop, n: int, future: asyncio.Future, padding: str = "") -> C.SubmitTasks:
    specs = [task_pb2.TaskSpec(type="t", idempotency_key=f"{padding}{i}") for i in range(n)]
    fields = [f"tasks[{i}]" for i in range(n)]
    for spec, field in zip(specs, fields):
        normalize_spec(spec, field, SpecLimits(), loop.now_ms())
    return C.SubmitTasks(specs, fields, future)


@pytest.mark.parametrize("n", [1, INLINE_COMMIT_MAX_RECORDS + 1], ids=["inline-commit", "thread-commit"])
def test_a_failed_commit_acknowledges_nothing_of_its_step_and_fails_its_callers(tmp_path, n) -> None:
    asyncio.run(failed_commit(tmp_path, n))


async def failed_commit(tmp_path, n: int) -> None:
    wal = WriteAheadLog(tmp_path / "wal", sync=False)
    loop, runner = start(wal)
    link = await connect(loop, slots=n)
    seq_before = wal.last_seq

    def disk_error(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    wal.append_batch = disk_error  # the commit of the next step fails like a failing disk
    reply = asyncio.get_running_loop().create_future()
    loop.submit(submit_command(loop, n, reply))  # n submissions and n leases in one step

    with pytest.raises(OSError):
        await asyncio.wait_for(runner, 5)
    assert isinstance(loop.fatal_error, OSError)
    assert link.queue.empty(), "a lease was sent for records that never committed"
    # The caller is told the coordinator stopped (it is not left waiting for a reply that never comes).
    with pytest.raises(Unavailable):
        await asyncio.wait_for(reply, 1)
    with pytest.raises(Unavailable):
        loop.submit(submit_command(loop, 1, asyncio.get_running_loop().create_future()))
    del wal.append_batch
    assert wal.last_seq == seq_before
    wal.close()


def test_a_step_larger_than_the_whole_map_grows_it_and_is_replayed(tmp_path) -> None:
    asyncio.run(step_larger_than_the_map(tmp_path))


async def step_larger_than_the_map(tmp_path) -> None:
    wal = WriteAheadLog(tmp_path / "wal", map_size_bytes=64 << 10, sync=False)
    loop, runner = start(wal)
    reply = asyncio.get_running_loop().create_future()
    loop.submit(submit_command(loop, 600, reply, padding="k" * 200))  # ~150 KiB of records
    results = await asyncio.wait_for(reply, 10)
    assert len(results) == 600
    assert wal.stat()["map_size_bytes"] > 64 << 10
    loop.stop()
    await runner
    assert loop.fatal_error is None
    last_seq = wal.last_seq
    wal.close()

    with WriteAheadLog(tmp_path / "wal", map_size_bytes=64 << 10, sync=False) as reopened:
        replayed = Projection()
        assert replay(reopened, replayed, truncate_corrupt=False) == last_seq
        assert {task_id for task_id, _, _ in results} <= set(replayed.tasks)
