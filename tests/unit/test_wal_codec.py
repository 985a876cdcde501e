"""The WAL record codec: round trips, and every way a stored value can be rejected."""

from __future__ import annotations

import struct
import zlib

import pytest
from google.protobuf import struct_pb2

from corral.v1 import schedule_pb2, task_pb2, wal_pb2
from coordinator.storage.codec import CorruptRecordError, decode_record, encode_record, key_seq, seq_key

EVENT_SAMPLES: dict[str, wal_pb2.WalRecord] = {
    "task_submitted": wal_pb2.WalRecord(
        task_submitted=wal_pb2.TaskSubmitted(
            task_id="t-1",
            spec=task_pb2.TaskSpec(
                task_id="t-1",
                type="resize",
                input=struct_pb2.Value(string_value="cat.png"),
                priority=3,
                labels={"team": "imaging"},
                required_capabilities=["gpu"],
            ),
            state=task_pb2.TASK_STATE_READY,
            ready_at_unix_ms=1_700_000_000_000,
        )
    ),
    "lease_granted": wal_pb2.WalRecord(
        lease_granted=wal_pb2.LeaseGranted(
            task_id="t-1",
            attempt=2,
            fencing_token=17,
            actor_id="actor-a",
            actor_incarnation="inc-1",
            deadline_unix_ms=1_700_000_060_000,
        )
    ),
    "attempt_ended": wal_pb2.WalRecord(
        attempt_ended=wal_pb2.AttemptEnded(
            task_id="t-1",
            attempt=2,
            fencing_token=17,
            outcome=task_pb2.ATTEMPT_OUTCOME_FAILED,
            output_bytes=b"\x00\x01partial",
            error=task_pb2.TaskError(message="boom", kind="ValueError"),
            next_state=task_pb2.TASK_STATE_RETRY_WAIT,
            ready_at_unix_ms=1_700_000_002_000,
            reason="handler raised",
        )
    ),
    "task_state_changed": wal_pb2.WalRecord(
        task_state_changed=wal_pb2.TaskStateChanged(
            task_id="t-1",
            state=task_pb2.TASK_STATE_FAILED,
            reason="schedule_to_start timeout",
            error=task_pb2.TaskError(message="never started", kind="schedule_to_start_timeout"),
        )
    ),
    "cancel_requested": wal_pb2.WalRecord(
        cancel_requested=wal_pb2.CancelRequested(task_id="t-1", reason="user asked")
    ),
    "actor_registered": wal_pb2.WalRecord(
        actor_registered=wal_pb2.ActorRegistered(
            identity=task_pb2.ExecutorIdentity(
                actor_id="actor-a", incarnation="inc-1", task_types=["resize"], slots=4
            )
        )
    ),
    "dispatch_paused": wal_pb2.WalRecord(dispatch_paused=wal_pb2.DispatchPaused(reason="maintenance")),
    "dispatch_resumed": wal_pb2.WalRecord(dispatch_resumed=wal_pb2.DispatchResumed(reason="done")),
    "dependency_declared": wal_pb2.WalRecord(dependency_declared=wal_pb2.DependencyDeclared(
        task_id="t-9", depends_on=["t-1", "t-2"])),
    "schedule_created": wal_pb2.WalRecord(schedule_created=wal_pb2.ScheduleCreated(schedule=schedule_pb2.Schedule(
        spec=schedule_pb2.ScheduleSpec(schedule_id="s", cron=schedule_pb2.CronTiming(
            expression="0 3 * * *", time_zone="Europe/Berlin"), task=task_pb2.TaskSpec(type="resize")),
        state=schedule_pb2.SCHEDULE_STATE_ACTIVE))),
    "schedule_fired": wal_pb2.WalRecord(schedule_fired=wal_pb2.ScheduleFired(
        schedule_id="s", created_occurrences_unix_ms=[1_700_000_000_000], task_ids=["s:2023-11-14T22:13:20.000Z"],
        skipped=2, skip_reason="missed", last_occurrence_unix_ms=1_700_000_000_000,
        next_occurrence_unix_ms=1_700_000_060_000)),
    "schedule_paused": wal_pb2.WalRecord(schedule_paused=wal_pb2.SchedulePaused(schedule_id="s", reason="x")),
    "schedule_resumed": wal_pb2.WalRecord(schedule_resumed=wal_pb2.ScheduleResumed(
        schedule_id="s", next_occurrence_unix_ms=1_700_000_120_000)),
    "schedule_deleted": wal_pb2.WalRecord(schedule_deleted=wal_pb2.ScheduleDeleted(schedule_id="s")),
    "tasks_forgotten": wal_pb2.WalRecord(tasks_forgotten=wal_pb2.TasksForgotten(task_ids=["t-1", "t-2"])),
}


def stamped(record: wal_pb2.WalRecord, seq: int) -> wal_pb2.WalRecord:
    copy = wal_pb2.WalRecord()
    copy.CopyFrom(record)
    copy.seq = seq
    copy.at_unix_ms = 1_700_000_000_123
    return copy


def test_every_event_type_has_a_round_trip_sample() -> None:
    event_fields = {f.name for f in wal_pb2.WalRecord.DESCRIPTOR.oneofs_by_name["event"].fields}
    assert set(EVENT_SAMPLES) == event_fields


@pytest.mark.parametrize("event", sorted(EVENT_SAMPLES))
def test_each_event_type_round_trips(event: str) -> None:
    record = stamped(EVENT_SAMPLES[event], seq=42)

    decoded = decode_record(42, encode_record(record))

    assert decoded == record
    assert decoded.WhichOneof("event") == event


def test_value_starts_with_little_endian_crc32_of_payload() -> None:
    record = stamped(EVENT_SAMPLES["lease_granted"], seq=7)
    payload = record.SerializeToString()

    assert encode_record(record) == struct.pack("<I", zlib.crc32(payload)) + payload


def test_checksum_mismatch_is_reported_with_its_seq() -> None:
    value = bytearray(encode_record(stamped(EVENT_SAMPLES["lease_granted"], seq=42)))
    value[-1] ^= 0x01

    with pytest.raises(CorruptRecordError) as caught:
        decode_record(42, bytes(value))

    assert caught.value.seq == 42
    assert caught.value.reason == "checksum mismatch"
    assert str(caught.value) == "WAL record 42 is corrupt: checksum mismatch"


@pytest.mark.parametrize("value", [b"", b"\x01\x02\x03"])
def test_value_shorter_than_checksum_is_corrupt(value: bytes) -> None:
    with pytest.raises(CorruptRecordError) as caught:
        decode_record(5, value)

    assert caught.value.seq == 5
    assert "shorter than its checksum" in caught.value.reason


def test_truncated_payload_is_corrupt() -> None:
    value = encode_record(stamped(EVENT_SAMPLES["task_submitted"], seq=9))

    with pytest.raises(CorruptRecordError) as caught:
        decode_record(9, value[:-3])

    assert caught.value.seq == 9
    assert caught.value.reason == "checksum mismatch"


def test_unparsable_payload_with_valid_checksum_is_corrupt() -> None:
    payload = b"\xff\xff\xff\xff"
    value = struct.pack("<I", zlib.crc32(payload)) + payload

    with pytest.raises(CorruptRecordError) as caught:
        decode_record(3, value)

    assert caught.value.seq == 3
    assert caught.value.reason.startswith("unparsable payload")


def test_record_stored_under_another_seq_is_corrupt() -> None:
    value = encode_record(stamped(EVENT_SAMPLES["cancel_requested"], seq=8))

    with pytest.raises(CorruptRecordError) as caught:
        decode_record(9, value)

    assert caught.value.seq == 9
    assert "contains seq 8" in caught.value.reason


def test_encode_rejects_anything_but_a_wal_record() -> None:
    with pytest.raises(TypeError):
        encode_record(wal_pb2.LeaseGranted(task_id="t-1"))  # type: ignore[arg-type]


@pytest.mark.parametrize("seq", [0, 1, 255, 256, 2**32, 2**64 - 1])
def test_seq_key_round_trips(seq: int) -> None:
    assert len(seq_key(seq)) == 8
    assert key_seq(seq_key(seq)) == seq


def test_seq_key_byte_order_is_seq_order() -> None:
    seqs = [1, 2, 255, 256, 65_536, 2**40, 2**63]

    assert sorted(reversed(seqs), key=seq_key) == seqs


def test_key_seq_rejects_keys_of_the_wrong_length() -> None:
    with pytest.raises(ValueError):
        key_seq(b"\x00" * 7)
