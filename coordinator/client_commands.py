"""`corral submit|get|cancel|list|watch|status|pause|resume|drain|events`: the command-line client.

Owns: turning command-line arguments into TaskService/AdminService calls and printing the
answers as JSON (the protobuf JSON mapping, as grpcurl prints it). A refused request prints one
line `error: CODE: message` and exits 1; an unreachable coordinator exits 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import grpc
from google.protobuf import json_format

from corral.v1 import admin_service_pb2, admin_service_pb2_grpc, task_pb2, task_service_pb2, task_service_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:7070"
TERMINAL = {task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELED}


def add_client_commands(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--coordinator", default=os.environ.get("CORRAL_COORDINATOR", DEFAULT_TARGET),
                       help=f"HOST:PORT of the coordinator [env CORRAL_COORDINATOR, default {DEFAULT_TARGET}]")
        p.add_argument("--timeout-s", type=float, default=30.0, help="deadline of each call")
        add_security_arguments(p)
        return p

    p = common(sub.add_parser("submit", help="submit a task and print its id"))
    p.add_argument("type", help="task type")
    p.add_argument("input", nargs="?", default=None, help="JSON input ('-' reads stdin)")
    p.add_argument("--input-file", help="read the JSON input from this file")
    p.add_argument("--id", dest="task_id", default="", help="task id (default: assigned)")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--max-attempts", type=int, default=0)
    p.add_argument("--execution-timeout-s", type=float, default=0.0)
    p.add_argument("--idempotency-key", default="")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--wait", action="store_true", help="wait until the task is terminal and print it")
    p.set_defaults(run=cmd_submit)

    p = common(sub.add_parser("get", help="print a task"))
    p.add_argument("task_id")
    p.set_defaults(run=cmd_get)

    p = common(sub.add_parser("cancel", help="cancel a task"))
    p.add_argument("task_id")
    p.add_argument("--reason", default="")
    p.set_defaults(run=cmd_cancel)

    p = common(sub.add_parser("watch", help="print each state change of a task until it is terminal"))
    p.add_argument("task_id")
    p.set_defaults(run=cmd_watch)

    p = common(sub.add_parser("list", help="list tasks"))
    p.add_argument("--state", action="append", default=[], help="e.g. RUNNING (repeatable)")
    p.add_argument("--type", default="")
    p.add_argument("--page-size", type=int, default=100)
    p.add_argument("--page-token", default="")
    p.set_defaults(run=cmd_list)

    p = common(sub.add_parser("status", help="cluster status: tasks by state, actors, WAL position"))
    p.set_defaults(run=cmd_status)
    add_operation_commands(sub, common)


def _print(message) -> None:
    print(json_format.MessageToJson(message, indent=2))


def _read_input(args: argparse.Namespace):
    if args.input_file:
        with open(args.input_file, encoding="utf-8") as f:
            text = f.read()
    elif args.input == "-":
        text = sys.stdin.read()
    elif args.input is not None:
        text = args.input
    else:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: input is not JSON: {exc}") from None


def _watch_until_terminal(stub, task_id: str, timeout_s: float | None) -> task_pb2.Task:
    task = None
    for resp in stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task_id), timeout=timeout_s):
        task = resp.task
    assert task is not None
    return task


def cmd_submit(args, channel) -> int:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    spec = task_pb2.TaskSpec(type=args.type, task_id=args.task_id, priority=args.priority,
                             idempotency_key=args.idempotency_key)
    value = _read_input(args)
    if value is not None:
        json_format.ParseDict(value, spec.input)
    if args.max_attempts:
        spec.retry.max_attempts = args.max_attempts
    if args.execution_timeout_s:
        spec.execution_timeout.FromMilliseconds(int(args.execution_timeout_s * 1000))
    for label in args.label:
        k, sep, v = label.partition("=")
        if not sep:
            raise SystemExit(f"error: --label {label!r} is not KEY=VALUE")
        spec.labels[k] = v
    resp = stub.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=args.timeout_s)
    if not args.wait:
        _print(resp)
        return 0
    task = _watch_until_terminal(stub, resp.task_id, None)
    _print(task)
    return 0 if task.state == task_pb2.TASK_STATE_SUCCEEDED else 3


def cmd_get(args, channel) -> int:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    _print(stub.GetTask(task_service_pb2.GetTaskRequest(task_id=args.task_id), timeout=args.timeout_s).task)
    return 0


def cmd_cancel(args, channel) -> int:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    resp = stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=args.task_id, reason=args.reason),
                           timeout=args.timeout_s)
    _print(resp.task)
    return 0


def cmd_watch(args, channel) -> int:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    for resp in stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=args.task_id)):
        print(json.dumps({"task_id": resp.task.task_id, "state": task_pb2.TaskState.Name(resp.task.state)}), flush=True)
    return 0


def cmd_list(args, channel) -> int:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    states = []
    for name in args.state:
        full = name.upper() if name.upper().startswith("TASK_STATE_") else "TASK_STATE_" + name.upper()
        try:
            states.append(task_pb2.TaskState.Value(full))
        except ValueError:
            raise SystemExit(f"error: --state {name!r} is not a task state") from None
    _print(stub.ListTasks(task_service_pb2.ListTasksRequest(
        states=states, type=args.type, page_size=args.page_size, page_token=args.page_token), timeout=args.timeout_s))
    return 0


def cmd_status(args, channel) -> int:
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    _print(stub.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=args.timeout_s))
    return 0


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
    from actor.security import ClientSecurity, open_channel

    security = ClientSecurity(ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                              token=args.token, plaintext=args.plaintext)
    problem = security.problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        channel = open_channel(args.coordinator, security)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with channel:
        try:
            return args.run(args, channel)
        except grpc.RpcError as exc:
            code = exc.code()
            print(f"error: {code.name}: {exc.details()}", file=sys.stderr)
            return 2 if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else 1


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
    p.add_argument("--wait", action="store_true", help="then wait until no attempt is running and print the status")
    p.add_argument("--wait-s", type=float, default=600.0, help="give up waiting after this long (exit 4)")
    p.set_defaults(run=cmd_drain)

    p = common(sub.add_parser("events", help="print task events as JSON lines, until interrupted"))
    p.add_argument("--type", dest="types", action="append", default=[], help="task type (repeatable: any of them)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="label (repeatable: all of them)")
    p.add_argument("--parent", default="", help="parent task id (no task has a parent yet: matches nothing)")
    p.set_defaults(run=cmd_events)


def _print_all_fields(message) -> None:
    print(json_format.MessageToJson(message, indent=2, always_print_fields_with_no_presence=True))


def cmd_pause(args, channel) -> int:
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    _print_all_fields(stub.Pause(admin_service_pb2.PauseRequest(reason=args.reason), timeout=args.timeout_s))
    return 0


def cmd_resume(args, channel) -> int:
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    _print_all_fields(stub.Resume(admin_service_pb2.ResumeRequest(reason=args.reason), timeout=args.timeout_s))
    return 0


def cmd_drain(args, channel) -> int:
    import time

    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    resp = stub.Drain(admin_service_pb2.DrainRequest(reason=args.reason), timeout=args.timeout_s)
    if not args.wait:
        _print_all_fields(resp)
        return 0
    deadline = time.monotonic() + args.wait_s
    while True:
        status = stub.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=args.timeout_s)
        running = sum(s.count for s in status.tasks_by_state if s.state == task_pb2.TASK_STATE_RUNNING)
        if running == 0 or time.monotonic() > deadline:
            _print(status)
            if running:
                print(f"error: {running} attempts still running after {args.wait_s} s", file=sys.stderr)
                return 4
            return 0
        time.sleep(0.5)


def cmd_events(args, channel) -> int:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    request = task_service_pb2.WatchEventsRequest(types=args.types, parent_task_id=args.parent)
    for label in args.label:
        k, sep, v = label.partition("=")
        if not sep:
            raise SystemExit(f"error: --label {label!r} is not KEY=VALUE")
        request.labels[k] = v
    try:
        for resp in stub.WatchEvents(request):
            for event in resp.events:
                print(json_format.MessageToJson(event, indent=None), flush=True)
    except KeyboardInterrupt:
        return 0
    return 0
