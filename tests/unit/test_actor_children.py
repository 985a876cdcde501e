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


def test_child_submissions_are_split_so_no_message_exceeds_the_limit():
    """Each child's input may be up to 1 MiB, and a message carried up to 256 submissions: 70 such
    children made a 70 MiB message, over the 64 MiB gRPC limit on both sides. The stream then
    broke, every reconnect re-sent the same batch, and results and heartbeats never got through."""
    from actor.session import MAX_MESSAGE_BYTES

    async def go():
        channel = ChildChannel()
        parent = ref(1, 7)
        big = b"x" * ((1 << 20) - 200)  # fits the coordinator's default --max-input-bytes with the rest
        for i in range(70):
            channel.submit(parent, task_pb2.TaskSpec(type="t", child_key=f"k{i}", input_bytes=big))
        sizes, sent = [], 0
        while channel.has_outgoing and len(sizes) < 100:
            request = actor_service_pb2.ConnectRequest()
            channel.fill(request)
            sizes.append(request.ByteSize())
            sent += len(request.child_submissions)
        assert sent == 70
        assert max(sizes) <= MAX_MESSAGE_BYTES, f"a message of {max(sizes)} bytes (limit {MAX_MESSAGE_BYTES})"

    asyncio.run(go())
