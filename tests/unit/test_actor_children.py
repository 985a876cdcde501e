"""The actor's ChildChannel (actor/children.py): waits are matched to the attempt that asked."""
from __future__ import annotations

import asyncio

import pytest

from actor.children import ChildChannel
from corral.v1 import actor_service_pb2, task_pb2

pytestmark = pytest.mark.timeout(10)


def ref(attempt: int, token: int) -> actor_service_pb2.LeaseRef:
    return actor_service_pb2.LeaseRef(task_id="p", attempt=attempt, fencing_token=token)


def test_an_outcome_answers_only_the_attempt_that_asked():
    async def go():
        channel = ChildChannel()
        old, new = ref(1, 7), ref(2, 9)
        old_wait = channel.wait(old, "c")
        new_wait = channel.wait(new, "c")
        request = actor_service_pb2.ConnectRequest()
        channel.fill(request)
        assert [(w.parent.attempt, list(w.task_ids)) for w in request.child_waits] == [(1, ["c"]), (2, ["c"])]
        channel.on_outcome(actor_service_pb2.ChildOutcome(parent=new, task_id="c", state=task_pb2.TASK_STATE_SUCCEEDED))
        assert new_wait.done() and not old_wait.done()
        channel.forget_attempt(("p", 1, 7))
        assert old_wait.cancelled() and not channel.active

    asyncio.run(go())


def test_waits_are_sent_again_on_a_new_stream_and_shared_by_one_attempt():
    async def go():
        channel = ChildChannel()
        first, second = channel.wait(ref(1, 7), "c"), channel.wait(ref(1, 7), "c")
        channel.fill(actor_service_pb2.ConnectRequest())
        assert not channel.has_outgoing
        channel.on_connected()
        request = actor_service_pb2.ConnectRequest()
        channel.fill(request)
        assert len(request.child_waits) == 1 and request.child_waits[0].task_ids == ["c"]
        channel.on_outcome(actor_service_pb2.ChildOutcome(parent=ref(1, 7), task_id="c", state=task_pb2.TASK_STATE_FAILED))
        assert first.done() and second.done()

    asyncio.run(go())
