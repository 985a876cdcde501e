"""The LMDB write-ahead log, on real LMDB files: dense seqs, atomic batches, durability across
reopen, corruption detection and truncation, map growth."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import lmdb
import pytest

from corral.v1 import wal_pb2
from coordinator.storage.codec import CorruptRecordError, seq_key
from coordinator.storage.wal import WriteAheadLog

AT_UNIX_MS = 1_700_000_000_000


def lease(i: int, *, actor_id: str = "actor-a") -> wal_pb2.WalRecord:
    return wal_pb2.WalRecord(
        lease_granted=wal_pb2.LeaseGranted(task_id=f"t-{i}", attempt=1, fencing_token=i, actor_id=actor_id)
    )


def task_ids(records: list[wal_pb2.WalRecord]) -> list[str]:
    return [r.lease_granted.task_id for r in records]


def raw_wal_db(path: Path) -> tuple[lmdb.Environment, lmdb._Database]:
    """The WAL's LMDB environment opened directly, to damage it as a disk or a bug would."""
    env = lmdb.open(str(path), subdir=True, max_dbs=4)
    return env, env.open_db(b"wal")


@pytest.fixture
def wal_path(tmp_path: Path) -> Path:
    return tmp_path / "wal"


@pytest.fixture
def wal(wal_path: Path):
    with WriteAheadLog(wal_path) as log:
        yield log


def test_empty_log_has_last_seq_zero_and_no_records(wal: WriteAheadLog) -> None:
    assert wal.last_seq == 0
    assert wal.commits == 0
    assert list(wal.records()) == []


def test_open_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "wal"

    with WriteAheadLog(path) as log:
        log.append_batch([lease(1)], AT_UNIX_MS)

    assert (path / "data.mdb").is_file()


def test_seqs_are_dense_from_one_across_batches(wal: WriteAheadLog) -> None:
    assert wal.append_batch([lease(1), lease(2), lease(3)], AT_UNIX_MS) == 3
    assert wal.append_batch([lease(4)], AT_UNIX_MS + 1) == 4
    assert wal.append_batch([lease(5), lease(6)], AT_UNIX_MS + 2) == 6

    stored = list(wal.records())

    assert [r.seq for r in stored] == [1, 2, 3, 4, 5, 6]
    assert task_ids(stored) == [f"t-{i}" for i in range(1, 7)]
    assert [r.at_unix_ms - AT_UNIX_MS for r in stored] == [0, 0, 0, 1, 2, 2]
    assert wal.last_seq == 6
    assert wal.commits == 3


def test_append_stamps_seq_and_time_on_the_callers_records(wal: WriteAheadLog) -> None:
    batch = [lease(1), lease(2)]

    wal.append_batch(batch, AT_UNIX_MS)

    assert [(r.seq, r.at_unix_ms) for r in batch] == [(1, AT_UNIX_MS), (2, AT_UNIX_MS)]


def test_empty_batch_is_a_no_op(wal: WriteAheadLog) -> None:
    wal.append_batch([lease(1)], AT_UNIX_MS)

    assert wal.append_batch([], AT_UNIX_MS) == 1
    assert wal.commits == 1
    assert len(list(wal.records())) == 1


def test_reopen_after_close_keeps_last_seq_and_records(wal_path: Path) -> None:
    with WriteAheadLog(wal_path) as log:
        log.append_batch([lease(1), lease(2)], AT_UNIX_MS)
        log.append_batch([lease(3)], AT_UNIX_MS)
        before = list(log.records())

    with WriteAheadLog(wal_path) as log:
        assert log.last_seq == 3
        assert log.commits == 0
        assert list(log.records()) == before
        assert log.append_batch([lease(4)], AT_UNIX_MS) == 4


@pytest.mark.parametrize("bad_item", [wal_pb2.LeaseGranted(task_id="oops"), object()], ids=["wrong_message", "object"])
def test_batch_is_atomic_when_encoding_fails(wal: WriteAheadLog, bad_item: object) -> None:
    wal.append_batch([lease(1)], AT_UNIX_MS)
    batch = [lease(2), lease(3), bad_item, lease(4)]

    with pytest.raises(TypeError):
        wal.append_batch(batch, AT_UNIX_MS + 5)  # type: ignore[arg-type]

    assert wal.last_seq == 1
    assert wal.commits == 1
    assert task_ids(list(wal.records())) == ["t-1"]
    # The records of the failed batch do not keep seqs that later records will get.
    assert [(r.seq, r.at_unix_ms) for r in (batch[0], batch[1])] == [(0, 0), (0, 0)]
    # And the next batch takes the seqs the failed one did not use.
    assert wal.append_batch([lease(5)], AT_UNIX_MS) == 2
    assert task_ids(list(wal.records())) == ["t-1", "t-5"]


def test_failed_batch_is_not_visible_after_reopen(wal_path: Path) -> None:
    with WriteAheadLog(wal_path) as log:
        log.append_batch([lease(1)], AT_UNIX_MS)
        with pytest.raises(TypeError):
            log.append_batch([lease(2), object()], AT_UNIX_MS)  # type: ignore[list-item]

    with WriteAheadLog(wal_path) as log:
        assert log.last_seq == 1
        assert task_ids(list(log.records())) == ["t-1"]


def test_records_from_seq_starts_at_that_seq(wal: WriteAheadLog) -> None:
    wal.append_batch([lease(i) for i in range(1, 6)], AT_UNIX_MS)

    assert [r.seq for r in wal.records(from_seq=4)] == [4, 5]
    assert list(wal.records(from_seq=6)) == []


def test_records_are_read_in_order_across_read_chunks(wal: WriteAheadLog) -> None:
    count = 2_500  # more than two read chunks
    wal.append_batch([lease(i) for i in range(1, count + 1)], AT_UNIX_MS)

    assert [r.seq for r in wal.records()] == list(range(1, count + 1))
    assert [r.seq for r in wal.records(from_seq=1_000)] == list(range(1_000, count + 1))


def test_corruption_in_the_middle_is_reported_with_its_seq(wal_path: Path) -> None:
    with WriteAheadLog(wal_path) as log:
        log.append_batch([lease(i) for i in range(1, 11)], AT_UNIX_MS)
    env, db = raw_wal_db(wal_path)
    with env.begin(write=True, db=db) as txn:
        value = bytearray(txn.get(seq_key(6)))
        value[-1] ^= 0xFF
        txn.put(seq_key(6), bytes(value))
    env.close()

    with WriteAheadLog(wal_path) as log:
        yielded: list[wal_pb2.WalRecord] = []
        with pytest.raises(CorruptRecordError) as caught:
            for record in log.records():
                yielded.append(record)

    assert caught.value.seq == 6
    assert caught.value.reason == "checksum mismatch"
    assert [r.seq for r in yielded] == [1, 2, 3, 4, 5]


def test_missing_seq_is_reported_as_a_gap(wal_path: Path) -> None:
    with WriteAheadLog(wal_path) as log:
        log.append_batch([lease(i) for i in range(1, 6)], AT_UNIX_MS)
    env, db = raw_wal_db(wal_path)
    with env.begin(write=True, db=db) as txn:
        assert txn.delete(seq_key(3))
    env.close()

    with WriteAheadLog(wal_path) as log:
        with pytest.raises(CorruptRecordError) as caught:
            list(log.records())

    assert caught.value.seq == 4
    assert caught.value.reason == "gap: expected seq 3"


def test_truncate_from_first_bad_record_leaves_a_clean_log_that_appends_continue(wal_path: Path) -> None:
    with WriteAheadLog(wal_path) as log:
        log.append_batch([lease(i) for i in range(1, 11)], AT_UNIX_MS)
    env, db = raw_wal_db(wal_path)
    with env.begin(write=True, db=db) as txn:
        txn.put(seq_key(7), b"\x00\x01")
    env.close()

    with WriteAheadLog(wal_path) as log:
        with pytest.raises(CorruptRecordError) as caught:
            list(log.records())

        assert log.truncate_from(caught.value.seq) == 4
        assert log.last_seq == 6
        assert [r.seq for r in log.records()] == [1, 2, 3, 4, 5, 6]
        assert log.append_batch([lease(100)], AT_UNIX_MS) == 7

    with WriteAheadLog(wal_path) as log:
        assert task_ids(list(log.records())) == ["t-1", "t-2", "t-3", "t-4", "t-5", "t-6", "t-100"]


def test_truncate_from_past_the_end_deletes_nothing(wal: WriteAheadLog) -> None:
    wal.append_batch([lease(1), lease(2)], AT_UNIX_MS)

    assert wal.truncate_from(3) == 0
    assert wal.last_seq == 2
    assert wal.truncate_from(1) == 2
    assert wal.last_seq == 0
    assert list(wal.records()) == []
    assert wal.append_batch([lease(3)], AT_UNIX_MS) == 1


def test_map_grows_when_a_batch_does_not_fit(tmp_path: Path) -> None:
    map_size_bytes = 64 << 10
    padding = "x" * 200
    with WriteAheadLog(tmp_path / "wal", map_size_bytes=map_size_bytes) as log:
        log.append_batch([lease(i, actor_id=padding) for i in range(1, 51)], AT_UNIX_MS)
        # One batch several times the initial map.
        log.append_batch([lease(i, actor_id=padding) for i in range(51, 2_001)], AT_UNIX_MS)

        stat = log.stat()
        assert stat["map_size_bytes"] > map_size_bytes
        assert stat["used_bytes"] > map_size_bytes
        assert stat["last_seq"] == 2_000
        assert stat["commits"] == 2
        assert task_ids(list(log.records())) == [f"t-{i}" for i in range(1, 2_001)]


def test_iteration_survives_map_growth_between_chunks(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "wal", map_size_bytes=64 << 10) as log:
        log.append_batch([lease(i) for i in range(1, 1_501)], AT_UNIX_MS)
        map_size_before = log.stat()["map_size_bytes"]
        reader = log.records()
        first = next(reader)

        log.append_batch([lease(i, actor_id="y" * 500) for i in range(1_501, 2_001)], AT_UNIX_MS)

        assert log.stat()["map_size_bytes"] > map_size_before
        assert [first.seq] + [r.seq for r in reader] == list(range(1, 2_001))


def test_concurrent_reader_is_not_broken_by_map_growth(tmp_path: Path) -> None:
    reader_errors: list[Exception] = []
    first_read_done = threading.Event()
    stop = threading.Event()
    with WriteAheadLog(tmp_path / "wal", map_size_bytes=64 << 10, sync=False) as log:
        log.append_batch([lease(i) for i in range(1, 3_001)], AT_UNIX_MS)
        map_size_before = log.stat()["map_size_bytes"]

        def read_until_stopped() -> None:
            try:
                while not stop.is_set():
                    seqs = [r.seq for r in log.records()]
                    assert seqs == list(range(1, len(seqs) + 1))
                    first_read_done.set()
            except Exception as exc:  # reported to the test thread below
                reader_errors.append(exc)
                first_read_done.set()

        reader = threading.Thread(target=read_until_stopped)
        reader.start()
        try:
            first_read_done.wait()
            for batch_size in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 512, 512]:
                first = log.last_seq + 1
                log.append_batch([lease(i, actor_id="z" * 300) for i in range(first, first + batch_size)], AT_UNIX_MS)
        finally:
            stop.set()
            reader.join()

        assert log.stat()["map_size_bytes"] > map_size_before
    assert reader_errors == []


def test_meta_round_trips_and_survives_reopen(wal_path: Path) -> None:
    with WriteAheadLog(wal_path) as log:
        assert log.get_meta(b"snapshot") is None
        log.put_meta(b"snapshot", b"seq=10")
        log.put_meta(b"snapshot", b"seq=20")
        assert log.get_meta(b"snapshot") == b"seq=20"

    with WriteAheadLog(wal_path) as log:
        assert log.get_meta(b"snapshot") == b"seq=20"
        assert log.last_seq == 0  # meta entries are not WAL records


def test_stat_reports_the_log_and_its_map(wal: WriteAheadLog) -> None:
    wal.append_batch([lease(1), lease(2)], AT_UNIX_MS)

    stat = wal.stat()

    assert stat["last_seq"] == 2
    assert stat["commits"] == 1
    assert stat["map_size_bytes"] == 16 << 30
    assert 0 < stat["used_bytes"] < stat["map_size_bytes"]


def test_map_growth_waits_for_a_write_transaction_of_another_thread(tmp_path: Path) -> None:
    # The dispatch loop commits from a worker thread while a snapshot is written from another;
    # LMDB refuses set_mapsize while any write transaction of the process is open, so growing
    # the map must not race another thread's write (it used to fail the loop's commit).
    errors: list[Exception] = []
    other_inside = threading.Event()
    release_other = threading.Event()
    with WriteAheadLog(tmp_path / "wal", map_size_bytes=64 << 10, sync=False) as log:
        def big_batch() -> None:
            try:
                log.append_batch([lease(i, actor_id="w" * 2_000) for i in range(1, 201)], AT_UNIX_MS)
            except Exception as exc:  # reported to the test thread below
                errors.append(exc)

        def other_writer() -> None:
            def work(txn) -> None:
                other_inside.set()
                release_other.wait(5)

            try:
                log.write(work)
            except Exception as exc:
                errors.append(exc)

        log._remap_lock.acquire()  # hold the growth of the big batch after its MapFullError
        try:
            grower = threading.Thread(target=big_batch)
            grower.start()
            time.sleep(0.5)  # the batch overflows the 64 KiB map and waits to grow it
            other = threading.Thread(target=other_writer)
            other.start()
            other_inside.wait(1)  # with the fix the other writer waits for the growth instead
        finally:
            log._remap_lock.release()
        time.sleep(0.2)
        release_other.set()
        grower.join(10)
        other.join(10)

        assert errors == []
        assert log.last_seq == 200
        assert [r.seq for r in log.records()] == list(range(1, 201))


def test_a_second_process_cannot_open_a_wal_that_is_open(wal_path: Path) -> None:
    # Two coordinators on one data dir would both append and grant the same fencing tokens.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from coordinator.storage.wal import WriteAheadLog; "
         f"w = WriteAheadLog({str(wal_path)!r}, map_size_bytes=1 << 20); print('open', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(OSError, match="in use by another process"):
            WriteAheadLog(wal_path, map_size_bytes=1 << 20)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    # Once the holder is gone the WAL opens again.
    with WriteAheadLog(wal_path, map_size_bytes=1 << 20) as log:
        assert log.last_seq == 0


def test_seqs_stay_contiguous_across_compaction_truncation_and_reopen(wal_path: Path) -> None:
    with WriteAheadLog(wal_path, map_size_bytes=1 << 20) as log:
        log.append_batch([lease(i) for i in range(1, 11)], AT_UNIX_MS)
        assert log.delete_before(6, batch=2) == 5  # a snapshot at 6 keeps record 6
        assert log.first_seq() == 6
        assert log.truncate_from(9) == 2
        assert log.last_seq == 8
        assert log.append_batch([lease(11)], AT_UNIX_MS) == 9
    with WriteAheadLog(wal_path, map_size_bytes=1 << 20) as log:
        assert log.last_seq == 9
        assert [r.seq for r in log.records(6)] == [6, 7, 8, 9]
