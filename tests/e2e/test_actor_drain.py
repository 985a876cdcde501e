"""SIGTERM on an actor: it tells the coordinator it is draining (no new leases), finishes what it
runs within its grace, hands back what outlasts the grace, reports, and exits 0; nothing is lost
and nothing waits for a lease TTL."""
from __future__ import annotations

import signal

import pytest

from corral.v1 import admin_service_pb2, task_pb2

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

SUCCEEDED = task_pb2.TASK_STATE_SUCCEEDED


def actor_status(cluster, actor_id):
    status = cluster.admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=5)
    return next((a for a in status.actors if a.identity.actor_id == actor_id), None)


def test_sigterm_drains_the_actor_and_new_work_goes_elsewhere(make_cluster):
    cluster = make_cluster(lease_ttl_s=30)  # a lost attempt would take 30 s: the test would time out
    cluster.start_coordinator()
    leaving = cluster.start_actor("leaving", slots=2, extra=("--grace-s", "20"))
    running = cluster.submit("sleep", {"seconds": 1.5})
    cluster.wait_state(running, (task_pb2.TASK_STATE_RUNNING,), timeout_s=10)
    cluster.start_actor("staying", slots=2)

    leaving.send_signal(signal.SIGTERM)
    wait_for(lambda: (a := actor_status(cluster, "leaving")) is not None and a.draining, 10,
             "the coordinator to see the actor draining")
    later = [cluster.submit("echo", {"n": i}) for i in range(6)]
    for task_id in later:
        task = cluster.wait_state(task_id, timeout_s=20)
        assert task.state == SUCCEEDED
        assert [a.actor_id for a in task.attempts] == ["staying"]

    finished = cluster.wait_state(running, timeout_s=20)
    assert finished.state == SUCCEEDED
    assert [(a.actor_id, a.outcome) for a in finished.attempts] == [("leaving", task_pb2.ATTEMPT_OUTCOME_SUCCEEDED)]
    assert leaving.wait(timeout=20) == 0


def test_sigterm_hands_back_an_attempt_that_outlasts_the_grace_and_it_runs_again_at_once(make_cluster):
    cluster = make_cluster(lease_ttl_s=30)  # waiting for the lease to expire would time the test out
    cluster.start_coordinator()
    leaving = cluster.start_actor("leaving", slots=1, extra=("--grace-s", "0.5"))
    long_task = cluster.submit("sleep", {"seconds": 2})
    cluster.wait_state(long_task, (task_pb2.TASK_STATE_RUNNING,), timeout_s=10)
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(timeout=20) == 0
    cluster.start_actor("staying", slots=1)
    finished = cluster.wait_state(long_task, timeout_s=20)
    assert finished.state == SUCCEEDED, finished
    assert [(a.actor_id, a.outcome) for a in finished.attempts] == [
        ("leaving", task_pb2.ATTEMPT_OUTCOME_HANDED_BACK), ("staying", task_pb2.ATTEMPT_OUTCOME_SUCCEEDED)]
    assert finished.lost_attempts == 0 and finished.failed_attempts == 0
    assert "grace" in finished.attempts[0].error.message
