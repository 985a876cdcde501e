"""Mapping of core refusals to gRPC status codes.

Owns: the one table from CorralError subclasses to grpc.StatusCode, so every servicer answers
the same refusal with the same code and a message naming the field.
"""
from __future__ import annotations

import grpc

from ..core.errors import (AlreadyExists, CorralError, FailedPrecondition, InvalidField, NotFound,
                           ResourceExhausted, Unavailable)

STATUS_BY_ERROR: dict[type[CorralError], grpc.StatusCode] = {
    InvalidField: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_of(exc: CorralError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext, exc: CorralError) -> None:
    await context.abort(status_of(exc), str(exc))
