"""Snapshots of the projection in LMDB, next to the WAL (same environment).

Owns the on-disk layout of snapshots and the order of the writes that make them crash-safe:

- ``snap_rows``: one row per finished task, key = its ordinal (8 bytes big-endian), value =
  the seq of the snapshot it was written for (8 bytes BE) + CRC32 (4 bytes LE) + serialized
  finished-task row (``core/snapshot.py``: ``finished_row``). Rows are shared by successive snapshots (finished tasks do not
  change), so each finished task is written about once, and deleted once it is forgotten.
- ``snap_head``: the serialized ``corral.v1.SnapshotHead`` (globals and unfinished tasks) of a
  snapshot, key = seq (8 bytes BE) + chunk number (4 bytes BE), in chunks of at most 1 MiB.
- meta key ``snapshot``: a ``SnapshotPointer`` to the latest complete snapshot (seq, chunks, CRC).

Writing snapshot S (``write``; a worker thread, every transaction short):
  1. new rows, in batches (a row whose ordinal already has a row — a finished task that changed —
     is held back for step 3, since the current snapshot may need the old one);
  2. the head's chunks, in batches;
  3. ONE transaction: the held-back rows and the pointer switch to S (the commit point);
  4. delete the previous heads, the rows of tasks forgotten up to S, and WAL records < S.
A crash anywhere leaves a loadable state: before 3 the previous snapshot is intact (rows written
for a later snapshot are recognised by their seq and ignored); after 3, S is complete, and what
4 had not deleted yet is ignored at load (the head lists the forgotten rows) and deleted then
(``load``'s cleanup). The WAL keeps record S itself, so its last seq survives compaction.

Invariant: the rows with written-for seq <= S, minus the head's forgotten ordinals, are exactly
the finished tasks of snapshot S (their count is in the head and checked at load).
"""
from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from corral.v1 import snapshot_pb2

from .wal import WriteAheadLog

log = logging.getLogger("corral.snapshots")

POINTER_KEY = b"snapshot"
CHUNK_BYTES = 1 << 20
ROWS_PER_TXN = 2_000
CHUNKS_PER_TXN = 8
_U64 = struct.Struct(">Q")
_HEAD_KEY = struct.Struct(">QI")
_CRC = struct.Struct("<I")


class SnapshotCorrupt(Exception):
    """A stored snapshot that cannot be trusted (bad checksum, missing chunk)."""


@dataclass
class SnapshotWrite:
    """Everything the worker thread needs to write snapshot `seq` (built on the loop)."""

    seq: int
    at_unix_ms: int
    head: bytes
    rows: dict[int, bytes]  # ordinal -> finished-task row (core/snapshot.py finished_row; new or changed)
    forgotten: list[int]  # ordinals whose rows go once the snapshot is in place


class SnapshotStore:
    def __init__(self, wal: WriteAheadLog) -> None:
        self.wal = wal
        self._rows = wal.open_db(b"snap_rows")
        self._heads = wal.open_db(b"snap_head")
        self._meta = wal.open_db(b"meta")

    # ---- reading -----------------------------------------------------------------------------

    def pointer(self) -> snapshot_pb2.SnapshotPointer | None:
        raw = self.wal.get_meta(POINTER_KEY)
        return snapshot_pb2.SnapshotPointer.FromString(raw) if raw is not None else None

    def load(self) -> tuple[snapshot_pb2.SnapshotHead, list[bytes]] | None:
        """The latest snapshot (head, finished-task rows in ordinal order), after deleting what a
        crash left behind; None if there is none."""
        pointer = self.pointer()
        if pointer is None:
            return None
        seq = pointer.seq

        def read_head(txn) -> bytes:
            parts = []
            for i in range(pointer.head_chunks):
                chunk = txn.get(_HEAD_KEY.pack(seq, i), db=self._heads)
                if chunk is None:
                    raise SnapshotCorrupt(f"snapshot {seq}: head chunk {i} is missing")
                parts.append(bytes(chunk))
            return b"".join(parts)

        data = self.wal.read(read_head)
        if zlib.crc32(data) != pointer.head_crc32:
            raise SnapshotCorrupt(f"snapshot {seq}: head checksum mismatch")
        head = snapshot_pb2.SnapshotHead.FromString(data)
        skip = set(head.forgotten_ordinals)
        rows: list[bytes] = []
        stale: list[bytes] = []
        after = b""
        while True:  # short read transactions, ROWS_PER_TXN * 8 rows each
            def read_some(txn, after=after):
                cursor = txn.cursor(db=self._rows)
                found = cursor.set_range(after) if after else cursor.first()
                out = []
                while found and len(out) < ROWS_PER_TXN * 8:
                    out.append((bytes(cursor.key()), bytes(cursor.value())))
                    found = cursor.next()
                return out

            batch = self.wal.read(read_some)
            if after and batch and batch[0][0] == after:
                batch = batch[1:]
            if not batch:
                break
            for key, value in batch:
                ordinal = _U64.unpack(key)[0]
                written_for = _U64.unpack_from(value)[0]
                if written_for > seq or ordinal in skip:
                    stale.append(key)
                    continue
                (crc,) = _CRC.unpack_from(value, 8)
                payload = value[12:]
                if zlib.crc32(payload) != crc:
                    raise SnapshotCorrupt(f"snapshot {seq}: row of task ordinal {ordinal}: checksum mismatch")
                rows.append(bytes(payload))  # decoded by core/snapshot.py (task_from_row)
            after = batch[-1][0]
        self._delete_rows(stale)
        self._cleanup(seq)
        return head, rows

    # ---- writing (a worker thread) -----------------------------------------------------------

    def write(self, job: SnapshotWrite) -> None:
        """Write snapshot `job.seq` and make it the latest (see the module docstring)."""
        wal = self.wal
        wal.background_writers += 1
        try:
            self._write(job)
        finally:
            wal.background_writers -= 1

    def _write(self, job: SnapshotWrite) -> None:
        seq = job.seq
        prefix = _U64.pack(seq)
        held_back: list[tuple[bytes, bytes]] = []
        items = [(_U64.pack(ordinal), prefix + _CRC.pack(zlib.crc32(row)) + row) for ordinal, row in job.rows.items()]
        for start in range(0, len(items), ROWS_PER_TXN):
            def put_rows(txn, part=items[start:start + ROWS_PER_TXN]) -> None:
                for key, value in part:
                    if txn.get(key, db=self._rows) is not None:
                        held_back.append((key, value))
                    else:
                        txn.put(key, value, db=self._rows)

            self.wal.write(put_rows)
        head = job.head
        chunks = [head[i:i + CHUNK_BYTES] for i in range(0, len(head), CHUNK_BYTES)] or [b""]
        for start in range(0, len(chunks), CHUNKS_PER_TXN):
            def put_chunks(txn, start=start) -> None:
                for i, chunk in enumerate(chunks[start:start + CHUNKS_PER_TXN], start):
                    txn.put(_HEAD_KEY.pack(seq, i), chunk, db=self._heads)

            self.wal.write(put_chunks)
        pointer = snapshot_pb2.SnapshotPointer(seq=seq, head_chunks=len(chunks), at_unix_ms=job.at_unix_ms,
                                               head_crc32=zlib.crc32(head))

        def switch(txn) -> None:
            for key, value in held_back:
                txn.put(key, value, db=self._rows)
            txn.put(POINTER_KEY, pointer.SerializeToString(), db=self._meta)

        self.wal.write(switch)
        self._delete_rows([_U64.pack(o) for o in job.forgotten])
        self._cleanup(seq)

    def _delete_rows(self, keys: Iterable[bytes]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), ROWS_PER_TXN):
            def delete(txn, part=keys[start:start + ROWS_PER_TXN]) -> None:
                for key in part:
                    txn.delete(key, db=self._rows)

            self.wal.write(delete)

    def _cleanup(self, seq: int) -> None:
        """Delete the heads of other snapshots and the WAL records before `seq`."""
        def stale_heads(txn) -> list[bytes]:
            cursor = txn.cursor(db=self._heads)
            return [bytes(k) for k in cursor.iternext(keys=True, values=False) if _HEAD_KEY.unpack(k)[0] != seq]

        keys = self.wal.read(stale_heads)
        if keys:
            def delete(txn) -> None:
                for key in keys:
                    txn.delete(key, db=self._heads)

            self.wal.write(delete)
        deleted = self.wal.delete_before(seq)
        if deleted:
            log.info("snapshot %d: deleted %d WAL records before it", seq, deleted)
