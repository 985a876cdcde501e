"""Children on a real dispatch loop, in process (real projection, fleet and LMDB WAL; no gRPC):
the orderings where a tree meets a cancel, a concurrency-key policy, a dependency cascade or
retention. Each history must leave the loop running and replay to the same projection."""
from __future__ import annotations

import asyncio

import pytest

from corral.v1 import actor_service_pb2, task_pb2
from coordinator.coordinator import replay
from coordinator.core.errors import NotFound
from coordinator.core.projection import Projection
from coordinator.core.spec import SpecLimits, normalize_spec
from coordinator.core.states import State
from coordinator.dispatch import commands as C
from coordinator.dispatch.actor_link import ActorLink
from coordinator.dispatch.loop import DispatchLoop
from coordinator.storage.wal import WriteAheadLog

from .test_dispatch_operations import connect, running_loop, state_of, submit
from .test_dispatch_retention import Clock, loop_with_retention, wait_until

pytestmark = pytest.mark.timeout(20)
CIP = task_pb2.CONCURRENCY_POLICY_CANCEL_IN_PROGRESS


class Actor:
    """One actor link: the leases and answers the loop queued for it, by task id."""

    def __init__(self, loop: DispatchLoop, link: ActorLink) -> None:
        self.loop = loop
        self.link = link
        self.leases: dict[str, actor_service_pb2.Lease] = {}
        self.submitted: dict[int, actor_service_pb2.ChildSubmitted] = {}
        self.outcomes: list[actor_service_pb2.ChildOutcome] = []
        self.cancels: list[actor_service_pb2.Cancel] = []

    def drain(self) -> None:
        while not self.link.queue.empty():
            msg = self.link.queue.get_nowait()
            for lease in msg.leases:
                self.leases[lease.ref.task_id] = lease
            for answer in msg.child_submitted:
                self.submitted[answer.request_id] = answer
            self.outcomes.extend(msg.child_outcomes)
            self.cancels.extend(msg.cancels)

    async def lease(self, task_id: str) -> actor_service_pb2.Lease:
        await wait_until(lambda: self.drain() or task_id in self.leases)
        return self.leases[task_id]

    async def child(self, parent: str, key: str, request_id: int, **fields) -> str:
        spec = task_pb2.TaskSpec(child_key=key, **fields)
        normalize_spec(spec, "child_submissions[0].task", SpecLimits(), self.loop.now_ms(), child=True)
        request = actor_service_pb2.ConnectRequest()
        request.child_submissions.add(parent=(await self.lease(parent)).ref, request_id=request_id, task=spec)
        self.loop.post(C.ActorUpdate(self.link, request))
        await wait_until(lambda: self.drain() or request_id in self.submitted)
        answer = self.submitted[request_id]
        assert answer.code == 0, answer.message
        return answer.task_id

    async def wait_for(self, parent: str, child_id: str) -> None:
        request = actor_service_pb2.ConnectRequest()
        request.child_waits.add(parent=(await self.lease(parent)).ref, task_ids=[child_id])
        self.loop.post(C.ActorUpdate(self.link, request))
        await self.loop.call(lambda f: C.GetTask(parent, f))  # commands run in order: it was handled

    async def report(self, task_id: str, outcome=task_pb2.ATTEMPT_OUTCOME_SUCCEEDED) -> None:
        request = actor_service_pb2.ConnectRequest()
        result = request.results.add(lease=(await self.lease(task_id)).ref, outcome=outcome)
        if outcome == task_pb2.ATTEMPT_OUTCOME_FAILED:
            result.error.message = "nope"
            result.error.non_retryable = True
        self.loop.post(C.ActorUpdate(self.link, request))


async def ended(loop: DispatchLoop, task_id: str) -> task_pb2.Task:
    await wait_until(lambda: loop.projection.tasks[task_id].state in (State.SUCCEEDED, State.FAILED, State.CANCELED))
    return await loop.call(lambda f: C.GetTask(task_id, f))


def assert_replays_to(path, fingerprint: str, track_expiry: bool = False) -> None:
    """The WAL (the loop has stopped) replays to the projection the loop had."""
    fresh = Projection(track_expiry=track_expiry)
    wal = WriteAheadLog(path, sync=False)
    try:
        replay(wal, fresh, truncate_corrupt=False)
    finally:
        wal.close()
    assert fresh.fingerprint() == fingerprint


def test_cancel_of_a_parent_waiting_for_children_ends_it_canceled_with_its_subtree(tmp_path):
    async def go():
        async with running_loop(tmp_path) as loop:
            actor = Actor(loop, await connect(loop))
            [parent] = await submit(loop, task_id="p")
            child = await actor.child(parent, "c", 1, type="never-granted")
            detached = await actor.child(parent, "d", 2, type="never-granted", detached=True)
            await actor.report(parent)
            await wait_until(lambda: loop.projection.tasks[parent].state == State.WAITING_FOR_CHILDREN)
            view = await loop.call(lambda f: C.CancelTask(parent, "stop", f))
            assert view.state == State.CANCELED and view.state_reason == "stop"
            assert (await state_of(loop, child)) == State.CANCELED
            assert (await state_of(loop, detached)) == State.CANCELED  # an explicit cancel reaches them too
            await submit(loop, 1)  # the loop goes on
            snapshot = loop.projection.fingerprint()
        assert_replays_to(tmp_path, snapshot)

    asyncio.run(go())


def test_cancel_in_progress_over_a_parent_and_its_child_with_the_same_key(tmp_path):
    async def go():
        async with running_loop(tmp_path) as loop:
            actor = Actor(loop, await connect(loop))
            keyed = dict(concurrency_key="k", concurrency_limit=5)
            [parent] = await submit(loop, task_id="p", **keyed)
            child = await actor.child(parent, "c", 1, type="never-granted", **keyed)
            await actor.report(parent)
            await wait_until(lambda: loop.projection.tasks[parent].state == State.WAITING_FOR_CHILDREN)
            # The newcomer supersedes both: the parent's CANCELED already cancels the child, so the
            # child's own precomputed cancel must not be written again.
            [newcomer] = await submit(loop, type="never-granted", concurrency_policy=CIP, **keyed)
            assert (await state_of(loop, parent)) == State.CANCELED
            assert (await state_of(loop, child)) == State.CANCELED
            assert (await state_of(loop, newcomer)) == State.READY
            fingerprint = loop.projection.fingerprint()
        assert_replays_to(tmp_path, fingerprint)

    asyncio.run(go())


def test_a_child_canceled_by_a_dependency_cascade_ends_its_waiting_parent_and_answers_its_wait(tmp_path):
    async def go():
        async with running_loop(tmp_path) as loop:
            actor = Actor(loop, await connect(loop))
            [prerequisite] = await submit(loop, task_id="x")
            [parent] = await submit(loop, task_id="p")
            await actor.lease(prerequisite)
            child = await actor.child(parent, "c", 1, type="never-granted", depends_on=[prerequisite])
            await actor.wait_for(parent, child)
            await actor.report(prerequisite, task_pb2.ATTEMPT_OUTCOME_FAILED)
            assert (await ended(loop, child)).state == State.CANCELED
            await wait_until(lambda: actor.drain() or actor.outcomes)
            [outcome] = actor.outcomes
            assert outcome.task_id == child and outcome.state == State.CANCELED
            assert outcome.parent.task_id == parent
            await actor.report(parent)  # the handler returns: the failed child fails it at once
            view = await ended(loop, parent)
            assert view.state == State.FAILED and view.error.kind == "child_failed", view
            assert not loop._child_waits
            fingerprint = loop.projection.fingerprint()
        assert_replays_to(tmp_path, fingerprint)

    asyncio.run(go())


def test_child_waits_are_dropped_when_the_parent_attempt_ends(tmp_path):
    async def go():
        async with running_loop(tmp_path) as loop:
            actor = Actor(loop, await connect(loop))
            [parent] = await submit(loop, task_id="p")
            child = await actor.child(parent, "c", 1, type="never-granted", detached=True)
            await actor.wait_for(parent, child)
            assert loop._child_waits
            await actor.report(parent)
            await ended(loop, parent)
            assert not loop._child_waits

    asyncio.run(go())


def test_retention_keeps_a_parent_while_a_child_lives_and_a_reused_id_adopts_nothing(tmp_path):
    async def go():
        clock = Clock()
        async with loop_with_retention(tmp_path, 10_000, clock) as loop:
            actor = Actor(loop, await connect(loop))
            [parent] = await submit(loop, task_id="p")
            child = await actor.child(parent, "c", 1, type="never-granted", detached=True)
            await actor.report(parent)
            assert (await ended(loop, parent)).state == State.SUCCEEDED  # detached: not waited for
            clock.t += 60
            await submit(loop, 1, type="never-granted")  # steps: the sweep runs, keeps the parent
            await submit(loop, 1, type="never-granted")
            assert parent in loop.projection.tasks
            await loop.call(lambda f: C.CancelTask(child, "", f))
            clock.t += 5  # past the parent's retention, not the child's
            await wait_until(lambda: loop.post(C.UnwatchTask("x", None)) or parent not in loop.projection.tasks)
            assert child in loop.projection.tasks
            view = await loop.call(lambda f: C.GetTask(child, f))
            assert view.parent_task_id == parent and view.depth == 1  # still says where it came from
            # A new task under the forgotten parent's id is not the child's parent.
            await submit(loop, task_id=parent, type="never-granted")
            assert not loop.projection.tasks[parent].children
            with pytest.raises(NotFound):
                await loop.call(lambda f: C.GetTask("no-such-task", f))
            clock.t += 10
            await wait_until(lambda: loop.post(C.UnwatchTask("x", None)) or child not in loop.projection.tasks)
            assert loop.projection.tasks[parent].state == State.READY
            fingerprint = loop.projection.fingerprint()
        assert_replays_to(tmp_path, fingerprint, track_expiry=True)

    asyncio.run(go())


def test_a_canceled_running_parent_whose_handler_returns_success_ends_canceled(tmp_path):
    async def go():
        async with running_loop(tmp_path) as loop:
            actor = Actor(loop, await connect(loop))
            [parent] = await submit(loop, task_id="p")
            child = await actor.child(parent, "c", 1, type="never-granted")
            view = await loop.call(lambda f: C.CancelTask(parent, "stop", f))
            assert view.state == State.RUNNING  # until its actor reports
            assert (await state_of(loop, child)) == State.CANCELED
            # The handler returns before it saw the cancel: its child was canceled by that cancel,
            # so the parent cannot wait for it; it ends CANCELED, not FAILED by its own cancel.
            await actor.report(parent)
            view = await ended(loop, parent)
            assert view.state == State.CANCELED and view.error.kind == "canceled", view
            fingerprint = loop.projection.fingerprint()
        assert_replays_to(tmp_path, fingerprint)

    asyncio.run(go())


def test_a_running_task_superseded_by_its_key_whose_handler_returns_success_does_not_wait_for_children(tmp_path):
    async def go():
        async with running_loop(tmp_path) as loop:
            actor = Actor(loop, await connect(loop))
            keyed = dict(concurrency_key="k", concurrency_limit=5)
            [parent] = await submit(loop, task_id="p", **keyed)
            child = await actor.child(parent, "c", 1, type="never-granted")
            await submit(loop, type="never-granted", concurrency_policy=CIP, **keyed)
            assert loop.projection.tasks[parent].cancel_requested
            await actor.report(parent)  # raced its cancel
            assert (await ended(loop, parent)).state == State.CANCELED
            assert (await state_of(loop, child)) == State.CANCELED  # its ending canceled its subtree
            fingerprint = loop.projection.fingerprint()
        assert_replays_to(tmp_path, fingerprint)

    asyncio.run(go())
