"""CPU per task of the dispatch loop itself, with telemetry off and on (in one process, no gRPC).

Drives a real DispatchLoop (real projection, fleet and LMDB WAL, fsync off: this measures CPU,
not the disk) with the servicer's submission path (TaskService's normalize + SubmissionTracing)
and a simulated actor that answers every lease at once. Every step commits on the loop's thread,
so the thread CPU time spent inside `_step` is the loop's own work per task: decisions, WAL
encoding and commit, leases, and whatever telemetry adds to them.

    python -m tests.bench.dispatch_cpu [--tasks 20000] [--batch 1000] [--rounds 5]

Variants: off; metrics (LoopMetrics called once per step); tracing (a submission span per batch,
trace context in every spec and lease; spans go to a batching exporter that drops them); both;
retention (retention 7 days tracked, snapshots every --snapshot-every records: their capture on
the loop counts, their writing in a worker thread does not).
Prints the median and minimum over rounds of µs of loop CPU per task for each, run interleaved,
with the garbage collector off unless --gc (it adds the same random pauses to every variant).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time

from corral.v1 import actor_service_pb2, task_pb2

from coordinator.coordinator import GC_THRESHOLDS
from coordinator.core.fleet import Fleet
from coordinator.core.projection import Projection
from coordinator.core.spec import SpecLimits, normalize_spec
from coordinator.core.states import State
from coordinator.dispatch import commands as C
from coordinator.dispatch import loop as loop_mod
from coordinator.dispatch.actor_link import ActorLink
from coordinator.storage.wal import WriteAheadLog
from coordinator.telemetry.metrics import LoopMetrics
from coordinator.telemetry.tracing import SubmissionTracing

VARIANTS = ("off", "metrics", "tracing", "both", "retention")
SNAPSHOT_EVERY = [100_000]  # --snapshot-every (variant "retention": retention 7 days + snapshots)
SNAPSHOT_CAPTURE_MS: list[float] = []  # per snapshot of variant "retention": the loop's stall


class _GrpcContext:
    def invocation_metadata(self):
        return ()


def _tracer():
    """Tracing as the coordinator sets it up with --trace-file /dev/null (batched, then dropped)."""
    from corral_telemetry.tracing import configure_tracing

    return configure_tracing("bench-coordinator", trace_file=os.devnull)


METRICS_CPU: list[float] = []  # per run with metrics: µs per task inside LoopMetrics.step_committed


async def run_once(variant: str, n: int, batch: int, tracer) -> float:
    """µs of loop-thread CPU per task inside the loop's steps."""
    with tempfile.TemporaryDirectory(prefix="corral-dispatch-cpu-") as tmp:
        wal = WriteAheadLog(tmp, sync=False)
        retention = variant == "retention"
        projection = Projection(track_expiry=retention)
        metrics = LoopMetrics(projection) if variant in ("metrics", "both") else None
        snapshotter = None
        if retention:
            from coordinator.dispatch.snapshotter import Snapshotter
            from coordinator.storage.snapshots import SnapshotStore
            snapshotter = Snapshotter(SnapshotStore(wal), projection, SNAPSHOT_EVERY[0])
        loop = loop_mod.DispatchLoop(wal, projection, Fleet(lease_ttl_ms=60_000), coordinator_id="bench",
                                     heartbeat_interval_ms=20_000, metrics=metrics,
                                     retention_ms=7 * 86_400_000 if retention else 0, snapshotter=snapshotter)
        step_cpu = 0.0
        original_step = loop._step

        async def timed_step(commands):
            nonlocal step_cpu
            t0 = time.thread_time()
            await original_step(commands)
            step_cpu += time.thread_time() - t0

        loop._step = timed_step
        metrics_cpu = 0.0
        if metrics is not None:
            original_hook = metrics.step_committed

            class Timed:
                def step_committed(self, *args):
                    nonlocal metrics_cpu
                    t0 = time.thread_time()
                    original_hook(*args)
                    metrics_cpu += time.thread_time() - t0

            loop.metrics = Timed()
        runner = asyncio.create_task(loop.run())
        link = ActorLink()
        hello = actor_service_pb2.Hello(identity=task_pb2.ExecutorIdentity(
            actor_id="sim", incarnation="1", task_types=["stamp"], slots=512))
        await loop.call(lambda f: C.ActorHello(link, hello, f))

        async def actor() -> None:
            while True:
                message = await link.queue.get()
                if message.leases:
                    request = actor_service_pb2.ConnectRequest()
                    for lease in message.leases:
                        request.results.add(lease=lease.ref, outcome=task_pb2.ATTEMPT_OUTCOME_SUCCEEDED)
                    loop.post(C.ActorUpdate(link, request))

        actor_task = asyncio.create_task(actor())
        tracing = SubmissionTracing(tracer if variant in ("tracing", "both") else None)
        limits = SpecLimits()
        for i in range(0, n, batch):
            specs = [task_pb2.TaskSpec(type="stamp") for _ in range(min(batch, n - i))]
            fields = [f"tasks[{j}]" for j in range(len(specs))]
            now_ms = loop.now_ms()
            for spec, field in zip(specs, fields):
                normalize_spec(spec, field, limits, now_ms)
            await tracing.submit("SubmitTasks", _GrpcContext(), specs,
                                 lambda: loop.call(lambda f: C.SubmitTasks(specs, fields, f)))
        while projection.state_counts[State.SUCCEEDED] < n:
            await asyncio.sleep(0.001)
        loop.stop()
        actor_task.cancel()
        await runner
        if snapshotter is not None:
            await snapshotter.wait()
            if snapshotter.written:
                SNAPSHOT_CAPTURE_MS.append(snapshotter.max_capture_s * 1000)
        wal.close()
        if metrics is not None:
            METRICS_CPU.append(metrics_cpu / n * 1e6)
        return step_cpu / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--snapshot-every", type=int, default=100_000,
                        help="variant retention: a snapshot every this many WAL records")
    parser.add_argument("--gc", action="store_true",
                        help="keep the garbage collector on (as in the coordinator: its pauses land at random "
                             "in some step and make the figures much noisier)")
    args = parser.parse_args(argv)
    # Every step commits on the loop's thread, so its CPU is measured whole (see the docstring).
    loop_mod.INLINE_COMMIT_MAX_RECORDS = 1 << 30
    SNAPSHOT_EVERY[0] = args.snapshot_every
    tracer = _tracer()
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    if args.gc:
        gc.set_threshold(*GC_THRESHOLDS)  # as the coordinator runs (coordinator.tune_gc)
    for _ in range(args.rounds):
        for variant in VARIANTS:
            gc.collect()
            if not args.gc:
                gc.disable()
            results[variant].append(asyncio.run(run_once(variant, args.tasks, args.batch, tracer)))
            gc.enable()
    base_med = statistics.median(results["off"])
    base_min = min(results["off"])
    for variant in VARIANTS:
        med = statistics.median(results[variant])
        low = min(results[variant])
        runs = ", ".join(f"{x:.1f}" for x in results[variant])
        print(f"{variant:8s} loop CPU per task: median {med:.1f} µs ({(med / base_med - 1) * 100:+.1f}%), "
              f"min {low:.1f} µs ({(low / base_min - 1) * 100:+.1f}%) vs off; runs {runs}")
    print(f"of which inside LoopMetrics.step_committed: median {statistics.median(METRICS_CPU):.2f} µs per task")
    if SNAPSHOT_CAPTURE_MS:
        print(f"retention: longest snapshot capture on the loop (its stall): median {statistics.median(SNAPSHOT_CAPTURE_MS):.1f} ms "
              f"(snapshot every {args.snapshot_every} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
