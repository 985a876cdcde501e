"""Operations on a running cluster: Pause/Resume (durable: a WAL record), Drain (this process
only), and the drain SIGTERM starts: running attempts finish and are committed before the
coordinator exits 0, new submissions get UNAVAILABLE meanwhile."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from corral.v1 import admin_service_pb2, task_pb2, task_service_pb2

from .harness import REPO_ROOT, read_wal, wait_for
from .test_cli import at, corral, ok_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

S = task_pb2
RUNNING, READY, SUCCEEDED = S.TASK_STATE_RUNNING, S.TASK_STATE_READY, S.TASK_STATE_SUCCEEDED


def status(cluster) -> admin_service_pb2.GetClusterStatusResponse:
    return cluster.admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=5)


def running_count(cluster) -> int:
    return next(s.count for s in status(cluster).tasks_by_state if s.state == RUNNING)


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_pause_holds_new_leases_while_attempts_in_flight_finish_then_resume_runs_them(cluster):
    cluster.start_actor("worker", slots=2)
    in_flight = cluster.submit("sleep", {"seconds": 2})
    cluster.wait_state(in_flight, (RUNNING,), timeout_s=10)

    paused = cluster.admin.Pause(admin_service_pb2.PauseRequest(reason="maintenance"), timeout=5)
    assert paused.changed and paused.running_attempts == 1
    held = cluster.submit("echo", {"held": True})  # submissions are still accepted
    assert cluster.wait_state(in_flight, timeout_s=20).state == SUCCEEDED  # the attempt in flight went on
    # The actor has had two free slots since that result was committed: only the pause keeps the task.
    assert cluster.get(held).state == READY
    now = status(cluster)
    assert (now.paused, now.pause_reason, now.draining) == (True, "maintenance", False)

    resumed = cluster.admin.Resume(admin_service_pb2.ResumeRequest(reason="done"), timeout=5)
    assert resumed.changed and not resumed.draining
    assert cluster.wait_state(held, timeout_s=20).state == SUCCEEDED
    assert not status(cluster).paused


def test_pause_is_durable_across_a_coordinator_restart(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator()
    ok_json(corral("pause", "--reason", "until the migration is done", "--json", *at(cluster)))
    cluster.kill(cluster.coordinator, signal.SIGTERM)
    assert cluster.coordinator.returncode == 0
    [record] = [r for r in read_wal(cluster.data_dir) if r.WhichOneof("event") == "dispatch_paused"]
    assert record.dispatch_paused.reason == "until the migration is done"

    cluster.start_coordinator()
    now = status(cluster)
    assert now.paused and now.pause_reason == "until the migration is done"
    task_id = cluster.submit("echo", {"after": "restart"})
    cluster.start_actor("worker", slots=2)
    # A READY task and a free actor share the step of the actor's hello: only the pause holds it.
    assert cluster.get(task_id).state == READY

    resumed = ok_json(corral("resume", "--json", *at(cluster)))
    assert resumed == {"changed": True, "draining": False}
    assert cluster.wait_state(task_id, timeout_s=20).state == SUCCEEDED
    assert ok_json(corral("resume", "--json", *at(cluster))) == {"changed": False, "draining": False}


def test_drain_refuses_submissions_reports_running_attempts_and_grants_nothing(cluster):
    cluster.start_actor("worker", slots=1)
    in_flight = cluster.submit("sleep", {"seconds": 3})
    cluster.wait_state(in_flight, (RUNNING,), timeout_s=10)
    queued = cluster.submit("echo", {"queued": True})  # READY: the only slot is taken

    drained = ok_json(corral("drain", "--reason", "upgrade", "--json", *at(cluster)))
    assert drained == {"changed": True, "runningAttempts": "1"}
    err = refused(lambda: cluster.submit("echo", {"late": True}))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "draining (upgrade)" in err.details()
    batch = task_service_pb2.SubmitTasksRequest(tasks=[task_pb2.TaskSpec(type="echo")])
    assert refused(lambda: cluster.tasks.SubmitTasks(batch, timeout=5)).code() == grpc.StatusCode.UNAVAILABLE
    now = status(cluster)
    assert (now.draining, now.drain_reason, now.paused) == (True, "upgrade", False)
    assert running_count(cluster) == 1

    assert cluster.wait_state(in_flight, timeout_s=20).state == SUCCEEDED  # in flight: finishes
    assert running_count(cluster) == 0
    assert cluster.get(queued).state == READY  # a free slot, but no new lease while draining

    assert cluster.admin.Resume(admin_service_pb2.ResumeRequest(), timeout=5).changed
    assert cluster.wait_state(queued, timeout_s=20).state == SUCCEEDED
    assert cluster.wait_state(cluster.submit("echo", {"after": "drain"}), timeout_s=20).state == SUCCEEDED


def test_drain_wait_returns_when_nothing_runs(cluster):
    cluster.start_actor("worker", slots=1)
    in_flight = cluster.submit("sleep", {"seconds": 1})
    cluster.wait_state(in_flight, (RUNNING,), timeout_s=10)
    final = ok_json(corral("drain", "--wait", "--json", *at(cluster)))
    assert final["draining"] is True
    assert cluster.get(in_flight).state == SUCCEEDED


def test_drain_is_not_durable(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator()
    cluster.admin.Drain(admin_service_pb2.DrainRequest(reason="r"), timeout=5)
    assert refused(lambda: cluster.submit("echo")).code() == grpc.StatusCode.UNAVAILABLE
    cluster.kill(cluster.coordinator, signal.SIGTERM)
    cluster.start_coordinator()
    assert not status(cluster).draining
    cluster.submit("echo")


def test_sigterm_drains_running_attempts_commits_their_results_and_refuses_new_work(make_cluster):
    cluster = make_cluster(lease_ttl_s=5)
    cluster.start_coordinator()
    actor = cluster.start_actor("worker", slots=2)
    task_id = cluster.submit("sleep", {"seconds": 6})
    cluster.wait_state(task_id, (RUNNING,), timeout_s=10)

    cluster.coordinator.send_signal(signal.SIGTERM)
    wait_for(lambda: status(cluster).draining, 10, "the coordinator to drain")
    health = cluster.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    err = refused(lambda: cluster.submit("echo", task_id="submitted-during-drain"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.details()
    assert cluster.coordinator.poll() is None  # still waiting for the attempt
    assert cluster.coordinator.wait(timeout=30) == 0

    records = read_wal(cluster.data_dir)
    ended = [r.attempt_ended for r in records if r.WhichOneof("event") == "attempt_ended"]
    assert [(e.task_id, e.outcome, e.next_state) for e in ended] == [
        (task_id, S.ATTEMPT_OUTCOME_SUCCEEDED, SUCCEEDED)], "the result was committed before exit"
    assert "submitted-during-drain" not in {r.task_submitted.task_id for r in records}
    assert actor.poll() is None, "the actor outlives the coordinator"

    cluster.start_coordinator()
    task = cluster.get(task_id)
    assert task.state == SUCCEEDED and len(task.attempts) == 1
    assert json_format.MessageToDict(task.output) == {"slept": 6.0}
    wait_for(lambda: "worker" in cluster.connected_actor_ids(), 20, "the actor to reconnect")
    assert cluster.wait_state(cluster.submit("echo", {"after": "restart"}), timeout_s=20).state == SUCCEEDED


def test_sigterm_drain_gives_up_after_its_grace_and_the_attempt_is_adopted_after_restart(make_cluster):
    cluster = make_cluster(lease_ttl_s=10, coordinator_flags=("--drain-grace-s", "0.5"))
    cluster.start_coordinator()
    cluster.start_actor("worker", slots=1)
    task_id = cluster.submit("sleep", {"seconds": 6})
    running = cluster.wait_state(task_id, (RUNNING,), timeout_s=10)
    cluster.coordinator.send_signal(signal.SIGTERM)
    assert cluster.coordinator.wait(timeout=15) == 0
    assert not [r for r in read_wal(cluster.data_dir) if r.WhichOneof("event") == "attempt_ended"]

    cluster.start_coordinator()
    task = cluster.wait_state(task_id, timeout_s=30)  # re-presented by the actor and adopted
    assert task.state == SUCCEEDED
    assert [(a.number, a.fencing_token) for a in task.attempts] == [(1, running.attempts[0].fencing_token)]


def test_cli_events_prints_one_json_line_per_event(cluster):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    proc = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "events", "--type", "echo", "--label", "k=v", "--json",
                             *at(cluster)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)
    try:
        wait_for(lambda: status(cluster).event_subscribers == 1, 20, "the CLI to subscribe")
        cluster.submit("echo", {"n": 0})  # no label: filtered out
        task_id = cluster.submit("echo", {"n": 1}, labels={"k": "v"})
        event = json.loads(proc.stdout.readline())
        assert (event["taskId"], event["kind"], event["state"]) == (task_id, "TASK_EVENT_KIND_SUBMITTED",
                                                                    "TASK_STATE_READY")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
