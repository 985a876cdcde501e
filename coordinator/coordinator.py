"""The coordinator process: open the WAL, replay it, run the dispatch loop, serve gRPC.

Owns: start-up and shutdown order.
- Start: open LMDB; load the latest snapshot, if any (storage/snapshots.py, core/snapshot.py);
  replay every record after it (a corrupt record stops start-up
  with its sequence number, unless truncation was asked for; a snapshot that cannot be loaded
  stops it too, exit 3 like a corrupt record); give RUNNING attempts a fresh lease
  so actors can re-present them; start the loop; only then serve, and report SERVING on health.
- Stop: health NOT_SERVING; drain (submissions get UNAVAILABLE, no new leases) until no connected
  actor holds a lease or `drain_grace_s` passed (dispatch/operations.py); close actor streams and
  watches; stop accepting RPCs and let in-flight ones finish within the grace; stop the loop after
  its current step's commit; let a snapshot being written finish; close LMDB.
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
from .core import snapshot as snapshot_mod
from .core.projection import Projection
from .dispatch.loop import DispatchLoop
from .dispatch.operations import drain_for_shutdown
from .dispatch.snapshotter import Snapshotter
from .dispatch.snapshotter import enable as enable_snapshots
from .server.grpc_server import SERVICE_NAMES, build_server
from .storage.codec import CorruptRecordError
from .storage.snapshots import SnapshotCorrupt, SnapshotStore
from .storage.wal import HIGHEST_TOKEN_KEY, WriteAheadLog
from .telemetry.metrics import LoopMetrics, start_coordinator_metrics
from .telemetry.tracing import SubmissionTracing

log = logging.getLogger("corral.coordinator")


class WalCorrupt(Exception):
    """Start-up refused: the WAL has a bad record and truncation was not asked for, or the latest
    snapshot cannot be loaded (missing or damaged parts: truncating the WAL cannot repair it)."""


def replay(wal: WriteAheadLog, projection: Projection, truncate_corrupt: bool, from_seq: int = 1) -> int:
    """Apply every WAL record from `from_seq` on to `projection`; returns how many were applied."""
    applied = 0
    try:
        for record in wal.records(from_seq):
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


def load_snapshot(store: SnapshotStore, projection: Projection) -> int:
    """Load the latest snapshot into a fresh `projection`; returns its seq (0: none)."""
    loaded = store.load()
    if loaded is None:
        return 0
    head, rows = loaded
    snapshot_mod.load(projection, head, rows)
    return head.seq


def restore(wal: WriteAheadLog, projection: Projection, truncate_corrupt: bool) -> tuple[int, int]:
    """Latest snapshot, then the WAL records after it: (snapshot seq or 0, records replayed).

    The cyclic garbage collector is off meanwhile: everything built is kept (tune_gc freezes it
    afterwards), and its passes over the growing projection cost more than the building itself."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            snapshot_seq = load_snapshot(SnapshotStore(wal), projection)
        except (SnapshotCorrupt, snapshot_mod.SnapshotMismatch) as exc:
            raise WalCorrupt(f"the latest snapshot cannot be loaded: {exc}. Refusing to start rather than drop "
                             f"data (--truncate-corrupt-wal does not apply to snapshots)") from exc
        return snapshot_seq, replay(wal, projection, truncate_corrupt, snapshot_seq + 1)
    finally:
        if was_enabled:
            gc.enable()


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
                                priority_aging_ms=config.priority_aging_ms, track_expiry=config.retention_ms > 0)
        if config.snapshot_every_records:
            enable_snapshots(projection)  # before the tail: tasks finishing in it need rows
        snapshot_seq, applied = await asyncio.to_thread(restore, self.wal, projection, config.truncate_corrupt_wal)
        snapshotter = (Snapshotter(SnapshotStore(self.wal), projection, config.snapshot_every_records, snapshot_seq)
                       if config.snapshot_every_records else None)
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
            admission=Admission(config.max_queued_tasks, config.rate_limit_map, int(time.monotonic() * 1000)),
            retention_ms=config.retention_ms, snapshotter=snapshotter)
        restored = self.loop.restore_leases()
        tune_gc()
        log.info("loaded snapshot %d and replayed %d WAL records after it (%d tasks, %d running attempts kept "
                 "for re-adoption) in %.3f s", snapshot_seq, applied, len(projection.tasks), restored,
                 time.perf_counter() - started)
        if projection.paused:
            log.warning("dispatch is paused (%s): no lease is granted until AdminService.Resume (corral resume)",
                        projection.pause_reason)
        self._loop_task = asyncio.create_task(self.loop.run(), name="dispatch-loop")
        self._server, self._health, self.port = build_server(config, self.loop,
                                                             SubmissionTracing(tracing))
        await self._server.start()
        if metrics is not None:
            try:
                self._metrics_server, self.metrics_port = start_coordinator_metrics(config.metrics_listen, self.loop,
                                                                                    metrics)
            except OSError as exc:
                raise OSError(f"--metrics-listen / CORRAL_METRICS_LISTEN: cannot listen on {config.metrics_listen}: "
                              f"{exc.strerror or exc}") from None
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
        if self.loop is not None and self.loop.snapshotter is not None:
            await self.loop.snapshotter.wait()
        if self.wal is not None:
            self.wal.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        shutdown_tracing()
