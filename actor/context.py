"""What a handler knows about the attempt it runs.

Owns ``AttemptContext``, the second argument of every handler.

Invariants:
- A context describes exactly one attempt (task id, attempt number, fencing token) and never
  changes after it is built (frozen dataclass; ``labels`` is a private copy of the lease's labels).
- ``deadline`` is a ``time.monotonic()`` value measured from when the actor received the lease
  (``math.inf`` when the lease carries no execution timeout); ``deadline_unix_ms`` is the
  coordinator's wall-clock view and only informational.
- The fencing token is exposed so handler code can pass it to downstream stores that refuse writes
  carrying a token lower than one they have already seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from actor.cancellation import CancellationToken


@dataclass(frozen=True, slots=True)
class AttemptContext:
    """The attempt a handler is running, passed as ``handler(input, ctx)``."""

    task_id: str
    task_type: str
    attempt: int
    fencing_token: int
    # time.monotonic() value after which the attempt times out (math.inf: no timeout).
    deadline: float
    # Wall-clock deadline as the coordinator sees it (informational; 0 when unknown).
    deadline_unix_ms: int
    labels: dict[str, str] = field(default_factory=dict)
    cancel_token: CancellationToken = field(default_factory=CancellationToken)
    # Task graphs: the outputs of the task's prerequisites (TaskSpec.depends_on), by task id,
    # decoded like the input (JSON-like Python, bytes, or None when a handler returned nothing).
    prerequisites: dict[str, Any] = field(default_factory=dict)
    # Reserved: child-task submission (a later issue) will add a handle here, e.g.
    # ``children: ChildSubmitter``, fenced by this attempt's (task_id, attempt, fencing_token).

    def remaining_s(self) -> float:
        """Seconds left before the attempt deadline (0.0 once passed; inf without a timeout)."""
        return max(0.0, self.deadline - time.monotonic())

    @property
    def canceled(self) -> bool:
        """Shortcut for ``cancel_token.canceled``."""
        return self.cancel_token.canceled
