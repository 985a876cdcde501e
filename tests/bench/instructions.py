"""Instructions per task with telemetry off and on, counted by valgrind (deterministic, unlike CPU
time on a shared machine).

Runs ``tests.bench.actor_cpu`` (an actor's work per attempt) or ``tests.bench.dispatch_cpu`` (the
dispatch loop's work per task, with the servicer's submission path) for ONE variant in a child
process under ``valgrind --tool=callgrind``, at two sizes, and reports the difference divided by
the difference in tasks: start-up, imports and warm-up cancel out, and what remains is the
marginal cost of one task (all threads of the process, e.g. the span exporter's batch thread).

    python -m tests.bench.instructions [--side actor|dispatch|both] [--variants off,both]
                                       [--small 2000] [--large 6000]

Slow (valgrind runs Python ~50x slower): about a minute per variant and side. Needs valgrind.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile

SIDES = ("actor", "dispatch")


def _child(side: str, variant: str, n: int) -> None:
    """Run one variant once with ``n`` tasks (inside valgrind)."""
    import gc

    if side == "actor":
        from corral_telemetry.tracing import configure_tracing
        from tests.bench import actor_cpu

        tracing = configure_tracing("bench-actor", trace_file=os.devnull)
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)  # as actor/runner.py
        asyncio.run(actor_cpu.run_once(variant, n, 256, tracing))
        tracing.provider.shutdown()
    else:
        from coordinator.dispatch import loop as loop_mod
        from tests.bench import dispatch_cpu

        loop_mod.INLINE_COMMIT_MAX_RECORDS = 1 << 30
        tracer = dispatch_cpu._tracer()
        gc.collect()
        gc.disable()
        asyncio.run(dispatch_cpu.run_once(variant, n, 1000, tracer))
        tracer.provider.shutdown()


def count(side: str, variant: str, n: int) -> int:
    """Instructions (Ir) of a child process running ``n`` tasks."""
    with tempfile.TemporaryDirectory(prefix="corral-callgrind-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        env = dict(os.environ, PYTHONHASHSEED="0")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
               sys.executable, "-m", "tests.bench.instructions", "--child", side, variant, str(n)]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        text = open(out, encoding="utf-8").read()
    totals = [int(m.group(1)) for m in re.finditer(r"^(?:summary|totals):\s+(\d+)", text, re.M)]
    return max(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=SIDES + ("both",), default="both")
    parser.add_argument("--variants", default="off,both", help="comma-separated: off, metrics, tracing, both")
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=6000)
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    sides = SIDES if args.side == "both" else (args.side,)
    for side in sides:
        base = None
        for variant in args.variants.split(","):
            small = count(side, variant, args.small)
            large = count(side, variant, args.large)
            per_task = (large - small) / (args.large - args.small)
            if base is None:
                base = per_task
            print(f"{side:8s} {variant:8s} instructions per task: {per_task / 1000:.1f}k "
                  f"({(per_task / base - 1) * 100:+.1f}% vs {args.variants.split(',')[0]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
