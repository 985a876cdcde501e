"""`make bench`: end-to-end throughput and submit-to-start latency of a real cluster.

Starts a coordinator (durable WAL: LMDB fsync on every commit) and 2 actor processes on loopback,
then either
  --mode throughput: submits N tasks (default 20,000) with SubmitTasks in batches, waits until
    all have succeeded, and prints tasks/s, submit-to-start latency p50/p99 and the coordinator's
    peak RSS; the line `throughput: N tasks/s` is for scripts;
  --mode latency: single SubmitTask calls at a light offered load (~200/s) and the latency from
    submit to handler start.
Handler start times come from the `stamp` handler (tests/bench/app.py) via the task outputs.
With --telemetry every process runs with metrics on (--metrics-listen, scraped once at the end)
and tracing on (a span per submission call and per attempt, the trace context in every task and
lease; --trace-file /dev/null: the spans are made, sampled and batched, then dropped without
being serialized, so what is measured is tracing itself, not an exporter), to compare with a run
without (the figure to keep within 10% of).
Not a test: figures depend on the machine; report them with the machine noted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from corral.v1 import task_pb2, task_service_pb2

from tests.e2e.harness import Cluster, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_report(cluster: Cluster, before: dict[str, float]) -> str:
    now = {name: cpu_seconds(pid) for name, pid in cluster_pids(cluster).items()}
    now["client"] = time.process_time()
    return ", ".join(f"{name} {now[name] - before.get(name, 0.0):.2f} s" for name in now)


def cluster_pids(cluster: Cluster) -> dict[str, int]:
    pids = {"coordinator": cluster.coordinator.pid}
    pids.update({name: proc.pid for name, proc in cluster.actors.items()})
    return pids


def collect_start_times(cluster: Cluster, expected: int) -> dict[str, float]:
    started: dict[str, float] = {}
    token = ""
    while True:
        resp = cluster.tasks.ListTasks(task_service_pb2.ListTasksRequest(
            states=[task_pb2.TASK_STATE_SUCCEEDED], type="stamp", page_size=1000, page_token=token), timeout=60)
        for t in resp.tasks:
            started[t.task_id] = t.output.struct_value.fields["started_unix"].number_value
        token = resp.next_page_token
        if not token:
            break
    assert len(started) == expected, f"{len(started)} of {expected} tasks succeeded"
    return started


def run_throughput(cluster: Cluster, n: int, batch: int) -> None:
    submitted_at: dict[str, float] = {}
    cpu_before = {name: cpu_seconds(pid) for name, pid in cluster_pids(cluster).items()}
    cpu_before["client"] = time.process_time()
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        specs = [task_pb2.TaskSpec(type="stamp") for _ in range(min(batch, n - i))]
        sent = time.time()
        resp = cluster.tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(tasks=specs), timeout=60)
        for r in resp.results:
            submitted_at[r.task_id] = sent

    def done() -> bool:
        status = cluster.admin.GetClusterStatus(admin_request(), timeout=10)
        return {c.state: c.count for c in status.tasks_by_state}.get(task_pb2.TASK_STATE_SUCCEEDED, 0) >= n

    wait_for(done, 600, f"{n} tasks to succeed", interval_s=0.005)
    elapsed = time.perf_counter() - t0
    cpu = cpu_report(cluster, cpu_before)
    starts = collect_start_times(cluster, n)
    latencies_ms = [(starts[tid] - submitted_at[tid]) * 1000 for tid in submitted_at]
    print(f"tasks: {n} in {elapsed:.2f} s (SubmitTasks batches of {batch}, 2 actors)")
    print(f"throughput: {n / elapsed:.0f} tasks/s")
    print(f"submit-to-start latency: p50 {percentile(latencies_ms, 50):.1f} ms, p99 {percentile(latencies_ms, 99):.1f} ms")
    print(f"coordinator peak RSS: {peak_rss_mib(cluster.coordinator.pid):.0f} MiB")
    print(f"CPU time during the run: {cpu}")
    coordinator_cpu = cpu_seconds(cluster.coordinator.pid) - cpu_before["coordinator"]
    print(f"coordinator CPU per task: {coordinator_cpu / n * 1e6:.0f} µs")


def run_latency(cluster: Cluster, n: int, rate_per_s: float) -> None:
    submitted_at: dict[str, float] = {}
    interval = 1.0 / rate_per_s
    next_at = time.perf_counter()
    for _ in range(n):
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += interval
        sent = time.time()
        resp = cluster.tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=task_pb2.TaskSpec(type="stamp")), timeout=10)
        submitted_at[resp.task_id] = sent

    def done() -> bool:
        status = cluster.admin.GetClusterStatus(admin_request(), timeout=10)
        return {c.state: c.count for c in status.tasks_by_state}.get(task_pb2.TASK_STATE_SUCCEEDED, 0) >= n

    wait_for(done, 120, f"{n} tasks to succeed")
    starts = collect_start_times(cluster, n)
    latencies_ms = [(starts[tid] - submitted_at[tid]) * 1000 for tid in submitted_at]
    print(f"light load: {n} single SubmitTask calls at ~{rate_per_s:.0f}/s")
    print(f"submit-to-start latency: p50 {percentile(latencies_ms, 50):.2f} ms, "
          f"p99 {percentile(latencies_ms, 99):.2f} ms, mean {statistics.fmean(latencies_ms):.2f} ms")


def print_scrape(ports: list[int]) -> None:
    """One scrape of each process (what Prometheus would do every 15 s), with its time."""
    import urllib.request

    for port, name in zip(ports, ["coordinator", "bench-actor-1", "bench-actor-2"]):
        t0 = time.perf_counter()
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        took_ms = (time.perf_counter() - t0) * 1000
        wanted = ("corral_attempts_total{", "corral_actor_attempts_finished_total{", "corral_tasks{state=\"succeeded\"}",
                  "corral_wal_commits_total ")
        lines = [line for line in text.splitlines() if line.startswith(wanted)]
        print(f"scrape {name}: {len(text)} bytes in {took_ms:.1f} ms; " + "; ".join(lines))


def admin_request():
    from corral.v1 import admin_service_pb2

    return admin_service_pb2.GetClusterStatusRequest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["throughput", "latency"], default="throughput")
    parser.add_argument("--tasks", type=int, default=None, help="default 20000 (throughput), 2000 (latency)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--telemetry", action="store_true",
                        help="metrics and tracing on in every process (spans exported to /dev/null)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        cluster = Cluster(Path(tmp), lease_ttl_s=15)
        metrics_ports: list[int] = []
        coordinator_flags: tuple[str, ...] = ()
        actor_env: dict[str, str] = {}
        if args.telemetry:
            metrics_ports = [free_port() for _ in range(3)]
            coordinator_flags = ("--metrics-listen", f"127.0.0.1:{metrics_ports[0]}", "--trace-file", os.devnull)
            actor_env = {"CORRAL_TRACE_FILE": os.devnull}
        print(f"telemetry: {'metrics + tracing on' if args.telemetry else 'off'}")
        try:
            cluster.start_coordinator(*coordinator_flags)
            for i in range(2):
                extra = ("--metrics-listen", f"127.0.0.1:{metrics_ports[i + 1]}") if args.telemetry else ()
                cluster.start_actor(f"bench-actor-{i + 1}", slots=args.slots, app="tests.bench.app", extra=extra,
                                    env=actor_env)
            if args.mode == "throughput":
                run_throughput(cluster, args.tasks or 20_000, args.batch)
            else:
                run_latency(cluster, args.tasks or 2_000, args.rate)
            if metrics_ports:
                print_scrape(metrics_ports)
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
