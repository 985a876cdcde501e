"""The total (schedule-to-close) timeout with real processes: a task still running at its total
deadline ends FAILED with the reason recorded, and its actor is told to stop the attempt."""
from __future__ import annotations

import pytest

from corral.v1 import task_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

APP = "tests.e2e.children_app"


def test_running_task_fails_at_its_total_deadline_and_the_attempt_is_stopped(cluster):
    actor = cluster.start_actor("t1", app=APP, slots=2)
    task_id = cluster.submit("sleep", {"seconds": 30}, schedule_to_close_timeout={"seconds": 1},
                             retry=task_pb2.RetryPolicy(max_attempts=5))
    task = cluster.wait_state(task_id, timeout_s=20)
    assert task.state == task_pb2.TASK_STATE_FAILED, task
    assert task.error.kind == "schedule_to_close_timeout"
    assert "schedule-to-close" in task.state_reason
    assert len(task.attempts) == 1 and task.attempts[0].outcome == task_pb2.ATTEMPT_OUTCOME_TIMED_OUT
    took_ms = task.updated_at.ToMilliseconds() - task.created_at.ToMilliseconds()
    assert 1_000 <= took_ms < 10_000
    # The actor stopped the attempt (cancel pushed): its slot is free again for the next task.
    follow_up = cluster.submit("double", {"i": 4})
    assert cluster.wait_state(follow_up, timeout_s=20).state == task_pb2.TASK_STATE_SUCCEEDED
    assert actor.poll() is None


def test_waiting_task_fails_at_its_total_deadline(cluster):
    # No actor serves this type: the task waits READY until its total deadline.
    task_id = cluster.submit("nobody-runs-this", schedule_to_close_timeout={"nanos": 500_000_000})
    task = cluster.wait_state(task_id, timeout_s=20)
    assert task.state == task_pb2.TASK_STATE_FAILED and task.error.kind == "schedule_to_close_timeout"
    assert task.attempts == []
