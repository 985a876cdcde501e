"""Snapshots in a real LMDB environment (coordinator/storage/snapshots.py), with the loop's
capture (coordinator/dispatch/snapshotter.py) and start-up's restore (coordinator.restore).

Checks: restore (snapshot + WAL tail) equals a full replay; WAL records before the snapshot are
deleted while the last seq and the fencing high-water meta survive; successive snapshots share
finished-task rows and delete forgotten ones; a crash at any point of a snapshot write leaves a
store that restores to the same projection.
"""
from __future__ import annotations

import itertools

import pytest

from corral.v1 import wal_pb2
from coordinator.coordinator import restore
from coordinator.core.projection import Projection
from coordinator.core.snapshot import task_from_row
from coordinator.core.states import TERMINAL_STATES
from coordinator.dispatch.snapshotter import Snapshotter, enable
from coordinator.storage import snapshots as snapshots_mod
from coordinator.storage.snapshots import SnapshotStore
from coordinator.storage.wal import HIGHEST_TOKEN_KEY, WriteAheadLog

from .core_fixtures import Sim
from .test_core_projection_replay import run_history
from .test_snapshot import forget_history, keyed_history, stamped_sim  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)


def histories() -> list[wal_pb2.WalRecord]:
    """A long history: retries/cancels/lost, keys and pause, then forgotten tasks (ids renamed so
    the three do not collide), with increasing times."""
    out = []
    for n, records in enumerate((run_history(None).all_records_with_seq(), keyed_history(), forget_history())):
        base = out[-1].at_unix_ms if out else 0
        for r in records:
            copy = wal_pb2.WalRecord()
            copy.CopyFrom(r)
            out.append(copy)
        if n:
            shift = base - records[0].at_unix_ms + 1
            for r in out[-len(records):]:
                r.at_unix_ms += shift
    return rename(out)


def rename(records: list[wal_pb2.WalRecord]) -> list[wal_pb2.WalRecord]:
    """Tokens and task ids made unique across the concatenated histories."""
    seen_tokens = itertools.count(1)
    token_map: dict[tuple[int, int], int] = {}
    part = 0
    for i, r in enumerate(records):
        if i and r.at_unix_ms < records[i - 1].at_unix_ms:
            raise AssertionError("times must increase")
    # Split into parts where seq restarts at 1.
    for r in records:
        if r.seq == 1:
            part += 1
        kind = r.WhichOneof("event")
        body = getattr(r, kind)
        for field in ("task_id",):
            if hasattr(body, field) and getattr(body, field):
                setattr(body, field, f"p{part}-{getattr(body, field)}")
        if kind == "task_submitted":
            body.spec.task_id = body.task_id
            deps = [f"p{part}-{d}" for d in body.spec.depends_on]
            del body.spec.depends_on[:]
            body.spec.depends_on.extend(deps)
            if body.spec.idempotency_key:
                body.spec.idempotency_key = f"p{part}-{body.spec.idempotency_key}"
            if body.spec.concurrency_key:
                body.spec.concurrency_key = f"p{part}-{body.spec.concurrency_key}"
        if kind == "dependency_declared":
            deps = [f"p{part}-{d}" for d in body.depends_on]
            del body.depends_on[:]
            body.depends_on.extend(deps)
        if kind == "tasks_forgotten":
            ids = [f"p{part}-{d}" for d in body.task_ids]
            del body.task_ids[:]
            body.task_ids.extend(ids)
        if kind in ("lease_granted", "attempt_ended"):
            key = (part, body.fencing_token)
            if key not in token_map:
                token_map[key] = next(seen_tokens)
            body.fencing_token = token_map[key]
    return records


def write_wal(path, records) -> WriteAheadLog:
    wal = WriteAheadLog(path, map_size_bytes=1 << 24, sync=False)
    for _, group in itertools.groupby(records, key=lambda r: r.at_unix_ms):
        batch = list(group)
        at = batch[0].at_unix_ms
        highest = max((r.lease_granted.fencing_token for r in batch if r.HasField("lease_granted")), default=0)
        wal.append_batch([_fresh(r) for r in batch], at, {HIGHEST_TOKEN_KEY: highest.to_bytes(8, "big")} if highest else None)
    return wal


def _fresh(r: wal_pb2.WalRecord) -> wal_pb2.WalRecord:
    copy = wal_pb2.WalRecord()
    copy.CopyFrom(r)
    return copy


def full_replay(records) -> Projection:
    p = Projection(track_expiry=True)
    for r in records:
        p.apply(r, r.at_unix_ms)
    return p


def take_snapshot(wal: WriteAheadLog, projection: Projection, seq: int, last_snapshot_seq: int = 0) -> Snapshotter:
    snapshotter = Snapshotter(SnapshotStore(wal), projection, every_records=1, last_seq=last_snapshot_seq)
    snapshotter.after_step(7)  # some rows serialized ahead (as after the loop's steps), the rest at capture
    snapshotter.after_step(7)
    job, _ = snapshotter.capture(seq, 0)
    snapshotter.store.write(job)
    return snapshotter


def restored(wal: WriteAheadLog) -> tuple[Projection, int, int]:
    p = Projection(track_expiry=True)
    enable(p)
    seq, applied = restore(wal, p, truncate_corrupt=False)
    return p, seq, applied


@pytest.fixture
def records():
    return histories()


def test_restore_after_a_snapshot_equals_full_replay_and_the_wal_is_compacted(tmp_path, records) -> None:
    expected = full_replay(records)
    wal = write_wal(tmp_path / "db", records)
    last = wal.last_seq
    assert last == len(records)
    token_meta = wal.get_meta(HIGHEST_TOKEN_KEY)
    cut = len(records) // 2
    p = Projection(track_expiry=True)
    enable(p)
    for r in list(wal.records())[:cut]:
        p.apply(r, r.at_unix_ms)
    take_snapshot(wal, p, cut)
    assert wal.first_seq() == cut and wal.last_seq == last  # record `cut` kept as the anchor
    wal.close()
    wal = WriteAheadLog(tmp_path / "db", map_size_bytes=1 << 24, sync=False)
    assert wal.last_seq == last and wal.get_meta(HIGHEST_TOKEN_KEY) == token_meta
    q, seq, applied = restored(wal)
    assert (seq, applied) == (cut, last - cut)
    assert q.fingerprint() == expected.fingerprint()
    assert q.last_seq == last
    # A second snapshot at the end: rows of the tail's finished tasks are added, forgotten ones go.
    take_snapshot(wal, q, last, cut)
    assert wal.first_seq() == last
    r, seq, applied = restored(wal)
    assert (seq, applied) == (last, 0)
    assert r.fingerprint() == expected.fingerprint()
    assert r.expiry is not None and len(r.expiry) == sum(1 for t in r.tasks.values() if t.state in TERMINAL_STATES)
    wal.close()


def test_forgotten_rows_are_deleted_and_new_tasks_continue_the_ordinals(tmp_path, records) -> None:
    wal = write_wal(tmp_path / "db", records)
    forgotten_at = next(i for i, r in enumerate(records, 1) if r.HasField("tasks_forgotten"))
    p = Projection(track_expiry=True)
    enable(p)
    all_records = list(wal.records())
    for r in all_records[:forgotten_at - 1]:
        p.apply(r, r.at_unix_ms)
    take_snapshot(wal, p, forgotten_at - 1)
    store = SnapshotStore(wal)
    rows_before = {task_from_row(row).task_id for row in store.load()[1]}
    q, _, _ = restored(wal)
    take_snapshot(wal, q, wal.last_seq, forgotten_at - 1)
    head, rows = store.load()
    forgotten = {tid for r in all_records if r.HasField("tasks_forgotten") for tid in r.tasks_forgotten.task_ids}
    assert forgotten and forgotten & rows_before
    assert not forgotten & {task_from_row(row).task_id for row in rows}
    resubmitted = [t for t in q.tasks.values() if t.task_id in forgotten]  # same id, a new task
    assert resubmitted and all(t.state not in TERMINAL_STATES for t in resubmitted)
    assert all(t.ordinal not in {task_from_row(row).ordinal for row in rows} for t in resubmitted)
    assert wal.read(lambda txn: txn.stat(store._rows)["entries"]) == head.finished_tasks == len(rows)
    wal.close()


STAGES = ("rows", "chunks", "switch", "forgotten", "cleanup")


@pytest.mark.parametrize("stage", STAGES)
def test_a_crash_at_any_point_of_a_snapshot_write_leaves_a_restorable_store(tmp_path, records, monkeypatch, stage) -> None:
    expected = full_replay(records)
    wal = write_wal(tmp_path / "db", records)
    cut = len(records) // 3
    p = Projection(track_expiry=True)
    enable(p)
    for r in list(wal.records())[:cut]:
        p.apply(r, r.at_unix_ms)
    take_snapshot(wal, p, cut)  # the snapshot a crash must fall back to
    q, _, _ = restored(wal)
    assert q.fingerprint() == expected.fingerprint()

    class Crash(Exception):
        pass

    real_write = WriteAheadLog.write
    real_delete_before = WriteAheadLog.delete_before

    def crashing_write(self, work):
        name = getattr(work, "__name__", "")
        kind = {"put_rows": "rows", "put_chunks": "chunks", "switch": "switch", "delete": "forgotten"}.get(name)
        if kind == stage:
            raise Crash(stage)
        return real_write(self, work)

    def crashing_delete_before(self, seq, batch=10_000):
        if stage == "cleanup":
            raise Crash(stage)
        return real_delete_before(self, seq, batch)

    monkeypatch.setattr(WriteAheadLog, "write", crashing_write)
    monkeypatch.setattr(WriteAheadLog, "delete_before", crashing_delete_before)
    monkeypatch.setattr(snapshots_mod, "ROWS_PER_TXN", 3)  # several transactions per step
    snapshotter = Snapshotter(SnapshotStore(wal), q, every_records=1, last_seq=cut)
    job, _ = snapshotter.capture(wal.last_seq, 0)
    if stage == "forgotten" and not job.forgotten:
        pytest.skip("no forgotten rows in this history")
    with pytest.raises(Crash):
        snapshotter.store.write(job)
    monkeypatch.undo()
    wal.close()
    wal = WriteAheadLog(tmp_path / "db", map_size_bytes=1 << 24, sync=False)
    r, seq, _ = restored(wal)
    assert seq == (cut if stage in ("rows", "chunks", "switch") else wal.last_seq)
    assert r.fingerprint() == expected.fingerprint()
    # And the next snapshot from the restored state is complete.
    take_snapshot(wal, r, wal.last_seq, seq)
    s, _, _ = restored(wal)
    assert s.fingerprint() == expected.fingerprint()
    wal.close()
