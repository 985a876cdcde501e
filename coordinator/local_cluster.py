"""`make run`: a local coordinator on an embedded LMDB store with two demo actors.

Owns: starting the three processes (each a real `corral` process talking gRPC on loopback),
waiting until the coordinator is healthy and both actors are connected, printing how to use it,
and stopping all three (SIGTERM, then SIGKILL) on Ctrl-C or when any of them dies.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from google.protobuf import json_format

from corral.v1 import admin_service_pb2, admin_service_pb2_grpc, task_pb2, task_service_pb2, task_service_pb2_grpc

USAGE = """
Corral is running: coordinator on {target} (data in {data_dir}), 2 actors with the demo handlers
(echo, sleep, fail, noop, spin, fencing_token).

Submit with grpcurl (reflection is on, no proto files needed):
  grpcurl -plaintext -d '{{"task":{{"type":"echo","input":{{"hello":"world"}}}}}}' {target} corral.v1.TaskService/SubmitTask
  grpcurl -plaintext -d '{{"task_id":"TASK_ID"}}' {target} corral.v1.TaskService/GetTask

Or with the CLI (in another shell: source .venv/bin/activate):
  corral submit echo '{{"hello":"world"}}' --wait --coordinator {target}
  corral submit sleep '{{"seconds":30}}' --coordinator {target}   then   corral cancel TASK_ID --coordinator {target}
  corral status --coordinator {target}

Ctrl-C stops everything.
"""


def wait_ready(target: str, actors: int, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    status = admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=1)
                    if len(status.actors) >= actors:
                        return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"cluster on {target} not ready within {deadline_s} s")


def demo_task(target: str) -> None:
    """Run one echo task end to end, so the quick start shows the whole path working."""
    with grpc.insecure_channel(target) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        spec = task_pb2.TaskSpec(type="echo")
        json_format.ParseDict({"hello": "world"}, spec.input)
        task_id = stub.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=10).task_id
        for update in stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task_id), timeout=30):
            task = update.task
        output = json_format.MessageToJson(task.output, indent=None)
        print(f"demo: echo task {task_id} -> {task_pb2.TaskState.Name(task.state)}, output {output}\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default=os.environ.get("CORRAL_LISTEN", "127.0.0.1:7070"))
    parser.add_argument("--data-dir", default=os.environ.get("CORRAL_DATA_DIR", ".corral-data"))
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args(argv)
    corral = [sys.executable, "-m", "coordinator.cli"]
    procs: list[subprocess.Popen] = [subprocess.Popen(
        # Plaintext on loopback, asked for explicitly (the coordinator refuses to start otherwise).
        corral + ["coordinator", "--listen", args.listen, "--data-dir", args.data_dir, "--insecure-plaintext"])]
    try:
        wait_ready(args.listen, 0, 30)  # coordinator first: actors then connect at once
        for i in range(args.actors):
            procs.append(subprocess.Popen(corral + [
                "actor", "--coordinator", args.listen, "--app", "actor.demo", "--slots", str(args.slots),
                "--actor-id", f"local-actor-{i + 1}"]))
        wait_ready(args.listen, args.actors, 30)
        print(USAGE.format(target=args.listen, data_dir=os.path.abspath(args.data_dir)), flush=True)
        demo_task(args.listen)
        stop = {"now": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
        while not stop["now"] and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
