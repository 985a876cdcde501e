"""The coordinator process: open the WAL, replay it, run the dispatch loop, serve gRPC.

Owns: start-up and shutdown order.
- Start: open LMDB; replay every record into a fresh projection (a corrupt record stops start-up
  with its sequence number, unless truncation was asked for); give RUNNING attempts a fresh lease
  so actors can re-present them; start the loop; only then serve, and report SERVING on health.
- Stop: health NOT_SERVING; drain (submissions get UNAVAILABLE, no new leases) until no connected
  actor holds a lease or `drain_grace_s` passed (dispatch/operations.py); close actor streams and
  watches; stop accepting RPCs and let in-flight ones finish within the grace; stop the loop after
  its current step's commit; close LMDB.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Callable

from grpc_health.v1 import health_pb2

from corral_telemetry.tracing import configure_tracing, shutdown_tracing

from .config import CoordinatorConfig
from .core.admission import Admission
from .core.fleet import Fleet
from .core.projection import Projection
from .dispatch.loop import DispatchLoop
from .dispatch.operations import drain_for_shutdown
from .server.grpc_server import SERVICE_NAMES, build_server
from .storage.codec import CorruptRecordError
from .storage.wal import HIGHEST_TOKEN_KEY, WriteAheadLog
from .telemetry.metrics import LoopMetrics, start_coordinator_metrics
from .telemetry.tracing import SubmissionTracing

log = logging.getLogger("corral.coordinator")


class WalCorrupt(Exception):
    """Start-up refused: the WAL has a bad record and truncation was not asked for."""


def replay(wal: WriteAheadLog, projection: Projection, truncate_corrupt: bool) -> int:
    """Apply every WAL record to `projection`; returns how many were applied."""
    applied = 0
    try:
        for record in wal.records():
            projection.apply(record, record.at_unix_ms)
            applied += 1
    except CorruptRecordError as exc:
        if not truncate_corrupt:
            raise WalCorrupt(
                f"{exc}. Refusing to start rather than drop data; to discard record {exc.seq} and every record "
                f"after it, start once with --truncate-corrupt-wal (CORRAL_TRUNCATE_CORRUPT_WAL=true)") from exc
        dropped = wal.truncate_from(exc.seq)
        log.warning("WAL record %d is corrupt (%s): truncated %d records from it on", exc.seq, exc.reason, dropped)
    return applied


# The projection holds millions of long-lived objects that are never garbage: the default
# thresholds make the cyclic collector rescan them constantly (measured: ~20% of dispatch CPU).
GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """Move everything alive now (the replayed projection) out of the collector's sight."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Coordinator:
    def __init__(self, config: CoordinatorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.wal: WriteAheadLog | None = None
        self.loop: DispatchLoop | None = None
        self.port = 0
        self._server = None
        self._health = None
        self._loop_task: asyncio.Task | None = None
        self._metrics_server = None
        self.metrics_port = 0

    async def start(self) -> None:
        config = self.config
        started = time.perf_counter()
        self.wal = await asyncio.to_thread(WriteAheadLog, config.data_dir, map_size_bytes=config.wal_map_size_bytes)
        projection = Projection(deadline_grace_ms=int(config.deadline_grace_s * 1000),
                                priority_aging_ms=config.priority_aging_ms)
        applied = await asyncio.to_thread(replay, self.wal, projection, config.truncate_corrupt_wal)
        stored = self.wal.get_meta(HIGHEST_TOKEN_KEY)
        if stored is not None and int.from_bytes(stored, "big") > projection.highest_token:
            # Grants were truncated away with a corrupt tail: never reissue their tokens.
            projection.highest_token = int.from_bytes(stored, "big")
        fleet = Fleet(lease_ttl_ms=config.lease_ttl_ms)
        # Telemetry (coordinator/telemetry/): off unless configured; then one call per loop step.
        metrics = LoopMetrics(projection) if config.metrics_listen else None
        tracing = configure_tracing("corral-coordinator", instance_id=config.effective_coordinator_id,
                                    otlp_endpoint=config.otlp_endpoint, trace_file=config.trace_file)
        self.loop = DispatchLoop(
            self.wal, projection, fleet, coordinator_id=config.effective_coordinator_id,
            heartbeat_interval_ms=config.heartbeat_interval_ms, max_queued_commands=config.max_queued_commands,
            max_queued_events=config.max_queued_events, max_actors=config.max_actors,
            clock=self.clock, metrics=metrics, max_task_depth=config.max_task_depth,
            admission=Admission(config.max_queued_tasks, config.rate_limit_map, int(time.monotonic() * 1000)))
        restored = self.loop.restore_leases()
        tune_gc()
        log.info("replayed %d WAL records (%d tasks, %d running attempts kept for re-adoption) in %.3f s",
                 applied, len(projection.tasks), restored, time.perf_counter() - started)
        if projection.paused:
            log.warning("dispatch is paused (%s): no lease is granted until AdminService.Resume (corral resume)",
                        projection.pause_reason)
        self._loop_task = asyncio.create_task(self.loop.run(), name="dispatch-loop")
        self._server, self._health, self.port = build_server(config, self.loop,
                                                             SubmissionTracing(tracing))
        await self._server.start()
        if metrics is not None:
            self._metrics_server, self.metrics_port = start_coordinator_metrics(config.metrics_listen, self.loop, metrics)
            log.info("serving Prometheus metrics on %s (port %d)", config.metrics_listen, self.metrics_port)
        for name in ("",) + SERVICE_NAMES:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        host = config.listen.rpartition(":")[0]
        log.info("corral coordinator %s listening on %s:%d (data dir %s)",
                 config.effective_coordinator_id, host, self.port, config.data_dir)

    async def wait(self) -> None:
        """Until the server stops or the dispatch loop dies."""
        assert self._server is not None and self._loop_task is not None
        server_done = asyncio.create_task(self._server.wait_for_termination())
        await asyncio.wait({server_done, self._loop_task}, return_when=asyncio.FIRST_COMPLETED)
        server_done.cancel()

    async def stop(self, hurry: asyncio.Event | None = None) -> None:
        """Shut down; `hurry` (a second signal) cuts the drain short."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self.loop is not None and self._loop_task is not None and not self._loop_task.done():
            await drain_for_shutdown(self.loop, self._loop_task, self.config.drain_grace_s, hurry)
        if self.loop is not None:
            self.loop.close_streams("coordinator is shutting down")
        if self._server is not None:
            await self._server.stop(self.config.shutdown_grace_s)
        if self.loop is not None:
            self.loop.stop()
        if self._loop_task is not None:
            try:
                await self._loop_task
            except BaseException:  # noqa: BLE001 - already logged by the loop
                pass
        if self.wal is not None:
            self.wal.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        shutdown_tracing()
