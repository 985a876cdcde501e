"""Encoding of one WAL record as an LMDB key/value pair.

Owns the on-disk format of a record, nothing else:

- key: the record's seq as 8 bytes big-endian, so LMDB's byte order is seq order;
- value: 4-byte little-endian CRC32 (zlib.crc32) of the payload, then the payload, which is
  the serialized ``corral.v1.WalRecord``.

Invariant: ``decode_record`` returns a record only if its checksum matches, it parses, and its
``seq`` equals the seq of the key it was stored under; otherwise it raises ``CorruptRecordError``.
"""

from __future__ import annotations

import struct
import zlib

from google.protobuf.message import DecodeError

from corral.v1 import wal_pb2

_CHECKSUM = struct.Struct("<I")
_SEQ_KEY = struct.Struct(">Q")


class CorruptRecordError(Exception):
    """A stored WAL record that cannot be trusted: bad checksum, unparsable, misplaced or missing."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"WAL record {seq} is corrupt: {reason}")
        self.seq = seq
        self.reason = reason


def seq_key(seq: int) -> bytes:
    """The LMDB key of the record with this seq."""
    return _SEQ_KEY.pack(seq)


def key_seq(key: bytes) -> int:
    """The seq stored under this LMDB key (inverse of ``seq_key``)."""
    if len(key) != _SEQ_KEY.size:
        raise ValueError(f"WAL key must be {_SEQ_KEY.size} bytes, got {len(key)}")
    return _SEQ_KEY.unpack(key)[0]


def encode_record(record: wal_pb2.WalRecord) -> bytes:
    """The LMDB value of ``record``: checksum of the payload, then the payload."""
    if not isinstance(record, wal_pb2.WalRecord):
        raise TypeError(f"expected corral.v1.WalRecord, got {type(record).__name__}")
    payload = record.SerializeToString()
    return _CHECKSUM.pack(zlib.crc32(payload)) + payload


def decode_record(seq: int, value: bytes) -> wal_pb2.WalRecord:
    """The record stored under ``seq_key(seq)``; raises ``CorruptRecordError`` if it is not sound."""
    if len(value) < _CHECKSUM.size:
        raise CorruptRecordError(seq, f"value is {len(value)} bytes, shorter than its checksum")
    (stored_crc,) = _CHECKSUM.unpack_from(value)
    payload = value[_CHECKSUM.size :]
    if zlib.crc32(payload) != stored_crc:
        raise CorruptRecordError(seq, "checksum mismatch")
    record = wal_pb2.WalRecord()
    try:
        record.ParseFromString(payload)
    except DecodeError as exc:
        raise CorruptRecordError(seq, f"unparsable payload: {exc}") from exc
    if record.seq != seq:
        raise CorruptRecordError(seq, f"stored under seq {seq} but contains seq {record.seq}")
    return record
