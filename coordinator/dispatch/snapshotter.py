"""The dispatch loop's side of snapshots and retention: when to take a snapshot, what it costs the
loop, and the worker thread that writes it (coordinator/storage/snapshots.py).

Owns: the snapshot schedule and the bookkeeping of which finished tasks still need a row.

- A snapshot is due when the WAL has grown by `every_records` records since the last one, and
  by at least as many records as there are tasks (so the work of snapshots stays proportional to
  the records written, however many finished tasks retention keeps).
- Rows of finished tasks not saved yet (`Projection.unsaved_finished`) are serialized ahead of
  the snapshot (`after_step`): when the loop is idle (nothing queued after a step; an idle loop
  wakes every IDLE_STEP_MS while rows are pending), and while it is busy only once more than
  `busy_backlog` (every_records / 8) are pending. So a burst does not pay for snapshots, a
  saturated loop pays about one row per finished task, and a capture never has more than about
  `busy_backlog` rows left. Finished tasks never change (one that does is queued again and
  serialized again), so each is serialized about once.
- The snapshot is captured on the loop's thread at the end of a step, after its commit, when the
  projection equals the WAL exactly (seq = wal.last_seq): the head (globals and unfinished tasks)
  and whatever rows are left. That capture is the loop's only stall (`last_capture_s`).
- Writing happens in a worker thread (`asyncio.to_thread`); meanwhile the loop commits from
  worker threads too (WriteAheadLog.background_writers), so it never waits on LMDB's writer lock.
  One snapshot at a time. A failed write is logged; its rows go back to be written next time.
"""
from __future__ import annotations

import asyncio
import logging
import time

from ..core import snapshot as snap
from ..core.projection import Projection
from ..core.states import TERMINAL_STATES
from ..storage.snapshots import SnapshotStore, SnapshotWrite

log = logging.getLogger("corral.snapshots")


# An idle loop wakes this often while rows are pending and serializes this many per step
# (~5 ms of CPU), so a command arriving meanwhile waits at most that long.
IDLE_STEP_MS = 10
IDLE_ROWS_PER_STEP = 500


class Snapshotter:
    def __init__(self, store: SnapshotStore, projection: Projection, every_records: int, last_seq: int = 0) -> None:
        self.store = store
        self.projection = projection
        self.every_records = every_records
        self.last_seq = last_seq  # seq of the latest snapshot written (or loaded)
        self.written = 0
        self.last_capture_s = 0.0
        self.max_capture_s = 0.0
        self.last_write_s = 0.0
        self._task: asyncio.Task | None = None
        self._pending_forgotten: list[int] = []
        # Rows serialized ahead of the snapshot: ordinal -> (task, row).
        self._rows: dict[int, tuple[object, bytes]] = {}
        # While the loop is busy, rows wait until this many are pending (bounds the capture).
        self.busy_backlog = max(1_024, every_records // 8)
        enable(projection)

    @property
    def backlog(self) -> int:
        """Finished tasks whose row is not serialized yet (0 with snapshots off)."""
        unsaved = self.projection.unsaved_finished
        return len(unsaved) if unsaved and self.every_records else 0

    def after_step(self, records: int, idle: bool = True) -> None:
        """Serialize finished tasks' rows ahead of the snapshot: up to IDLE_ROWS_PER_STEP when the
        loop is idle; while it is busy only once the backlog passes `busy_backlog` (then about
        `records`, at least 64, per step), so bursts do not pay for snapshots and a capture never
        has more than about `busy_backlog` rows left to serialize."""
        unsaved = self.projection.unsaved_finished
        if not unsaved or not self.every_records:
            return
        if idle:
            n = min(len(unsaved), IDLE_ROWS_PER_STEP)
        elif len(unsaved) > self.busy_backlog:
            n = min(len(unsaved), max(64, records))
        else:
            return
        rows = self._rows
        finished_row = snap.finished_row
        for task in unsaved[:n]:
            rows[task.ordinal] = (task, finished_row(task))
        del unsaved[:n]

    def due(self, wal_last_seq: int) -> bool:
        if self._task is not None or not self.every_records:
            return False
        grown = wal_last_seq - self.last_seq
        return grown >= self.every_records and grown >= len(self.projection.tasks)

    def start(self, seq: int, now_ms: int) -> None:
        """Capture snapshot `seq` now (the projection must equal the WAL up to `seq`) and write it
        in a worker thread."""
        started = time.perf_counter()
        job, unsaved = self.capture(seq, now_ms)
        self.last_capture_s = time.perf_counter() - started
        self.max_capture_s = max(self.max_capture_s, self.last_capture_s)
        self._task = asyncio.get_running_loop().create_task(self._write(job, unsaved), name="snapshot-write")

    def capture(self, seq: int, now_ms: int) -> tuple[SnapshotWrite, list]:
        projection = self.projection
        ahead = self._rows
        self._rows = {}
        unsaved = [task for task, _ in ahead.values()] + projection.unsaved_finished
        projection.unsaved_finished = []
        forgotten = self._pending_forgotten + projection.forgotten_ordinals
        projection.forgotten_ordinals = []
        tasks = projection.tasks
        rows: dict[int, bytes] = {}
        for ordinal, (task, row) in ahead.items():
            if tasks.get(task.task_id) is task:  # not forgotten since
                rows[ordinal] = row
        for task in unsaved[len(ahead):]:
            if tasks.get(task.task_id) is task:
                rows[task.ordinal] = snap.finished_row(task)
        counts = projection.state_counts
        finished = sum(counts[s] for s in TERMINAL_STATES)
        head = snap.capture_head(projection, seq, now_ms, finished, forgotten)
        return SnapshotWrite(seq, now_ms, head.SerializeToString(), rows, forgotten), unsaved

    async def _write(self, job: SnapshotWrite, unsaved: list) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.store.write, job)
        except Exception:  # noqa: BLE001 - the next snapshot tries again; the WAL is intact
            log.exception("writing snapshot %d failed; its rows will be written with the next one", job.seq)
            self.projection.unsaved_finished[:0] = unsaved
            self._pending_forgotten = job.forgotten
        else:
            self._pending_forgotten = []
            self.last_seq = job.seq
            self.written += 1
            self.last_write_s = time.perf_counter() - started
            log.info("snapshot %d written (%d new rows, head %d bytes): captured on the loop in %.1f ms, "
                     "written in %.1f ms", job.seq, len(job.rows), len(job.head), self.last_capture_s * 1000,
                     self.last_write_s * 1000)
        finally:
            self._task = None

    async def wait(self) -> None:
        """Until the snapshot being written (if any) is done (before closing the WAL)."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    @property
    def writing(self) -> bool:
        return self._task is not None


def enable(projection: Projection) -> None:
    """Make the projection track what snapshots need (before replaying the WAL tail)."""
    if projection.unsaved_finished is None:
        projection.unsaved_finished = []
    if projection.forgotten_ordinals is None:
        projection.forgotten_ordinals = []
