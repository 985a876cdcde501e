"""Transport security of the coordinator's listener: TLS, mutual TLS, and actor identity.

Owns: the rule that the coordinator serves TLS unless plaintext is explicitly asked for
(`listener_problem`, checked before start-up: exit 2), building the server credentials from PEM
files, and reading a client certificate's names (CN and SANs) from a call's auth context, which
ActorService compares with the actor_id of a hello (`identity_problem`).
"""
from __future__ import annotations

import os
import ssl

import grpc

from ..config import CoordinatorConfig

# Properties of grpc's auth context that name the peer of a mutual-TLS connection.
_NAME_PROPERTIES = ("x509_common_name", "x509_subject_alternative_name")


def tls_enabled(config: CoordinatorConfig) -> bool:
    return bool(config.tls_cert_file or config.tls_key_file)


def mutual_tls(config: CoordinatorConfig) -> bool:
    return bool(config.tls_client_ca_file)


def listener_problem(config: CoordinatorConfig) -> str | None:
    """Why the listener cannot start as configured (a message naming the settings), or None."""
    if tls_enabled(config):
        if config.insecure_plaintext:
            return ("--insecure-plaintext / CORRAL_INSECURE_PLAINTEXT contradicts --tls-cert-file / "
                    "CORRAL_TLS_CERT_FILE: choose TLS or plaintext")
        if not (config.tls_cert_file and config.tls_key_file):
            return "--tls-cert-file / CORRAL_TLS_CERT_FILE and --tls-key-file / CORRAL_TLS_KEY_FILE go together"
        for flag, path in (("--tls-cert-file / CORRAL_TLS_CERT_FILE", config.tls_cert_file),
                           ("--tls-key-file / CORRAL_TLS_KEY_FILE", config.tls_key_file),
                           ("--tls-client-ca-file / CORRAL_TLS_CLIENT_CA_FILE", config.tls_client_ca_file)):
            if path and not os.access(path, os.R_OK):
                return f"{flag}: cannot read {path!r}"
        try:  # grpc only fails to bind on a bad pair, saying nothing about why
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                config.tls_cert_file, config.tls_key_file, password=lambda: b"")  # no prompt for an encrypted key
        except (ssl.SSLError, OSError, ValueError) as exc:
            return ("--tls-cert-file / CORRAL_TLS_CERT_FILE and --tls-key-file / CORRAL_TLS_KEY_FILE: not a PEM "
                    f"certificate and its private key ({exc})")
        return None
    if config.tls_client_ca_file:
        return ("--tls-client-ca-file / CORRAL_TLS_CLIENT_CA_FILE needs TLS: set --tls-cert-file and "
                "--tls-key-file too")
    if not config.insecure_plaintext:
        return ("no TLS configured: set --tls-cert-file and --tls-key-file (CORRAL_TLS_CERT_FILE, "
                "CORRAL_TLS_KEY_FILE), or pass --insecure-plaintext (CORRAL_INSECURE_PLAINTEXT=true) to serve "
                "without encryption or authentication of the coordinator")
    return None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def server_credentials(config: CoordinatorConfig) -> grpc.ServerCredentials | None:
    """The listener's credentials; None means plaintext (only with insecure_plaintext)."""
    if not tls_enabled(config):
        return None
    ca = _read(config.tls_client_ca_file) if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(_read(config.tls_key_file), _read(config.tls_cert_file))],
                                       root_certificates=ca, require_client_auth=ca is not None)


def peer_names(auth_context: dict) -> set[str]:
    """CN and SANs of the client certificate of a call (empty without mutual TLS)."""
    names: set[str] = set()
    for prop in _NAME_PROPERTIES:
        for value in auth_context.get(prop, ()):  # grpc gives bytes
            names.add(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
    return names


def identity_problem(auth_context: dict, actor_id: str) -> str | None:
    """Why a hello claiming `actor_id` does not match the client certificate, or None."""
    names = peer_names(auth_context)
    if not names:
        return "hello.identity.actor_id: the connection has no client certificate naming the actor"
    if actor_id in names:
        return None
    return (f"hello.identity.actor_id: {actor_id!r} is not the identity of this connection's client "
            f"certificate ({', '.join(sorted(names))})")
