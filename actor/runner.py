"""The ``corral actor`` command: run an App's handlers against a coordinator.

Owns argument parsing (``build_parser``), loading the user's ``App`` (``load_app``), logging
setup, signal handling and the process exit code.

Invariants:
- Every setting is a flag and an environment variable, listed once in ``SETTINGS`` (the table the
  README's Configuration section mirrors); an explicit flag wins over the environment, which wins
  over the default. A bad value stops start-up (exit 2) with a message naming the flag and the
  variable (``resolve_settings``).
- The first SIGTERM/SIGINT stops the actor gracefully (running attempts get up to ``--grace-s`` to
  finish, results are flushed); a second one stops it at once. Either way the exit code is 0.
- Exit codes: 0 after a stop by signal, 2 for bad arguments, an unloadable app or a coordinator
  that refuses this actor (misconfiguration), 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from actor.app import App
from actor.errors import ActorRejected
from actor.security import ClientSecurity, target_problem
from actor.session import ActorSession, default_actor_id

log = logging.getLogger("actor.runner")

ENV_COORDINATOR = "CORRAL_COORDINATOR"
ENV_APP = "CORRAL_APP"
ENV_SLOTS = "CORRAL_SLOTS"
ENV_ACTOR_ID = "CORRAL_ACTOR_ID"
ENV_GRACE_S = "CORRAL_ACTOR_GRACE_S"
ENV_LABELS = "CORRAL_ACTOR_LABELS"
ENV_LOG_LEVEL = "CORRAL_LOG_LEVEL"
ENV_LOG_FORMAT = "CORRAL_LOG_FORMAT"
ENV_METRICS_LISTEN = "CORRAL_METRICS_LISTEN"
ENV_OTLP_ENDPOINT = "CORRAL_OTLP_ENDPOINT"
ENV_TRACE_FILE = "CORRAL_TRACE_FILE"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class ActorSetting:
    """One actor setting: ``dest`` in the parsed arguments, its flag and environment variable."""

    dest: str
    flag: str
    env: str
    default: str
    help: str


# The actor's settings, one row each (README "Configuration" mirrors this table; the deploy tests
# check the Kubernetes manifests against it).
SETTINGS: tuple[ActorSetting, ...] = (
    ActorSetting("coordinator", "--coordinator", ENV_COORDINATOR, "(required)", "coordinator address HOST:PORT"),
    ActorSetting("app", "--app", ENV_APP, "(required)",
                 "MODULE[:ATTR] holding the actor.App (attribute 'app' by default)"),
    ActorSetting("slots", "--slots", ENV_SLOTS, "1", "attempts run at once"),
    ActorSetting("actor_id", "--actor-id", ENV_ACTOR_ID, "HOSTNAME-PID",
                 "stable actor name; keep it stable per pod so a restart ends the old incarnation's leases"),
    ActorSetting("grace_s", "--grace-s", ENV_GRACE_S, "5",
                 "seconds a canceled or timed-out handler gets before it is abandoned, and running attempts"
                 " get to finish on stop"),
    ActorSetting("label", "--label", ENV_LABELS, "none",
                 "actor labels: the flag KEY=VALUE is repeatable, the variable is KEY=VALUE,KEY=VALUE"),
    ActorSetting("log_level", "--log-level", ENV_LOG_LEVEL, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    # Telemetry (actor/telemetry.py; README "Observability").
    ActorSetting("log_format", "--log-format", ENV_LOG_FORMAT, "text",
                 "text, or json (one JSON object per line, with task_id/attempt/trace_id)"),
    ActorSetting("metrics_listen", "--metrics-listen", ENV_METRICS_LISTEN, "off",
                 "serve Prometheus metrics on HOST:PORT, path /metrics"),
    ActorSetting("otlp_endpoint", "--otlp-endpoint", ENV_OTLP_ENDPOINT, "off",
                 "export traces with OTLP/gRPC, e.g. http://otel-collector:4317 (needs corral[otlp])"),
    ActorSetting("trace_file", "--trace-file", ENV_TRACE_FILE, "off",
                 "also write finished spans to this file as JSON lines (tests, debugging)"),
    # Security (actor/security.py; README "Security").
    ActorSetting("token", "--token", "CORRAL_TOKEN", "none",
                 "bearer token with the actor role, sent as `authorization: Bearer TOKEN`"),
    ActorSetting("ca_file", "--ca-file", "CORRAL_CA_FILE", "system roots",
                 "PEM CA bundle that verifies the coordinator's certificate"),
    ActorSetting("cert_file", "--cert-file", "CORRAL_CERT_FILE", "none",
                 "PEM client certificate for mutual TLS (its CN or a SAN must equal the actor id)"),
    ActorSetting("key_file", "--key-file", "CORRAL_KEY_FILE", "none", "PEM private key of --cert-file"),
    ActorSetting("plaintext", "--plaintext", "CORRAL_PLAINTEXT", "false",
                 "talk to the coordinator without TLS (default: plaintext only to a loopback address "
                 "without TLS files; TLS otherwise)"),
)
SETTINGS_BY_DEST = {s.dest: s for s in SETTINGS}

MAX_SLOTS = (1 << 31) - 1  # hello.slots is an int32
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the actor's arguments to ``parser`` (e.g. a subcommand parser) or to a new one."""
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="corral actor",
            description="Run task handlers for a Corral coordinator.",
        )

    def helptext(dest: str) -> str:
        setting = SETTINGS_BY_DEST[dest]
        return f"{setting.help} (env {setting.env}; default {setting.default})"

    parser.add_argument("--coordinator", metavar="HOST:PORT", help=helptext("coordinator"))
    parser.add_argument("--app", metavar="MODULE[:ATTR]", help=helptext("app"))
    parser.add_argument("--slots", type=int, metavar="N", help=helptext("slots"))
    parser.add_argument("--actor-id", metavar="ID", help=helptext("actor_id"))
    parser.add_argument("--grace-s", type=float, metavar="S", help=helptext("grace_s"))
    parser.add_argument("--label", type=_label, action="append", default=None, metavar="KEY=VALUE",
                        help=helptext("label"))
    parser.add_argument("--log-level", metavar="LEVEL", help=helptext("log_level"))
    parser.add_argument("--log-format", metavar="FORMAT", help=helptext("log_format"))
    parser.add_argument("--metrics-listen", metavar="HOST:PORT", help=helptext("metrics_listen"))
    parser.add_argument("--otlp-endpoint", metavar="URL", help=helptext("otlp_endpoint"))
    parser.add_argument("--trace-file", metavar="PATH", help=helptext("trace_file"))
    parser.add_argument("--token", metavar="TOKEN", help=helptext("token"))
    parser.add_argument("--ca-file", metavar="PEM", help=helptext("ca_file"))
    parser.add_argument("--cert-file", metavar="PEM", help=helptext("cert_file"))
    parser.add_argument("--key-file", metavar="PEM", help=helptext("key_file"))
    parser.add_argument("--plaintext", action="store_const", const="true", default=None, help=helptext("plaintext"))
    return parser


def load_app(spec: str) -> App:
    """Import ``module`` or ``module:attr`` and return the App it names (attr ``app`` default)."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the user's app next to them
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        raise TypeError(f"{spec}: {attr!r} is a {type(obj).__name__}, not an actor.App")
    return obj


class ActorConfigError(ValueError):
    """A bad or missing actor setting; the message names the flag and the variable."""


@dataclass(frozen=True)
class ActorConfig:
    coordinator: str
    app: str
    slots: int
    actor_id: str
    grace_s: float
    labels: dict[str, str]
    log_level: str
    security: ClientSecurity = ClientSecurity()
    log_format: str = "text"
    metrics_listen: str = ""
    otlp_endpoint: str = ""
    trace_file: str = ""


def _from_env(value: object, env: str, environ: Mapping[str, str]) -> str | None:
    if value is not None:
        return str(value)
    return environ.get(env) or None


def _labels_from_env(text: str) -> list[tuple[str, str]]:
    return [_label(item.strip()) for item in text.split(",") if item.strip()]


def resolve_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ActorConfig:
    """The actor's settings from parsed flags, then ``environ``, then defaults; validated.

    Raises ``ActorConfigError`` naming the setting (``--slots / CORRAL_SLOTS: ...``)."""
    environ = os.environ if environ is None else environ

    def bad(dest: str, problem: str) -> ActorConfigError:
        setting = SETTINGS_BY_DEST[dest]
        return ActorConfigError(f"{setting.flag} / {setting.env}: {problem}")

    def raw(dest: str) -> str | None:
        return _from_env(getattr(args, dest, None), SETTINGS_BY_DEST[dest].env, environ)

    values: dict[str, str | None] = {dest: raw(dest) for dest in ("coordinator", "app", "slots", "actor_id",
                                                                   "grace_s", "log_level")}
    for dest in ("coordinator", "app"):
        if not values[dest]:
            raise bad(dest, "missing (required)")
    problem = target_problem(str(values["coordinator"]))
    if problem:
        raise bad("coordinator", problem)
    try:
        slots = int(values["slots"] or 1)
    except ValueError:
        raise bad("slots", f"not an integer: {values['slots']!r}") from None
    if not 1 <= slots <= MAX_SLOTS:
        raise bad("slots", f"must be between 1 and {MAX_SLOTS} (got {slots})")
    try:
        grace_s = float(values["grace_s"] or 5.0)
    except ValueError:
        raise bad("grace_s", f"not a number: {values['grace_s']!r}") from None
    if not grace_s >= 0:
        raise bad("grace_s", f"must not be negative (got {grace_s:g})")
    log_level = (values["log_level"] or "INFO").upper()
    if log_level not in LOG_LEVELS:
        raise bad("log_level", f"must be {', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]} "
                               f"(got {values['log_level']!r})")
    from corral_telemetry.logs import check_log_format

    log_format = (raw("log_format") or "text").lower()
    problem = check_log_format(log_format)
    if problem:
        raise bad("log_format", f"{problem} (got {raw('log_format')!r})")
    metrics_listen = raw("metrics_listen") or ""
    if metrics_listen:
        from corral_telemetry.prometheus import parse_listen

        try:
            parse_listen(metrics_listen)
        except ValueError as exc:
            raise bad("metrics_listen", str(exc)) from None
    label_flags = getattr(args, "label", None)
    if label_flags:  # flags win over the environment, as for every other setting
        labels = dict(label_flags)
    else:
        try:
            labels = dict(_labels_from_env(environ.get(ENV_LABELS, "")))
        except argparse.ArgumentTypeError as exc:
            raise bad("label", str(exc)) from None
    plaintext_text = (raw("plaintext") or "false").strip().lower()
    if plaintext_text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise bad("plaintext", f"not a boolean: {plaintext_text!r}")
    security = ClientSecurity(ca_file=raw("ca_file") or "", cert_file=raw("cert_file") or "",
                              key_file=raw("key_file") or "", token=raw("token") or "",
                              plaintext=plaintext_text in ("1", "true", "yes", "on"))
    problem = security.problem()
    if problem:
        raise bad("cert_file" if "go together" in problem else "plaintext", problem)
    return ActorConfig(coordinator=str(values["coordinator"]), app=str(values["app"]), slots=slots,
                       actor_id=values["actor_id"] or default_actor_id(), grace_s=grace_s, labels=labels,
                       log_level=log_level, security=security, log_format=log_format,
                       metrics_listen=metrics_listen, otlp_endpoint=raw("otlp_endpoint") or "",
                       trace_file=raw("trace_file") or "")


def _aio_credentials(config: ActorConfig):
    """TLS credentials for the coordinator (None: plaintext); OSError if a file is unreadable."""
    return config.security.channel_credentials(config.coordinator)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the actor described by parsed ``args``; returns the exit code."""
    try:
        config = resolve_settings(args)
    except ActorConfigError as exc:
        print(f"corral actor: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(config.log_level)
    actor_id = config.actor_id
    try:
        app = load_app(config.app)
    except Exception as exc:  # noqa: BLE001 - report any import problem as usage error
        log.error("cannot load app %r: %s: %s", config.app, type(exc).__name__, exc)
        return EXIT_USAGE
    try:
        session = ActorSession(config.coordinator, app, slots=config.slots, actor_id=actor_id,
                               labels=config.labels, grace_s=config.grace_s,
                               credentials=_aio_credentials(config), call_metadata=config.security.metadata())
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    try:  # metrics, traces, JSON logs: whatever is configured (actor/telemetry.py)
        from actor.telemetry import install as install_telemetry

        install_telemetry(session, metrics_listen=config.metrics_listen, log_format=config.log_format,
                          otlp_endpoint=config.otlp_endpoint, trace_file=config.trace_file)
    except (ValueError, OSError, RuntimeError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    # Per-attempt objects are short-lived and acyclic: collect young garbage less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    try:
        asyncio.run(_run(session))
    except ActorRejected as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except Exception:  # noqa: BLE001
        log.exception("actor %s crashed", actor_id)
        return EXIT_ERROR
    return EXIT_OK


async def _run(session: ActorSession) -> None:
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        force = signals_seen > 1
        log.info("received %s: stopping%s", signal.Signals(signum).name,
                 " now" if force else f" (grace {session.grace_s:g}s; again to force)")
        session.stop(force=force)

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError):  # not the main thread / not supported
            pass
    try:
        await session.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(signum)
            except (NotImplementedError, RuntimeError):
                pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``corral actor``."""
    args = build_parser().parse_args(argv)
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
