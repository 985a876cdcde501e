"""What the `corral` client commands print: exit codes, error lines, JSON and human views.

Owns: the exit-code table (`EXIT_*`, `exit_code_for`), the one-line error format
(`corral: error: CODE: message`), the JSON form of every answer (the protobuf JSON mapping, as
grpcurl prints it), and the human renderings (rich renderables: task summaries, task tables,
cluster status, the watch view). Pure: no gRPC call, no clock (callers pass `now_ms`), no printing
except through the `Console` a caller passes in.

Invariants: with `--json` stdout carries JSON only; errors always go to stderr, one line each;
the same gRPC status code always maps to the same exit code.
"""
from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from corral.v1 import admin_service_pb2, task_pb2, task_service_pb2

# ---- exit codes --------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_TASK_FAILED = 1       # a task waited for or watched ended FAILED or CANCELED
EXIT_USAGE = 2             # bad flags, bad input (not JSON, unreadable file), bad TLS options
EXIT_REFUSED = 3           # the coordinator refused the request (see REFUSED)
EXIT_UNAVAILABLE = 4       # unreachable, UNAVAILABLE (also draining), DEADLINE_EXCEEDED, internal errors
EXIT_AUTH = 5              # UNAUTHENTICATED, PERMISSION_DENIED
EXIT_WAIT_TIMED_OUT = 6    # `drain --wait` gave up after --wait-s with attempts still running
EXIT_INTERRUPTED = 130     # Ctrl-C

C = grpc.StatusCode
REFUSED = frozenset({C.INVALID_ARGUMENT, C.NOT_FOUND, C.ALREADY_EXISTS, C.FAILED_PRECONDITION,
                     C.RESOURCE_EXHAUSTED, C.OUT_OF_RANGE, C.ABORTED})
AUTH = frozenset({C.UNAUTHENTICATED, C.PERMISSION_DENIED})

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    the task (submit --wait) or a watched task (watch) ended FAILED or CANCELED
  2    usage error: bad flags or arguments, input that is not JSON, a file that cannot be read
  3    refused by the coordinator: INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
       FAILED_PRECONDITION, RESOURCE_EXHAUSTED (also OUT_OF_RANGE, ABORTED)
  4    coordinator unreachable or unable to answer: UNAVAILABLE (also while it drains),
       DEADLINE_EXCEEDED, INTERNAL and any other status
  5    UNAUTHENTICATED or PERMISSION_DENIED (token, role, certificate)
  6    drain --wait: attempts still running after --wait-s
  130  interrupted (Ctrl-C)
errors are one line on stderr: `corral: error: CODE: message`; --json puts only JSON on stdout."""


def exit_code_for(code: grpc.StatusCode | None) -> int:
    """The exit code of a call that ended with gRPC status `code` (None: not a gRPC error)."""
    if code is None or code == C.OK:
        return EXIT_OK
    if code in REFUSED:
        return EXIT_REFUSED
    if code in AUTH:
        return EXIT_AUTH
    return EXIT_UNAVAILABLE


def error_line(code: str, message: str) -> str:
    """`corral: error: CODE: message`, on one line whatever `message` holds."""
    flat = " ".join(str(message).split())
    return f"corral: error: {code}: {flat}"


class UsageError(Exception):
    """A user mistake found before calling the coordinator (exit 2, one line, code USAGE)."""


# ---- JSON ----------------------------------------------------------------------------------------

def plain_numbers(value: Any) -> Any:
    """JSON numbers arrive as doubles (google.protobuf.Value): show 1.0 as 1 (exact up to 2**53)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2 ** 53:
        return int(value)
    if isinstance(value, list):
        return [plain_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_numbers(v) for k, v in value.items()}
    return value


def to_json(message: Message, *, all_fields: bool = False, indent: int | None = 2) -> str:
    """The protobuf JSON mapping (camelCase names, enum names), as grpcurl prints it."""
    return json_format.MessageToJson(message, indent=indent, always_print_fields_with_no_presence=all_fields)


def value_json(task: task_pb2.Task, *, indent: int | None = 2) -> str | None:
    """A succeeded task's JSON output as text; None for a bytes output or none at all."""
    if task.WhichOneof("result") != "output":
        return None
    value = plain_numbers(json_format.MessageToDict(task.output))
    return json.dumps(value, indent=indent, ensure_ascii=False, separators=None if indent else (",", ":"))


# ---- small formatting --------------------------------------------------------------------------

TERMINAL = frozenset({task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELED})
QUEUED = (task_pb2.TASK_STATE_SCHEDULED, task_pb2.TASK_STATE_READY, task_pb2.TASK_STATE_RETRY_WAIT,
          task_pb2.TASK_STATE_WAITING_FOR_DEPENDENCIES)

STATE_STYLE = {
    task_pb2.TASK_STATE_SUCCEEDED: "green",
    task_pb2.TASK_STATE_FAILED: "bold red",
    task_pb2.TASK_STATE_CANCELED: "yellow",
    task_pb2.TASK_STATE_RUNNING: "cyan",
    task_pb2.TASK_STATE_RETRY_WAIT: "magenta",
}


def state_name(state: int) -> str:
    """TASK_STATE_RUNNING -> RUNNING (an unknown number stays a number)."""
    try:
        return task_pb2.TaskState.Name(state).removeprefix("TASK_STATE_")
    except ValueError:
        return str(state)


def parse_state(name: str) -> int:
    """'running', 'RUNNING' or 'TASK_STATE_RUNNING' -> the enum value; UsageError otherwise."""
    full = name.strip().upper()
    if not full.startswith("TASK_STATE_"):
        full = "TASK_STATE_" + full
    if full == "TASK_STATE_UNSPECIFIED" or full not in task_pb2.TaskState.keys():
        choices = ", ".join(state_name(v) for v in task_pb2.TaskState.values() if v).lower()
        raise UsageError(f"--state {name!r} is not a task state (one of {choices})")
    return task_pb2.TaskState.Value(full)


def outcome_name(outcome: int) -> str:
    if not outcome:
        return "in progress"
    try:
        return task_pb2.AttemptOutcome.Name(outcome).removeprefix("ATTEMPT_OUTCOME_")
    except ValueError:
        return str(outcome)


def styled_state(state: int) -> Text:
    return Text(state_name(state), style=STATE_STYLE.get(state, ""))


def ts_ms(ts) -> int:
    """A google.protobuf.Timestamp in ms; 0 when unset."""
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def fmt_time(ms: int, tz: timezone | None = None) -> str:
    """'2025-03-04 05:06:07' (local time unless `tz`); '-' for 0."""
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=tz).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(ms: int | float) -> str:
    """350ms, 12.3s, 4m05s, 2h03m, 3d04h."""
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms}ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f}s"
    s = int(s)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_error(error: task_pb2.TaskError) -> str:
    text = f"{error.kind}: {error.message}" if error.kind else error.message
    return text + (" (not retryable)" if error.non_retryable else "")


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def plain_table(title: str = "") -> Table:
    """A plain table: a header line and a rule, no borders (reads well piped into grep/awk too)."""
    return Table(box=box.SIMPLE, show_edge=False, pad_edge=False, title=title or None, title_justify="left",
                 title_style="bold", min_width=len(title) or None)  # a narrow table never wraps its title


def make_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr). Not a terminal: no colours, no cursor movement, and wide
    enough that a table row stays one line (COLUMNS, else 200)."""
    file = sys.stderr if stderr else sys.stdout
    is_tty = file.isatty()
    width = None if is_tty else int(os.environ.get("COLUMNS", "") or 200)
    return Console(file=file, width=width, highlight=False, soft_wrap=False)


# ---- one task ------------------------------------------------------------------------------------

def task_timings(task: task_pb2.Task, now_ms: int) -> dict[str, int]:
    """queued (created → first attempt, or now), running (first start → end, or now), total."""
    created = ts_ms(task.created_at)
    end = ts_ms(task.updated_at) if task.state in TERMINAL else now_ms
    out: dict[str, int] = {}
    if task.attempts:
        first = ts_ms(task.attempts[0].started_at)
        out["queued"] = first - created
        out["running"] = end - first
    else:
        out["queued"] = end - created
    out["total"] = end - created
    return out


def attempt_word(n: int) -> str:
    return f"{n} attempt" + ("" if n == 1 else "s")


def task_summary(task: task_pb2.Task, now_ms: int) -> RenderableType:
    """`corral get`: the task as key/value lines, then its attempts as a table."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    spec = task.spec
    grid.add_row("Task", task.task_id)
    grid.add_row("Type", spec.type)
    state = styled_state(task.state)
    if task.cancel_requested and task.state not in TERMINAL:
        state.append(" (cancel requested)", style="yellow")
    grid.add_row("State", state)
    if task.state_reason:
        grid.add_row("Reason", task.state_reason)
    if task.parent_task_id:
        grid.add_row("Parent", task.parent_task_id)
    if task.children:
        grid.add_row("Children", f"{task.children} ({task.unfinished_children} unfinished)")
    if task.depends_on:
        grid.add_row("Depends on", f"{', '.join(task.depends_on)} ({task.unfinished_prerequisites} unfinished)")
    if spec.priority:
        grid.add_row("Priority", str(spec.priority))
    if spec.labels:
        grid.add_row("Labels", ", ".join(f"{k}={v}" for k, v in sorted(spec.labels.items())))
    if spec.idempotency_key:
        grid.add_row("Idempotency key", spec.idempotency_key)
    if spec.concurrency_key:
        grid.add_row("Concurrency key", f"{spec.concurrency_key} (limit {spec.concurrency_limit or 1})")
    max_attempts = spec.retry.max_attempts if spec.HasField("retry") else 0
    tried = f"{len(task.attempts)}" + (f" of at most {max_attempts}" if max_attempts else "")
    grid.add_row("Attempts", f"{tried} (failed {task.failed_attempts}, lost {task.lost_attempts})")
    grid.add_row("Created", fmt_time(ts_ms(task.created_at)))
    if task.HasField("ready_at") and task.state not in TERMINAL:
        grid.add_row("Ready at", fmt_time(ts_ms(task.ready_at)))
    grid.add_row("Updated", fmt_time(ts_ms(task.updated_at)))
    timings = task_timings(task, now_ms)
    grid.add_row("Timings", ", ".join(f"{k} {fmt_duration(v)}" for k, v in timings.items()))
    which = task.WhichOneof("result")
    long_output = None
    if which == "output":
        compact = value_json(task, indent=None) or ""
        if len(compact) <= 120:
            grid.add_row("Output", compact)
        else:  # shown in full, indented, after the summary
            grid.add_row("Output", "(below)")
            long_output = Text(value_json(task) or "")
    elif which == "output_bytes":
        grid.add_row("Output", f"<{len(task.output_bytes)} bytes>")
    if task.HasField("error"):
        grid.add_row("Error", Text(fmt_error(task.error), style="red"))
    parts: list[RenderableType] = [grid]
    if long_output is not None:
        parts += [Text(""), Text("Output", style="bold"), long_output]
    if not task.attempts:
        return Group(*parts)
    attempts = plain_table("Attempts")
    for name in ("#", "ACTOR", "STARTED", "DURATION", "OUTCOME", "ERROR"):
        attempts.add_column(name, no_wrap=name != "ERROR")
    for a in task.attempts:
        started, ended = ts_ms(a.started_at), ts_ms(a.ended_at)
        attempts.add_row(str(a.number), a.actor_id, fmt_time(started),
                         fmt_duration((ended or now_ms) - started), outcome_name(a.outcome),
                         fmt_error(a.error) if a.HasField("error") else "")
    return Group(*parts, Text(""), attempts)


def submitted_line(resp: task_service_pb2.SubmitTaskResponse) -> str | None:
    """The stderr note of a submission that returned an existing task; None for a new one."""
    if resp.created:
        return None
    return f"corral: task {resp.task_id} already existed (same id or idempotency key); state {state_name(resp.state)}"


def outcome_line(task: task_pb2.Task) -> str:
    """One line on how a task ended, for a task that did not succeed."""
    n = len(task.attempts)
    line = f"corral: task {task.task_id} {state_name(task.state)}"
    if n:
        line += f" after {attempt_word(n)}"
    if task.HasField("error"):
        line += f": {fmt_error(task.error)}"
    elif task.state_reason:
        line += f": {task.state_reason}"
    return " ".join(line.split())


# ---- lists ---------------------------------------------------------------------------------------

def task_table(tasks: Sequence[task_pb2.Task], now_ms: int) -> Table:
    """`corral list`: one row per task."""
    table = plain_table()
    for name in ("ID", "TYPE", "STATE", "ATTEMPTS", "CREATED", "DURATION", "DETAIL"):
        table.add_column(name, no_wrap=name != "DETAIL", overflow="fold")
    for task in tasks:
        detail = ""
        if task.HasField("error"):
            detail = fmt_error(task.error)
        elif task.state_reason:
            detail = task.state_reason
        elif task.state == task_pb2.TASK_STATE_RUNNING and task.attempts:
            detail = f"on {task.attempts[-1].actor_id}"
        table.add_row(task.task_id, task.spec.type, styled_state(task.state), str(len(task.attempts)),
                      fmt_time(ts_ms(task.created_at)), fmt_duration(task_timings(task, now_ms)["total"]),
                      shorten(detail, 60))
    return table


# ---- cluster status ------------------------------------------------------------------------------

def dispatch_line(status: admin_service_pb2.GetClusterStatusResponse) -> Text:
    if status.draining:
        text = Text("DRAINING", style="bold yellow")
        if status.drain_reason:
            text.append(f" ({status.drain_reason})")
        text.append(": no submission accepted, no lease granted")
        return text
    if status.paused:
        text = Text("PAUSED", style="bold yellow")
        if status.pause_reason:
            text.append(f" ({status.pause_reason})")
        text.append(": no lease granted")
        return text
    return Text("running", style="green")


def status_view(status: admin_service_pb2.GetClusterStatusResponse, now_ms: int) -> RenderableType:
    """`corral status`: dispatch state, actors (slots used/total), schedules, tasks by state, queue per type."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("Coordinator", status.coordinator_id)
    head.add_row("Dispatch", dispatch_line(status))
    used = sum(a.leases_held for a in status.actors)
    total = sum(a.identity.slots for a in status.actors)
    head.add_row("Actors", f"{len(status.actors)} connected, slots {used}/{total} used")
    head.add_row("WAL", f"last seq {status.wal.last_seq}, {status.wal.commits} commits; "
                        f"highest fencing token {status.highest_fencing_token}")
    head.add_row("Event streams", str(status.event_subscribers))
    head.add_row("Schedules", schedules_line(status.schedules))
    parts: list[RenderableType] = [head]

    actors = plain_table("Actors")
    for name in ("ACTOR", "HOST", "SLOTS USED", "TYPES", "STATE", "CONNECTED"):
        actors.add_column(name, no_wrap=name != "TYPES", overflow="fold")
    for a in sorted(status.actors, key=lambda a: a.identity.actor_id):
        state = "draining" if a.draining else "suspect" if a.suspect else "ok"
        connected = ts_ms(a.connected_at)
        actors.add_row(a.identity.actor_id, a.identity.host, f"{a.leases_held}/{a.identity.slots}",
                       shorten(", ".join(a.identity.task_types), 60),
                       Text(state, style="" if state == "ok" else "yellow"),
                       f"{fmt_duration(now_ms - connected)} ago" if connected else "-")
    parts += [Text(""), actors if status.actors else Text("No actor connected.", style="yellow")]

    states = plain_table("Tasks by state")
    states.add_column("STATE")
    states.add_column("COUNT", justify="right")
    counts = sorted(status.tasks_by_state, key=lambda c: c.state)
    for c in counts:
        if c.count:
            states.add_row(styled_state(c.state), str(c.count))
    states.add_row(Text("total", style="bold"), str(sum(c.count for c in counts)))
    parts += [Text(""), states]

    parts += [Text(""), queue_table(status.queue_depths)]
    return Group(*parts)


def schedules_line(counts: admin_service_pb2.ScheduleCounts) -> str:
    """'3 active, 1 paused; next occurrence 2026-...' (GetClusterStatus.schedules)."""
    parts = [f"{counts.active} active"]
    if counts.paused:
        parts.append(f"{counts.paused} paused")
    if counts.completed:
        parts.append(f"{counts.completed} completed")
    line = ", ".join(parts)
    if counts.HasField("next_occurrence"):
        line += f"; next occurrence {fmt_time(ts_ms(counts.next_occurrence))}"
    return line


def queue_table(depths) -> RenderableType:
    """READY tasks waiting for a slot, per type (GetClusterStatus.queue_depths, exact)."""
    if not depths:
        return Text("No task waiting for a slot.")
    table = plain_table("Ready queue by type (waiting for an actor slot)")
    table.add_column("TYPE")
    table.add_column("READY", justify="right")
    for depth in depths:
        table.add_row(depth.task_type, str(depth.ready))
    return table


# ---- operations ----------------------------------------------------------------------------------

def pause_line(resp: admin_service_pb2.PauseResponse) -> str:
    head = "Dispatch paused" if resp.changed else "Dispatch was already paused"
    return f"{head}: no new leases; {resp.running_attempts} running attempts continue."


def resume_line(resp: admin_service_pb2.ResumeResponse) -> str:
    if resp.draining:
        return "Still draining: the coordinator is shutting down, which resume does not undo."
    return "Dispatch resumed." if resp.changed else "Dispatch was neither paused nor draining; nothing changed."


def drain_line(resp: admin_service_pb2.DrainResponse) -> str:
    head = "Draining" if resp.changed else "Already draining"
    return f"{head}: submissions refused, no new leases; {resp.running_attempts} attempts still running."


def event_line(event: task_service_pb2.TaskEvent) -> str:
    """`corral events` / `corral watch` when stdout is not a terminal: one plain line per event."""
    when = datetime.fromtimestamp(ts_ms(event.time) / 1000).strftime("%H:%M:%S.%f")[:-3] if event.seq else "now"
    kind = (task_service_pb2.TaskEventKind.Name(event.kind).removeprefix("TASK_EVENT_KIND_").lower()
            if event.kind else "current")
    parts = [when, event.task_id, event.type, state_name(event.state), kind.replace("_", " ")]
    if event.attempt:
        parts.append(f"attempt {event.attempt}" + (f" on {event.actor_id}" if event.actor_id else ""))
    if event.outcome:
        parts.append(outcome_name(event.outcome))
    if event.reason:
        parts.append(f"({shorten(event.reason, 120)})")
    return "  ".join(parts)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def outcome_counts_line(states: Iterable[int]) -> str:
    """'3 tasks: 2 succeeded, 1 failed'."""
    states = list(states)
    counts: dict[str, int] = {}
    for s in states:
        counts[state_name(s).lower()] = counts.get(state_name(s).lower(), 0) + 1
    detail = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"{plural(len(states), 'task')}: {detail}" if states else "0 tasks"




# ---- watch ---------------------------------------------------------------------------------------

def watch_table(tasks: Sequence[Any], max_rows: int = 20) -> RenderableType:
    """The live view's table of watched tasks (`cli_watch.Watched`): unfinished ones first
    (running, then waiting), then the finished ones, at most `max_rows` rows."""
    order = {task_pb2.TASK_STATE_RUNNING: 0, task_pb2.TASK_STATE_FAILED: 3, task_pb2.TASK_STATE_CANCELED: 3,
             task_pb2.TASK_STATE_SUCCEEDED: 4}
    ranked = sorted(enumerate(tasks), key=lambda it: (order.get(it[1].state, 1), it[0]))
    table = plain_table()
    for name in ("ID", "TYPE", "STATE", "ATTEMPT", "ACTOR", "DETAIL"):
        table.add_column(name, no_wrap=name != "DETAIL", overflow="fold")
    for _, t in ranked[:max_rows]:
        table.add_row(t.task_id, t.type, styled_state(t.state), str(t.attempt or ""), t.actor_id,
                      shorten(t.reason, 60))
    if len(ranked) > max_rows:
        return Group(table, Text(f"… and {len(ranked) - max_rows} more", style="dim"))
    return table
