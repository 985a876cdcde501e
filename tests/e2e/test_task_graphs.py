"""Task graphs with real processes: prerequisites (TaskSpec.depends_on, DeclareDependency).

A diamond runs in order and its last task sees its prerequisites' outputs; a failed prerequisite
cancels its dependents transitively; bad graphs are refused before anything is written; a DAG
survives a `kill -9` of the coordinator in the middle and every task succeeds exactly once
(200 tasks in 20 layers).
"""
from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from corral.v1 import task_pb2, task_service_pb2

from .harness import TERMINAL, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

APP = "tests.e2e.graph_app"
S = task_pb2


def spec(task_id: str, depends_on: list[str] = (), task_type: str = "collect", **input) -> task_pb2.TaskSpec:
    s = task_pb2.TaskSpec(task_id=task_id, type=task_type, depends_on=list(depends_on))
    json_format.ParseDict({"name": task_id, **input}, s.input)
    return s


def submit_batch(cluster, specs: list[task_pb2.TaskSpec]) -> task_service_pb2.SubmitTasksResponse:
    return cluster.tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=10)


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def ms(ts) -> int:
    return ts.ToMilliseconds()


def test_diamond_runs_in_order_and_sees_prerequisite_outputs(cluster):
    cluster.start_actor("g1", app=APP, slots=4)
    # D first: references to later tasks of the same request are fine.
    resp = submit_batch(cluster, [spec("d1", ["b1", "c1"]), spec("b1", ["a1"], sleep=0.3),
                                  spec("c1", ["a1"], sleep=0.1), spec("a1")])
    assert [r.task_id for r in resp.results] == ["d1", "b1", "c1", "a1"]
    assert [r.state for r in resp.results[:3]] == [S.TASK_STATE_WAITING_FOR_DEPENDENCIES] * 3
    d = cluster.wait_state("d1", timeout_s=30)
    assert d.state == S.TASK_STATE_SUCCEEDED, d
    a, b, c = (cluster.get(t) for t in ("a1", "b1", "c1"))
    assert ms(b.attempts[0].started_at) >= ms(a.attempts[0].ended_at)
    assert ms(c.attempts[0].started_at) >= ms(a.attempts[0].ended_at)
    assert ms(d.attempts[0].started_at) >= max(ms(b.attempts[-1].ended_at), ms(c.attempts[-1].ended_at))
    out = json_format.MessageToDict(d.output)
    assert out["name"] == "d1"
    assert set(out["prerequisites"]) == {"b1", "c1"}
    assert out["prerequisites"]["b1"]["name"] == "b1"
    assert out["prerequisites"]["b1"]["prerequisites"]["a1"]["name"] == "a1"  # B saw A's output
    assert list(d.depends_on) == ["b1", "c1"] and d.unfinished_prerequisites == 0


def test_failed_prerequisite_cancels_dependents_transitively(cluster):
    cluster.start_actor("g1", app=APP, slots=4)
    submit_batch(cluster, [spec("f-a", task_type="boom"), spec("f-b", ["f-a"]), spec("f-c", ["f-b"]),
                           spec("f-ok")])
    c = cluster.wait_state("f-c", timeout_s=30)
    a, b = cluster.get("f-a"), cluster.get("f-b")
    assert a.state == S.TASK_STATE_FAILED
    assert b.state == c.state == S.TASK_STATE_CANCELED
    assert b.state_reason == "prerequisite 'f-a' ended FAILED"
    assert "'f-b' ended CANCELED" in c.state_reason and "'f-a' ended FAILED" in c.state_reason
    assert c.error.kind == "dependency_failed" and not c.attempts
    assert cluster.wait_state("f-ok").state == S.TASK_STATE_SUCCEEDED
    # Depending on a task that already failed: accepted, and canceled at once.
    late = cluster.tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec("f-late", ["f-a"])), timeout=10)
    assert late.state == S.TASK_STATE_CANCELED


def test_a_batch_repeating_a_task_next_to_a_forward_prerequisite_is_answered_and_runs(cluster):
    # A repeat of a task of the same request, in a request that is written out of order (a
    # forward prerequisite): it used to be written before the task it repeats, failing the
    # coordinator's dispatch loop.
    cluster.start_actor("g1", app=APP, slots=4)
    resp = submit_batch(cluster, [spec("r-b", ["r-a"]), spec("r-a"), spec("r-b", ["r-a"])])
    assert [(r.task_id, r.created) for r in resp.results] == [("r-b", True), ("r-a", True), ("r-b", False)]
    assert cluster.wait_state("r-b", timeout_s=30).state == S.TASK_STATE_SUCCEEDED
    assert submit_batch(cluster, [spec("r-next")]).results[0].created  # still serving


def test_bad_graphs_are_refused_with_invalid_argument(cluster):
    cycle = refused(lambda: submit_batch(cluster, [spec("x1", ["x3"]), spec("x2", ["x1"]), spec("x3", ["x2"])]))
    assert cycle.code() == grpc.StatusCode.INVALID_ARGUMENT and "cycle" in cycle.details()
    assert ".depends_on[0]" in cycle.details()
    unknown = refused(lambda: submit_batch(cluster, [spec("u1"), spec("u2", ["u1", "ghost"])]))
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.details().startswith("tasks[1].depends_on[1]:") and "ghost" in unknown.details()
    self_dep = refused(lambda: submit_batch(cluster, [spec("s0"), spec("s1"), spec("s2", ["s2"])]))
    assert self_dep.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert self_dep.details().startswith("tasks[2].depends_on[0]:")
    # Nothing of the refused requests was written.
    for task_id in ("x1", "u1", "s0"):
        gone = refused(lambda: cluster.get(task_id))
        assert gone.code() == grpc.StatusCode.NOT_FOUND


def declare(cluster, task_id: str, depends_on: list[str]) -> task_pb2.Task:
    return cluster.tasks.DeclareDependency(
        task_service_pb2.DeclareDependencyRequest(task_id=task_id, depends_on=depends_on), timeout=10).task


def test_declare_dependency(cluster):
    # No actor yet: everything stays READY until one connects.
    submit_batch(cluster, [spec("p1", sleep=0.2), spec("t1"), spec("q1", ["t1"])])
    task = declare(cluster, "t1", ["p1"])
    assert task.state == S.TASK_STATE_WAITING_FOR_DEPENDENCIES and list(task.depends_on) == ["p1"]
    cycle = refused(lambda: declare(cluster, "p1", ["q1"]))  # q1 -> t1 -> p1
    assert cycle.code() == grpc.StatusCode.INVALID_ARGUMENT and cycle.details().startswith("depends_on[0]:")
    assert refused(lambda: declare(cluster, "p1", ["p1"])).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused(lambda: declare(cluster, "p1", ["nope"])).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused(lambda: declare(cluster, "nope", ["p1"])).code() == grpc.StatusCode.NOT_FOUND
    cluster.start_actor("g1", app=APP, slots=4)
    t1 = cluster.wait_state("t1")
    assert t1.state == S.TASK_STATE_SUCCEEDED
    assert ms(t1.attempts[0].started_at) >= ms(cluster.get("p1").attempts[0].ended_at)
    assert cluster.wait_state("q1").state == S.TASK_STATE_SUCCEEDED
    # A running task cannot get prerequisites any more.
    run = spec("r1", task_type="sleep", seconds=30)
    cluster.tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=run), timeout=10)
    cluster.wait_state("r1", (S.TASK_STATE_RUNNING,))
    running = refused(lambda: declare(cluster, "r1", ["p1"]))
    assert running.code() == grpc.StatusCode.FAILED_PRECONDITION
    finished = refused(lambda: declare(cluster, "p1", ["t1"]))
    assert finished.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_dag_survives_coordinator_kill_and_every_task_succeeds_once(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator()
    cluster.start_actor("g1", app=APP, slots=8)
    cluster.start_actor("g2", app=APP, slots=8)
    layers = [[f"L{layer}-{i}" for i in range(10)] for layer in range(20)]  # 200 tasks, 20 levels
    specs = []
    for n, layer in enumerate(layers):
        for task_id in layer:
            specs.append(spec(task_id, layers[n - 1] if n else [], sleep=0.1, names_only=True))
    submit_batch(cluster, specs)
    all_ids = [t for layer in layers for t in layer]

    def succeeded() -> int:
        page = cluster.tasks.ListTasks(task_service_pb2.ListTasksRequest(
            states=[S.TASK_STATE_SUCCEEDED], type="collect", page_size=1000), timeout=10)
        return len(page.tasks)

    wait_for(lambda: succeeded() >= 40, 60, "a few layers to succeed")
    assert succeeded() < len(all_ids)
    cluster.kill(cluster.coordinator)  # SIGKILL in the middle of the graph
    cluster.start_coordinator()
    wait_for(lambda: succeeded() == len(all_ids), 90, "every task of the DAG to succeed")
    for n, layer in enumerate(layers):
        for task_id in layer:
            task = cluster.get(task_id)
            assert task.state == S.TASK_STATE_SUCCEEDED
            wins = [a for a in task.attempts if a.outcome == S.ATTEMPT_OUTCOME_SUCCEEDED]
            assert len(wins) == 1, (task_id, task.attempts)
            if n:
                started = ms(wins[0].started_at)
                for prerequisite_id in layers[n - 1]:
                    prerequisite = cluster.get(prerequisite_id)
                    assert prerequisite.state == S.TASK_STATE_SUCCEEDED
                    assert started >= ms(prerequisite.attempts[-1].ended_at), (task_id, prerequisite_id)
                out = json_format.MessageToDict(task.output)
                assert out["prerequisites"] == {p: p for p in layers[n - 1]}
    assert all(cluster.get(t).state in TERMINAL for t in all_ids)
