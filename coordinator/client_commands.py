"""`corral submit|get|cancel|list|watch|status|pause|resume|drain|events|schedule`: the command-line client.

Owns: turning command-line arguments into TaskService/AdminService calls and printing the
answers — for people by default (tables, summaries, a live view; plain when stdout is not a
terminal), as JSON with `--json` (the protobuf JSON mapping, as grpcurl prints it, and nothing
else on stdout). What is printed and the exit codes live in `cli_output.py`; `watch` in
`cli_watch.py`; `schedule ...` in `cli_schedules.py`.

Invariants: a user mistake or a refused call prints one line on stderr,
`corral: error: CODE: message`, and exits with the code of `cli_output.exit_code_for` — never a
traceback; nothing is sent to the coordinator before the input has been read and parsed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable

import grpc
from google.protobuf import json_format
from rich.live import Live
from rich.console import Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from corral.v1 import admin_service_pb2, admin_service_pb2_grpc, task_pb2, task_service_pb2, task_service_pb2_grpc

from . import cli_output as out
from .cli_output import UsageError
from .cli_schedules import add_schedule_commands
from .cli_watch import StreamEnded, WatchSet, follow

DEFAULT_TARGET = "127.0.0.1:7070"
TERMINAL = out.TERMINAL


class Printer:
    """Where a command's answer goes: JSON, or rich renderings on stdout; notes on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.stdout = out.make_console()
        self.stderr = out.make_console(stderr=True)

    def json(self, message, *, all_fields: bool = False, indent: int | None = 2) -> None:
        sys.stdout.write(out.to_json(message, all_fields=all_fields, indent=indent) + "\n")
        sys.stdout.flush()

    def show(self, renderable) -> None:
        if self.stdout.is_terminal:
            self.stdout.print(renderable)
            return
        with self.stdout.capture() as captured:  # piped: no ANSI codes, no trailing padding
            self.stdout.print(renderable)
        sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
        sys.stdout.flush()

    def line(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def note(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def waiting(self, text: str):
        """A spinner on stderr while waiting, only when stderr is a terminal (and not --json)."""
        if self.as_json or not self.stderr.is_terminal:
            return nullcontext(None)
        return self.stderr.status(text)


def now_ms() -> int:
    return int(time.time() * 1000)


def add_client_commands(sub: argparse._SubParsersAction, epilog: str = "") -> None:
    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.epilog = epilog
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        p.add_argument("--coordinator", default=os.environ.get("CORRAL_COORDINATOR", DEFAULT_TARGET),
                       help=f"HOST:PORT of the coordinator [env CORRAL_COORDINATOR, default {DEFAULT_TARGET}]")
        p.add_argument("--timeout-s", type=float, default=30.0, help="deadline of each call (default 30)")
        p.add_argument("--json", action="store_true",
                       help="print JSON (the protobuf JSON mapping) and nothing else on stdout")
        add_security_arguments(p)
        return p

    p = common(sub.add_parser("submit", help="submit a task; print its id (--wait: its result)"))
    p.add_argument("type", help="task type")
    p.add_argument("input", nargs="?", default=None, help="JSON input; '-' reads it from stdin")
    p.add_argument("--input-file", help="read the JSON input from this file ('-': stdin)")
    p.add_argument("--id", dest="task_id", default="", help="task id (default: assigned)")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--max-attempts", type=int, default=0)
    p.add_argument("--execution-timeout-s", type=float, default=0.0)
    p.add_argument("--idempotency-key", default="")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--wait", action="store_true",
                   help="wait until the task is terminal; print its output (exit 0) or its error (exit 1)")
    p.set_defaults(run=cmd_submit)

    p = common(sub.add_parser("get", help="show a task: state, attempts, output or error, timings"))
    p.add_argument("task_id")
    p.set_defaults(run=cmd_get)

    p = common(sub.add_parser("cancel", help="cancel a task"))
    p.add_argument("task_id")
    p.add_argument("--reason", default="")
    p.set_defaults(run=cmd_cancel)

    p = common(sub.add_parser("watch", help="live view of tasks (and their children) until all are terminal"))
    p.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    p.add_argument("--children", action="store_true", help="also watch the children of the given tasks")
    p.set_defaults(run=cmd_watch)

    p = common(sub.add_parser("list", help="list tasks as a table (pages are fetched for you)"))
    p.add_argument("--state", action="append", default=[],
                   help="e.g. running (repeatable or comma-separated: any of them)")
    p.add_argument("--type", default="", help="only this task type")
    p.add_argument("--parent", default="", help="only the children of this task")
    p.add_argument("--limit", type=int, default=100, help="at most this many tasks (0: all; default 100)")
    p.add_argument("--page-size", type=int, default=1000, help="tasks per call (at most 1000)")
    p.add_argument("--page-token", default="", help="start after a previous listing (its nextPageToken)")
    p.set_defaults(run=cmd_list)

    p = common(sub.add_parser("status", help="cluster status: dispatch, actors and slots, tasks by state, queues"))
    p.set_defaults(run=cmd_status)
    add_operation_commands(sub, common)
    add_schedule_commands(sub, common, _read_input, _labels)


def _read_input(args: argparse.Namespace) -> Any:
    """The JSON input from the argument, --input-file or stdin; None without one."""
    if args.input is not None and args.input_file:
        raise UsageError("give the input as an argument or with --input-file, not both")
    source = args.input_file or args.input
    if source is None:
        return None
    try:
        if source == "-":
            where = "stdin"
            raw = getattr(sys.stdin, "buffer", None)  # bytes: the locale's decoder would hide bad UTF-8
            text = raw.read().decode("utf-8") if raw is not None else sys.stdin.read()
        elif args.input_file:
            where = args.input_file
            try:
                with open(args.input_file, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                raise UsageError(f"cannot read --input-file {args.input_file}: {exc.strerror or exc}") from None
        else:
            text, where = source, "the input argument"
    except UnicodeDecodeError as exc:
        raise UsageError(f"input is not UTF-8 ({where}): {exc.reason} at byte {exc.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"input is not JSON ({where}): {exc}") from None


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for label in pairs:
        k, sep, v = label.partition("=")
        if not sep or not k:
            raise UsageError(f"--label {label!r} is not KEY=VALUE")
        labels[k] = v
    return labels


def _watch_until_terminal(stub, task_id: str, printer: Printer) -> task_pb2.Task:
    task = None
    with printer.waiting(f"task {task_id}: submitted") as status:
        for resp in stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task_id)):
            task = resp.task
            if status is not None:
                where = f" (attempt {len(task.attempts)} on {task.attempts[-1].actor_id})" if task.attempts else ""
                status.update(f"task {task_id}: {out.state_name(task.state)}{where}")
    if task is None or task.state not in TERMINAL:  # WatchTask ends only with a terminal task or a status
        raise StreamEnded(f"the coordinator ended the watch of task {task_id} before it finished")
    return task


def cmd_submit(args, channel, printer: Printer) -> int:
    spec = task_pb2.TaskSpec(type=args.type, task_id=args.task_id, priority=args.priority,
                             idempotency_key=args.idempotency_key)
    value = _read_input(args)
    if value is not None:
        json_format.ParseDict(value, spec.input)
    if args.max_attempts:
        spec.retry.max_attempts = args.max_attempts
    if args.execution_timeout_s:
        spec.execution_timeout.FromMilliseconds(int(args.execution_timeout_s * 1000))
    spec.labels.update(_labels(args.label))
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    resp = stub.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=args.timeout_s)
    if not args.wait:
        if printer.as_json:
            printer.json(resp)
        else:
            printer.line(resp.task_id)
            note = out.submitted_line(resp)
            if note:
                printer.note(note)
        return out.EXIT_OK
    task = _watch_until_terminal(stub, resp.task_id, printer)
    succeeded = task.state == task_pb2.TASK_STATE_SUCCEEDED
    if printer.as_json:
        printer.json(task)
    elif succeeded:
        if task.WhichOneof("result") == "output_bytes":
            sys.stdout.buffer.write(task.output_bytes)
            sys.stdout.flush()
        else:
            text = out.value_json(task)
            if text is not None:
                printer.line(text)
    else:
        printer.note(out.outcome_line(task))
    return out.EXIT_OK if succeeded else out.EXIT_TASK_FAILED


def cmd_get(args, channel, printer: Printer) -> int:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    task = stub.GetTask(task_service_pb2.GetTaskRequest(task_id=args.task_id), timeout=args.timeout_s).task
    if printer.as_json:
        printer.json(task)
    else:
        printer.show(out.task_summary(task, now_ms()))
    return out.EXIT_OK


def cmd_cancel(args, channel, printer: Printer) -> int:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    task = stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=args.task_id, reason=args.reason),
                           timeout=args.timeout_s).task
    if printer.as_json:
        printer.json(task)
    elif task.state == task_pb2.TASK_STATE_CANCELED:
        printer.line(f"Canceled task {task.task_id}.")
    else:
        printer.line(f"Cancel requested for task {task.task_id}: it stays {out.state_name(task.state)} "
                     f"until its actor stops the attempt.")
    return out.EXIT_OK


def cmd_list(args, channel, printer: Printer) -> int:
    states = [out.parse_state(s) for arg in args.state for s in arg.split(",") if s.strip()]
    if args.limit < 0:
        raise UsageError(f"--limit must be 0 (all) or more, got {args.limit}")
    if not 1 <= args.page_size <= 1000:
        raise UsageError(f"--page-size must be between 1 and 1000, got {args.page_size}")
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    listing = task_service_pb2.ListTasksResponse()
    token = args.page_token
    while True:
        remaining = args.limit - len(listing.tasks) if args.limit else args.page_size
        resp = stub.ListTasks(task_service_pb2.ListTasksRequest(
            states=states, type=args.type, parent_task_id=args.parent, page_token=token,
            page_size=min(args.page_size, remaining)), timeout=args.timeout_s)
        # A coordinator without the parent filter ignores it: keep only the parent's children.
        listing.tasks.extend(t for t in resp.tasks if not args.parent or t.parent_task_id == args.parent)
        token = resp.next_page_token
        if not token or (args.limit and len(listing.tasks) >= args.limit):
            break
    listing.next_page_token = token
    if printer.as_json:
        printer.json(listing)
        return out.EXIT_OK
    if listing.tasks:
        printer.show(out.task_table(listing.tasks, now_ms()))
    else:
        printer.note("No task matches.")
    if token:
        printer.note(f"corral: showing the first {len(listing.tasks)}; more with --limit 0, "
                     f"or --page-token {token}")
    return out.EXIT_OK


def cmd_status(args, channel, printer: Printer) -> int:
    admin = admin_service_pb2_grpc.AdminServiceStub(channel)
    status = admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=args.timeout_s)
    if printer.as_json:
        printer.json(status)
        return out.EXIT_OK
    printer.show(out.status_view(status, now_ms()))
    return out.EXIT_OK


def cmd_watch(args, channel, printer: Printer) -> int:
    watch = WatchSet(args.task_ids, args.task_ids if args.children else ())
    events = follow(channel, args.task_ids, children=args.children, timeout_s=args.timeout_s, watch=watch)
    if printer.as_json:
        for event in events:
            printer.json(event, all_fields=True, indent=None)
    elif not printer.stdout.is_terminal:
        for event in events:
            printer.line(out.event_line(event))
    else:
        progress = Progress(SpinnerColumn(finished_text="✓"), TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), console=printer.stdout)
        bar = progress.add_task("watching", total=len(watch.roots))

        def view() -> Group:
            progress.update(bar, total=max(len(watch.tasks), len(watch.roots)), completed=watch.finished())
            return Group(progress, out.watch_table(list(watch.tasks.values())))

        with Live(view(), console=printer.stdout, refresh_per_second=8, transient=False) as live:
            for _ in events:
                live.update(view())
            progress.update(bar, description="done")
            live.update(view())
    states = [t.state for t in watch.tasks.values()]
    if not printer.as_json:
        printer.note(f"corral: {out.outcome_counts_line(states)}")
    return out.EXIT_OK if watch.all_succeeded() else out.EXIT_TASK_FAILED


def add_security_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--token", default=env("CORRAL_TOKEN", ""),
                   help="bearer token (roles: submitter for tasks, admin for status/pause/resume/drain) [env CORRAL_TOKEN]")
    p.add_argument("--ca-file", default=env("CORRAL_CA_FILE", ""),
                   help="PEM CA bundle verifying the coordinator [env CORRAL_CA_FILE, default: system roots]")
    p.add_argument("--cert-file", default=env("CORRAL_CERT_FILE", ""),
                   help="PEM client certificate (mutual TLS) [env CORRAL_CERT_FILE]")
    p.add_argument("--key-file", default=env("CORRAL_KEY_FILE", ""), help="PEM key of --cert-file [env CORRAL_KEY_FILE]")
    p.add_argument("--plaintext", action="store_true",
                   default=env("CORRAL_PLAINTEXT", "").lower() in ("1", "true", "yes", "on"),
                   help="no TLS [env CORRAL_PLAINTEXT; default: plaintext only to a loopback address without TLS files]")


def run_client_command(args: argparse.Namespace) -> int:
    from actor.security import ClientSecurity, open_channel, target_problem

    def fail(code: str, message: str, exit_code: int) -> int:
        sys.stderr.write(out.error_line(code, message) + "\n")
        return exit_code

    if not (math.isfinite(args.timeout_s) and args.timeout_s > 0):
        return fail("USAGE", f"--timeout-s must be a positive number of seconds, got {args.timeout_s:g}",
                    out.EXIT_USAGE)
    problem = target_problem(args.coordinator)
    if problem:
        return fail("USAGE", f"--coordinator / CORRAL_COORDINATOR: {problem}", out.EXIT_USAGE)
    security = ClientSecurity(ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                              token=args.token, plaintext=args.plaintext)
    problem = security.problem()
    if problem:
        return fail("USAGE", problem, out.EXIT_USAGE)
    try:
        channel = open_channel(args.coordinator, security)
    except OSError as exc:
        return fail("USAGE", f"cannot read a TLS file: {exc.filename or ''} {exc.strerror or exc}", out.EXIT_USAGE)
    printer = Printer(args.json)
    run: Callable[..., int] = args.run
    with channel:
        try:
            return run(args, channel, printer)
        except UsageError as exc:
            return fail("USAGE", str(exc), out.EXIT_USAGE)
        except json_format.ParseError as exc:
            return fail("USAGE", f"input: {exc}", out.EXIT_USAGE)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code is None:
                return fail("UNKNOWN", str(exc), out.EXIT_UNAVAILABLE)
            return fail(code.name, exc.details() or "", out.exit_code_for(code))
        except StreamEnded as exc:
            return fail("UNAVAILABLE", str(exc), out.EXIT_UNAVAILABLE)
        except KeyboardInterrupt:
            return fail("INTERRUPTED", "interrupted", out.EXIT_INTERRUPTED)
        except BrokenPipeError:
            # `corral list | head`: the reader went away; stop quietly.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return out.EXIT_OK


# ---- operations: pause, resume, drain, events -----------------------------------------------------

def add_operation_commands(sub: argparse._SubParsersAction, common) -> None:
    p = common(sub.add_parser("pause", help="stop granting leases (durable; running attempts continue)"))
    p.add_argument("--reason", default="")
    p.set_defaults(run=cmd_pause)

    p = common(sub.add_parser("resume", help="grant leases again (ends a pause, and a drain started by `drain`)"))
    p.add_argument("--reason", default="")
    p.set_defaults(run=cmd_resume)

    p = common(sub.add_parser("drain", help="stop accepting tasks and granting leases; running attempts finish"))
    p.add_argument("--reason", default="")
    p.add_argument("--wait", action="store_true", help="then wait until no attempt is running")
    p.add_argument("--wait-s", type=float, default=600.0, help="give up waiting after this long (exit 6)")
    p.set_defaults(run=cmd_drain)

    p = common(sub.add_parser("events", help="print task events as they are committed, until interrupted"))
    p.add_argument("--type", dest="types", action="append", default=[], help="task type (repeatable: any of them)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="label (repeatable: all of them)")
    p.add_argument("--parent", default="", help="only the children of this task")
    p.set_defaults(run=cmd_events)


def cmd_pause(args, channel, printer: Printer) -> int:
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    resp = stub.Pause(admin_service_pb2.PauseRequest(reason=args.reason), timeout=args.timeout_s)
    printer.json(resp, all_fields=True) if printer.as_json else printer.line(out.pause_line(resp))
    return out.EXIT_OK


def cmd_resume(args, channel, printer: Printer) -> int:
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    resp = stub.Resume(admin_service_pb2.ResumeRequest(reason=args.reason), timeout=args.timeout_s)
    printer.json(resp, all_fields=True) if printer.as_json else printer.line(out.resume_line(resp))
    return out.EXIT_OK


def _running(status) -> int:
    return sum(s.count for s in status.tasks_by_state if s.state == task_pb2.TASK_STATE_RUNNING)


def cmd_drain(args, channel, printer: Printer) -> int:
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    resp = stub.Drain(admin_service_pb2.DrainRequest(reason=args.reason), timeout=args.timeout_s)
    if not args.wait:
        printer.json(resp, all_fields=True) if printer.as_json else printer.line(out.drain_line(resp))
        return out.EXIT_OK
    if not printer.as_json:
        printer.line(out.drain_line(resp))
    deadline = time.monotonic() + args.wait_s
    with printer.waiting("waiting for running attempts to finish") as spinner:
        while True:
            status = stub.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=args.timeout_s)
            running = _running(status)
            if running == 0 or time.monotonic() > deadline:
                break
            if spinner is not None:
                spinner.update(f"waiting for {out.plural(running, 'running attempt')} to finish")
            time.sleep(0.5)  # a client polling an operator command; not test synchronisation
    if printer.as_json:
        printer.json(status)
    if running:
        sys.stderr.write(out.error_line("WAIT_TIMED_OUT", f"{out.plural(running, 'attempt')} still running "
                                                           f"after {args.wait_s:g} s") + "\n")
        return out.EXIT_WAIT_TIMED_OUT
    if not printer.as_json:
        printer.line("Drained: no attempt is running.")
    return out.EXIT_OK


def cmd_events(args, channel, printer: Printer) -> int:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    request = task_service_pb2.WatchEventsRequest(types=args.types, parent_task_id=args.parent,
                                                  labels=_labels(args.label))
    try:
        for resp in stub.WatchEvents(request):
            for event in resp.events:
                printer.json(event, indent=None) if printer.as_json else printer.line(out.event_line(event))
    except KeyboardInterrupt:
        return out.EXIT_OK
    return out.EXIT_OK
