"""The coordinator's durable write-ahead log: WAL records in an LMDB environment.

Owns the LMDB environment and its two named databases:

- ``wal``: one entry per record, key ``seq_key(seq)``, value ``encode_record(record)``;
- ``meta``: small key/values (e.g. snapshot markers) for other storage code;
- other named databases of the same environment for other storage code (``snapshots.py``),
  through ``open_db`` and ``write`` (one write transaction, map growth handled).

Records before a snapshot are deleted (``delete_before``); the record at the snapshot's seq is
kept, so ``last_seq`` survives a compaction of everything.

The durability point is the LMDB commit inside ``append_batch``: with ``sync=True`` LMDB
fsyncs before the commit returns, so a batch is either entirely on disk or not at all.

Invariants:

- seqs are dense from 1: the log holds exactly 1..last_seq (until ``truncate_from``);
- a record is visible to readers only after its whole batch committed;
- ``last_seq`` advances only after a successful commit, and a failed ``append_batch``
  leaves the records passed to it with the seq/at_unix_ms they had before the call;
- nothing may be acknowledged to a client before ``append_batch`` returned: that is the
  caller's job, this module only guarantees that a returned batch is durable.

Threading: one writer (``append_batch``, ``truncate_from``, ``delete_before``, ``put_meta``,
``write``) at a time, any number of readers concurrently. Every write transaction runs under
``_write_lock``, and so does map growth: LMDB refuses to resize while any write transaction of
the process is open. Growing the map remaps the file and invalidates open read transactions, so
every read transaction is short (one chunk of ``records``) and taken under ``_remap_lock``,
which map growth also takes; a reader never holds it across a ``yield``.

Processes: one at a time. The log holds an exclusive ``flock`` on ``corral.lock`` in its
directory while open (LMDB itself lets several processes write one environment), so a second
coordinator on the same data dir is refused (``WalInUse``) instead of appending beside the first
and granting the same fencing tokens.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import lmdb

from corral.v1 import wal_pb2
from coordinator.storage.codec import CorruptRecordError, decode_record, encode_record, key_seq, seq_key

_READ_CHUNK_RECORDS = 1024
_T = TypeVar("_T")


# Meta key: the highest fencing token ever granted, written in the same transaction as the grant,
# so it survives even a truncation of the WAL tail (see coordinator.replay).
HIGHEST_TOKEN_KEY = b"highest_fencing_token"
LOCK_FILE_NAME = "corral.lock"


class WalInUse(OSError):
    """Another process has this WAL open (its directory's lock file is locked)."""


class WriteAheadLog:
    """The durable, append-only log of ``WalRecord``s. See the module docstring."""

    def __init__(self, path: str | Path, *, map_size_bytes: int = 16 << 30, sync: bool = True) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_directory(Path(path))
        try:
            self._env = _open_env(path, map_size_bytes, sync)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._wal_db = self._env.open_db(b"wal")
        self._meta_db = self._env.open_db(b"meta")
        self._remap_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._commits = 0
        # > 0 while another thread writes (snapshots): the dispatch loop then commits from a
        # worker thread rather than wait on LMDB's writer lock on the event loop's thread.
        self.background_writers = 0
        with self._env.begin(db=self._wal_db) as txn:
            self._last_seq = _last_seq_in(txn)

    @property
    def last_seq(self) -> int:
        """Seq of the last committed record; 0 when the log is empty."""
        return self._last_seq

    @property
    def commits(self) -> int:
        """Number of ``append_batch`` calls that committed since open."""
        return self._commits

    def append_batch(self, records: list[wal_pb2.WalRecord], at_unix_ms: int,
                     meta: dict[bytes, bytes] | None = None) -> int:
        """Stamp ``records`` in place with the next seqs and ``at_unix_ms``, write them (and the
        ``meta`` key/values, if any) in one transaction and commit it (the durability point).
        Returns the new last_seq.

        On failure nothing is written, last_seq is unchanged, the records get back their
        previous seq/at_unix_ms, and the exception propagates.
        """
        if not records:
            return self._last_seq
        previous = [(r, r.seq, r.at_unix_ms) for r in records if isinstance(r, wal_pb2.WalRecord)]
        try:
            self._growing_map_as_needed(lambda: self._write_batch(records, at_unix_ms, meta))
        except BaseException:
            for record, seq, at in previous:
                record.seq = seq
                record.at_unix_ms = at
            raise
        self._last_seq += len(records)
        self._commits += 1
        return self._last_seq

    def _write_batch(self, records: list[wal_pb2.WalRecord], at_unix_ms: int,
                     meta: dict[bytes, bytes] | None = None) -> None:
        # Leaving the `with` block by an exception aborts the transaction; normally it commits.
        with self._env.begin(write=True, db=self._wal_db) as txn:
            for index, record in enumerate(records):
                if not isinstance(record, wal_pb2.WalRecord):
                    raise TypeError(f"WAL batch item {index} is a {type(record).__name__}, not a WalRecord")
                seq = self._last_seq + 1 + index
                record.seq = seq
                record.at_unix_ms = at_unix_ms
                if not txn.put(seq_key(seq), encode_record(record), append=True):
                    raise RuntimeError(f"WAL seq {seq} is not past the last stored key; log changed underneath")
            if meta:
                for key, value in meta.items():
                    txn.put(key, value, db=self._meta_db)

    def _growing_map_as_needed(self, write: Callable[[], _T]) -> _T:
        """Run ``write`` (one whole write transaction) under ``_write_lock``; on MapFullError
        double the map and rerun it. Growth holds ``_write_lock`` too, so no other thread's
        write transaction is open while LMDB resizes (it refuses to, otherwise)."""
        with self._write_lock:
            while True:
                try:
                    return write()
                except lmdb.MapFullError:
                    with self._remap_lock:
                        self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def records(self, from_seq: int = 1) -> Iterator[wal_pb2.WalRecord]:
        """Yield the committed records from ``from_seq`` in seq order.

        Raises ``CorruptRecordError`` at the first record that does not decode, or at the first
        missing seq ("gap"). Reads in short transactions, so records committed while iterating
        may also be yielded.
        """
        if from_seq < 1:
            raise ValueError(f"from_seq must be >= 1, got {from_seq}")
        expected = from_seq
        while True:
            with self._remap_lock, self._env.begin(db=self._wal_db) as txn:
                cursor = txn.cursor()
                chunk: list[tuple[bytes, bytes]] = []
                if cursor.set_range(seq_key(expected)):
                    for item in cursor:
                        chunk.append(item)
                        if len(chunk) == _READ_CHUNK_RECORDS:
                            break
            for key, value in chunk:
                seq = key_seq(key)
                if seq != expected:
                    raise CorruptRecordError(seq, f"gap: expected seq {expected}")
                yield decode_record(seq, value)
                expected += 1
            if len(chunk) < _READ_CHUNK_RECORDS:
                return

    def truncate_from(self, seq: int) -> int:
        """Delete every record with seq >= ``seq`` in one transaction; return how many were deleted."""
        if seq < 1:
            raise ValueError(f"seq must be >= 1, got {seq}")

        def delete_tail() -> tuple[int, int]:
            deleted = 0
            with self._env.begin(write=True, db=self._wal_db) as txn:
                cursor = txn.cursor()
                if cursor.set_range(seq_key(seq)):
                    while cursor.delete():
                        deleted += 1
                return deleted, _last_seq_in(txn)

        deleted, self._last_seq = self._growing_map_as_needed(delete_tail)
        return deleted

    def delete_before(self, seq: int, batch: int = 10_000) -> int:
        """Delete every record with seq < ``seq``, in transactions of at most ``batch`` records
        (each one short, so the dispatch loop's commits are never held up long). Returns how many."""
        deleted = 0
        while True:
            def delete_some() -> int:
                n = 0
                with self._env.begin(write=True, db=self._wal_db) as txn:
                    cursor = txn.cursor()
                    if not cursor.first():
                        return 0
                    while n < batch and key_seq(cursor.key()) < seq:
                        cursor.delete()
                        n += 1
                        if not cursor.key():
                            break
                return n

            n = self._growing_map_as_needed(delete_some)
            deleted += n
            if n < batch:
                return deleted

    def first_seq(self) -> int:
        """Seq of the first stored record (0: none)."""
        with self._remap_lock, self._env.begin(db=self._wal_db) as txn:
            cursor = txn.cursor()
            return key_seq(cursor.key()) if cursor.first() else 0

    def open_db(self, name: bytes) -> Any:
        """A named database of this environment (for other storage code)."""
        return self._env.open_db(name)

    def write(self, work: Callable[[Any], _T]) -> _T:
        """Run ``work(txn)`` in one write transaction and commit it (durable with sync=True); on
        a full map, grow it and run ``work`` again in a new transaction."""
        def run() -> _T:
            with self._env.begin(write=True) as txn:
                return work(txn)

        return self._growing_map_as_needed(run)

    def read(self, work: Callable[[Any], _T]) -> _T:
        """Run ``work(txn)`` in one short read transaction (never across a yield)."""
        with self._remap_lock, self._env.begin() as txn:
            return work(txn)

    def get_meta(self, key: bytes) -> bytes | None:
        """The value stored under ``key`` in the meta database, or None."""
        with self._remap_lock, self._env.begin(db=self._meta_db) as txn:
            return txn.get(key)

    def put_meta(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key`` in the meta database (committed, durable with sync=True)."""

        def put() -> None:
            with self._env.begin(write=True, db=self._meta_db) as txn:
                txn.put(key, value)

        self._growing_map_as_needed(put)

    def stat(self) -> dict[str, Any]:
        """last_seq, commits, map_size_bytes, and used_bytes (pages in use times page size)."""
        with self._remap_lock:
            info = self._env.info()
            page_size_bytes = self._env.stat()["psize"]
        return {
            "last_seq": self._last_seq,
            "commits": self._commits,
            "map_size_bytes": info["map_size"],
            "used_bytes": (info["last_pgno"] + 1) * page_size_bytes,
        }

    def close(self) -> None:
        self._env.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock: another process may open the WAL now
            self._lock_fd = -1

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _last_seq_in(txn: lmdb.Transaction) -> int:
    cursor = txn.cursor()
    return key_seq(cursor.key()) if cursor.last() else 0


def _lock_directory(path: Path) -> int:
    """An fd holding an exclusive flock on ``path/corral.lock``; ``WalInUse`` if another process holds it."""
    fd = os.open(path / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise WalInUse(f"the write-ahead log in {str(path)!r} is in use by another process "
                           f"(another coordinator on the same --data-dir?)") from None
        raise
    return fd


def _open_env(path: str | Path, map_size_bytes: int, sync: bool) -> lmdb.Environment:
    return lmdb.open(
        str(path),
        subdir=True,
        map_size=map_size_bytes,
        max_dbs=8,
        sync=sync,
        metasync=sync,
        readahead=False,
    )
