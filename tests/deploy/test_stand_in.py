"""`make cluster` (tools/k8s_stand_in.py): the dev overlay's configuration run as local processes.

The stand-in starts 1 coordinator + 2 actors configured only by the environment the manifests give
their containers; an echo task submitted over gRPC succeeds on one of the actors, whose id is its
(generated) pod name; stopping ends every process, by pid, within bounded waits.
"""
from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest
from google.protobuf import json_format

from corral.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

from .conftest import KUBECTL, REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60),
              pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not on PATH: "
                                                         "the stand-in renders the dev overlay with it")]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_plan_is_the_manifests_environment_with_only_the_local_overrides(stand_in_module, tmp_path):
    objects = stand_in_module.render()
    plan = stand_in_module.plan(objects, port=17070, data_dir=tmp_path / "data", seed=1)
    coordinator, actors = plan.coordinator, plan.actors
    assert coordinator.args == ["coordinator"] and coordinator.name == "corral-coordinator-0"
    assert coordinator.env["CORRAL_LISTEN"] == "127.0.0.1:17070"
    assert coordinator.env["CORRAL_DATA_DIR"] == str(tmp_path / "data")
    assert coordinator.env["CORRAL_LOG_LEVEL"] == "DEBUG"          # the dev overlay's merge
    assert coordinator.env["CORRAL_METRICS_LISTEN"] == "127.0.0.1:0"  # not 9464 for every process
    assert len(actors) == 2                                         # the dev overlay's replicas
    assert {a.env["CORRAL_ACTOR_ID"] for a in actors} == {a.name for a in actors}
    assert len({a.name for a in actors}) == 2
    for actor in actors:
        assert actor.args == ["actor"]
        assert actor.env["CORRAL_COORDINATOR"] == "127.0.0.1:17070"
        assert actor.env["CORRAL_APP"] == "actor.demo"
        assert actor.env["CORRAL_METRICS_LISTEN"] == "127.0.0.1:0"
        assert all(k.startswith("CORRAL_") for k in actor.env)


def test_stand_in_runs_an_echo_task_to_success_and_stops_every_process(stand_in_module, tmp_path):
    stand_in = stand_in_module.StandIn(actors=2, port=0, workdir=tmp_path)
    pids = []
    try:
        stand_in.start(timeout_s=30)
        pids = [p.pid for p in stand_in.procs.values()]
        assert len(pids) == 3
        actor_ids = {s.name for s in stand_in.plan.actors}
        connected = {a["identity"]["actorId"] for a in stand_in.status()["actors"]}
        assert connected == actor_ids

        with grpc.insecure_channel(stand_in.target) as channel:
            tasks = task_service_pb2_grpc.TaskServiceStub(channel)
            spec = task_pb2.TaskSpec(type="echo")
            json_format.ParseDict({"from": "k8s stand-in"}, spec.input)
            task_id = tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=10).task_id
            task = None
            for update in tasks.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task_id), timeout=30):
                task = update.task
                if task.state in (task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED,
                                  task_pb2.TASK_STATE_CANCELED):
                    break
        assert task is not None and task.state == task_pb2.TASK_STATE_SUCCEEDED, stand_in.logs()
        assert json_format.MessageToDict(task.output) == {"from": "k8s stand-in"}
        assert task.attempts[-1].actor_id in actor_ids
    finally:
        exited = stand_in.stop()
    assert set(exited) == set(stand_in.procs), f"still running after stop: {set(stand_in.procs) - set(exited)}"
    assert all(code == 0 for code in exited.values()), f"{exited}\n{stand_in.logs()}"
    assert all(_gone(pid) for pid in pids)


def test_make_cluster_command_starts_prints_status_and_stops(tmp_path):
    """What `make cluster` runs, in its non-interactive mode."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "k8s_stand_in.py"), "--port", "0",
                           "--exit-after-start"], capture_output=True, text=True, timeout=45, cwd=tmp_path, env=env)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "1 coordinator + 2 actors" in proc.stdout
    assert proc.stdout.count("actorId: corral-actor-") == 2
    assert proc.stdout.rstrip().endswith("k8s_stand_in: stopped")
