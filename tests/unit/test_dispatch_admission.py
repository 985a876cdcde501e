"""Admission on a real dispatch loop, in process (real projection, fleet and LMDB WAL; no gRPC):
SubmitTasks batches (all or nothing, duplicates, prerequisites in the batch), concurrency keys
and their policies, the queued-task bound and rate limits, as the loop applies them. Each history
must leave the loop running and replay to the same projection."""
from __future__ import annotations

import asyncio

import pytest

from corral.v1 import task_pb2
from coordinator.core.spec import SpecLimits, normalize_spec
from coordinator.core.states import State
from coordinator.dispatch import commands as C

from .test_dispatch_children import Actor, assert_replays_to, ended
from .test_dispatch_operations import connect, running_loop, state_of, submit
from .test_dispatch_retention import wait_until

pytestmark = pytest.mark.timeout(20)


async def submit_batch(loop, *specs: task_pb2.TaskSpec):
    """One SubmitTasks request with these specs (normalized as the servicer does)."""
    specs = list(specs)
    fields = [f"tasks[{i}]" for i in range(len(specs))]
    for s, field in zip(specs, fields):
        normalize_spec(s, field, SpecLimits(), loop.now_ms())
    return await loop.call(lambda f: C.SubmitTasks(specs, fields, f))


def T(**fields) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(**{"type": "t", **fields})


# ---- batches -----------------------------------------------------------------------------------

@pytest.mark.parametrize("duplicate", ["dependent", "prerequisite"])
def test_a_batch_repeating_a_task_with_a_forward_prerequisite_is_written_once(tmp_path, duplicate):
    """The same task twice in a batch (same spec: one task) that also has a forward prerequisite
    (written out of request order): the repeat refers to a task written later in the batch."""
    async def go():
        async with running_loop(tmp_path) as loop:
            repeat = T(task_id="b", depends_on=["a"]) if duplicate == "dependent" else T(task_id="a")
            results = await submit_batch(loop, T(task_id="b", depends_on=["a"]), T(task_id="a"), repeat)
            assert [(r[0], r[1]) for r in results] == [("b", True), ("a", True), (repeat.task_id, False)]
            assert await state_of(loop, "a") == State.READY
            assert await state_of(loop, "b") == State.WAITING_FOR_DEPENDENCIES
            await submit(loop)  # the loop goes on
            fingerprint = loop.projection.fingerprint()
        assert_replays_to(tmp_path, fingerprint)

    asyncio.run(go())


# ---- concurrency keys --------------------------------------------------------------------------

CIP = task_pb2.CONCURRENCY_POLICY_CANCEL_IN_PROGRESS


def test_a_cancel_in_progress_newcomer_whose_prerequisite_already_failed_supersedes_nothing(tmp_path):
    """A newcomer that is CANCELED at once (a prerequisite had already been canceled) never runs,
    so it must not cancel the work it was meant to replace."""
    async def go():
        async with running_loop(tmp_path) as loop:
            actor = Actor(loop, await connect(loop))
            [dead] = await submit(loop, type="never-granted")
            await loop.call(lambda f: C.CancelTask(dead, "stop", f))
            [running] = await submit(loop, concurrency_key="k")
            await actor.lease(running)
            [waiting] = await submit(loop, concurrency_key="k")
            [newcomer] = await submit(loop, concurrency_key="k", concurrency_policy=CIP, depends_on=[dead])
            assert await state_of(loop, newcomer) == State.CANCELED
            assert not loop.projection.tasks[running].cancel_requested
            assert await state_of(loop, running) == State.RUNNING
            assert await state_of(loop, waiting) == State.READY
            actor.drain()
            assert actor.cancels == []
            fingerprint = loop.projection.fingerprint()
        assert_replays_to(tmp_path, fingerprint)

    asyncio.run(go())


def test_a_superseded_task_whose_actor_reports_success_frees_the_key_for_the_newcomer(tmp_path):
    """CANCEL_IN_PROGRESS while the victim's cancel is pending: the victim's success stands, and
    only then does the newcomer get the key (never two running)."""
    async def go():
        async with running_loop(tmp_path) as loop:
            actor = Actor(loop, await connect(loop, slots=4))
            [victim] = await submit(loop, concurrency_key="k")
            await actor.lease(victim)
            [newcomer] = await submit(loop, concurrency_key="k", concurrency_policy=CIP)
            await wait_until(lambda: actor.drain() or actor.cancels)
            assert [c.lease.task_id for c in actor.cancels] == [victim]
            assert await state_of(loop, newcomer) == State.READY and newcomer not in actor.leases
            [late] = await submit(loop, concurrency_key="k", concurrency_policy=task_pb2.CONCURRENCY_POLICY_DROP_NEW)
            assert await state_of(loop, late) == State.CANCELED  # the key is still taken
            await actor.report(victim)
            assert (await ended(loop, victim)).state == State.SUCCEEDED
            await actor.lease(newcomer)
            assert loop.projection.concurrency.occupancy("k") == 1
            fingerprint = loop.projection.fingerprint()
        assert_replays_to(tmp_path, fingerprint)

    asyncio.run(go())


def test_a_batch_over_the_queued_task_bound_writes_nothing(tmp_path):
    async def go():
        from coordinator.core.admission import Admission
        from coordinator.core.errors import ResourceExhausted

        async with running_loop(tmp_path, admission=Admission(max_queued_tasks=3)) as loop:
            await submit_batch(loop, T(task_id="a"), T(task_id="b"))
            before = loop.projection.fingerprint()
            with pytest.raises(ResourceExhausted):
                await submit_batch(loop, T(task_id="c", depends_on=["d"]), T(task_id="d"))
            assert loop.projection.fingerprint() == before and "d" not in loop.projection.tasks
            # Repeats are not new: a batch of one new task and two repeats fits.
            results = await submit_batch(loop, T(task_id="a"), T(task_id="c"), T(task_id="b"))
            assert [r[1] for r in results] == [False, True, False]
            fingerprint = loop.projection.fingerprint()
        assert_replays_to(tmp_path, fingerprint)

    asyncio.run(go())
