"""Operations on a real dispatch loop, in process (real projection, fleet and LMDB WAL; no gRPC):
pause/resume (durable), drain (refuses submissions, waits for attempts in flight) and the
WatchEvents hub (events after the commit; a subscriber that falls behind is dropped, the loop
goes on)."""
from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from corral.v1 import actor_service_pb2, task_pb2, task_service_pb2
from coordinator.coordinator import replay
from coordinator.core.errors import Unavailable
from coordinator.core.events import EventFilter
from coordinator.core.fleet import Fleet
from coordinator.core.projection import Projection
from coordinator.core.spec import SpecLimits, normalize_spec
from coordinator.core.states import State
from coordinator.dispatch import commands as C
from coordinator.dispatch import operations
from coordinator.dispatch.actor_link import ActorLink
from coordinator.dispatch.event_hub import StreamEnd, Subscriber
from coordinator.dispatch.loop import DispatchLoop
from coordinator.storage.wal import WriteAheadLog

pytestmark = pytest.mark.timeout(30)
E = task_service_pb2


@contextlib.asynccontextmanager
async def running_loop(path, **kwargs):
    wal = WriteAheadLog(path, sync=False)
    projection = Projection()
    replay(wal, projection, truncate_corrupt=False)
    loop = DispatchLoop(wal, projection, Fleet(lease_ttl_ms=60_000), coordinator_id="unit",
                        heartbeat_interval_ms=20_000, **kwargs)
    runner = asyncio.create_task(loop.run())
    try:
        yield loop
    finally:
        loop.stop()
        await runner
        wal.close()


async def connect(loop: DispatchLoop, actor_id: str = "a1", slots: int = 4) -> ActorLink:
    link = ActorLink()
    hello = actor_service_pb2.Hello(identity=task_pb2.ExecutorIdentity(
        actor_id=actor_id, incarnation="1", task_types=["t"], slots=slots))
    await loop.call(lambda f: C.ActorHello(link, hello, f))
    assert link.queue.get_nowait().HasField("welcome")
    return link


async def submit(loop: DispatchLoop, n: int = 1, **spec_fields) -> list[str]:
    specs = [task_pb2.TaskSpec(**{"type": "t", **spec_fields}) for _ in range(n)]
    fields = [f"tasks[{i}]" for i in range(n)]
    for spec, field in zip(specs, fields):
        normalize_spec(spec, field, SpecLimits(), loop.now_ms())
    results = await loop.call(lambda f: C.SubmitTasks(specs, fields, f))
    return [task_id for task_id, _, _ in results]


def leases_sent(link: ActorLink) -> list[actor_service_pb2.Lease]:
    """Leases queued for the actor so far (effects of a step are queued before its replies resolve)."""
    leases = []
    while not link.queue.empty():
        leases.extend(link.queue.get_nowait().leases)
    return leases


async def report(loop: DispatchLoop, link: ActorLink, lease, outcome=task_pb2.ATTEMPT_OUTCOME_SUCCEEDED) -> None:
    request = actor_service_pb2.ConnectRequest()
    request.results.add(lease=lease.ref, outcome=outcome)
    loop.post(C.ActorUpdate(link, request))


async def state_of(loop: DispatchLoop, task_id: str) -> int:
    return (await loop.call(lambda f: C.GetTask(task_id, f))).state


def test_pause_stops_grants_only_and_is_replayed_from_the_wal(tmp_path):
    async def go():
        async with running_loop(tmp_path) as loop:
            link = await connect(loop)
            [running] = await submit(loop)
            [lease] = leases_sent(link)
            pause = await loop.call(lambda f: C.PauseDispatch("maintenance", f))
            assert (pause.changed, pause.running_attempts) == (True, 1)
            assert not (await loop.call(lambda f: C.PauseDispatch("again", f))).changed
            [waiting] = await submit(loop)  # accepted while paused, and not granted
            assert leases_sent(link) == []
            await report(loop, link, lease)  # the attempt in flight still ends, and is acknowledged
            while await state_of(loop, running) != State.SUCCEEDED:
                await asyncio.sleep(0)
            assert await state_of(loop, waiting) == State.READY
            assert leases_sent(link) == []  # the ack went out, no lease
            status = await loop.call(lambda f: C.ClusterStatus(f))
            assert (status.paused, status.pause_reason, status.draining) == (True, "maintenance", False)
            fingerprint = loop.projection.fingerprint()
        async with running_loop(tmp_path) as loop:  # a restart: still paused
            assert loop.projection.paused and loop.projection.pause_reason == "maintenance"
            assert loop.projection.fingerprint() == fingerprint
            link = await connect(loop)
            assert await state_of(loop, waiting) == State.READY and leases_sent(link) == []
            resumed = await loop.call(lambda f: C.ResumeDispatch("done", f))
            assert (resumed.changed, resumed.draining) == (True, False)
            [lease] = leases_sent(link)  # granted in the step that resumed
            assert lease.ref.task_id == waiting
            assert not (await loop.call(lambda f: C.ResumeDispatch("", f))).changed
        async with running_loop(tmp_path) as loop:
            assert not loop.projection.paused
    asyncio.run(go())


def test_drain_refuses_submissions_and_waits_for_attempts_in_flight(tmp_path):
    async def go():
        async with running_loop(tmp_path) as loop:
            link = await connect(loop, slots=1)
            first, queued = await submit(loop, 2)
            [lease] = leases_sent(link)
            drain = await loop.call(lambda f: C.DrainDispatch("upgrade", f))
            assert (drain.changed, drain.running_attempts) == (True, 1)
            with pytest.raises(Unavailable, match="draining \\(upgrade\\)"):
                await submit(loop)
            drained = asyncio.ensure_future(operations.wait_drained(loop))
            await loop.call(lambda f: C.ClusterStatus(f))  # a step later: still an attempt in flight
            assert not drained.done()
            await report(loop, link, lease)
            await asyncio.wait_for(drained, 5)
            assert await state_of(loop, first) == State.SUCCEEDED
            assert await state_of(loop, queued) == State.READY  # the free slot got nothing
            assert leases_sent(link) == []
            resumed = await loop.call(lambda f: C.ResumeDispatch("", f))  # an operator's drain ends
            assert (resumed.changed, resumed.draining) == (True, False)
            assert [l.ref.task_id for l in leases_sent(link)] == [queued]
            await submit(loop)
            # A shutdown's drain cannot be resumed.
            operations.begin_drain(loop, operations.SHUTDOWN_REASON, shutdown=True)
            resumed = await loop.call(lambda f: C.ResumeDispatch("", f))
            assert (resumed.changed, resumed.draining) == (False, True)
            with pytest.raises(Unavailable, match="shutting down"):
                await submit(loop)
    asyncio.run(go())


def test_drain_for_shutdown_gives_up_after_its_grace(tmp_path):
    async def go():
        async with running_loop(tmp_path) as loop:
            link = await connect(loop)
            await submit(loop)
            assert len(leases_sent(link)) == 1
            await operations.drain_for_shutdown(loop, None, grace_s=0.05)
            assert loop.drain.draining and loop.drain.shutdown
            assert operations.leases_on_connected_actors(loop) == 1  # left RUNNING for the next process
    asyncio.run(go())


def test_events_follow_the_commit_filtered_and_a_subscriber_that_falls_behind_is_dropped(tmp_path):
    async def go():
        async with running_loop(tmp_path, max_queued_events=5) as loop:
            labelled = Subscriber(EventFilter(labels={"team": "a"}))
            everything = Subscriber(EventFilter())
            for sub in (labelled, everything):
                await loop.call(lambda f: C.WatchEvents(sub, f))
            assert (await loop.call(lambda f: C.ClusterStatus(f))).event_subscribers == 2
            [mine] = await submit(loop, labels={"team": "a"})
            await submit(loop, labels={"team": "b"})
            [batch] = [labelled.queue.get_nowait()]
            assert [(e.task_id, e.kind, e.state) for e in batch.events] == [
                (mine, E.TASK_EVENT_KIND_SUBMITTED, State.READY)]
            assert batch.events[0].seq == loop.wal.last_seq - 1
            labelled.take(batch)
            assert labelled.pending == 0 and everything.pending == 2
            # `everything` does not read: one more batch than its bound drops it, nobody else.
            await submit(loop, 4, labels={"team": "b"})
            items = [everything.queue.get_nowait() for _ in range(everything.queue.qsize())]
            assert len(items) == 1 and type(items[0]) is StreamEnd
            assert items[0].code == grpc.StatusCode.RESOURCE_EXHAUSTED and "fell behind" in items[0].details
            assert loop.events.subscribers == [labelled] and loop.events.dropped == 1
            [mine2] = await submit(loop, labels={"team": "a"})  # the loop goes on
            assert [e.task_id for e in labelled.queue.get_nowait().events] == [mine2]
            loop.close_streams("bye")
            end = labelled.queue.get_nowait()
            assert type(end) is StreamEnd and end.code == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(Unavailable):  # none may subscribe after the shutdown closed streams
                await loop.call(lambda f: C.WatchEvents(Subscriber(EventFilter()), f))
    asyncio.run(go())


def test_with_no_subscriber_events_are_never_built(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("coordinator.dispatch.event_hub.EventHub.publish", lambda *a: calls.append(a))

    async def go():
        async with running_loop(tmp_path) as loop:
            await submit(loop, 3)
            sub = Subscriber(EventFilter())
            await loop.call(lambda f: C.WatchEvents(sub, f))
            await submit(loop)
            loop.post(C.UnwatchEvents(sub))
            await submit(loop, 2)
    asyncio.run(go())
    assert len(calls) == 1  # only the step with a subscriber and records


def test_a_big_step_is_split_into_responses_of_at_most_1000_events(tmp_path):
    async def go():
        async with running_loop(tmp_path) as loop:
            sub = Subscriber(EventFilter())
            await loop.call(lambda f: C.WatchEvents(sub, f))
            await submit(loop, 2500)  # one command, one step
            sizes = [len(sub.queue.get_nowait().events) for _ in range(sub.queue.qsize())]
            assert sizes == [1000, 1000, 500] and sub.pending == 2500
    asyncio.run(go())


def test_a_lease_the_reconnecting_actor_does_not_re_present_is_lost_at_once_and_runs_again(tmp_path):
    """Granted on a stream that was already broken, the lease never reached the actor: its hello on
    the next stream (same incarnation) does not hold it, so the attempt ends LOST then, not a lease
    TTL later, and the task is granted again at once; a re-presented lease is adopted."""
    async def go():
        async with running_loop(tmp_path) as loop:
            link = await connect(loop, slots=2)
            kept, missing = await submit(loop, 2)
            granted = {lease.ref.task_id: lease for lease in leases_sent(link)}
            assert set(granted) == {kept, missing}
            loop.post(C.ActorGone(link))
            new_link = ActorLink()
            hello = actor_service_pb2.Hello(identity=task_pb2.ExecutorIdentity(
                actor_id="a1", incarnation="1", task_types=["t"], slots=2), held_leases=[granted[kept].ref])
            await loop.call(lambda f: C.ActorHello(new_link, hello, f))
            messages = []
            while not new_link.queue.empty():
                messages.append(new_link.queue.get_nowait())
            [welcome] = [m.welcome for m in messages if m.HasField("welcome")]
            assert [ref.task_id for ref in welcome.adopted] == [kept]
            task = loop.projection.tasks[missing]
            assert task.attempts[0].outcome == task_pb2.ATTEMPT_OUTCOME_LOST
            assert "never reached" in task.attempts[0].error.message and task.lost_attempts == 1
            regranted = [lease for m in messages for lease in m.leases]
            assert [(lease.ref.task_id, lease.ref.attempt) for lease in regranted] == [(missing, 2)]
            assert loop.projection.tasks[kept].state == State.RUNNING

    asyncio.run(go())
