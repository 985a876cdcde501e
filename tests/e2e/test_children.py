"""Child tasks with real processes: handlers submit children over the actor stream.

Children are listed under their parent, a parent waits for them (WAITING_FOR_CHILDREN) and fails
with a child unless it was detached or allowed to fail, a retried parent gets its existing
children back, depth is bounded, a cancel reaches running descendants, a stale attempt cannot
spawn children, and a parent waiting for its children survives a kill -9 of the coordinator.
"""
from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from corral.v1 import actor_service_pb2, task_pb2, task_service_pb2

from .harness import TERMINAL, wait_for
from .raw_actor import RawActor

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

APP = "tests.e2e.children_app"
S = task_pb2


def children_of(cluster, task_id: str) -> list[task_pb2.Task]:
    resp = cluster.tasks.ListTasks(task_service_pb2.ListTasksRequest(parent_task_id=task_id), timeout=10)
    return list(resp.tasks)


def output(task: task_pb2.Task):
    return json_format.MessageToDict(task.output)


@pytest.mark.parametrize("handler", ["fanout", "fanout_sync"])
def test_handler_waits_for_its_children_outputs(cluster, handler):
    cluster.start_actor("c1", app=APP, slots=8)
    parent_id = cluster.submit(handler, {"n": 3, "child_type": "double", "wait": True})
    parent = cluster.wait_state(parent_id)
    assert parent.state == S.TASK_STATE_SUCCEEDED, parent
    assert output(parent) == {"outputs": [0, 2, 4]}
    kids = children_of(cluster, parent_id)
    assert [k.spec.child_key for k in kids] == ["c0", "c1", "c2"]
    assert all(k.parent_task_id == parent_id and k.depth == 1 and k.state == S.TASK_STATE_SUCCEEDED for k in kids)
    assert (parent.children, parent.unfinished_children, parent.depth) == (3, 0, 0)


def test_parent_waits_for_children_then_succeeds_with_its_output(cluster):
    cluster.start_actor("c1", app=APP, slots=8)
    parent_id = cluster.submit("fanout", {"n": 2, "child_type": "sleep", "child_input": {"seconds": 1.5}})
    waiting = cluster.wait_state(parent_id, (S.TASK_STATE_WAITING_FOR_CHILDREN,), timeout_s=20)
    assert waiting.unfinished_children == 2
    handler_output = output(waiting)
    assert len(handler_output["children"]) == 2
    done = cluster.wait_state(parent_id)
    assert done.state == S.TASK_STATE_SUCCEEDED, done
    assert output(done) == handler_output
    assert all(k.state == S.TASK_STATE_SUCCEEDED for k in children_of(cluster, parent_id))
    # A watcher of the children sees them by parent.
    assert {k.task_id for k in children_of(cluster, parent_id)} == set(handler_output["children"])


@pytest.mark.parametrize("option, parent_state", [
    ({}, S.TASK_STATE_FAILED),
    ({"allow_failure": True}, S.TASK_STATE_SUCCEEDED),
    ({"detached": True}, S.TASK_STATE_SUCCEEDED),
])
def test_failed_child_fails_parent_unless_allowed_or_detached(cluster, option, parent_state):
    cluster.start_actor("c1", app=APP, slots=8)
    parent_id = cluster.submit("fanout", {"n": 2, "child_type": "boom", **option})
    parent = cluster.wait_state(parent_id)
    assert parent.state == parent_state, parent
    kids = children_of(cluster, parent_id)
    assert len(kids) == 2
    for kid in kids:
        assert cluster.wait_state(kid.task_id).state == S.TASK_STATE_FAILED
    if parent_state == S.TASK_STATE_FAILED:
        assert parent.error.kind == "child_failed"
        assert parent.error.message.startswith("child ") and "boom on purpose" in parent.error.message
        assert len(parent.attempts) == 1  # not retried: the child's failure is final


def test_retried_parent_gets_its_existing_children(cluster):
    cluster.start_actor("c1", app=APP, slots=8)
    parent_id = cluster.submit("fanout", {"n": 3, "child_type": "double", "fail_first_attempt": True},
                               retry=S.RetryPolicy(max_attempts=3, backoff=S.Backoff(
                                   kind=S.BACKOFF_KIND_FIXED, initial={"nanos": 50_000_000})))
    parent = cluster.wait_state(parent_id)
    assert parent.state == S.TASK_STATE_SUCCEEDED, parent
    assert len(parent.attempts) == 2
    out = output(parent)
    assert out["created"] == [False, False, False]  # attempt 2 got attempt 1's children
    kids = children_of(cluster, parent_id)
    assert sorted(k.task_id for k in kids) == sorted(out["children"])
    assert len(kids) == 3


def test_depth_is_bounded(make_cluster):
    cluster = make_cluster(coordinator_flags=("--max-task-depth", "2"))
    cluster.start_coordinator()
    cluster.start_actor("c1", app=APP, slots=8)
    root = cluster.submit("nest", {"depth_left": 5})
    done = cluster.wait_state(root)
    assert done.state == S.TASK_STATE_SUCCEEDED, done
    out = output(done)
    assert out["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "depth 3" in out["refused"] and "maximum task depth of 2" in out["refused"]
    child = children_of(cluster, root)[0]
    grandchild = children_of(cluster, child.task_id)[0]
    assert (child.depth, grandchild.depth) == (1, 2)
    assert children_of(cluster, grandchild.task_id) == []


def test_cancel_reaches_running_descendants(cluster):
    cluster.start_actor("c1", app=APP, slots=8)
    parent_id = cluster.submit("fanout", {"n": 2, "child_type": "fanout", "then_sleep": True,
                                          "child_input": {"n": 1, "child_type": "sleep", "then_sleep": True,
                                                          "child_input": {"seconds": 60}}})
    # parent running, 2 running children, each with 1 running grandchild.
    def tree_running():
        kids = children_of(cluster, parent_id)
        grandkids = [g for k in kids for g in children_of(cluster, k.task_id)]
        running = [t for t in kids + grandkids if t.state == S.TASK_STATE_RUNNING]
        return (kids, grandkids) if len(running) == 4 else None
    kids, grandkids = wait_for(tree_running, 30, "the whole tree to be running")
    assert cluster.get(parent_id).state == S.TASK_STATE_RUNNING
    cluster.tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=parent_id, reason="enough"), timeout=10)
    for t in [parent_id] + [k.task_id for k in kids + grandkids]:
        task = cluster.wait_state(t, timeout_s=20)
        assert task.state == S.TASK_STATE_CANCELED, task
    grandchild = cluster.get(grandkids[0].task_id)
    assert f"ancestor {parent_id} canceled: enough" in grandchild.error.message or "enough" in grandchild.state_reason


def test_stale_attempt_cannot_submit_children(cluster):
    with RawActor(cluster.target, "raw", task_types=["fence-probe"]) as raw:
        raw.welcome()
        parent_id = cluster.submit("fence-probe")
        lease = raw.lease(parent_id)
        stale = actor_service_pb2.LeaseRef(task_id=parent_id, attempt=1, fencing_token=lease.ref.fencing_token + 7)
        request = actor_service_pb2.ConnectRequest()
        request.child_submissions.add(parent=stale, request_id=1, task=S.TaskSpec(type="double", child_key="k"))
        request.child_submissions.add(parent=lease.ref, request_id=2, task=S.TaskSpec(type="double", child_key="k"))
        request.child_submissions.add(parent=lease.ref, request_id=3, task=S.TaskSpec(type="double"))  # no key
        request.child_submissions.add(parent=lease.ref, request_id=4, task=S.TaskSpec(type="double", child_key="k"))
        raw.send(request)

        def answers():
            got = {a.request_id: a for r in raw.responses for a in r.child_submitted}
            return got if len(got) == 4 else None
        got = raw.wait(lambda rs: answers(), "four child answers")
        assert got[1].code == grpc.StatusCode.FAILED_PRECONDITION.value[0] and "stale" in got[1].message
        assert got[2].code == 0 and got[2].created and got[2].task_id
        assert got[3].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "child_key" in got[3].message
        assert got[4].code == 0 and not got[4].created and got[4].task_id == got[2].task_id
        assert [k.task_id for k in children_of(cluster, parent_id)] == [got[2].task_id]


def test_child_depending_on_an_ancestor_it_holds_up_is_refused(cluster):
    """A non-detached child that depends on its parent (directly, or through a prerequisite of
    the parent's) is a cycle: the parent waits for the child, the child for the parent. It used
    to be accepted and both waited forever (WAITING_FOR_CHILDREN / WAITING_FOR_DEPENDENCIES)."""
    with RawActor(cluster.target, "raw", task_types=["fence-probe"]) as raw:
        raw.welcome()
        parent_id = cluster.submit("fence-probe", task_id="cyc-parent")
        lease = raw.lease(parent_id)
        cluster.submit("nobody-runs-this", task_id="cyc-other", depends_on=[parent_id])
        request = actor_service_pb2.ConnectRequest()
        request.child_submissions.add(parent=lease.ref, request_id=1,
                                      task=S.TaskSpec(type="double", child_key="k1", depends_on=[parent_id]))
        request.child_submissions.add(parent=lease.ref, request_id=2,
                                      task=S.TaskSpec(type="double", child_key="k2", depends_on=["cyc-other"]))
        # Detached: the parent does not wait for it, so depending on the parent is no cycle.
        request.child_submissions.add(parent=lease.ref, request_id=3, task=S.TaskSpec(
            type="double", child_key="k3", detached=True, depends_on=[parent_id]))
        # Accepted without prerequisites; DeclareDependency must not add the same cycle later.
        request.child_submissions.add(parent=lease.ref, request_id=4, task=S.TaskSpec(
            type="double", child_key="k4", allow_failure=True))
        raw.send(request)

        def answers():
            got = {a.request_id: a for r in raw.responses for a in r.child_submitted}
            return got if len(got) == 4 else None
        got = raw.wait(lambda rs: answers(), "four child answers")
        for i in (1, 2):
            assert got[i].code == grpc.StatusCode.INVALID_ARGUMENT.value[0], got[i]
            assert "depends_on[0]" in got[i].message and "cycle" in got[i].message, got[i].message
        assert got[3].code == 0 and got[3].created, got[3]
        assert got[4].code == 0 and got[4].created, got[4]
        with pytest.raises(grpc.RpcError) as e:
            cluster.tasks.DeclareDependency(task_service_pb2.DeclareDependencyRequest(
                task_id=got[4].task_id, depends_on=["cyc-other"]), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith("depends_on[0]: would make a cycle"), e.value.details()
        cluster.tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=got[4].task_id), timeout=10)
        raw.report(lease.ref, S.ATTEMPT_OUTCOME_SUCCEEDED, output={"done": True})
        assert raw.ack_for(lease.ref).accepted
    # With only the detached child, the parent is not held up; its dependent child then runs.
    assert cluster.wait_state(parent_id, timeout_s=15).state == S.TASK_STATE_SUCCEEDED


def test_client_cannot_set_child_fields_and_unknown_parent_is_not_found(cluster):
    with pytest.raises(grpc.RpcError) as e:
        cluster.submit("double", {"i": 1}, parent_task_id="someone")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "parent_task_id" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        children_of(cluster, "no-such-task")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_waiting_parent_survives_coordinator_kill(cluster):
    actor = cluster.start_actor("c1", app=APP, slots=8)
    parent_id = cluster.submit("fanout", {"n": 3, "child_type": "sleep", "child_input": {"seconds": 2}})
    cluster.wait_state(parent_id, (S.TASK_STATE_WAITING_FOR_CHILDREN,), timeout_s=20)
    cluster.kill(cluster.coordinator)
    cluster.start_coordinator()
    done = cluster.wait_state(parent_id, timeout_s=40)
    assert done.state == S.TASK_STATE_SUCCEEDED, done
    kids = children_of(cluster, parent_id)
    assert len(kids) == 3 and all(k.state == S.TASK_STATE_SUCCEEDED for k in kids)
    assert actor.poll() is None


@pytest.mark.parametrize("with_heartbeat", [True, False], ids=["with-heartbeat", "alone"])
def test_child_submissions_in_the_first_message_are_validated_and_answered(make_cluster, with_heartbeat):
    """The hello message may carry more fields. Child submissions in it used to skip the spec
    validation every later message gets (with a heartbeat or result beside them: an invalid
    child type was accepted, defaults unfilled) or were never answered at all (alone)."""
    import uuid

    cluster = make_cluster(lease_ttl_s=30)
    cluster.start_coordinator()
    incarnation = uuid.uuid4().hex
    first = RawActor(cluster.target, "raw", task_types=["fence-probe"], incarnation=incarnation)
    first.welcome()
    parent_id = cluster.submit("fence-probe")
    lease = first.lease(parent_id)
    first.close()
    wait_for(lambda: "raw" not in cluster.connected_actor_ids(), 10, "the coordinator to see the stream go")

    # The same process reconnects, re-presenting its lease, and says more in its first message.
    extra = actor_service_pb2.ConnectRequest()
    if with_heartbeat:
        extra.heartbeats.append(lease.ref)
    extra.child_submissions.add(parent=lease.ref, request_id=1, task=S.TaskSpec(type="not a type!", child_key="bad"))
    extra.child_submissions.add(parent=lease.ref, request_id=2, task=S.TaskSpec(type="double", child_key="good"))
    with RawActor(cluster.target, "raw", task_types=["fence-probe"], incarnation=incarnation,
                  held_leases=[lease.ref], with_hello=extra) as second:
        assert [(r.task_id, r.fencing_token) for r in second.welcome().adopted] == [(parent_id, lease.ref.fencing_token)]

        def answers():
            got = {a.request_id: a for r in second.responses for a in r.child_submitted}
            return got if len(got) == 2 else None
        got = second.wait(lambda rs: answers(), "two child answers", timeout_s=10)
        assert got[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0], got[1]
        assert "child_submissions[0].task.type" in got[1].message, got[1]
        assert got[2].code == 0 and got[2].created, got[2]
        assert [k.task_id for k in children_of(cluster, parent_id)] == [got[2].task_id]
        assert cluster.get(got[2].task_id).spec.retry.max_attempts > 0  # defaults filled in
