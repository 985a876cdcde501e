"""CPU per attempt of an actor process, with telemetry off and on (in one process, no gRPC).

Drives a real ActorSession (the stamp handler of tests/bench/app.py) through an in-memory stream:
leases arrive in batches of --batch (as the coordinator sends them under load), every result is
acknowledged. Measures the process's CPU time per attempt, with the garbage collector tuned as the
actor runner tunes it.

    python -m tests.bench.actor_cpu [--attempts 20000] [--batch 256] [--rounds 5]

Variants: off; metrics; tracing (an attempt span per lease, child of the lease's trace context,
exported to a batching exporter that drops them); both.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from typing import Any

import grpc

from actor.session import ActorSession
from actor.telemetry import ActorTelemetry
from corral.v1 import actor_service_pb2 as pb
from corral_telemetry.tracing import configure_tracing
from tests.bench.app import app

VARIANTS = ("off", "metrics", "tracing", "both")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class _Call:
    def __init__(self) -> None:
        self.responses: asyncio.Queue = asyncio.Queue()
        self.results: asyncio.Queue = asyncio.Queue()

    async def write(self, request: pb.ConnectRequest) -> None:
        if request.results:
            self.results.put_nowait(list(request.results))

    async def read(self) -> Any:
        return await self.responses.get()

    async def done_writing(self) -> None:
        self.responses.put_nowait(grpc.aio.EOF)

    def cancel(self) -> bool:
        return True


class _Channel:
    async def close(self, grace: float | None = None) -> None:
        return None


class _Session(ActorSession):
    def __init__(self, call: _Call, **kwargs: Any) -> None:
        super().__init__("in-memory", app, **kwargs)
        self.call = call

    def _make_channel(self):
        return _Channel()

    def _open_stream(self, channel):
        return self.call


async def run_once(variant: str, n: int, batch: int, tracing) -> float:
    call = _Call()
    session = _Session(call, slots=batch, actor_id="bench")
    if variant != "off":
        session.telemetry = ActorTelemetry(session, tracing=tracing if variant in ("tracing", "both") else None,
                                           metrics=variant in ("metrics", "both"))
    call.responses.put_nowait(pb.ConnectResponse(welcome=pb.Welcome(lease_ttl_ms=3_600_000,
                                                                    heartbeat_interval_ms=3_600_000)))
    runner = asyncio.create_task(session.run())
    await session.wait_connected(5)
    token = 0
    cpu0 = time.process_time()
    done = 0
    while done < n:
        message = pb.ConnectResponse()
        for _ in range(min(batch, n - done)):
            token += 1
            lease = message.leases.add(task_type="stamp", execution_timeout_ms=60_000)
            lease.ref.task_id, lease.ref.attempt, lease.ref.fencing_token = f"t{token}", 1, token
            lease.trace_context["traceparent"] = TRACEPARENT
        call.responses.put_nowait(message)
        got = 0
        acks = pb.ConnectResponse()
        while got < len(message.leases):
            results = await call.results.get()
            got += len(results)
            for r in results:
                acks.acks.add(lease=r.lease, accepted=True)
        call.responses.put_nowait(acks)
        done += got
    cpu = time.process_time() - cpu0
    session.stop(force=True)
    await runner
    return cpu / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    tracing = configure_tracing("bench-actor", trace_file=os.devnull)  # batched, then dropped
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)  # as actor/runner.py
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            results[variant].append(asyncio.run(run_once(variant, args.attempts, args.batch, tracing)))
    base = statistics.median(results["off"])
    for variant in VARIANTS:
        med = statistics.median(results[variant])
        runs = ", ".join(f"{x:.1f}" for x in results[variant])
        print(f"{variant:8s} actor CPU per attempt: median {med:.1f} µs ({med - base:+.1f} µs vs off; runs {runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
