"""Exceptions of the actor library.

Owns the exceptions that cross the boundary between handler code and the actor runtime, and the
one the runtime raises when the coordinator refuses it for good.

Invariants:
- ``NonRetryableError`` raised by a handler always maps to a FAILED outcome with
  ``TaskError.non_retryable = True`` (unless the attempt was already canceled or timed out, in which
  case the cancellation decides the outcome).
- ``AttemptCanceled`` is how a handler says "I stopped because I was told to"; it never maps to a
  retryable FAILED outcome.
- ``ActorRejected`` is raised only for coordinator answers that retrying cannot fix
  (INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED).
"""

from __future__ import annotations


class NonRetryableError(Exception):
    """Raise from a handler to fail the task without further retries."""


class AttemptCanceled(Exception):
    """Raised by (or on behalf of) a handler that stops because its attempt was canceled.

    ``CancellationToken.raise_if_canceled()`` raises it with the cancellation reason as message.
    """


class ActorRejected(Exception):
    """The coordinator refused this actor with a status that retrying will not fix."""

    def __init__(self, message: str, *, code_name: str = "") -> None:
        super().__init__(message)
        self.code_name = code_name
