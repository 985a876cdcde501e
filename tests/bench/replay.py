"""Start-up time: replaying a WAL of 1,000,000 records, without and with a snapshot.

Builds a store of `--records` WAL records (tasks of a few types with small JSON inputs and
outputs, each submitted, granted and succeeded: 3 records per task, in batches as the loop
commits them), then measures
  1. a full replay of the WAL into a fresh projection (what start-up did before snapshots);
  2. a snapshot of that state (capture on the loop, write to LMDB), more records appended after it
     (`--tail`), and start-up's restore: load the snapshot, replay only the tail.
Both go through start-up's `restore` (garbage collector off) and must give the same fingerprint.
Single-threaded; run it with `nice`.

    python -m tests.bench.replay [--records 1000000] [--tail 10000] [--retained 1.0] [--dir DIR]
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time

from google.protobuf import struct_pb2

from corral.v1 import task_pb2, wal_pb2
from coordinator.coordinator import restore
from coordinator.core.projection import Projection
from coordinator.dispatch.snapshotter import Snapshotter, enable
from coordinator.storage.snapshots import SnapshotStore
from coordinator.storage.wal import HIGHEST_TOKEN_KEY, WriteAheadLog

BATCH_TASKS = 1_000
T0 = 1_700_000_000_000


class Writer:
    def __init__(self, wal: WriteAheadLog, retained: float = 1.0) -> None:
        self.wal = wal
        self.retained = retained  # share of the tasks kept; the others are forgotten (retention)
        self.n = 0
        self.token = 0
        self.now = T0

    def batch(self, n_tasks: int) -> None:
        """n_tasks tasks: submitted (one commit), granted (one commit), succeeded (one commit)."""
        ids = []
        records = []
        for _ in range(n_tasks):
            self.n += 1
            task_id = f"{self.now:012x}{self.n:016x}"
            ids.append(task_id)
            spec = task_pb2.TaskSpec(task_id=task_id, type=f"type-{self.n % 5}", priority=self.n % 3)
            spec.input.struct_value.update({"image": f"s3://bucket/{self.n}.png", "width": 640})
            spec.labels["team"] = "bench"
            spec.retry.max_attempts = 3
            spec.retry.max_lost_attempts = 3
            spec.execution_timeout.FromSeconds(60)
            records.append(wal_pb2.WalRecord(task_submitted=wal_pb2.TaskSubmitted(
                task_id=task_id, spec=spec, state=task_pb2.TASK_STATE_READY, ready_at_unix_ms=self.now)))
        self.wal.append_batch(records, self.now)
        self.now += 5
        records = []
        for task_id in ids:
            self.token += 1
            records.append(wal_pb2.WalRecord(lease_granted=wal_pb2.LeaseGranted(
                task_id=task_id, attempt=1, fencing_token=self.token, actor_id=f"actor-{self.token % 8}",
                actor_incarnation="inc-1", deadline_unix_ms=self.now + 60_000)))
        self.wal.append_batch(records, self.now, {HIGHEST_TOKEN_KEY: self.token.to_bytes(8, "big")})
        self.now += 20
        records = []
        first = self.token - len(ids) + 1
        for i, task_id in enumerate(ids):
            output = struct_pb2.Value()
            output.struct_value.update({"thumbnail": f"s3://bucket/{task_id}-small.png", "bytes": 12345})
            records.append(wal_pb2.WalRecord(attempt_ended=wal_pb2.AttemptEnded(
                task_id=task_id, attempt=1, fencing_token=first + i, outcome=task_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
                output=output, next_state=task_pb2.TASK_STATE_SUCCEEDED)))
        self.wal.append_batch(records, self.now)
        self.now += 5
        if self.retained < 1.0:  # retention forgets most of them (one TasksForgotten per batch)
            keep = int(len(ids) * self.retained)
            self.wal.append_batch([wal_pb2.WalRecord(tasks_forgotten=wal_pb2.TasksForgotten(
                task_ids=ids[keep:]))], self.now)

    def records(self, count: int) -> None:
        while count > 0:
            n = min(BATCH_TASKS, max(1, count // 3))
            self.batch(n)
            count -= 3 * n


def store_mib(path: str) -> float:
    return os.stat(os.path.join(path, "data.mdb")).st_size / (1 << 20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--tail", type=int, default=10_000)
    parser.add_argument("--dir", default="")
    parser.add_argument("--retained", type=float, default=1.0,
                        help="share of the tasks still retained (the rest forgotten by retention), e.g. 0.1")
    args = parser.parse_args(argv)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: {platform.machine()}, {os.cpu_count()} vCPU, {cpu}; Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="corral-replay-", dir=args.dir or None) as tmp:
        wal = WriteAheadLog(tmp, sync=False)
        writer = Writer(wal, args.retained)
        started = time.perf_counter()
        writer.records(args.records)
        print(f"built {wal.last_seq} WAL records ({writer.n} tasks) in {time.perf_counter() - started:.1f} s; "
              f"store {store_mib(tmp):.0f} MiB")
        wal.close()

        wal = WriteAheadLog(tmp, sync=False)
        projection = Projection()
        enable(projection)
        started = time.perf_counter()
        _, applied = restore(wal, projection, truncate_corrupt=False)  # no snapshot yet: a full replay
        full_s = time.perf_counter() - started
        print(f"1. full replay, no snapshot: {applied} records in {full_s:.2f} s "
              f"({full_s / applied * 1e6:.1f} µs per record)")

        snapshotter = Snapshotter(SnapshotStore(wal), projection, every_records=1)
        started = time.perf_counter()
        job, _ = snapshotter.capture(wal.last_seq, writer.now)
        capture_s = time.perf_counter() - started
        started = time.perf_counter()
        snapshotter.store.write(job)
        write_s = time.perf_counter() - started
        print(f"   snapshot of {len(projection.tasks)} tasks: capture {capture_s:.2f} s "
              f"(all rows new: {len(job.rows)}), write {write_s:.2f} s; head {len(job.head)} bytes")
        writer.wal = wal
        writer.records(args.tail)
        projection2 = Projection()
        wal.close()
        # The reference: the state a full replay would give (snapshot state + the tail).
        wal = WriteAheadLog(tmp, sync=False)
        for record in wal.records(job.seq + 1):
            projection.apply(record, record.at_unix_ms)
        expected = projection.fingerprint()
        del projection, snapshotter, job
        gc.collect()  # the first projection must not share memory with the restore measured next
        wal.close()

        wal = WriteAheadLog(tmp, sync=False)
        print(f"   WAL after compaction: records {wal.first_seq()}..{wal.last_seq}; store {store_mib(tmp):.0f} MiB")
        enable(projection2)
        started = time.perf_counter()
        snapshot_seq, tail = restore(wal, projection2, truncate_corrupt=False)
        restore_s = time.perf_counter() - started
        assert projection2.fingerprint() == expected, "snapshot + tail differs from a full replay"
        print(f"2. snapshot {snapshot_seq} + tail of {tail} records: {restore_s:.2f} s "
              f"({full_s / restore_s:.1f}x faster than the full replay); fingerprint equal")
        wal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
