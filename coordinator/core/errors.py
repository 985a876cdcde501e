"""Errors the core raises for bad requests, each mapped to one gRPC status by the servicers.

Owns: the vocabulary of refusals. The core never imports grpc; `coordinator/server/status.py`
maps these to status codes (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION,
RESOURCE_EXHAUSTED).
"""
from __future__ import annotations


class CorralError(Exception):
    """Base: a request was refused; nothing was written.

    `code`: the wire number of the gRPC status it maps to, for refusals answered inside a stream
    message rather than as a call's status (ActorService ChildSubmitted.code)."""

    code = 2  # UNKNOWN


class InvalidField(CorralError):
    """INVALID_ARGUMENT: `field` (a path like `task.retry.max_attempts`) is wrong."""

    code = 3  # INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(CorralError):
    """NOT_FOUND."""

    code = 5  # NOT_FOUND


class AlreadyExists(CorralError):
    """ALREADY_EXISTS."""

    code = 6  # ALREADY_EXISTS


class FailedPrecondition(CorralError):
    """FAILED_PRECONDITION: the request is valid but the state does not allow it."""

    code = 9  # FAILED_PRECONDITION


class ResourceExhausted(CorralError):
    """RESOURCE_EXHAUSTED: a configured limit was reached."""

    code = 8  # RESOURCE_EXHAUSTED


class Unavailable(CorralError):
    """UNAVAILABLE: the coordinator is shutting down or cannot serve now."""

    code = 14  # UNAVAILABLE
