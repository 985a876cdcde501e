"""The pure parts of telemetry: the JSON log formatter, trace-context propagation, the submission
span, the actor's attempt span, histogram state and the metrics the loop and collector compute."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest

from actor.telemetry import ActorTelemetry
from corral.v1 import actor_service_pb2, task_pb2
from corral_telemetry import logs, tracing
from corral_telemetry.prometheus import BucketCounts, histogram_family, parse_listen
from coordinator.core.errors import AlreadyExists
from coordinator.telemetry.metrics import LoopMetrics, queue_depths
from coordinator.telemetry.tracing import MAX_IDS_ATTRIBUTE, SubmissionTracing

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.fixture
def spans():
    """A tracer (not the global one) and the spans it finished."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


@pytest.fixture
def actor_tracing():
    """What configure_tracing would set up (without making it global), keeping finished spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield tracing.Tracing(provider, [processor]), exporter
    provider.shutdown()


# ---- logs -----------------------------------------------------------------------------------------

def json_line(logger_name: str, emit) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    [line] = stream.getvalue().splitlines()
    return json.loads(line)


def test_json_line_has_the_standard_fields_and_no_task_fields_when_not_about_a_task():
    out = json_line("t.plain", lambda log: log.warning("hello %s", "world"))
    assert out["level"] == "WARNING" and out["logger"] == "t.plain" and out["message"] == "hello world"
    assert out["timestamp"].endswith("Z") and out["timestamp"][10] == "T" and len(out["timestamp"]) == 24
    assert not {"task_id", "attempt", "trace_id"} & set(out)


def test_json_line_about_a_task_carries_task_id_attempt_and_trace_id_from_extra():
    out = json_line("t.extra", lambda log: log.info("x", extra=logs.task_fields("t-1", 2, TRACE_ID)))
    assert (out["task_id"], out["attempt"], out["trace_id"]) == ("t-1", 2, TRACE_ID)


def test_json_line_inside_a_handler_takes_the_task_from_the_context():
    token = logs.TASK_CONTEXT.set(("t-9", 3, TRACE_ID))
    try:
        out = json_line("t.ctx", lambda log: log.info("from the handler"))
    finally:
        logs.TASK_CONTEXT.reset(token)
    assert (out["task_id"], out["attempt"], out["trace_id"]) == ("t-9", 3, TRACE_ID)


def test_json_line_takes_trace_and_span_id_from_the_current_span(spans):
    tracer, _ = spans
    with tracer.start_as_current_span("work") as span:
        out = json_line("t.span", lambda log: log.info("in a span"))
    ctx = span.get_span_context()
    assert out["trace_id"] == format(ctx.trace_id, "032x") and out["span_id"] == format(ctx.span_id, "016x")


def test_json_line_carries_the_exception():
    def emit(log):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed", extra=logs.task_fields("t-2"))
    out = json_line("t.exc", emit)
    assert "ValueError: boom" in out["exception"] and out["task_id"] == "t-2" and "attempt" not in out


@pytest.mark.parametrize("carrier, expected", [
    ({"traceparent": TRACEPARENT}, TRACE_ID),
    ({"traceparent": TRACEPARENT.upper().replace("0A", "0a")}, TRACE_ID),
    ({"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"}, ""),
    ({"traceparent": "00-short-01"}, ""),
    ({"traceparent": f"00-{'z' * 32}-{SPAN_ID}-01"}, ""),
    ({}, ""),
])
def test_trace_id_of_a_carrier(carrier, expected):
    assert logs.trace_id_of(carrier) == expected


def test_configure_logging_json_writes_json_lines():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    try:
        logs.configure_logging("INFO", "json", stream=stream)
        logging.getLogger("t.configured").info("configured")
    finally:
        root.handlers, level = saved
        root.setLevel(level)
    assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "configured"


# ---- propagation ----------------------------------------------------------------------------------

def test_trace_headers_are_picked_from_grpc_metadata():
    metadata = (("user-agent", "x"), ("traceparent", TRACEPARENT), ("tracestate", "a=1"), ("bin-bin", b"\x00"))
    assert tracing.trace_headers(metadata) == {"traceparent": TRACEPARENT, "tracestate": "a=1"}
    assert tracing.trace_headers(None) == {}


@pytest.mark.parametrize("carrier", [
    {"traceparent": TRACEPARENT},
    {"traceparent": TRACEPARENT, "tracestate": "vendor=abc,other=1"},
    {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00"},
    {"traceparent": f"01-{TRACE_ID}-{SPAN_ID}-01-future"},
])
def test_context_from_carrier_equals_the_w3c_propagator(carrier):
    ours = trace.get_current_span(tracing.context_from_carrier(carrier)).get_span_context()
    theirs = trace.get_current_span(tracing._PROPAGATOR.extract(carrier)).get_span_context()
    assert ours == theirs and ours.is_valid and ours.is_remote


@pytest.mark.parametrize("carrier", [
    None, {}, {"tracestate": "a=1"}, {"traceparent": ""}, {"traceparent": "garbage"},
    {"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"}, {"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"},
    {"traceparent": f"00-{TRACE_ID.upper()}-{SPAN_ID}-01"},
])
def test_context_from_carrier_is_none_without_a_valid_parent(carrier):
    assert tracing.context_from_carrier(carrier) is None


def test_carrier_of_a_span_round_trips(spans):
    tracer, _ = spans
    span = tracer.start_span("s")
    carrier = tracing.carrier_of(span)
    ctx = span.get_span_context()
    assert list(carrier) == ["traceparent"]
    assert carrier["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    assert int(carrier["traceparent"][-2:], 16) & 1  # sampled
    again = trace.get_current_span(tracing.context_from_carrier(carrier)).get_span_context()
    assert (again.trace_id, again.span_id) == (ctx.trace_id, ctx.span_id)
    assert tracing.carrier_of(None) == {}  # no current span
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        assert tracing.inject_metadata([("k", "v")]) == [("k", "v"), ("traceparent", carrier["traceparent"])]
    finally:
        otel_context.detach(token)


def test_fill_trace_context_keeps_a_context_given_with_the_spec():
    given = task_pb2.TaskSpec(type="t", trace_context={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    empty = task_pb2.TaskSpec(type="t")
    tracing.fill_trace_context([given, empty], {"traceparent": TRACEPARENT})
    assert given.trace_context["traceparent"].startswith("00-1111") and empty.trace_context["traceparent"] == TRACEPARENT


# ---- the submission span --------------------------------------------------------------------------

class FakeGrpcContext:
    def __init__(self, metadata=()):
        self.metadata = tuple(metadata)

    def invocation_metadata(self):
        return self.metadata


def submit(tracing_: SubmissionTracing, specs, metadata=(), results=None, error=None):
    async def call():
        if error is not None:
            raise error
        return results if results is not None else [(f"id-{i}", True, 2) for i in range(len(specs))]
    return asyncio.run(tracing_.submit("SubmitTasks", FakeGrpcContext(metadata), specs, call))


def test_submission_span_is_a_child_of_the_callers_context_and_its_context_goes_into_each_spec(actor_tracing):
    tracing_, exporter = actor_tracing
    specs = [task_pb2.TaskSpec(type="t") for _ in range(3)]
    submit(SubmissionTracing(tracing_), specs, metadata=[("traceparent", TRACEPARENT)])
    [span] = exporter.get_finished_spans()
    assert span.name == "corral.v1.TaskService/SubmitTasks" and span.kind == trace.SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == SPAN_ID and span.parent.is_remote
    own = f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert [s.trace_context["traceparent"] for s in specs] == [own] * 3
    assert span.attributes["corral.task.count"] == 3 and span.attributes["corral.task.created_count"] == 3
    assert list(span.attributes["corral.task.ids"]) == ["id-0", "id-1", "id-2"]
    assert span.attributes["rpc.method"] == "SubmitTasks" and span.status.status_code == trace.StatusCode.UNSET


def test_one_span_per_batch_with_at_most_max_ids(actor_tracing):
    tracing_, exporter = actor_tracing
    n = MAX_IDS_ATTRIBUTE + 50
    specs = [task_pb2.TaskSpec(type="t") for _ in range(n)]
    submit(SubmissionTracing(tracing_), specs)
    [span] = exporter.get_finished_spans()
    assert span.parent is None  # no caller context: a root span
    assert span.attributes["corral.task.count"] == n and len(span.attributes["corral.task.ids"]) == MAX_IDS_ATTRIBUTE
    assert specs[-1].trace_context["traceparent"].split("-")[1:3] == [f"{span.context.trace_id:032x}",
                                                                      f"{span.context.span_id:016x}"]


def test_single_submission_span_names_the_task(actor_tracing):
    tracing_, exporter = actor_tracing
    submit(SubmissionTracing(tracing_), [task_pb2.TaskSpec(type="t")], results=[("only", False, 5)])
    [span] = exporter.get_finished_spans()
    assert span.attributes["corral.task.id"] == "only" and span.attributes["corral.task.created"] is False


def test_a_refused_submission_ends_its_span_in_error(actor_tracing):
    tracing_, exporter = actor_tracing
    with pytest.raises(AlreadyExists):
        submit(SubmissionTracing(tracing_), [task_pb2.TaskSpec(type="t")], error=AlreadyExists("task_id: taken"))
    [span] = exporter.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR and "taken" in span.status.description


def test_an_unsampled_caller_gets_no_submission_span_but_its_decision_travels_with_the_tasks(actor_tracing):
    tracing_, exporter = actor_tracing
    specs = [task_pb2.TaskSpec(type="t")]
    submit(SubmissionTracing(tracing_), specs, metadata=[("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-00")])
    assert exporter.get_finished_spans() == ()
    tp = specs[0].trace_context["traceparent"]
    assert tp.startswith(f"00-{TRACE_ID}-") and tp.endswith("-00")


def test_without_a_tracer_no_span_is_made_and_the_callers_context_is_passed_through():
    specs = [task_pb2.TaskSpec(type="t")]
    submit(SubmissionTracing(None), specs, metadata=[("traceparent", TRACEPARENT)])
    assert specs[0].trace_context["traceparent"] == TRACEPARENT
    plain = [task_pb2.TaskSpec(type="t")]
    submit(SubmissionTracing(None), plain, metadata=[("traceparent", "nonsense")])
    assert not plain[0].trace_context


# ---- the attempt span -----------------------------------------------------------------------------

class FakeRunner:
    def __init__(self, lease, on_start=lambda: None):
        self.lease = lease
        self.key = (lease.ref.task_id, lease.ref.attempt, lease.ref.fencing_token)
        self.on_start = on_start

    def start(self):
        self.on_start()


class FakeSession:
    actor_id = "a-1"


def lease(task_id="t-1", attempt=2, token=7, traceparent=TRACEPARENT, task_type="echo"):
    msg = actor_service_pb2.Lease(task_type=task_type)
    msg.ref.task_id, msg.ref.attempt, msg.ref.fencing_token = task_id, attempt, token
    if traceparent:
        msg.trace_context["traceparent"] = traceparent
    return msg


def test_attempt_span_is_a_child_of_the_lease_context_and_the_handler_runs_inside_it(actor_tracing):
    tracing_, exporter = actor_tracing
    telemetry = ActorTelemetry(FakeSession(), tracing=tracing_, metrics=True, task_logs=True)
    seen = {}

    def on_start():
        seen["span"] = trace.get_current_span().get_span_context()
        seen["task"] = logs.TASK_CONTEXT.get()
        with tracing_.tracer.start_as_current_span("handler-child") as child:
            seen["child"] = child
    runner = FakeRunner(lease(), on_start)
    telemetry.start_attempt(runner)
    assert logs.TASK_CONTEXT.get() is None and not trace.get_current_span().get_span_context().is_valid
    result = actor_service_pb2.AttemptResult(outcome=task_pb2.ATTEMPT_OUTCOME_FAILED)
    result.error.kind, result.error.message = "ValueError", "bad"
    telemetry.attempt_done(runner, result, dropped=False)
    child, span = exporter.get_finished_spans()
    assert child.parent.span_id == span.context.span_id and child.context.trace_id == span.context.trace_id
    assert span.name == "corral.attempt" and span.kind == trace.SpanKind.CONSUMER
    assert format(span.parent.span_id, "016x") == SPAN_ID and span.parent.is_remote
    assert span.resource is tracing_.provider.resource and span.start_time <= span.end_time
    assert span.instrumentation_scope.name == "corral" and span.events == () and span.links == ()
    assert format(span.context.trace_id, "032x") == TRACE_ID and seen["span"] == span.context
    assert seen["task"] == ("t-1", 2, TRACE_ID)
    assert dict(span.attributes) == {"corral.task.id": "t-1", "corral.task.type": "echo", "corral.attempt": 2,
                                     "corral.fencing_token": 7, "corral.outcome": "failed"}
    assert span.status.status_code == trace.StatusCode.ERROR and "ValueError: bad" in span.status.description
    outcomes = telemetry.by_type["echo"].outcomes
    assert outcomes[task_pb2.ATTEMPT_OUTCOME_FAILED] == 1 and sum(outcomes) == 1
    assert sum(telemetry.by_type["echo"].duration.counts) == 1


def test_attempt_without_trace_context_gets_a_root_span(actor_tracing):
    tracing_, exporter = actor_tracing
    telemetry = ActorTelemetry(FakeSession(), tracing=tracing_)
    runner = FakeRunner(lease(traceparent=""))
    telemetry.start_attempt(runner)
    telemetry.attempt_done(runner, actor_service_pb2.AttemptResult(outcome=task_pb2.ATTEMPT_OUTCOME_SUCCEEDED), False)
    [span] = exporter.get_finished_spans()
    assert span.parent is None and span.status.status_code == trace.StatusCode.UNSET


def test_an_unsampled_parent_makes_no_attempt_span_but_its_context_still_flows(actor_tracing):
    tracing_, exporter = actor_tracing
    telemetry = ActorTelemetry(FakeSession(), tracing=tracing_)
    seen = []
    runner = FakeRunner(lease(traceparent=f"00-{TRACE_ID}-{SPAN_ID}-00"),
                        lambda: seen.append(trace.get_current_span().get_span_context()))
    telemetry.start_attempt(runner)
    telemetry.attempt_done(runner, actor_service_pb2.AttemptResult(outcome=task_pb2.ATTEMPT_OUTCOME_SUCCEEDED), False)
    assert exporter.get_finished_spans() == ()
    assert format(seen[0].trace_id, "032x") == TRACE_ID and not seen[0].trace_flags.sampled


def test_close_ends_the_spans_of_attempts_that_never_finished(actor_tracing):
    tracing_, exporter = actor_tracing
    telemetry = ActorTelemetry(FakeSession(), tracing=tracing_)
    telemetry.start_attempt(FakeRunner(lease()))
    assert exporter.get_finished_spans() == ()
    telemetry.close()  # the global provider is the API's default here: nothing else to shut down
    [span] = exporter.get_finished_spans()
    assert span.attributes["corral.result_dropped"] is True and span.status.status_code == trace.StatusCode.ERROR


def test_telemetry_with_only_json_logs_still_sets_the_task_context_from_the_lease():
    telemetry = ActorTelemetry(FakeSession(), task_logs=True)
    seen = []
    telemetry.start_attempt(FakeRunner(lease(), lambda: seen.append(logs.TASK_CONTEXT.get())))
    assert seen == [("t-1", 2, TRACE_ID)]


# ---- metrics --------------------------------------------------------------------------------------

def test_bucket_counts_snapshot_is_cumulative_with_inf_last():
    h = BucketCounts((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    buckets, total, count = h.snapshot()
    assert buckets == [("0.1", 2), ("1.0", 3), ("+Inf", 4)] and count == 4 and total == pytest.approx(3.65)
    family = histogram_family("x_seconds", "doc", ["t"], [(["a"], h)])
    registry = CollectorRegistry()

    class One:
        def collect(self):
            yield family
    registry.register(One())
    text = generate_latest(registry).decode()
    assert 'x_seconds_bucket{le="0.1",t="a"} 2.0' in text and 'x_seconds_count{t="a"} 4.0' in text


@pytest.mark.parametrize("text, expected", [
    ("0.0.0.0:9464", ("0.0.0.0", 9464)), (":9464", ("0.0.0.0", 9464)), ("[::]:1", ("::", 1)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9464", "host:", "host:port", "h:70000"])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        parse_listen(text)


class Attempt:
    def __init__(self, started_ms, ended_ms=0, outcome=task_pb2.ATTEMPT_OUTCOME_UNSPECIFIED):
        self.started_ms, self.ended_ms, self.outcome = started_ms, ended_ms, outcome


class Task:
    def __init__(self, task_type, attempts, eligible_since_ms=0, state=2, ready_order=0):
        self.type, self.attempts, self.eligible_since_ms = task_type, attempts, eligible_since_ms
        self.state, self.ready_order = state, ready_order


class FakeProjection:
    def __init__(self, tasks, queues=None, ready_count=0):
        self.tasks, self.ready_queues, self.ready_count = tasks, queues or {}, ready_count


def test_loop_metrics_count_a_step_once():
    ok = task_pb2.ATTEMPT_OUTCOME_SUCCEEDED
    tasks = {"a": Task("echo", [Attempt(1_000, 1_250, ok)]),
             "b": Task("echo", [Attempt(1_000, 1_400, task_pb2.ATTEMPT_OUTCOME_LOST), Attempt(1_500)],
                       eligible_since_ms=900)}
    m = LoopMetrics(FakeProjection(tasks))
    ended = ["a", "b"]  # "b" lost attempt 1 and was granted attempt 2 in the same step
    first = Task("fail", [Attempt(2_000)], eligible_since_ms=1_990)
    slow = Task("fail", [Attempt(2_000)], eligible_since_ms=2_000 - 20_000)  # beyond the lookup table
    m.step_committed(2_000, 3, 0.002, [(first, None), (slow, None), (tasks["b"], None)], ended)
    echo = m.by_type["echo"]
    assert echo.outcomes[ok] == 1 and echo.outcomes[task_pb2.ATTEMPT_OUTCOME_LOST] == 1 and sum(echo.outcomes) == 2
    buckets, total, count = echo.duration.snapshot()
    assert count == 2 and total == pytest.approx(0.25 + 0.4) and dict(buckets)["0.5"] == 2 and dict(buckets)["0.1"] == 0
    # Only a first attempt counts towards submit-to-start ("b" is on its second).
    assert sum(echo.submit_to_start.counts) == 0
    buckets, total, count = m.by_type["fail"].submit_to_start.snapshot()
    assert count == 2 and total == pytest.approx(20.01) and dict(buckets)["0.01"] == 1 and dict(buckets)["30.0"] == 2
    assert sum(m.wal_commit.counts) == 1 and m.wal_batch.sum == 3
    m.step_committed(2_001, 0, 0.0, [], [])
    assert sum(m.wal_commit.counts) == 1  # a step that wrote nothing committed nothing


def test_ms_buckets_agree_with_the_plain_ones():
    from corral_telemetry.prometheus import LATENCY_BUCKETS_S, MsBucketCounts

    fast, plain = MsBucketCounts(LATENCY_BUCKETS_S), BucketCounts(LATENCY_BUCKETS_S)
    for ms in (0, 1, 2, 3, 5, 9, 10, 11, 250, 251, 9_999, 10_000, 10_001, 400_000):
        fast.observe_ms(ms)
        plain.observe(ms / 1000)
    assert fast.snapshot()[0] == plain.snapshot()[0] and fast.snapshot()[1] == pytest.approx(plain.snapshot()[1])


def test_queue_depths_are_exact_despite_stale_entries_of_the_lazy_heaps():
    from corral.v1 import task_pb2 as O

    from .core_fixtures import Sim

    sim = Sim()
    for task_id, task_type in (("r1", "echo"), ("r2", "echo"), ("gone", "echo"), ("g1", "gpu")):
        sim.submit(task_id, type=task_type)
    sim.grant_to("gone", ("a1", "i1"))   # RUNNING: its entry in the echo heap is stale now
    sim.grant_to("r2", ("a1", "i1"))
    sim.report("r2", O.ATTEMPT_OUTCOME_HANDED_BACK)  # READY again: a second entry, the first stale
    assert len(sim.projection.ready_queues[("echo", frozenset())]) == 4
    assert queue_depths(sim.projection) == {"echo": 2, "gpu": 1}
    sim.grant_to("g1", ("a1", "i1"))  # the gpu queue has no live entry left: dropped
    assert queue_depths(sim.projection) == {"echo": 2}


# ---- settings -------------------------------------------------------------------------------------

def test_coordinator_telemetry_settings_are_validated_and_off_by_default():
    import argparse

    from coordinator import config as C

    def parse(argv, env=None):
        parser = argparse.ArgumentParser()
        C.add_arguments(parser)
        return C.from_arguments(parser.parse_args(argv), env or {})

    cfg = parse([])
    assert (cfg.log_format, cfg.metrics_listen, cfg.otlp_endpoint, cfg.trace_file) == ("text", "", "", "")
    cfg = parse(["--metrics-listen", "0.0.0.0:9464"], {"CORRAL_LOG_FORMAT": "json", "CORRAL_OTLP_ENDPOINT": "http://c:4317"})
    assert (cfg.metrics_listen, cfg.log_format, cfg.otlp_endpoint) == ("0.0.0.0:9464", "json", "http://c:4317")
    for argv, env, named in ([], {"CORRAL_LOG_FORMAT": "xml"}, "CORRAL_LOG_FORMAT"), \
                            (["--metrics-listen", "9464"], {}, "--metrics-listen"):
        with pytest.raises(C.ConfigError) as info:
            parse(argv, env)
        assert named in str(info.value)


def test_actor_install_is_a_no_op_when_nothing_is_configured_and_refuses_bad_values():
    from actor.telemetry import install

    session = FakeSession()
    assert install(session, environ={}) is None
    with pytest.raises(ValueError, match="CORRAL_LOG_FORMAT"):
        install(session, environ={"CORRAL_LOG_FORMAT": "xml"})
    with pytest.raises(ValueError, match="--metrics-listen / CORRAL_METRICS_LISTEN"):
        install(session, environ={"CORRAL_METRICS_LISTEN": "nope"})


def test_otlp_without_the_extra_installed_is_refused_by_name():
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # noqa: F401
    except ImportError:
        with pytest.raises(tracing.TracingUnavailable, match=r"corral\[otlp\]"):
            tracing.configure_tracing("t", otlp_endpoint="http://127.0.0.1:4317")
    else:
        pytest.skip("the OTLP exporter is installed here")


def test_otlp_export_reaches_a_collector():
    """Runs where the `otlp` extra is installed: an in-process OTLP/gRPC collector receives both an
    SDK span and a SpanRecorder span."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            received.extend(s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        setup = tracing.configure_tracing("otlp-test", otlp_endpoint=f"http://127.0.0.1:{port}")
        with setup.tracer.start_as_current_span("sdk-span"):
            pass
        recorder = setup.recorder("corral.attempt", trace.SpanKind.CONSUMER)
        span = recorder.start(tracing.span_context_from_carrier({"traceparent": TRACEPARENT}))
        recorder.end(span, {"corral.task.id": "t"})
        setup.provider.shutdown()  # flushes
    finally:
        server.stop(0)
    assert sorted(received) == ["corral.attempt", "sdk-span"]


@pytest.mark.parametrize("headers", [
    {"traceparent": TRACEPARENT}, {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"},
])
def test_context_from_headers_uses_the_propagator_and_keeps_tracestate(headers):
    ctx = trace.get_current_span(tracing.context_from_headers(headers)).get_span_context()
    assert format(ctx.trace_id, "032x") == TRACE_ID and ctx.is_remote
    assert ctx.trace_state.to_header() == headers.get("tracestate", "")
    assert tracing.context_from_headers({"traceparent": "junk"}) is None and tracing.context_from_headers({}) is None


# ---- the cheap span path: RecordedSpan, SpanRecorder.start_from_carrier, SpanBatcher ----------------

def test_the_fast_span_context_equals_the_checked_constructor():
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    state = trace.TraceState([("k", "v")])
    fast = tracing._span_context(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, flags, state)
    slow = trace.SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, flags, state)
    assert fast == slow and type(fast) is type(slow) and fast.is_valid and not fast.is_remote
    assert fast.trace_flags.sampled and fast.trace_state == state


def test_attach_context_is_the_api_attach():
    ctx = otel_context.Context({tracing.CURRENT_SPAN_KEY: trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)})
    assert trace.set_span_in_context(trace.INVALID_SPAN, otel_context.Context()).keys() == ctx.keys()
    before = otel_context.get_current()
    token = tracing.attach_context(ctx)
    assert otel_context.get_current() is ctx
    tracing.detach_context(token)
    assert otel_context.get_current() is before


class ListExporter(tracing.SpanExporter):
    def __init__(self):
        self.batches = []

    def export(self, spans):
        self.batches.append(list(spans))
        return tracing.SpanExportResult.SUCCESS

    @property
    def spans(self):
        return [s for batch in self.batches for s in batch]


def batcher_tracing(**kwargs):
    exporter = ListExporter()
    provider = TracerProvider()
    batcher = tracing.SpanBatcher(exporter, **kwargs)
    provider.add_span_processor(batcher)
    return tracing.Tracing(provider, [batcher]), batcher, exporter


@pytest.mark.parametrize("carrier", [
    {"traceparent": TRACEPARENT},
    {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00"},
    {"traceparent": TRACEPARENT, "tracestate": "k=v"},
    {"traceparent": "nonsense"},
    {},
])
def test_start_from_carrier_equals_start_of_the_parsed_parent(carrier):
    tracing_, batcher, _ = batcher_tracing()
    try:
        recorder = tracing_.recorder("a", trace.SpanKind.CONSUMER)
        parent = tracing.span_context_from_carrier(carrier)
        for _ in range(3):  # the second and third reuse the first's parse
            span = recorder.start_from_carrier(carrier)
            reference = recorder.start(parent)
            assert span.parent == parent and span.recording == reference.recording
            ctx, ref = span.context, reference.context
            assert (ctx.trace_flags, ctx.trace_state, ctx.is_remote) == (ref.trace_flags, ref.trace_state, False)
            assert ctx.is_valid and ctx.span_id != ref.span_id
            assert (ctx.trace_id == parent.trace_id) if parent is not None else ctx.trace_id != ref.trace_id
    finally:
        tracing_.provider.shutdown()


def test_recorded_spans_reach_the_exporter_through_the_batcher_with_the_handler_spans():
    tracing_, batcher, exporter = batcher_tracing()
    recorder = tracing_.recorder("corral.attempt", trace.SpanKind.CONSUMER)
    span = recorder.start_from_carrier({"traceparent": TRACEPARENT})
    token = tracing.attach_context(recorder.context_of(span))
    try:
        assert trace.get_current_span() is span and not span.is_recording()
        with tracing_.tracer.start_as_current_span("handler-child"):
            pass
    finally:
        tracing.detach_context(token)
    assert exporter.batches == []  # batched: nothing exported yet
    recorder.end(span, {"k": 1}, trace.Status(trace.StatusCode.ERROR, "bad"))
    unsampled = recorder.start_from_carrier({"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00"})
    recorder.end(unsampled, {})
    assert batcher.force_flush()
    child, exported = exporter.spans
    assert exported is span and child.parent == span.context and child.context.trace_id == span.context.trace_id
    assert exported.name == "corral.attempt" and exported.kind == trace.SpanKind.CONSUMER
    assert dict(exported.attributes) == {"k": 1} and exported.status.description == "bad"
    assert exported.start_time <= exported.end_time and exported.resource is tracing_.provider.resource
    assert exported.instrumentation_scope.name == "corral" and exported.events == () and exported.links == ()
    assert format(exported.parent.span_id, "016x") == SPAN_ID and exported.parent.is_remote
    as_dict = tracing.span_to_dict(exported)
    assert as_dict["trace_id"] == TRACE_ID and as_dict["status"] == "ERROR" and as_dict["parent_span_id"] == SPAN_ID
    tracing_.provider.shutdown()
    assert len(exporter.spans) == 2  # the unsampled span was never exported


def test_the_batcher_exports_a_full_batch_without_waiting_for_the_schedule():
    tracing_, batcher, exporter = batcher_tracing(max_export_batch_size=4, schedule_delay_millis=3_600_000)
    try:
        recorder = tracing_.recorder("a", trace.SpanKind.INTERNAL)
        for _ in range(4):
            recorder.end(recorder.start_from_carrier({"traceparent": TRACEPARENT}), {})
        deadline = time.monotonic() + 10
        while len(exporter.spans) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(exporter.spans) == 4 and all(len(b) <= 4 for b in exporter.batches)
    finally:
        tracing_.provider.shutdown()


def test_a_full_batcher_queue_drops_the_oldest_spans_and_counts_them():
    exporter = ListExporter()
    batcher = tracing.SpanBatcher(exporter, max_queue_size=3, max_export_batch_size=3,
                                  schedule_delay_millis=3_600_000)
    try:
        spans = [object() for _ in range(5)]
        with batcher._export_lock:  # the worker cannot export meanwhile: the queue fills up
            for span in spans:
                batcher.add(span)
            assert list(batcher.queue) == spans[2:] and batcher.dropped >= 2
        assert batcher.force_flush() and exporter.spans == spans[2:]
    finally:
        batcher.shutdown()


def test_the_batcher_follows_the_sdk_environment_settings(monkeypatch):
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "100")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "250")
    batcher = tracing.SpanBatcher(ListExporter())
    try:
        assert (batcher.max_queue_size, batcher.batch_size, batcher.schedule_delay_s) == (100, 10, 0.25)
    finally:
        batcher.shutdown()
