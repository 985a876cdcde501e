"""Reads on a real dispatch loop, in process (real projection, fleet and LMDB WAL; no gRPC):
WatchTask and ListTasks when the command shares its step with records that change the task, and
watches that arrive while the coordinator shuts down.

Commands posted in one event-loop turn are taken by one step, in order: that is how these tests
put a read between records of the same step, deterministically."""
from __future__ import annotations

import asyncio

import pytest

from corral.v1 import actor_service_pb2, task_pb2, task_service_pb2
from coordinator.core.errors import Unavailable
from coordinator.core.states import State
from coordinator.dispatch import commands as C
from coordinator.dispatch.actor_link import ActorLink

from .test_dispatch_operations import running_loop, submit

pytestmark = pytest.mark.timeout(30)


def hello(actor_id: str = "a1", slots: int = 4) -> actor_service_pb2.Hello:
    return actor_service_pb2.Hello(identity=task_pb2.ExecutorIdentity(
        actor_id=actor_id, incarnation="1", task_types=["t"], slots=slots))


def test_a_watch_registered_mid_step_sees_each_later_state_once_in_order(tmp_path):
    """WatchTask on a READY task, then an actor connects in the same step and is granted it: the
    watcher must see READY then RUNNING, not RUNNING twice (the first view was rendered after the
    whole step while the later record was also queued for it)."""
    async def go():
        async with running_loop(tmp_path) as loop:
            [task_id] = await submit(loop)  # no actor yet: READY
            queue: asyncio.Queue = asyncio.Queue()
            aio = asyncio.get_running_loop()
            watched, connected = aio.create_future(), aio.create_future()
            loop.submit(C.WatchTask(task_id, queue, watched))
            loop.submit(C.ActorHello(ActorLink(), hello(), connected))  # same step, after the watch
            first = await watched
            await connected
            seen = [first] + [queue.get_nowait() for _ in range(queue.qsize())]
            assert [(v.state, len(v.attempts)) for v in seen] == [(State.READY, 0), (State.RUNNING, 1)]
    asyncio.run(go())


def test_a_list_page_filtered_by_state_shows_tasks_in_that_state(tmp_path):
    """ListTasks(states=[READY]) in the same step as a grant: the page must not show RUNNING tasks."""
    async def go():
        async with running_loop(tmp_path) as loop:
            ids = await submit(loop, 3)  # no actor yet: all READY
            aio = asyncio.get_running_loop()
            listed, connected = aio.create_future(), aio.create_future()
            loop.submit(C.ListTasks(task_service_pb2.ListTasksRequest(states=[State.READY]), 0, 100, listed))
            loop.submit(C.ActorHello(ActorLink(), hello(slots=1), connected))  # grants one of them
            views, _ = await listed
            await connected
            assert [v.task_id for v in views] == ids
            assert [v.state for v in views] == [State.READY] * 3
    asyncio.run(go())


def test_a_watch_that_reaches_the_loop_after_streams_were_closed_is_ended_too(tmp_path):
    """Shutdown closes every watch (close_streams), then stops the server with a grace. A WatchTask
    queued before the close but handled after it must not be left open for the whole grace."""
    async def go():
        async with running_loop(tmp_path) as loop:
            [task_id] = await submit(loop)
            queue: asyncio.Queue = asyncio.Queue()
            reply = asyncio.get_running_loop().create_future()
            loop.submit(C.WatchTask(task_id, queue, reply))
            loop.close_streams("coordinator is shutting down")  # before the step that handles it
            try:
                await reply
            except Unavailable:
                return  # refused: fine
            # Registered anyway: then its queue must carry the end of the stream.
            assert queue.qsize() == 1 and queue.get_nowait() is None
    asyncio.run(go())


def test_a_filtered_list_page_does_bounded_work_and_paging_still_finds_every_match(tmp_path, monkeypatch):
    """ListTasks(states=[CANCELED]) among 30,000 READY tasks and 3 canceled ones: each call may look at
    a bounded number of tasks (the loop serves everyone else meanwhile); following next_page_token
    still returns every match once, in submission order."""
    from coordinator.core.ordinal_index import OrdinalIndex
    visited = [0]
    after = OrdinalIndex.after

    def counting_after(self, ordinal):
        for task in after(self, ordinal):
            visited[0] += 1
            yield task

    async def go():
        async with running_loop(tmp_path) as loop:
            ids = []
            for _ in range(3):
                ids += await submit(loop, 10_000)
            canceled = [ids[5], ids[15_000], ids[-1]]
            for task_id in canceled:
                await loop.call(lambda f, t=task_id: C.CancelTask(t, "x", f))
            monkeypatch.setattr(OrdinalIndex, "after", counting_after)
            seen, token, calls, most = [], 0, 0, 0
            while True:
                visited[0] = 0
                views, token = await loop.call(lambda f: C.ListTasks(
                    task_service_pb2.ListTasksRequest(states=[State.CANCELED]), token, 2, f))
                calls += 1
                most = max(most, visited[0])
                seen += [v.task_id for v in views]
                if not token:
                    break
                assert calls < 100
            assert seen == canceled
            assert most <= 10_001, f"one ListTasks call looked at {most} tasks"
    asyncio.run(go())


def test_listing_a_parents_children_pages_in_submission_order(tmp_path):
    from .test_dispatch_children import Actor
    from .test_dispatch_operations import connect

    async def go():
        async with running_loop(tmp_path) as loop:
            actor = Actor(loop, await connect(loop, slots=1))
            [parent] = await submit(loop, task_id="p")
            kids = [await actor.child(parent, f"c{i}", i, type="never-granted") for i in range(5)]
            await loop.call(lambda f: C.CancelTask(kids[3], "x", f))
            for request, want in ((dict(), kids), (dict(states=[State.READY]), kids[:3] + kids[4:])):
                seen, token = [], 0
                while True:
                    views, token = await loop.call(lambda f: C.ListTasks(
                        task_service_pb2.ListTasksRequest(parent_task_id=parent, **request), token, 2, f))
                    seen += [v.task_id for v in views]
                    if not token:
                        break
                assert seen == want
    asyncio.run(go())
