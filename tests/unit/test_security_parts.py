"""Pure parts of security: the tokens file, role checks, the TLS start-up rule, peer addresses."""
from __future__ import annotations

import grpc
import pytest

from actor.security import ClientSecurity, is_loopback
from coordinator.config import CoordinatorConfig
from coordinator.server import auth, tls
from coordinator.server.limits import peer_address

TABLE = auth.parse_tokens("# c\n\nsubmitter s1\nadmin,submitter both\nactor a1\n")


def md(token):
    return (("authorization", f"Bearer {token}"),)


def test_tokens_file_roles_and_hashing():
    assert TABLE.roles_of("s1") == {"submitter"} and TABLE.roles_of("both") == {"admin", "submitter"}
    assert TABLE.roles_of("nope") is None
    assert all(len(digest) == 32 and b"s1" not in digest for digest, _ in TABLE.entries)


@pytest.mark.parametrize("text, says", [
    ("root s1\n", "unknown role"), ("submitter\n", "expected"), ("submitter a b\n", "expected"),
    ("# only a comment\n", "no token"), ("actor x\nadmin x\n", "twice"),
])
def test_bad_tokens_file_is_refused_naming_the_line(text, says):
    with pytest.raises(auth.TokensFileError, match=says):
        auth.parse_tokens(text)


@pytest.mark.parametrize("text, says", [
    # gRPC metadata values are printable ASCII: such a token could never be presented.
    ("submitter tok\u00e9\n", "printable ASCII"),
    ("submitter tok\x7f\n", "printable ASCII"),
    # bearer_token refuses longer ones as malformed: it could never be presented either.
    (f"submitter {'x' * (auth.MAX_TOKEN_CHARS + 1)}\n", "at most"),
])
def test_tokens_no_client_could_present_are_refused_naming_the_line(text, says):
    with pytest.raises(auth.TokensFileError, match=f":1: .*{says}"):
        auth.parse_tokens(text)


def test_tokens_file_that_is_not_utf8_is_refused_cleanly(tmp_path):
    path = tmp_path / "tokens"
    path.write_bytes(b"submitter \xff\xfetok\n")
    with pytest.raises(auth.TokensFileError, match="UTF-8"):
        auth.load_tokens(str(path))


@pytest.mark.parametrize("method, metadata, expected", [
    ("/corral.v1.TaskService/GetTask", md("s1"), None),
    ("/corral.v1.TaskService/GetTask", md("a1"), grpc.StatusCode.PERMISSION_DENIED),
    ("/corral.v1.AdminService/Pause", md("s1"), grpc.StatusCode.PERMISSION_DENIED),
    ("/corral.v1.AdminService/Pause", md("both"), None),
    ("/corral.v1.ActorService/Connect", md("a1"), None),
    ("/corral.v1.ActorService/Connect", md("both"), grpc.StatusCode.PERMISSION_DENIED),
    ("/corral.v1.TaskService/GetTask", (), grpc.StatusCode.UNAUTHENTICATED),
    ("/corral.v1.TaskService/GetTask", (("authorization", "s1"),), grpc.StatusCode.UNAUTHENTICATED),
    ("/corral.v1.TaskService/GetTask", md("zzz"), grpc.StatusCode.UNAUTHENTICATED),
    ("/grpc.health.v1.Health/Check", (), None),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", (), None),
    ("/other.Service/Method", (), grpc.StatusCode.UNAUTHENTICATED),
])
def test_role_check(method, metadata, expected):
    refusal = auth.check(TABLE, method, metadata)
    assert (refusal[0] if refusal else None) == expected


def test_listener_refuses_without_tls_or_explicit_plaintext(tmp_path):
    assert "no TLS configured" in tls.listener_problem(CoordinatorConfig())
    assert tls.listener_problem(CoordinatorConfig(insecure_plaintext=True)) is None
    cert, key = tmp_path / "c", tmp_path / "k"
    cert.write_text("x"), key.write_text("y")
    assert "not a PEM certificate" in tls.listener_problem(CoordinatorConfig(tls_cert_file=str(cert),
                                                                             tls_key_file=str(key)))
    from tests.e2e.certs import issue, make_ca

    ca = make_ca(tmp_path, "ca")
    good_cert, good_key = issue(ca, tmp_path, "coordinator", server=True)
    assert tls.listener_problem(CoordinatorConfig(tls_cert_file=str(good_cert), tls_key_file=str(good_key))) is None
    _, other_key = issue(ca, tmp_path, "other", server=True)
    assert "not a PEM certificate" in tls.listener_problem(  # a key that is not the certificate's
        CoordinatorConfig(tls_cert_file=str(good_cert), tls_key_file=str(other_key)))
    assert "go together" in tls.listener_problem(CoordinatorConfig(tls_cert_file=str(cert)))
    assert "contradicts" in tls.listener_problem(
        CoordinatorConfig(tls_cert_file=str(cert), tls_key_file=str(key), insecure_plaintext=True))
    assert "cannot read" in tls.listener_problem(
        CoordinatorConfig(tls_cert_file=str(cert), tls_key_file=str(tmp_path / "missing")))
    assert "needs TLS" in tls.listener_problem(CoordinatorConfig(tls_client_ca_file=str(cert), insecure_plaintext=True))


def test_identity_from_certificate_names():
    ctx = {"x509_common_name": [b"a1"], "x509_subject_alternative_name": [b"a1.actors"]}
    assert tls.identity_problem(ctx, "a1") is None and tls.identity_problem(ctx, "a1.actors") is None
    assert "a2" in tls.identity_problem(ctx, "a2")
    assert "no client certificate" in tls.identity_problem({}, "a1")


def test_peer_address_drops_the_port():
    assert peer_address("ipv4:10.0.0.1:5000") == "ipv4:10.0.0.1"
    assert peer_address("ipv6:[::1]:5000") == "ipv6:[::1]"
    assert peer_address("unix:/tmp/s") == "unix:/tmp/s"


def test_clients_use_plaintext_only_on_loopback_unless_told():
    assert is_loopback("127.0.0.1:7070") and is_loopback("localhost:7070") and is_loopback("[::1]:7070")
    assert not is_loopback("corral-coordinator:7070") and not is_loopback("10.0.0.1:7070")
    assert ClientSecurity().uses_plaintext("127.0.0.1:7070")
    assert not ClientSecurity().uses_plaintext("corral-coordinator:7070")
    assert ClientSecurity(plaintext=True).uses_plaintext("corral-coordinator:7070")
    assert not ClientSecurity(ca_file="ca.pem").uses_plaintext("127.0.0.1:7070")
    assert ClientSecurity(cert_file="c").problem() and ClientSecurity(plaintext=True, ca_file="x").problem()
    assert ClientSecurity(token="t").metadata() == (("authorization", "Bearer t"),)
