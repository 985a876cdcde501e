"""Client-side security shared by the actor and the `corral` CLI: channel credentials and tokens.

Owns: the rule for when a client talks plaintext (asked for with --plaintext, or no TLS file given
and the coordinator is on a loopback address: the local quick start), reading the CA and client
certificate files, and attaching `authorization: Bearer TOKEN` to every call.

Anywhere else, with no TLS flags, a client uses TLS with the system's root certificates: a
client never sends a token in the clear to a remote coordinator unless told to with --plaintext.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class ClientSecurity:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    token: str = ""
    plaintext: bool = False

    def problem(self) -> str | None:
        if bool(self.cert_file) != bool(self.key_file):
            return "--cert-file and --key-file go together"
        if self.plaintext and (self.ca_file or self.cert_file):
            return "--plaintext contradicts --ca-file / --cert-file"
        return None

    def uses_plaintext(self, target: str) -> bool:
        if self.plaintext:
            return True
        if self.ca_file or self.cert_file:
            return False
        return is_loopback(target)

    def channel_credentials(self, target: str) -> grpc.ChannelCredentials | None:
        """None: plaintext. Raises OSError if a file cannot be read."""
        if self.uses_plaintext(target):
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file) if self.ca_file else None,
            private_key=_read(self.key_file) if self.key_file else None,
            certificate_chain=_read(self.cert_file) if self.cert_file else None)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# gRPC target URIs passed through as they are (gRPC resolves them): dns:///host:port, unix:path, ...
_TARGET_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.%A-Za-z]+\]")


def target_problem(target: str) -> str | None:
    """Why `target` is not a coordinator address (HOST:PORT, [IPv6]:PORT, or a gRPC target URI
    such as dns:///host:port), or None. Checked before connecting, so a typo is an error at
    start-up rather than a connection retried forever."""
    if not target.strip():
        return "empty (expected HOST:PORT)"
    if target.startswith(_TARGET_SCHEMES):
        return None
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"{target!r} is not HOST:PORT (a port 1-65535 is required)"
    if not _HOST_RE.fullmatch(host):
        return f"{target!r} is not HOST:PORT (bad host {host!r}; an IPv6 address goes in brackets: [::1]:7070)"
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1].split("%")[0])
        except ValueError:
            return f"{target!r}: {host} is not an IPv6 address"
    return None


def is_loopback(target: str) -> bool:
    host = target.rpartition(":")[0] if ":" in target else target
    host = host.removeprefix("ipv4:").removeprefix("ipv6:").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds fixed metadata to every call of a synchronous channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        return _CallDetails(details.method, details.timeout, tuple(details.metadata or ()) + self._metadata,
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: Any
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


def open_channel(target: str, security: ClientSecurity, options: Any = None) -> grpc.Channel:
    """A synchronous channel to `target` with `security`'s credentials and token."""
    credentials = security.channel_credentials(target)
    channel = (grpc.insecure_channel(target, options=options) if credentials is None
               else grpc.secure_channel(target, credentials, options=options))
    metadata = security.metadata()
    return grpc.intercept_channel(channel, _TokenInterceptor(metadata)) if metadata else channel
