"""Security end to end: TLS, mutual TLS with actor identity, bearer tokens with roles, limits.

A throwaway PKI (tests/e2e/certs.py) in the test's tmp dir; real coordinator and actor processes.
"""
from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from actor.security import ClientSecurity, open_channel
from corral.v1 import admin_service_pb2, admin_service_pb2_grpc, task_pb2, task_service_pb2, task_service_pb2_grpc

from . import certs
from .harness import REPO_ROOT, Cluster, free_port, wait_for
from .raw_actor import RawActor

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

TOKENS = {"submitter": "tok-submitter-1", "actor": "tok-actor-1", "admin": "tok-admin-1",
          "all": "tok-all-1"}
TOKENS_FILE = """# test tokens
submitter tok-submitter-1
actor tok-actor-1
admin tok-admin-1
submitter,actor,admin tok-all-1
"""
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = certs.make_ca(d, "corral-test-ca")
    other = certs.make_ca(d, "other-ca")
    server = certs.issue(ca, d, "coordinator", server=True)
    clients = {name: certs.issue(ca, d, name) for name in ("a1", "a2", "client")}
    stranger = certs.issue(other, d, "stranger")
    tokens = d / "tokens"
    tokens.write_text(TOKENS_FILE)
    return {"dir": d, "ca": ca.cert_file, "other_ca": other.cert_file, "server": server, "clients": clients,
            "stranger": stranger, "tokens": tokens}


def tls_flags(pki, *, mutual: bool, tokens: bool) -> tuple[str, ...]:
    cert, key = pki["server"]
    flags = ("--tls-cert-file", str(cert), "--tls-key-file", str(key))
    if mutual:
        flags += ("--tls-client-ca-file", str(pki["ca"]))
    if tokens:
        flags += ("--tokens-file", str(pki["tokens"]))
    return flags


def client(pki, name: str = "client", token: str = "") -> ClientSecurity:
    cert, key = pki["clients"][name]
    return ClientSecurity(ca_file=str(pki["ca"]), cert_file=str(cert), key_file=str(key), token=token)


@pytest.fixture(scope="module")
def secure(tmp_path_factory, pki):
    """TLS + mutual TLS + tokens; the harness's own channel holds the all-roles token."""
    c = Cluster(tmp_path_factory.mktemp("secure"), coordinator_flags=tls_flags(pki, mutual=True, tokens=True),
                security=client(pki, token=TOKENS["all"]))
    c.start_coordinator()
    yield c
    c.stop()


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return Code.OK


def get_missing(channel) -> grpc.StatusCode:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    return code_of(lambda: stub.GetTask(task_service_pb2.GetTaskRequest(task_id="no-such-task"), timeout=10))


def status_code(channel) -> grpc.StatusCode:
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    return code_of(lambda: stub.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=10))


def raw_actor(cluster, pki, actor_id: str, *, cert: str, token: str = TOKENS["actor"], **kwargs) -> RawActor:
    channel = open_channel(cluster.target, client(pki, cert, token))
    return RawActor(cluster.target, actor_id, channel=channel, **kwargs)


def ended_with(actor: RawActor) -> grpc.StatusCode:
    error = actor.wait_ended()
    assert actor.ended, "stream still open"
    return error.code() if error is not None else Code.OK


# ---- start-up ----------------------------------------------------------------------------------

def test_coordinator_without_tls_or_plaintext_flag_refuses_to_start(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli", "coordinator", "--listen",
                           f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "wal")],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert "no TLS configured" in proc.stderr and "--insecure-plaintext" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "wal").exists()


def test_coordinator_with_a_tokens_file_that_is_not_utf8_refuses_to_start_cleanly(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_bytes(b"submitter \xff\xfe-not-utf8\n")
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli", "coordinator", "--listen",
                           f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "wal"), "--insecure-plaintext",
                           "--tokens-file", str(tokens)],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and str(tokens) in proc.stderr, proc.stderr
    assert not (tmp_path / "wal").exists()


# ---- TLS ---------------------------------------------------------------------------------------

def test_tls_listener_serves_verified_clients_and_refuses_plaintext(make_cluster, pki):
    cluster = make_cluster(coordinator_flags=tls_flags(pki, mutual=False, tokens=False),
                           security=ClientSecurity(ca_file=str(pki["ca"])))
    cluster.start_coordinator()
    task_id = cluster.submit("echo", {"x": 1})
    assert cluster.get(task_id).task_id == task_id
    with grpc.insecure_channel(cluster.target) as plain:
        assert status_code(plain) == Code.UNAVAILABLE
    # A client that does not trust the coordinator's CA refuses the handshake.
    with open_channel(cluster.target, ClientSecurity(ca_file=str(pki["other_ca"]))) as wrong:
        assert status_code(wrong) == Code.UNAVAILABLE
    # The CLI with --ca-file.
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli", "get", task_id, "--coordinator", cluster.target,
                           "--ca-file", str(pki["ca"])], capture_output=True, text=True, timeout=30,
                          env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert task_id in proc.stdout


def test_mutual_tls_refuses_clients_without_a_certificate_from_its_ca(secure, pki):
    stranger_cert, stranger_key = pki["stranger"]
    wrong_ca = ClientSecurity(ca_file=str(pki["ca"]), cert_file=str(stranger_cert), key_file=str(stranger_key),
                              token=TOKENS["all"])
    no_cert = ClientSecurity(ca_file=str(pki["ca"]), token=TOKENS["all"])
    for security in (wrong_ca, no_cert):
        with open_channel(secure.target, security) as channel:
            assert status_code(channel) == Code.UNAVAILABLE
    with open_channel(secure.target, client(pki, token=TOKENS["all"])) as channel:
        assert status_code(channel) == Code.OK


def test_actor_claiming_another_identity_than_its_certificate_is_refused(secure, pki):
    impostor = raw_actor(secure, pki, "a2", cert="a1")
    try:
        assert ended_with(impostor) == Code.PERMISSION_DENIED
        assert "a1" in impostor.error.details()
    finally:
        impostor.close()
    honest = raw_actor(secure, pki, "a1", cert="a1")
    try:
        honest.welcome()
    finally:
        honest.close()


def test_real_actor_process_with_certificate_and_token_runs_tasks(secure, pki):
    cert, key = pki["clients"]["a2"]
    secure.start_actor("a2", extra=("--ca-file", str(pki["ca"]), "--cert-file", str(cert), "--key-file", str(key),
                                    "--token", TOKENS["actor"]))
    try:
        task_id = secure.submit("echo", {"hello": "tls"})
        assert secure.wait_state(task_id).state == task_pb2.TASK_STATE_SUCCEEDED
    finally:
        secure.kill(secure.actors.pop("a2"))


def test_result_for_a_lease_of_another_certified_actor_is_rejected(secure, pki):
    owner = raw_actor(secure, pki, "a1", cert="a1", task_types=("sec-probe",))
    intruder = None
    try:
        owner.welcome()
        task_id = secure.submit("sec-probe", {"n": 1})
        lease = owner.lease(task_id, attempt=1)
        intruder = raw_actor(secure, pki, "a2", cert="a2", task_types=("sec-probe",))
        intruder.welcome()
        # Right task, attempt and fencing token, valid certificate and token: still not its lease.
        intruder.report(lease.ref, task_pb2.ATTEMPT_OUTCOME_SUCCEEDED, output={"by": "intruder"})
        ack = intruder.ack_for(lease.ref)
        assert not ack.accepted, ack
        assert secure.get(task_id).state == task_pb2.TASK_STATE_RUNNING
        owner.report(lease.ref, task_pb2.ATTEMPT_OUTCOME_SUCCEEDED, output={"by": "owner"})
        assert owner.ack_for(lease.ref).accepted
    finally:
        owner.close()
        if intruder is not None:
            intruder.close()


# ---- tokens and roles --------------------------------------------------------------------------

@pytest.mark.parametrize("token, task_ok, admin_ok, actor_ok", [
    ("submitter", True, False, False),
    ("actor", False, False, True),
    ("admin", False, True, False),
    ("all", True, True, True),
])
def test_each_role_reaches_its_service_only(secure, pki, token, task_ok, admin_ok, actor_ok):
    with open_channel(secure.target, client(pki, token=TOKENS[token])) as channel:
        # Allowed on TaskService: the request is handled (a missing task is NOT_FOUND).
        assert get_missing(channel) == (Code.NOT_FOUND if task_ok else Code.PERMISSION_DENIED)
        assert status_code(channel) == (Code.OK if admin_ok else Code.PERMISSION_DENIED)
    actor = raw_actor(secure, pki, "a1", cert="a1", token=TOKENS[token])
    try:
        if actor_ok:
            actor.welcome()
        else:
            assert ended_with(actor) == Code.PERMISSION_DENIED
    finally:
        actor.close()


@pytest.mark.parametrize("metadata", [
    (),
    (("authorization", "Bearer tok-nobody"),),
    (("authorization", "Basic dG9rOng="),),
    (("authorization", "Bearer"),),
    (("authorization", TOKENS["all"]),),
])
def test_missing_malformed_or_unknown_token_is_unauthenticated_and_leaks_nothing(secure, pki, metadata):
    with open_channel(secure.target, client(pki)) as channel:
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        # Not NOT_FOUND: whether the task exists is not revealed without a valid token.
        assert code_of(lambda: tasks.GetTask(task_service_pb2.GetTaskRequest(task_id="no-such-task"),
                                             metadata=metadata, timeout=10)) == Code.UNAUTHENTICATED
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        assert code_of(lambda: admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(),
                                                      metadata=metadata, timeout=10)) == Code.UNAUTHENTICATED
        # Health needs no token.
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_cli_sends_its_token(secure, pki):
    cert, key = pki["clients"]["client"]
    base = [sys.executable, "-m", "coordinator.cli", "status", "--coordinator", secure.target, "--ca-file",
            str(pki["ca"]), "--cert-file", str(cert), "--key-file", str(key)]
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(base + ["--token", TOKENS["admin"]], capture_output=True, text=True, timeout=30, env=env)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    # The admin role reads the whole status, queue per type included (GetClusterStatus.queue_depths).
    assert "Dispatch" in ok.stdout and "No task waiting for a slot." in ok.stdout
    denied = subprocess.run(base, capture_output=True, text=True, timeout=30, env={**env, "CORRAL_TOKEN": "nope"})
    assert denied.returncode == 5 and denied.stderr.startswith("corral: error: UNAUTHENTICATED: "), denied.stderr


# ---- limits ------------------------------------------------------------------------------------

def test_max_actors_and_max_streams_per_peer_give_resource_exhausted(make_cluster):
    cluster = make_cluster(coordinator_flags=("--max-actors", "1", "--max-streams-per-peer", "2"))
    cluster.start_coordinator()
    first = RawActor(cluster.target, "x1")
    second = None
    try:
        first.welcome()  # the second connects only once the first holds the one place
        second = RawActor(cluster.target, "x2")
        assert ended_with(second) == Code.RESOURCE_EXHAUSTED
    finally:
        first.close()
        if second is not None:
            second.close()

    task_ids = [cluster.submit("nobody-runs-this") for _ in range(3)]
    streams = []
    try:
        for task_id in task_ids[:2]:
            call = cluster.tasks.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task_id), timeout=30)
            next(call)  # open: the first answer is the current state
            streams.append(call)
        third = cluster.tasks.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task_ids[2]), timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            next(third)
        assert info.value.code() == Code.RESOURCE_EXHAUSTED
        streams.pop().cancel()

        def watch_again():
            call = cluster.tasks.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task_ids[2]), timeout=30)
            try:
                next(call)
            except grpc.RpcError as exc:
                if exc.code() == Code.RESOURCE_EXHAUSTED:
                    return None
                raise
            streams.append(call)
            return call
        wait_for(watch_again, 10, "a watch slot to free up")
    finally:
        for call in streams:
            call.cancel()
