"""The `corral` command: one entry point, a subcommand per role.

    corral coordinator [--listen HOST:PORT] [--data-dir DIR] ...   run the coordinator
    corral actor --coordinator HOST:PORT --app MODULE [--slots N]  run an actor process
    corral submit|get|cancel|watch|list|status ...                 talk to a coordinator
    corral pause|resume|drain|events ...                           operate it (pause dispatch, drain, task events)
    corral schedule create|get|list|pause|resume|delete ...        cron and interval schedules

Client commands print for people by default and JSON with --json; their exit codes and the one-line
error format are in `cli_output.py` (EXIT_CODES_HELP, shown by `corral --help`).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from . import config as config_mod
from .cli_output import EXIT_CODES_HELP, EXIT_USAGE, error_line
from .client_commands import add_client_commands, run_client_command


class OneLineErrorParser(argparse.ArgumentParser):
    """A usage mistake is one line on stderr, `corral: error: USAGE: ...`, and exit 2 (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, error_line("USAGE", f"{message} (see `{self.prog} --help`)") + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="corral", description="Corral task-execution cluster",
                                epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("coordinator", help="run the coordinator")
    config_mod.add_arguments(p)
    sub.add_parser("actor", help="run an actor process (see `corral actor --help`)", add_help=False)
    add_client_commands(sub, EXIT_CODES_HELP)
    return parser


async def serve(config: config_mod.CoordinatorConfig) -> int:
    from .coordinator import Coordinator

    coordinator = Coordinator(config)
    await coordinator.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(coordinator.wait())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    fatal = coordinator.loop.fatal_error if coordinator.loop else None
    logging.getLogger("corral.coordinator").info("shutting down")
    hurry = asyncio.Event()  # a second SIGTERM/SIGINT ends the drain at once
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, hurry.set)
    await coordinator.stop(hurry)
    waiter.cancel()
    stopper.cancel()
    return 1 if fatal is not None else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "actor":
        from actor.runner import main as actor_main

        return actor_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "coordinator":
        try:
            config = config_mod.from_arguments(args)
        except config_mod.ConfigError as exc:
            print(f"corral coordinator: invalid configuration: {exc}", file=sys.stderr)
            return 2
        from .server.auth import TokensFileError, load_tokens
        from .server.tls import listener_problem

        problem = listener_problem(config)
        if problem is None and config.tokens_file:
            try:
                load_tokens(config.tokens_file)
            except TokensFileError as exc:
                problem = str(exc)
        if problem:
            print(f"corral coordinator: invalid configuration: {problem}", file=sys.stderr)
            return 2
        from corral_telemetry.logs import configure_logging
        from corral_telemetry.tracing import TracingUnavailable

        configure_logging(config.log_level, config.log_format)
        import lmdb

        from .coordinator import WalCorrupt

        try:
            return asyncio.run(serve(config))
        except WalCorrupt as exc:
            print(f"corral coordinator: {exc}", file=sys.stderr)
            return 3
        except (OSError, TracingUnavailable) as exc:
            print(f"corral coordinator: {exc}", file=sys.stderr)
            return 2
        except lmdb.Error as exc:  # not an OSError: a map size the host cannot map, a read-only dir
            print(f"corral coordinator: cannot open the write-ahead log in {config.data_dir!r} "
                  f"(--data-dir / CORRAL_DATA_DIR, --wal-map-size-bytes / CORRAL_WAL_MAP_SIZE_BYTES): {exc}",
                  file=sys.stderr)
            return 2
    return run_client_command(args)


if __name__ == "__main__":
    sys.exit(main())
