"""Bad input gets a precise status naming the field, and never disturbs what was acknowledged."""
from __future__ import annotations

import base64

import grpc
import pytest
from google.protobuf import json_format

from corral.v1 import actor_service_pb2, actor_service_pb2_grpc, task_pb2, task_service_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=10, **kwargs)
    return info.value


def submit(cluster, **spec_fields):
    return cluster.tasks.SubmitTask(task_service_pb2.SubmitTaskRequest(task=task_pb2.TaskSpec(**spec_fields)),
                                    timeout=10)


@pytest.mark.parametrize("spec, field", [
    (dict(), "task.type"),
    (dict(type="has space"), "task.type"),
    (dict(type="echo", task_id="bad id!"), "task.task_id"),
    (dict(type="echo", retry=task_pb2.RetryPolicy(max_attempts=-1)), "task.retry.max_attempts"),
    (dict(type="echo", retry=task_pb2.RetryPolicy(backoff=task_pb2.Backoff(kind=42))), "task.retry.backoff.kind"),
    (dict(type="echo", retry=task_pb2.RetryPolicy(backoff=task_pb2.Backoff(jitter=9))), "task.retry.backoff.jitter"),
    (dict(type="echo", retry=task_pb2.RetryPolicy(backoff=task_pb2.Backoff(multiplier=0.5))), "task.retry.backoff.multiplier"),
    (dict(type="echo", execution_timeout={"seconds": -5}), "task.execution_timeout"),
    (dict(type="echo", execution_timeout={"seconds": 10 * 365 * 86400}), "task.execution_timeout"),
    (dict(type="echo", schedule_to_start_timeout={"seconds": -1}), "task.schedule_to_start_timeout"),
    (dict(type="echo", input_bytes=b"x" * 2_000_000), "task.input"),
    # Nanos past a second: not a valid Duration/Timestamp (protobuf's JSON mapping, grpcurl and
    # `corral get` cannot render the acknowledged task afterwards).
    (dict(type="echo", execution_timeout={"seconds": 1, "nanos": 1_000_000_000}), "task.execution_timeout"),
    (dict(type="echo", schedule_to_start_timeout={"nanos": 2**31 - 1}), "task.schedule_to_start_timeout"),
    (dict(type="echo", schedule_to_close_timeout={"nanos": 2**31 - 1}), "task.schedule_to_close_timeout"),
    (dict(type="echo", not_before={"seconds": 1, "nanos": 2**31 - 1}), "task.not_before"),
])
def test_invalid_spec_is_invalid_argument_naming_the_field(shared_cluster, spec, field):
    err = rpc_error(shared_cluster.tasks.SubmitTask, task_service_pb2.SubmitTaskRequest(task=task_pb2.TaskSpec(**spec)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(field), err.details()


def test_missing_task_is_invalid_argument(shared_cluster):
    err = rpc_error(shared_cluster.tasks.SubmitTask, task_service_pb2.SubmitTaskRequest())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("task")


def test_batch_is_all_or_nothing(shared_cluster):
    good = task_pb2.TaskSpec(type="echo", task_id="batch-good")
    bad = task_pb2.TaskSpec(type="")
    err = rpc_error(shared_cluster.tasks.SubmitTasks, task_service_pb2.SubmitTasksRequest(tasks=[good, bad]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("tasks[1].type")
    err = rpc_error(shared_cluster.tasks.GetTask, task_service_pb2.GetTaskRequest(task_id="batch-good"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(shared_cluster.tasks.SubmitTasks, task_service_pb2.SubmitTasksRequest())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("tasks")


def test_unknown_task_is_not_found(shared_cluster):
    for call, req in [(shared_cluster.tasks.GetTask, task_service_pb2.GetTaskRequest(task_id="nope")),
                      (shared_cluster.tasks.CancelTask, task_service_pb2.CancelTaskRequest(task_id="nope"))]:
        err = rpc_error(call, req)
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
    err = rpc_error(lambda r, timeout: list(shared_cluster.tasks.WatchTask(r, timeout=timeout)),
                    task_service_pb2.WatchTaskRequest(task_id="nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_empty_task_id_is_invalid_argument(shared_cluster):
    err = rpc_error(shared_cluster.tasks.GetTask, task_service_pb2.GetTaskRequest())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("task_id")


def test_list_rejects_unknown_state_bad_page_size_and_token(shared_cluster):
    for req, field in [(task_service_pb2.ListTasksRequest(states=[77]), "states[0]"),
                       (task_service_pb2.ListTasksRequest(page_size=-1), "page_size"),
                       (task_service_pb2.ListTasksRequest(page_size=5000), "page_size"),
                       (task_service_pb2.ListTasksRequest(page_token="garbage"), "page_token"),
                       # Well-formed base64, but no token ListTasks returns: a negative or padded
                       # ordinal, and one above every task ever submitted (another store's token).
                       *[(task_service_pb2.ListTasksRequest(page_token=base64.urlsafe_b64encode(t).decode()),
                          "page_token") for t in (b"o:-5", b"o:0", b"o: 7", b"o:999999999999")]]:
        err = rpc_error(shared_cluster.tasks.ListTasks, req)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith(field), err.details()


def test_cancel_of_terminal_task_is_failed_precondition(shared_cluster):
    task_id = submit(shared_cluster, type="echo").task_id
    shared_cluster.tasks.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task_id), timeout=10)
    assert shared_cluster.get(task_id).state == task_pb2.TASK_STATE_CANCELED
    err = rpc_error(shared_cluster.tasks.CancelTask, task_service_pb2.CancelTaskRequest(task_id=task_id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CANCELED" in err.details()


def test_idempotency_key_returns_existing_and_conflicts_on_other_spec(shared_cluster):
    first = submit(shared_cluster, type="echo", idempotency_key="k1", input=json_format.ParseDict({"a": 1}, task_pb2.TaskSpec().input))
    again = submit(shared_cluster, type="echo", idempotency_key="k1", input=json_format.ParseDict({"a": 1}, task_pb2.TaskSpec().input))
    assert first.created and not again.created and again.task_id == first.task_id
    err = rpc_error(shared_cluster.tasks.SubmitTask, task_service_pb2.SubmitTaskRequest(
        task=task_pb2.TaskSpec(type="echo", idempotency_key="k1", priority=5)))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "k1" in err.details()
    dup = submit(shared_cluster, type="echo", task_id="fixed-id")
    assert dup.created and not submit(shared_cluster, type="echo", task_id="fixed-id").created
    err = rpc_error(shared_cluster.tasks.SubmitTask, task_service_pb2.SubmitTaskRequest(
        task=task_pb2.TaskSpec(type="other", task_id="fixed-id")))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


def _connect(cluster, messages):
    stub = actor_service_pb2_grpc.ActorServiceStub(cluster.channel)
    return stub.Connect(iter(messages), timeout=10)


def identity(**overrides):
    fields = dict(actor_id="raw-actor", incarnation="inc-1", task_types=["echo"], slots=1)
    fields.update(overrides)
    return task_pb2.ExecutorIdentity(**fields)


def test_actor_message_before_hello_is_failed_precondition(shared_cluster):
    with pytest.raises(grpc.RpcError) as info:
        list(_connect(shared_cluster, [actor_service_pb2.ConnectRequest(heartbeats=[actor_service_pb2.LeaseRef(task_id="x")])]))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "hello" in info.value.details()


@pytest.mark.parametrize("overrides, field", [
    (dict(actor_id=""), "hello.identity.actor_id"),
    (dict(incarnation=""), "hello.identity.incarnation"),
    (dict(slots=0), "hello.identity.slots"),
    (dict(task_types=[]), "hello.identity.task_types"),
])
def test_bad_actor_identity_is_invalid_argument(shared_cluster, overrides, field):
    hello = actor_service_pb2.ConnectRequest(hello=actor_service_pb2.Hello(identity=identity(**overrides)))
    with pytest.raises(grpc.RpcError) as info:
        list(_connect(shared_cluster, [hello]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field), info.value.details()


def test_duplicate_incarnation_is_already_exists_and_hello_twice_closes_stream(shared_cluster):
    import queue
    import threading

    outbox: queue.Queue = queue.Queue()
    outbox.put(actor_service_pb2.ConnectRequest(hello=actor_service_pb2.Hello(identity=identity())))

    def requests():
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item

    stub = actor_service_pb2_grpc.ActorServiceStub(shared_cluster.channel)
    first = stub.Connect(requests(), timeout=20)
    welcome = next(first)
    assert welcome.HasField("welcome") and welcome.welcome.lease_ttl_ms == 2000
    hello = actor_service_pb2.ConnectRequest(hello=actor_service_pb2.Hello(identity=identity()))
    with pytest.raises(grpc.RpcError) as info:
        list(_connect(shared_cluster, [hello]))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # The first stream is still fine; a second hello on it is a protocol error that closes it.
    outbox.put(hello)
    with pytest.raises(grpc.RpcError) as info:
        for _ in first:
            pass
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    outbox.put(None)
    # The coordinator keeps serving everyone else.
    assert submit(shared_cluster, type="echo").created


def test_same_idempotency_key_twice_in_one_batch(shared_cluster):
    same = task_pb2.TaskSpec(type="echo", idempotency_key="batch-key")
    other = task_pb2.TaskSpec(type="echo", idempotency_key="batch-key", priority=3)
    err = rpc_error(shared_cluster.tasks.SubmitTasks, task_service_pb2.SubmitTasksRequest(tasks=[same, other]))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and err.details().startswith("tasks[1]")
    resp = shared_cluster.tasks.SubmitTasks(task_service_pb2.SubmitTasksRequest(tasks=[same, same]), timeout=10)
    first, second = resp.results
    assert first.created and not second.created and first.task_id == second.task_id
