"""Bearer-token authentication and role-based authorisation of every RPC.

Owns: the tokens file format, the in-memory token table (sha256 digests only, compared in
constant time), the map from gRPC service to the role it needs, and the server interceptor that
answers UNAUTHENTICATED / PERMISSION_DENIED before a request reaches a servicer (so a refusal
never depends on, or reveals, whether a task exists).

Tokens file (UTF-8): one token per line, `ROLE[,ROLE...] TOKEN`; blank lines and lines starting
with `#` are ignored. A token is printable ASCII of at most MAX_TOKEN_CHARS characters (what a
client can send); anything else stops start-up naming the line. Roles: submitter (TaskService),
actor (ActorService), admin (AdminService).
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import grpc

ROLES = ("submitter", "actor", "admin")

# gRPC service (the method's prefix) -> the role it needs. Unlisted services need a valid token.
ROLE_BY_SERVICE = {
    "/corral.v1.TaskService/": "submitter",
    "/corral.v1.ActorService/": "actor",
    "/corral.v1.AdminService/": "admin",
}
# Open to anyone: probes and `grpcurl list/describe`.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
MAX_TOKEN_CHARS = 4096


class TokensFileError(ValueError):
    pass


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class TokenTable:
    entries: tuple[tuple[bytes, frozenset[str]], ...]

    def roles_of(self, token: str) -> frozenset[str] | None:
        """The roles of `token`, or None if it is not known. Every entry is compared (constant time)."""
        digest = _digest(token)
        found: frozenset[str] | None = None
        for known, roles in self.entries:
            if hmac.compare_digest(known, digest):
                found = roles
        return found


def parse_tokens(text: str, source: str = "tokens file") -> TokenTable:
    entries: list[tuple[bytes, frozenset[str]]] = []
    seen: set[bytes] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokensFileError(f"{source}:{number}: expected `ROLE[,ROLE...] TOKEN`")
        roles = frozenset(r.strip() for r in parts[0].split(",") if r.strip())
        unknown = sorted(roles - set(ROLES))
        if not roles or unknown:
            raise TokensFileError(f"{source}:{number}: unknown role {', '.join(unknown) or '(none)'} "
                                  f"(roles: {', '.join(ROLES)})")
        token = parts[1]
        # What a client can send in `authorization` metadata (printable ASCII, bearer_token's bound):
        # a token outside it could never be presented, so it is a mistake in the file.
        if not all("!" <= c <= "~" for c in token):
            raise TokensFileError(f"{source}:{number}: a token must be printable ASCII (gRPC metadata)")
        if len(token) > MAX_TOKEN_CHARS:
            raise TokensFileError(f"{source}:{number}: a token must be at most {MAX_TOKEN_CHARS} characters")
        digest = _digest(token)
        if digest in seen:
            raise TokensFileError(f"{source}:{number}: the same token is listed twice")
        seen.add(digest)
        entries.append((digest, roles))
    if not entries:
        raise TokensFileError(f"{source}: holds no token")
    return TokenTable(tuple(entries))


def load_tokens(path: str) -> TokenTable:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise TokensFileError(f"--tokens-file / CORRAL_TOKENS_FILE: cannot read {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise TokensFileError(f"--tokens-file / CORRAL_TOKENS_FILE: {path!r} is not UTF-8 text "
                              f"(byte {exc.start})") from None
    return parse_tokens(text, path)


def required_role(method: str) -> str | None:
    """The role `method` needs; "" for open methods; None for unknown services (any valid token)."""
    if method.startswith(OPEN_PREFIXES):
        return ""
    for prefix, role in ROLE_BY_SERVICE.items():
        if method.startswith(prefix):
            return role
    return None


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            scheme, _, token = value.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
                return ""
            return token
    return None


def check(table: TokenTable, method: str, metadata: Any) -> tuple[grpc.StatusCode, str] | None:
    """The refusal of a call to `method` with `metadata`, or None when it may proceed."""
    role = required_role(method)
    if role == "":
        return None
    token = bearer_token(metadata)
    if token is None:
        return grpc.StatusCode.UNAUTHENTICATED, "missing `authorization: Bearer TOKEN` metadata"
    if not token:
        return grpc.StatusCode.UNAUTHENTICATED, "malformed authorization metadata: expected `Bearer TOKEN`"
    roles = table.roles_of(token)
    if roles is None:
        return grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token"
    if role is not None and role not in roles:
        return grpc.StatusCode.PERMISSION_DENIED, f"this token lacks the {role!r} role needed by {method}"
    return None


def _refusing_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that only aborts (the request is never read)."""
    async def refuse(request_or_iterator, context):
        await context.abort(code, details)

    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, table: TokenTable) -> None:
        self.table = table

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        refusal = check(self.table, handler_call_details.method, handler_call_details.invocation_metadata)
        if refusal is None:
            return handler
        return _refusing_handler(handler, *refusal)
