"""Pure parts of `corral schedule ...` (coordinator/cli_schedules.py): --every parsing, the
ScheduleSpec built from arguments, and the human renderings (to a string, no terminal)."""
from __future__ import annotations

import io

import pytest
from google.protobuf import json_format
from rich.console import Console

from coordinator import cli_schedules as cs
from coordinator.cli import build_parser
from coordinator.cli_output import UsageError
from coordinator.client_commands import _labels, _read_input
from corral.v1 import schedule_pb2

pytestmark = pytest.mark.timeout(10)


def render(renderable, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


@pytest.mark.parametrize("text, ms", [("90", 90_000), ("1.5", 1_500), ("30s", 30_000), ("5m", 300_000),
                                      ("1h30m", 5_400_000), ("2d", 172_800_000), ("250ms", 250)])
def test_every_accepts_seconds_and_unit_suffixes(text, ms):
    assert cs.parse_every(text) == ms


@pytest.mark.parametrize("text", ["soon", "", "5 m", "1h-30m", "m5", "1w", "1M"])
def test_every_refuses_what_is_not_a_duration_naming_the_flag(text):
    with pytest.raises(UsageError, match=r"--every .* is not a duration"):
        cs.parse_every(text)


def spec_of(*argv: str) -> schedule_pb2.ScheduleSpec:
    args = build_parser().parse_args(["schedule", "create", *argv])
    return cs.build_spec(args, _read_input, _labels)


def test_create_builds_a_cron_schedule_with_its_task_template():
    spec = spec_of("nightly", "report", '{"kind": "daily"}', "--cron", "30 2 * * *", "--time-zone",
                   "Europe/Berlin", "--misfire", "run-all", "--priority", "3", "--max-attempts", "5",
                   "--label", "team=data")
    assert json_format.MessageToDict(spec) == {
        "scheduleId": "nightly", "cron": {"expression": "30 2 * * *", "timeZone": "Europe/Berlin"},
        "misfirePolicy": "MISFIRE_POLICY_RUN_ALL",
        "task": {"type": "report", "input": {"kind": "daily"}, "priority": 3, "retry": {"maxAttempts": 5},
                 "labels": {"team": "data"}}}


def test_create_builds_an_interval_schedule_and_defaults_to_run_once():
    spec = spec_of("tick", "echo", "--every", "1m30s")
    assert spec.interval.ToMilliseconds() == 90_000 and spec.WhichOneof("timing") == "interval"
    assert spec.misfire_policy == schedule_pb2.MISFIRE_POLICY_RUN_ONCE
    assert not spec.task.HasField("input")


def test_a_time_zone_without_cron_is_a_usage_error():
    with pytest.raises(UsageError, match="--time-zone goes with --cron"):
        spec_of("tick", "echo", "--every", "1s", "--time-zone", "UTC")


def make_schedule(schedule_id="tick", state=schedule_pb2.SCHEDULE_STATE_ACTIVE, **fields) -> schedule_pb2.Schedule:
    schedule = schedule_pb2.Schedule(spec=schedule_pb2.ScheduleSpec(schedule_id=schedule_id), state=state, **fields)
    schedule.spec.task.type = "echo"
    return schedule


def test_table_shows_timing_state_counts_and_last_task():
    cron = make_schedule("nightly", tasks_created=4, occurrences_skipped=1, last_task_id="nightly:2026-01-01T00:00:00.000Z")
    cron.spec.cron.expression = "0 0 * * *"
    every = make_schedule("tick", schedule_pb2.SCHEDULE_STATE_PAUSED, pause_reason="quiet")
    every.spec.interval.FromSeconds(300)
    text = render(cs.schedule_table([cron, every]))
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "TIMING", "TASK", "TYPE", "STATE", "NEXT", "LAST", "TASK", "TASKS", "SKIPPED"]
    nightly = next(line for line in lines if line.startswith("nightly"))
    assert "cron '0 0 * * *' UTC" in nightly and "ACTIVE" in nightly and nightly.split()[-2:] == ["4", "1"]
    tick = next(line for line in lines if line.startswith("tick"))
    assert "every 5m00s" in tick and "PAUSED" in tick


def test_summary_and_next_line_say_why_nothing_runs():
    paused = make_schedule(state=schedule_pb2.SCHEDULE_STATE_PAUSED, pause_reason="quiet hours",
                           last_skip_reason="over --max-queued-tasks", occurrences_skipped=2)
    paused.spec.interval.FromSeconds(1)
    text = render(cs.schedule_summary(paused))
    assert "PAUSED (quiet hours)" in text and "2 (last: over --max-queued-tasks)" in text
    assert "run-once" in text  # unspecified misfire: the coordinator's default
    assert cs.next_line(paused) == "paused: quiet hours"
    done = make_schedule(state=schedule_pb2.SCHEDULE_STATE_COMPLETED)
    assert cs.next_line(done) == "completed (past its end time)"
    active = make_schedule()
    assert cs.next_line(active) == "no next occurrence"
    active.next_occurrence.FromMilliseconds(1_700_000_000_000)
    assert cs.next_line(active).startswith("next occurrence 2023-11-1")
