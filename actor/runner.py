"""The ``corral actor`` command: run an App's handlers against a coordinator.

Owns argument parsing (``build_parser``), loading the user's ``App`` (``load_app``), logging
setup, signal handling and the process exit code.

Invariants:
- Every flag can also come from the environment (CORRAL_COORDINATOR, CORRAL_APP, CORRAL_SLOTS,
  CORRAL_ACTOR_ID, CORRAL_ACTOR_GRACE_S); an explicit flag wins over the environment.
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
from collections.abc import Sequence

from actor.app import App
from actor.errors import ActorRejected
from actor.session import ActorSession, default_actor_id

log = logging.getLogger("actor.runner")

ENV_COORDINATOR = "CORRAL_COORDINATOR"
ENV_APP = "CORRAL_APP"
ENV_SLOTS = "CORRAL_SLOTS"
ENV_ACTOR_ID = "CORRAL_ACTOR_ID"
ENV_GRACE_S = "CORRAL_ACTOR_GRACE_S"

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
    parser.add_argument("--coordinator", metavar="HOST:PORT",
                        help=f"coordinator address (env {ENV_COORDINATOR})")
    parser.add_argument("--app", metavar="MODULE[:ATTR]",
                        help=f"module holding the App, attribute 'app' by default (env {ENV_APP})")
    parser.add_argument("--slots", type=int, metavar="N",
                        help=f"attempts run at once (env {ENV_SLOTS}; default 1)")
    parser.add_argument("--actor-id", metavar="ID",
                        help=f"stable actor name (env {ENV_ACTOR_ID}; default HOSTNAME-PID)")
    parser.add_argument("--grace-s", type=float, metavar="S",
                        help="seconds a canceled or timed-out handler gets before it is abandoned,"
                             f" and to finish running attempts on stop (env {ENV_GRACE_S};"
                             " default 5)")
    parser.add_argument("--label", type=_label, action="append", default=[], metavar="KEY=VALUE",
                        help="actor label (repeatable)")
    parser.add_argument("--log-level", default=os.environ.get("CORRAL_LOG_LEVEL", "INFO"),
                        help="logging level (env CORRAL_LOG_LEVEL; default INFO)")
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


def _from_env(value: object, env: str) -> str | None:
    if value is not None:
        return str(value)
    return os.environ.get(env) or None


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the actor described by parsed ``args``; returns the exit code."""
    _configure_logging(args.log_level)
    coordinator = _from_env(args.coordinator, ENV_COORDINATOR)
    app_spec = _from_env(args.app, ENV_APP)
    if not coordinator or not app_spec:
        missing = [n for n, v in (("--coordinator", coordinator), ("--app", app_spec)) if not v]
        log.error("missing %s (flags or %s / %s)", ", ".join(missing), ENV_COORDINATOR, ENV_APP)
        return EXIT_USAGE
    try:
        slots = int(_from_env(args.slots, ENV_SLOTS) or 1)
        grace_s = float(_from_env(args.grace_s, ENV_GRACE_S) or 5.0)
    except ValueError as exc:
        log.error("bad %s / %s: %s", ENV_SLOTS, ENV_GRACE_S, exc)
        return EXIT_USAGE
    actor_id = _from_env(args.actor_id, ENV_ACTOR_ID) or default_actor_id()
    try:
        app = load_app(app_spec)
    except Exception as exc:  # noqa: BLE001 - report any import problem as usage error
        log.error("cannot load app %r: %s: %s", app_spec, type(exc).__name__, exc)
        return EXIT_USAGE
    try:
        session = ActorSession(coordinator, app, slots=slots, actor_id=actor_id,
                               labels=dict(args.label), grace_s=grace_s)
    except ValueError as exc:
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
