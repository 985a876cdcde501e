"""`corral schedule create|get|list|pause|resume|delete`: schedules from the command line.

Owns: turning schedule arguments into the TaskService schedule RPCs (CreateSchedule, GetSchedule,
ListSchedules, PauseSchedule, ResumeSchedule, DeleteSchedule) and the human renderings of
schedules (a table, a summary). Everything else is shared with the other client commands: the
connection, `--json` (the protobuf JSON mapping), one-line errors and exit codes
(`client_commands.run_client_command`, `cli_output`).

Invariants: nothing is sent before the arguments have been parsed (a bad `--every` or input is a
usage error, exit 2); the coordinator validates the schedule itself (INVALID_ARGUMENT naming the
field: exit 3), so this file repeats none of its rules.
"""
from __future__ import annotations

import argparse
import re
from typing import Sequence

from google.protobuf import json_format
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from corral.v1 import schedule_pb2, task_service_pb2_grpc

from . import cli_output as out
from .cli_output import UsageError

MISFIRE = {
    "run-all": schedule_pb2.MISFIRE_POLICY_RUN_ALL,
    "run-once": schedule_pb2.MISFIRE_POLICY_RUN_ONCE,
    "skip": schedule_pb2.MISFIRE_POLICY_SKIP,
}
STATE_STYLE = {
    schedule_pb2.SCHEDULE_STATE_ACTIVE: "green",
    schedule_pb2.SCHEDULE_STATE_PAUSED: "yellow",
    schedule_pb2.SCHEDULE_STATE_COMPLETED: "dim",
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_every(text: str) -> int:
    """`--every`: '90', '90s', '5m', '1h30m', '2d', '1.5s' -> milliseconds (a bare number is seconds)."""
    value = text.strip()
    try:
        return round(float(value) * 1000)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise UsageError(f"--every {text!r} is not a duration (e.g. 30s, 5m, 1h30m, 2d, or seconds)")
    return round(sum(float(n) * _UNIT_MS[u] for n, u in parts))


def add_schedule_commands(sub: argparse._SubParsersAction, common, read_input, labels) -> None:
    """`corral schedule ...`; `common` adds the shared connection/output flags to a parser,
    `read_input(args)` reads the JSON input (argument, --input-file or stdin), `labels(pairs)`
    parses KEY=VALUE labels."""
    group = sub.add_parser("schedule", help="cron and interval schedules: create, get, list, pause, resume, delete")
    verbs = group.add_subparsers(dest="schedule_command", required=True, metavar="COMMAND")

    p = common(verbs.add_parser("create", help="create a schedule (the same id and spec again: no change)"))
    p.add_argument("schedule_id")
    p.add_argument("type", help="task type of every occurrence's task")
    p.add_argument("input", nargs="?", default=None, help="JSON input of every task; '-' reads it from stdin")
    p.add_argument("--input-file", help="read the JSON input from this file ('-': stdin)")
    timing = p.add_mutually_exclusive_group(required=True)
    timing.add_argument("--cron", help="5-field cron expression, e.g. '30 2 * * *'")
    timing.add_argument("--every", help="fixed interval, e.g. 30s, 5m, 1h30m (at least 1s)")
    p.add_argument("--time-zone", default="", help="IANA time zone of --cron (default UTC)")
    p.add_argument("--misfire", choices=sorted(MISFIRE), default="run-once",
                   help="occurrences missed while the coordinator was down (default run-once)")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--max-attempts", type=int, default=0)
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(run=lambda args, channel, printer: cmd_create(args, channel, printer, read_input, labels))

    p = common(verbs.add_parser("get", help="show a schedule: timing, state, next and last occurrence"))
    p.add_argument("schedule_id")
    p.set_defaults(run=cmd_get)

    p = common(verbs.add_parser("list", help="list schedules as a table (pages are fetched for you)"))
    p.set_defaults(run=cmd_list)

    p = common(verbs.add_parser("pause", help="create no task for this schedule until resumed"))
    p.add_argument("schedule_id")
    p.add_argument("--reason", default="")
    p.set_defaults(run=cmd_pause)

    p = common(verbs.add_parser("resume", help="resume a paused schedule (missed occurrences per its misfire policy)"))
    p.add_argument("schedule_id")
    p.set_defaults(run=cmd_resume)

    p = common(verbs.add_parser("delete", help="delete a schedule (the tasks it created stay)"))
    p.add_argument("schedule_id")
    p.set_defaults(run=cmd_delete)


def _stub(channel) -> task_service_pb2_grpc.TaskServiceStub:
    return task_service_pb2_grpc.TaskServiceStub(channel)


def build_spec(args: argparse.Namespace, read_input, labels) -> schedule_pb2.ScheduleSpec:
    """The ScheduleSpec of `corral schedule create` (raises UsageError before any call)."""
    spec = schedule_pb2.ScheduleSpec(schedule_id=args.schedule_id, misfire_policy=MISFIRE[args.misfire])
    if args.cron is not None:
        spec.cron.expression = args.cron
        spec.cron.time_zone = args.time_zone
    else:
        if args.time_zone:
            raise UsageError("--time-zone goes with --cron, not --every")
        spec.interval.FromMilliseconds(parse_every(args.every))
    task = spec.task
    task.type = args.type
    task.priority = args.priority
    value = read_input(args)
    if value is not None:
        json_format.ParseDict(value, task.input)
    if args.max_attempts:
        task.retry.max_attempts = args.max_attempts
    task.labels.update(labels(args.label))
    return spec


def cmd_create(args, channel, printer, read_input, labels) -> int:
    spec = build_spec(args, read_input, labels)
    resp = _stub(channel).CreateSchedule(schedule_pb2.CreateScheduleRequest(schedule=spec),
                                         timeout=args.timeout_s)
    if printer.as_json:
        printer.json(resp)
        return out.EXIT_OK
    verb = "Created" if resp.created else "Already exists (same spec):"
    printer.line(f"{verb} schedule {resp.schedule.spec.schedule_id}; {next_line(resp.schedule)}")
    return out.EXIT_OK


def cmd_get(args, channel, printer) -> int:
    schedule = _stub(channel).GetSchedule(schedule_pb2.GetScheduleRequest(schedule_id=args.schedule_id),
                                          timeout=args.timeout_s).schedule
    if printer.as_json:
        printer.json(schedule)
    else:
        printer.show(schedule_summary(schedule))
    return out.EXIT_OK


def cmd_list(args, channel, printer) -> int:
    stub = _stub(channel)
    listing = schedule_pb2.ListSchedulesResponse()
    token = ""
    while True:
        resp = stub.ListSchedules(schedule_pb2.ListSchedulesRequest(page_size=1000, page_token=token),
                                  timeout=args.timeout_s)
        listing.schedules.extend(resp.schedules)
        token = resp.next_page_token
        if not token:
            break
    if printer.as_json:
        printer.json(listing)
    elif listing.schedules:
        printer.show(schedule_table(listing.schedules))
    else:
        printer.note("No schedule.")
    return out.EXIT_OK


def cmd_pause(args, channel, printer) -> int:
    schedule = _stub(channel).PauseSchedule(
        schedule_pb2.PauseScheduleRequest(schedule_id=args.schedule_id, reason=args.reason),
        timeout=args.timeout_s).schedule
    if printer.as_json:
        printer.json(schedule)
    else:
        printer.line(f"Paused schedule {schedule.spec.schedule_id}: no task is created until "
                     f"`corral schedule resume {schedule.spec.schedule_id}`.")
    return out.EXIT_OK


def cmd_resume(args, channel, printer) -> int:
    schedule = _stub(channel).ResumeSchedule(
        schedule_pb2.ResumeScheduleRequest(schedule_id=args.schedule_id), timeout=args.timeout_s).schedule
    if printer.as_json:
        printer.json(schedule)
    else:
        printer.line(f"Resumed schedule {schedule.spec.schedule_id}; {next_line(schedule)}")
    return out.EXIT_OK


def cmd_delete(args, channel, printer) -> int:
    resp = _stub(channel).DeleteSchedule(schedule_pb2.DeleteScheduleRequest(schedule_id=args.schedule_id),
                                         timeout=args.timeout_s)
    if printer.as_json:
        printer.json(resp, all_fields=True)
    else:
        printer.line(f"Deleted schedule {args.schedule_id}; the tasks it created stay "
                     f"(corral list shows them).")
    return out.EXIT_OK


# ---- renderings (pure) ----------------------------------------------------------------------------

def state_name(state: int) -> str:
    return schedule_pb2.ScheduleState.Name(state).removeprefix("SCHEDULE_STATE_") \
        if state in schedule_pb2.ScheduleState.values() else str(state)


def timing_text(spec: schedule_pb2.ScheduleSpec) -> str:
    if spec.WhichOneof("timing") == "cron":
        return f"cron '{spec.cron.expression}' {spec.cron.time_zone or 'UTC'}"
    return f"every {out.fmt_duration(spec.interval.ToMilliseconds())}"


def misfire_name(policy: int) -> str:
    for name, value in MISFIRE.items():
        if value == policy:
            return name
    return "run-once"  # unspecified: the coordinator's default


def next_line(schedule: schedule_pb2.Schedule) -> str:
    if schedule.state == schedule_pb2.SCHEDULE_STATE_PAUSED:
        return "paused" + (f": {schedule.pause_reason}" if schedule.pause_reason else "")
    if schedule.state == schedule_pb2.SCHEDULE_STATE_COMPLETED:
        return "completed (past its end time)"
    when = out.ts_ms(schedule.next_occurrence)
    return f"next occurrence {out.fmt_time(when)}" if when else "no next occurrence"


def schedule_table(schedules: Sequence[schedule_pb2.Schedule]) -> Table:
    """`corral schedule list`: one row per schedule."""
    table = out.plain_table()
    for name in ("ID", "TIMING", "TASK TYPE", "STATE", "NEXT", "LAST TASK", "TASKS", "SKIPPED"):
        table.add_column(name, no_wrap=name not in ("TIMING", "LAST TASK"), overflow="fold")
    for s in schedules:
        table.add_row(s.spec.schedule_id, timing_text(s.spec), s.spec.task.type,
                      Text(state_name(s.state), style=STATE_STYLE.get(s.state, "")),
                      out.fmt_time(out.ts_ms(s.next_occurrence)), s.last_task_id or "-",
                      str(s.tasks_created), str(s.occurrences_skipped))
    return table


def schedule_summary(schedule: schedule_pb2.Schedule) -> RenderableType:
    """`corral schedule get`: the schedule as key/value lines."""
    spec = schedule.spec
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("Schedule", spec.schedule_id)
    grid.add_row("Timing", timing_text(spec))
    grid.add_row("Task type", spec.task.type)
    state = Text(state_name(schedule.state), style=STATE_STYLE.get(schedule.state, ""))
    if schedule.pause_reason and schedule.state == schedule_pb2.SCHEDULE_STATE_PAUSED:
        state.append(f" ({schedule.pause_reason})")
    grid.add_row("State", state)
    grid.add_row("Misfire", misfire_name(spec.misfire_policy))
    if spec.HasField("start_time"):
        grid.add_row("Starts", out.fmt_time(out.ts_ms(spec.start_time)))
    if spec.HasField("end_time"):
        grid.add_row("Ends", out.fmt_time(out.ts_ms(spec.end_time)))
    grid.add_row("Next occurrence", out.fmt_time(out.ts_ms(schedule.next_occurrence)))
    grid.add_row("Last occurrence", out.fmt_time(out.ts_ms(schedule.last_occurrence)))
    grid.add_row("Last task", schedule.last_task_id or "-")
    grid.add_row("Tasks created", str(schedule.tasks_created))
    skipped = str(schedule.occurrences_skipped)
    if schedule.last_skip_reason:
        skipped += f" (last: {schedule.last_skip_reason})"
    grid.add_row("Skipped", skipped)
    grid.add_row("Created", out.fmt_time(out.ts_ms(schedule.created_at)))
    return grid
