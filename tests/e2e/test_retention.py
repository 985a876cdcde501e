"""Retention and snapshots with real processes: under a steady load of short-retention tasks the
LMDB store levels off (finished tasks are forgotten, snapshots are written, WAL records before
them deleted); a `kill -9` and restart after compaction (snapshot + WAL tail) gives back the same
tasks, counts and fencing high-water mark.
"""
from __future__ import annotations

import os
import signal
import time

import grpc
import pytest

from corral.v1 import admin_service_pb2, task_pb2, task_service_pb2

from .harness import read_wal, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TERMINAL = {task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELED}


def status(cluster) -> admin_service_pb2.GetClusterStatusResponse:
    return cluster.admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=10)


def counts(cluster) -> dict[int, int]:
    return {c.state: c.count for c in status(cluster).tasks_by_state}


def all_tasks(cluster) -> list[bytes]:
    out, token = [], ""
    while True:
        page = cluster.tasks.ListTasks(task_service_pb2.ListTasksRequest(page_size=500, page_token=token), timeout=10)
        out.extend(t.SerializeToString(deterministic=True) for t in page.tasks)
        token = page.next_page_token
        if not token:
            return out


def submit_wave(cluster, n: int, wave: int) -> list[str]:
    specs = [task_pb2.TaskSpec(type="noop", idempotency_key=f"w{wave}-{i}") for i in range(n)]
    response = cluster.tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=30)
    return [r.task_id for r in response.results]


def forgotten(cluster, task_id: str) -> bool:
    try:
        cluster.get(task_id)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return True
        raise
    return False


def store_bytes(cluster) -> int:
    return os.stat(cluster.data_dir / "data.mdb").st_size


def test_store_levels_off_under_short_retention_and_restart_after_compaction_restores_state(make_cluster):
    cluster = make_cluster()
    cluster.start_coordinator("--retention-s", "1", "--snapshot-every-records", "1500")
    cluster.start_actor("r1", slots=32)
    sizes = []
    waves: list[list[str]] = []
    n_waves, lag = 18, 3
    for wave in range(n_waves):
        waves.append(submit_wave(cluster, 400, wave))
        wait_for(lambda: sum(v for k, v in counts(cluster).items() if k not in TERMINAL) == 0, 30,
                 f"wave {wave} to finish")
        if wave >= lag:  # a steady state: what finished `lag` waves ago is forgotten by now
            wait_for(lambda: forgotten(cluster, waves[wave - lag][-1]), 30, f"wave {wave - lag} to be forgotten")
        sizes.append(store_bytes(cluster))
    last_seq = status(cluster).wal.last_seq
    assert last_seq > n_waves * 400 * 3  # submit, grant, end per task, plus forget records
    # Forgotten tasks are NOT_FOUND, and their idempotency keys are free again.
    assert all(forgotten(cluster, task_id) for task_id in waves[0][::50])
    again = submit_wave(cluster, 1, 0)[0]
    assert again != waves[0][0]
    # The store levels off: the second half of the run grows it far less than the first half.
    half = n_waves // 2
    first_growth, second_growth = sizes[half - 1] - sizes[0], sizes[-1] - sizes[half - 1]
    assert second_growth <= max(first_growth // 2, 256 << 10), sizes

    # A stable state to compare across a kill: no actor, finished tasks all forgotten, some tasks
    # that stay (nobody serves their type; one waits for another; one is far in the future).
    cluster.kill(cluster.actors["r1"], signal.SIGTERM)
    keep = [cluster.submit("nobody", {"i": i}, priority=i % 3, idempotency_key=f"keep-{i}") for i in range(20)]
    cluster.tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=task_pb2.TaskSpec(
        type="nobody", depends_on=[keep[0]])), timeout=10)
    far = task_pb2.TaskSpec(type="noop")
    far.not_before.FromSeconds(int(time.time()) + 3600)
    cluster.tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=far), timeout=10)
    wait_for(lambda: all(counts(cluster).get(s, 0) == 0 for s in TERMINAL), 20, "every finished task to be forgotten")
    before_tasks, before = all_tasks(cluster), status(cluster)
    assert len(before_tasks) == 22
    cluster.kill(cluster.coordinator)
    records = read_wal(cluster.data_dir)
    assert records[0].seq > 1 and records[-1].seq == before.wal.last_seq  # compacted up to a snapshot
    cluster.start_coordinator("--retention-s", "1", "--snapshot-every-records", "1500")
    after = status(cluster)
    assert all_tasks(cluster) == before_tasks
    assert counts(cluster) == {c.state: c.count for c in before.tasks_by_state}
    assert after.highest_fencing_token == before.highest_fencing_token
    assert after.wal.last_seq == before.wal.last_seq
    log = sorted(cluster.workdir.glob("*-coordinator.log"))[-1].read_text(errors="replace")
    assert "loaded snapshot" in log and "loaded snapshot 0 " not in log
