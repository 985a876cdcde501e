"""Real processes for end-to-end tests: a coordinator and actors on loopback ports.

Owns: starting `corral coordinator` / `corral actor` as child processes (logs in the test's tmp
dir), waiting on conditions with bounded deadlines (never sleeping as synchronisation), and
stopping every process it started, by pid.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.v1 import (admin_service_pb2, admin_service_pb2_grpc, task_pb2, task_service_pb2,
                       task_service_pb2_grpc)

REPO_ROOT = Path(__file__).resolve().parents[2]
TERMINAL = (task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.02) -> Any:
    """Poll `predicate` until it returns a truthy value; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except grpc.RpcError as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}"
                                 + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval_s)


class Cluster:
    def __init__(self, workdir: Path, *, lease_ttl_s: float = 2.0, coordinator_flags: tuple[str, ...] = (),
                 security: Any = None) -> None:
        """`security`: an actor.security.ClientSecurity for the harness's own channel; with one the
        coordinator is started without --insecure-plaintext (pass its TLS flags in coordinator_flags)."""
        self.workdir = workdir
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.data_dir = workdir / "wal"
        self.lease_ttl_s = lease_ttl_s
        self.coordinator_flags = coordinator_flags
        self.coordinator: subprocess.Popen | None = None
        self.actors: dict[str, subprocess.Popen] = {}
        self._all: list[subprocess.Popen] = []
        self._logs = 0
        self.security = security
        if security is None:
            self.channel = grpc.insecure_channel(self.target)
        else:
            from actor.security import open_channel

            self.channel = open_channel(self.target, security)
        self.tasks = task_service_pb2_grpc.TaskServiceStub(self.channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    # ---- processes ---------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        self._logs += 1
        log = open(self.workdir / f"{self._logs:02d}-{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "coordinator.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
                                cwd=self.workdir)
        log.close()
        self._all.append(proc)
        return proc

    def start_coordinator(self, *extra: str, wait: bool = True, env: dict[str, str] | None = None) -> subprocess.Popen:
        self.coordinator = self._spawn("coordinator", [
            "coordinator", "--listen", self.target, "--data-dir", str(self.data_dir),
            "--lease-ttl-s", str(self.lease_ttl_s),
            *(("--insecure-plaintext",) if self.security is None else ()), *self.coordinator_flags, *extra], env)
        if wait:
            self.wait_healthy()
        return self.coordinator

    def start_actor(self, actor_id: str, *, slots: int = 4, app: str = "actor.demo", extra: tuple[str, ...] = (),
                    wait: bool = True, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = self._spawn(actor_id, ["actor", "--coordinator", self.target, "--app", app, "--slots", str(slots),
                                      "--actor-id", actor_id, *extra], env)
        self.actors[actor_id] = proc
        if wait:
            wait_for(lambda: actor_id in self.connected_actor_ids(), 20, f"actor {actor_id} to connect")
        return proc

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        proc.wait(timeout=20)

    def stop(self) -> None:
        for proc in reversed(self._all):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self._all):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.channel.close()

    def logs(self) -> str:
        return "\n".join(f"==== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.workdir.glob("*.log")))

    # ---- queries -----------------------------------------------------------------------------

    def wait_healthy(self, timeout_s: float = 20) -> None:
        def serving() -> bool:
            if self.coordinator is not None and self.coordinator.poll() is not None:
                raise AssertionError(f"coordinator exited with {self.coordinator.returncode}:\n{self.logs()}")
            try:
                resp = self.health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return resp.status == health_pb2.HealthCheckResponse.SERVING
        wait_for(serving, timeout_s, "the coordinator to report SERVING")

    def connected_actor_ids(self) -> set[str]:
        status = self.admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=5)
        return {a.identity.actor_id for a in status.actors}

    def submit(self, task_type: str, input: Any = None, **fields: Any) -> str:
        from google.protobuf import json_format

        spec = task_pb2.TaskSpec(type=task_type, **fields)
        if input is not None:
            json_format.ParseDict(input, spec.input)
        return self.tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=spec), timeout=10).task_id

    def get(self, task_id: str) -> task_pb2.Task:
        return self.tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), timeout=10).task

    def wait_state(self, task_id: str, states: tuple[int, ...] = TERMINAL, timeout_s: float = 30) -> task_pb2.Task:
        def reached():
            task = self.get(task_id)
            return task if task.state in states else None
        return wait_for(reached, timeout_s, f"task {task_id} to reach {[task_pb2.TaskState.Name(s) for s in states]}")


# ---- WAL surgery (only while no coordinator has the data dir open) -------------------------------

def _open_wal_env(data_dir: Path):
    import lmdb

    env = lmdb.open(str(data_dir), subdir=True, max_dbs=4, map_size=16 << 30)
    return env, env.open_db(b"wal")


def read_wal(data_dir: Path) -> list:
    """Every WAL record in `data_dir`, in seq order (decoded and checked like the coordinator does)."""
    from coordinator.storage.codec import decode_record, key_seq

    env, wal_db = _open_wal_env(data_dir)
    try:
        with env.begin(db=wal_db) as txn:
            return [decode_record(key_seq(key), value) for key, value in txn.cursor()]
    finally:
        env.close()


def corrupt_wal_record(data_dir: Path, seq: int) -> None:
    """Flip one byte in the middle of the payload of WAL record `seq` (its checksum no longer matches)."""
    from coordinator.storage.codec import seq_key

    env, wal_db = _open_wal_env(data_dir)
    try:
        with env.begin(write=True, db=wal_db) as txn:
            value = txn.get(seq_key(seq))
            assert value is not None, f"no WAL record {seq}"
            corrupted = bytearray(value)
            corrupted[4 + (len(value) - 4) // 2] ^= 0xFF  # value = 4-byte crc32 + payload
            txn.put(seq_key(seq), bytes(corrupted))
    finally:
        env.close()
