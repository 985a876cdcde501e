"""Telemetry end to end, with real processes.

- One trace from a client's span, through the coordinator's submission span, to the actor's
  attempt span and the handler's own span, across both process boundaries (each process writes
  its finished spans as JSON lines, CORRAL_TRACE_FILE / --trace-file); the trace context is in
  the WAL, so it survives a coordinator restart; with tracing off on the coordinator the caller's
  context still reaches the attempt.
- The Prometheus endpoints of the coordinator and of an actor serve the metrics, and they move
  when tasks run; state gauges agree with GetClusterStatus.
- JSON logs: a handler's own log line carries its task id, attempt and trace id.
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from corral.v1 import admin_service_pb2, task_pb2, task_service_pb2
from corral_telemetry.tracing import inject_metadata, read_span_file

from .harness import Cluster, free_port, wait_for
from .raw_actor import RawActor

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

# Export spans within 50 ms instead of the SDK's 5 s (the tests poll the files with deadlines).
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}
APP = "tests.e2e.telemetry_app"
SUCCEEDED = task_pb2.TASK_STATE_SUCCEEDED


@pytest.fixture
def client_tracer():
    """The test process's own tracer (not the global one), keeping its spans in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("e2e-client"), exporter
    provider.shutdown()


def submit_traced(cluster: Cluster, tracer, task_type: str, **fields) -> tuple[str, trace.SpanContext]:
    """SubmitTask inside a client span whose context goes in the call's gRPC metadata."""
    with tracer.start_as_current_span("client-submit") as span:
        request = task_service_pb2.SubmitTaskRequest(task=task_pb2.TaskSpec(type=task_type, **fields))
        reply = cluster.tasks.SubmitTask(request, metadata=inject_metadata(), timeout=10)
    return reply.task_id, span.get_span_context()


def spans_named(path: Path, name: str, task_id: str) -> list[dict]:
    return [s for s in read_span_file(str(path))
            if s["name"] == name and task_id in (s["attributes"].get("corral.task.id"),
                                                 *s["attributes"].get("corral.task.ids", ()))]


def wait_span(path: Path, name: str, task_id: str) -> dict:
    [span] = wait_for(lambda: spans_named(path, name, task_id), 20, f"span {name} of {task_id} in {path.name}")
    return span


def hex_trace(ctx: trace.SpanContext) -> str:
    return format(ctx.trace_id, "032x")


def test_one_trace_from_the_client_through_the_coordinator_to_the_attempt_and_the_handler(
        make_cluster, client_tracer, tmp_path):
    tracer, client_spans = client_tracer
    coordinator_spans, actor_spans = tmp_path / "coordinator.jsonl", tmp_path / "actor.jsonl"
    cluster = make_cluster()
    cluster.start_coordinator("--trace-file", str(coordinator_spans), env=FAST_EXPORT)
    cluster.start_actor("traced-actor", app=APP,
                        env={**FAST_EXPORT, "CORRAL_TRACE_FILE": str(actor_spans), "CORRAL_LOG_FORMAT": "json"})

    for task_type, handler_span in (("traced", "handler-work"), ("traced_sync", "handler-work-sync")):
        task_id, client = submit_traced(cluster, tracer, task_type)
        task = cluster.wait_state(task_id)
        assert task.state == SUCCEEDED, task

        submission = wait_span(coordinator_spans, "corral.v1.TaskService/SubmitTask", task_id)
        attempt = wait_span(actor_spans, "corral.attempt", task_id)
        [handler] = wait_for(lambda: [s for s in read_span_file(str(actor_spans)) if s["name"] == handler_span
                                      and s["parent_span_id"] == attempt["span_id"]], 20, "the handler's span")
        # One trace: the client's.
        assert {submission["trace_id"], attempt["trace_id"], handler["trace_id"]} == {hex_trace(client)}
        # The parent chain: client -> submission (coordinator) -> attempt (actor) -> handler's span.
        assert submission["parent_span_id"] == format(client.span_id, "016x") and submission["parent_is_remote"]
        assert attempt["parent_span_id"] == submission["span_id"] and attempt["parent_is_remote"]
        assert submission["service_name"] == "corral-coordinator" and attempt["service_name"] == "corral-actor"
        # The task keeps the submission span's context (in the WAL), and the attempt says what ran.
        assert task.spec.trace_context["traceparent"].split("-")[1:3] == [submission["trace_id"], submission["span_id"]]
        assert attempt["attributes"] == {
            "corral.task.id": task_id, "corral.task.type": task_type, "corral.attempt": 1,
            "corral.fencing_token": task.attempts[0].fencing_token, "corral.outcome": "succeeded"}
        assert submission["attributes"]["corral.task.created"] is True
        # JSON logs: the handler's own line (async, or sync in a thread) carries task, attempt, trace.
        [line] = wait_for(lambda: [x for x in json_log_lines(cluster, "traced-actor")
                                   if x["message"].endswith(f"working on {task_id}")], 10, "the handler's log line")
        assert (line["task_id"], line["attempt"], line["trace_id"]) == (task_id, 1, hex_trace(client))
        assert line["level"] == "INFO" and line["logger"] == "telemetry_app" and line["span_id"] == handler["span_id"]
    assert [s.name for s in client_spans.get_finished_spans()] == ["client-submit", "client-submit"]


def json_log_lines(cluster: Cluster, name: str) -> list[dict]:
    path = next(cluster.workdir.glob(f"*-{name}.log"))
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_the_trace_context_is_in_the_wal_and_survives_a_coordinator_restart(make_cluster, client_tracer, tmp_path):
    tracer, _ = client_tracer
    coordinator_spans, actor_spans = tmp_path / "coordinator.jsonl", tmp_path / "actor.jsonl"
    cluster = make_cluster()
    cluster.start_coordinator("--trace-file", str(coordinator_spans), env=FAST_EXPORT)
    task_id, client = submit_traced(cluster, tracer, "traced")  # no actor yet: it waits, READY
    submission = wait_span(coordinator_spans, "corral.v1.TaskService/SubmitTask", task_id)

    cluster.kill(cluster.coordinator)  # SIGKILL: only what the WAL holds comes back
    cluster.start_coordinator(env=FAST_EXPORT)  # and this one does not even trace
    cluster.start_actor("late-actor", app=APP, env={**FAST_EXPORT, "CORRAL_TRACE_FILE": str(actor_spans)})
    assert cluster.wait_state(task_id).state == SUCCEEDED
    attempt = wait_span(actor_spans, "corral.attempt", task_id)
    assert attempt["trace_id"] == hex_trace(client) and attempt["parent_span_id"] == submission["span_id"]


def test_with_tracing_off_on_the_coordinator_the_callers_context_still_reaches_the_attempt(
        make_cluster, client_tracer, tmp_path):
    tracer, _ = client_tracer
    actor_spans = tmp_path / "actor.jsonl"
    cluster = make_cluster()
    cluster.start_coordinator()
    cluster.start_actor("a", app=APP, env={**FAST_EXPORT, "CORRAL_TRACE_FILE": str(actor_spans)})
    task_id, client = submit_traced(cluster, tracer, "traced")
    assert cluster.wait_state(task_id).state == SUCCEEDED
    attempt = wait_span(actor_spans, "corral.attempt", task_id)
    assert attempt["trace_id"] == hex_trace(client) and attempt["parent_span_id"] == format(client.span_id, "016x")


# ---- metrics ----------------------------------------------------------------------------------------

def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_endpoints_serve_the_metrics_and_they_move_when_tasks_run(make_cluster):
    cluster = make_cluster()
    coordinator_port, actor_port = free_port(), free_port()
    cluster.start_coordinator("--metrics-listen", f"127.0.0.1:{coordinator_port}")
    cluster.start_actor("metered", slots=3, extra=("--metrics-listen", f"127.0.0.1:{actor_port}"))

    before = scrape(coordinator_port)
    assert value(before, "corral_connected_actors") == 1 and value(before, "corral_free_slots") == 3
    assert value(before, "corral_slots") == 3
    assert value(before, "corral_attempts_total", task_type="echo", outcome="succeeded") == 0
    assert value(scrape(actor_port), "corral_actor_attempts_started_total") == 0

    echo = [cluster.submit("echo", {"n": i}) for i in range(3)]
    failing = cluster.submit("fail", {"message": "no", "non_retryable": True})
    parked = cluster.submit("nobody-runs-this")  # stays READY: the queue-depth gauge shows it
    for task_id in echo + [failing]:
        cluster.wait_state(task_id)

    after = scrape(coordinator_port)
    assert value(after, "corral_attempts_total", task_type="echo", outcome="succeeded") == 3
    assert value(after, "corral_attempts_total", task_type="fail", outcome="failed") == 1
    assert value(after, "corral_attempt_duration_seconds_count", task_type="echo") == 3
    assert value(after, "corral_task_submit_to_start_seconds_count", task_type="echo") == 3
    assert value(after, "corral_task_submit_to_start_seconds_count", task_type="fail") == 1
    assert value(after, "corral_wal_commits_total") > value(before, "corral_wal_commits_total")
    assert value(after, "corral_wal_commit_duration_seconds_count") == value(after, "corral_wal_commits_total")
    assert value(after, "corral_wal_batch_size_records_sum") >= 5 + 4 + 4  # submits, grants, ends
    assert value(after, "corral_dispatch_steps_total") > value(before, "corral_dispatch_steps_total")
    assert value(after, "corral_queue_depth", task_type="nobody-runs-this") == 1
    assert value(after, "corral_free_slots") == 3 and value(after, "corral_leases") == 0
    assert value(after, "process_resident_memory_bytes") > 0
    # The state gauges are the cluster's own counts.
    status = cluster.admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=5)
    for c in status.tasks_by_state:
        state = task_pb2.TaskState.Name(c.state).removeprefix("TASK_STATE_").lower()
        assert value(after, "corral_tasks", state=state) == c.count, state
    assert value(after, "corral_tasks", state="ready") == 1 and value(after, "corral_tasks", state="succeeded") == 3

    actor = scrape(actor_port)
    assert value(actor, "corral_actor_attempts_started_total") == 4
    assert value(actor, "corral_actor_attempts_finished_total", task_type="echo", outcome="succeeded") == 3
    assert value(actor, "corral_actor_attempts_finished_total", task_type="fail", outcome="failed") == 1
    assert value(actor, "corral_actor_handler_duration_seconds_count", task_type="echo") == 3
    assert value(actor, "corral_actor_running_attempts") == 0 and value(actor, "corral_actor_connected") == 1
    assert value(actor, "corral_actor_reconnects_total") == 0
    assert cluster.get(parked).state == task_pb2.TASK_STATE_READY

    # A lease that is never heartbeated expires; a result with a stale token is refused.
    with RawActor(cluster.target, "silent", task_types=["fence-probe"]) as raw:
        raw.welcome()
        probe = cluster.submit("fence-probe")
        lease = raw.lease(probe, attempt=1)
        wrong = type(lease.ref)(task_id=probe, attempt=1, fencing_token=lease.ref.fencing_token + 1000)
        raw.report(wrong, task_pb2.ATTEMPT_OUTCOME_SUCCEEDED)
        assert raw.ack_for(wrong).accepted is False
        wait_for(lambda: value(scrape(coordinator_port), "corral_lease_expiries_total") == 1, 20, "the lease to expire")
    final = scrape(coordinator_port)
    assert value(final, "corral_stale_results_rejected_total") == 1
    assert value(final, "corral_attempts_total", task_type="fence-probe", outcome="lost") == 1
