"""Coordinator configuration: every setting is a flag and an environment variable.

Owns: the settings table (name, type, default, meaning), its validation, and building an argparse
parser from it. `CORRAL_<NAME>` is the environment variable of `--<name>`; a flag beats the
environment, which beats the default. A bad value stops start-up with a message naming the
setting; a half-configured coordinator never starts.
"""
from __future__ import annotations

import argparse
import math
import os
import socket
from dataclasses import dataclass, fields
from typing import Any, Callable

from .core.rate_limit import RateLimit, parse_rate_limits


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Setting:
    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    check: Callable[[Any], str | None] = lambda v: None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "CORRAL_" + self.name.upper()


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _float(text: str) -> float:
    """A finite number: `float()` also parses nan, inf and 1e400, which no setting can use (a
    duration becomes int(seconds * 1000) milliseconds)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


_C_INT_MAX = (1 << 31) - 1  # gRPC channel options are C ints


def _keepalive(v: float) -> str | None:
    if v <= 0:
        return "must be positive"
    return None if v * 1000 <= _C_INT_MAX else f"must be at most {_C_INT_MAX // 1000} (gRPC takes milliseconds as a C int)"


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return text


def _optional_host_port(text: str) -> str:
    return _host_port(text) if text else text


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be positive"


def _at_least(n: int) -> Callable[[Any], str | None]:
    return lambda v: None if v >= n else f"must be at least {n}"


def _rate_limits_problem(text: str) -> str | None:
    try:
        parse_rate_limits(text)
    except ValueError as exc:
        return f"{exc} (expected TYPE=RATE[:BURST],TYPE2=RATE, e.g. resize=5:10)"
    return None


SETTINGS: tuple[Setting, ...] = (
    Setting("listen", _host_port, "127.0.0.1:7070", "address to serve gRPC on (HOST:PORT)"),
    Setting("data_dir", str, ".corral-data", "directory of the LMDB write-ahead log (a mounted volume in production)"),
    Setting("coordinator_id", str, "", "name of this coordinator in status output (default: host name)"),
    Setting("lease_ttl_s", _float, 15.0, "a lease with no heartbeat for this long expires and its attempt is lost", _positive),
    Setting("heartbeat_interval_s", _float, 0.0, "how often actors heartbeat (default: lease TTL / 3)",
            lambda v: None if v >= 0 else "must not be negative"),
    Setting("deadline_grace_s", _float, 10.0,
            "after an attempt's deadline, how long the coordinator waits for the actor's own timeout report", _positive),
    Setting("max_input_bytes", int, 1 << 20, "largest task input accepted", _at_least(1)),
    Setting("max_message_bytes", int, 64 << 20, "largest gRPC message accepted (SubmitTasks batches)",
            lambda v: None if (1 << 16) <= v <= _C_INT_MAX else f"must be between {1 << 16} and {_C_INT_MAX}"),
    Setting("max_queued_commands", int, 100_000,
            "commands waiting for the dispatch loop before requests get RESOURCE_EXHAUSTED", _at_least(1)),
    Setting("max_queued_tasks", int, 1_000_000,
            "tasks waiting to run (SCHEDULED, READY, RETRY_WAIT, WAITING_FOR_DEPENDENCIES) beyond which submissions get RESOURCE_EXHAUSTED; "
            "0: no limit", _at_least(0)),
    Setting("rate_limits", str, "",
            "per task type, tasks started per second cluster-wide: TYPE=RATE[:BURST],... (burst default 1); "
            "empty: none", _rate_limits_problem),
    Setting("priority_aging_s", _float, 60.0,
            "a READY task's priority grows by 1 per this many seconds waited (no starvation); 0: no aging",
            lambda v: None if v >= 0 else "must not be negative"),
    Setting("max_task_depth", int, 8,
            "deepest allowed child task (a root task is at depth 0); deeper child submissions are refused",
            _at_least(1)),
    Setting("retention_s", _float, 7 * 86_400.0,
            "finished tasks are forgotten this long after they finished (NOT_FOUND from then on; their "
            "idempotency keys are free again); 0: keep forever",
            lambda v: None if v == 0 or v >= 0.001 else "must be 0 (keep forever) or at least 0.001"),
    Setting("snapshot_every_records", int, 100_000,
            "write a snapshot of the state after this many WAL records (and at least as many as there are "
            "tasks), then delete the WAL records before it; 0: no snapshots", _at_least(0)),
    Setting("wal_map_size_bytes", int, 16 << 30, "initial LMDB map size (grows when full)", _at_least(1 << 20)),
    Setting("truncate_corrupt_wal", _bool, False,
            "on start, drop WAL records from the first corrupt one on, instead of refusing to start"),
    Setting("shutdown_grace_s", _float, 10.0, "on SIGTERM, how long in-flight RPCs may finish", _positive),
    Setting("drain_grace_s", _float, 30.0,
            "on SIGTERM, first stop taking work and wait this long for attempts in flight to finish "
            "(those still running stay RUNNING for the next coordinator); 0: no wait",
            lambda v: None if v >= 0 else "must not be negative"),
    Setting("max_queued_events", int, 10_000,
            "events queued for one WatchEvents subscriber beyond which it is dropped (RESOURCE_EXHAUSTED)",
            _at_least(1)),
    Setting("log_level", str, "INFO", "DEBUG, INFO, WARNING or ERROR",
            lambda v: None if v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR") else "must be DEBUG, INFO, WARNING or ERROR"),
    Setting("log_format", str, "text", "text, or json (one JSON object per line, with task_id/attempt/trace_id)",
            lambda v: None if v.lower() in ("text", "json") else "must be text or json"),
    Setting("metrics_listen", _optional_host_port, "",
            "address to serve Prometheus metrics on (HOST:PORT, path /metrics); empty: no metrics"),
    Setting("otlp_endpoint", str, "",
            "OTLP/gRPC endpoint to export traces to, e.g. http://otel-collector:4317 (needs corral[otlp]); "
            "empty: no OTLP export"),
    Setting("trace_file", str, "", "also write finished spans to this file as JSON lines (tests, debugging; "
            "/dev/null: trace, but drop the spans unserialized)"),
    # Security (README "Security"; coordinator/server/tls.py, auth.py, limits.py).
    Setting("insecure_plaintext", _bool, False,
            "serve without TLS (only when asked: without TLS files or this, the coordinator refuses to start)"),
    Setting("tls_cert_file", str, "", "PEM certificate (chain) of the listener; with --tls-key-file turns TLS on"),
    Setting("tls_key_file", str, "", "PEM private key of --tls-cert-file"),
    Setting("tls_client_ca_file", str, "",
            "PEM CA bundle: clients must present a certificate it signed (mutual TLS); an actor's actor_id "
            "must then be its certificate's CN or a SAN (else PERMISSION_DENIED)"),
    Setting("tokens_file", str, "",
            "bearer tokens, one per line `ROLE[,ROLE...] TOKEN` (roles: submitter, actor, admin); when set "
            "every RPC but health and reflection needs `authorization: Bearer TOKEN` (else UNAUTHENTICATED)"),
    Setting("max_actors", int, 10_000,
            "actors connected at once; a hello beyond it gets RESOURCE_EXHAUSTED (the actor retries)", _at_least(1)),
    Setting("max_streams_per_peer", int, 100,
            "open WatchTask/WatchEvents streams per client address; one more gets RESOURCE_EXHAUSTED", _at_least(1)),
    Setting("keepalive_time_s", _float, 20.0,
            "ping a connection idle this long (closes connections whose peer vanished)", _keepalive),
    Setting("keepalive_timeout_s", _float, 10.0,
            "close the connection when a ping is not answered within this long", _keepalive),
    Setting("keepalive_min_ping_interval_s", _float, 5.0,
            "clients pinging more often than this are sent GOAWAY (their calls fail UNAVAILABLE)", _keepalive),
)


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str = "127.0.0.1:7070"
    data_dir: str = ".corral-data"
    coordinator_id: str = ""
    lease_ttl_s: float = 15.0
    heartbeat_interval_s: float = 0.0
    deadline_grace_s: float = 10.0
    max_input_bytes: int = 1 << 20
    max_message_bytes: int = 64 << 20
    max_queued_commands: int = 100_000
    max_queued_tasks: int = 1_000_000
    rate_limits: str = ""
    priority_aging_s: float = 60.0
    max_task_depth: int = 8
    retention_s: float = 7 * 86_400.0
    snapshot_every_records: int = 100_000
    wal_map_size_bytes: int = 16 << 30
    truncate_corrupt_wal: bool = False
    shutdown_grace_s: float = 10.0
    drain_grace_s: float = 30.0
    max_queued_events: int = 10_000
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_listen: str = ""
    otlp_endpoint: str = ""
    trace_file: str = ""
    insecure_plaintext: bool = False
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    tokens_file: str = ""
    max_actors: int = 10_000
    max_streams_per_peer: int = 100
    keepalive_time_s: float = 20.0
    keepalive_timeout_s: float = 10.0
    keepalive_min_ping_interval_s: float = 5.0

    def __post_init__(self) -> None:
        for setting in SETTINGS:
            problem = setting.check(getattr(self, setting.name))
            if problem:
                raise ConfigError(f"{setting.flag} / {setting.env}: {problem} (got {getattr(self, setting.name)!r})")
        if self.heartbeat_interval_s and self.heartbeat_interval_s >= self.lease_ttl_s:
            raise ConfigError("--heartbeat-interval-s / CORRAL_HEARTBEAT_INTERVAL_S: must be less than the lease TTL")

    @property
    def effective_coordinator_id(self) -> str:
        return self.coordinator_id or socket.gethostname()

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.lease_ttl_s * 1000)

    @property
    def rate_limit_map(self) -> dict[str, RateLimit]:
        return parse_rate_limits(self.rate_limits)

    @property
    def priority_aging_ms(self) -> int:
        return int(self.priority_aging_s * 1000)

    @property
    def retention_ms(self) -> int:
        return max(1, int(self.retention_s * 1000)) if self.retention_s else 0

    @property
    def heartbeat_interval_ms(self) -> int:
        return int((self.heartbeat_interval_s or self.lease_ttl_s / 3) * 1000)


assert [(s.name, s.default) for s in SETTINGS] == [(f.name, f.default) for f in fields(CoordinatorConfig)], \
    "SETTINGS and CoordinatorConfig disagree"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for s in SETTINGS:
        kind = "flag" if s.type is _bool else "value"
        if kind == "flag":
            parser.add_argument(s.flag, dest=s.name, action="store_const", const="true", default=None,
                                help=f"{s.help} [env {s.env}]")
        else:
            parser.add_argument(s.flag, dest=s.name, default=None, metavar=s.name.split("_")[-1].upper(),
                                help=f"{s.help} [env {s.env}, default {s.default!r}]")


def from_arguments(args: argparse.Namespace, environ: dict[str, str] | None = None) -> CoordinatorConfig:
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = getattr(args, s.name, None)
        source = s.flag
        if raw is None:
            raw = environ.get(s.env)
            source = s.env
        if raw is None:
            values[s.name] = s.default
            continue
        try:
            values[s.name] = s.type(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return CoordinatorConfig(**values)
