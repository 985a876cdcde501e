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

import math
import time
from dataclasses import dataclass, field
from typing import Any

from corral.v1 import actor_service_pb2

from actor.cancellation import CancellationToken
from actor.children import ChildHandle, ChildTasks, build_child_spec


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
    # Child tasks (actor/children.py): the session's channel; None outside a session.
    child_channel: Any = None

    def remaining_s(self) -> float:
        """Seconds left before the attempt deadline (0.0 once passed; inf without a timeout)."""
        return max(0.0, self.deadline - time.monotonic())

    @property
    def canceled(self) -> bool:
        """Shortcut for ``cancel_token.canceled``."""
        return self.cancel_token.canceled

    # -- child tasks (actor/children.py) ----------------------------------------------------------

    def _children(self) -> ChildTasks:
        if self.child_channel is None:
            raise RuntimeError("child tasks need a running actor session")
        parent = actor_service_pb2.LeaseRef(task_id=self.task_id, attempt=self.attempt,
                                            fencing_token=self.fencing_token)
        return ChildTasks(self.child_channel, parent)

    def submit_child(self, task_type: str, input: Any = None, *, key: str, timeout_s: float = 30.0,
                     **options: Any) -> ChildHandle:
        """Submit a child task and return its handle once the coordinator has accepted it.

        ``key`` names the child under this task: a retried attempt submitting the same key gets
        the existing child back (``created`` False). Options: ``detached`` (the parent's completion
        neither waits for it nor fails with it), ``allow_failure`` (the parent still succeeds if
        it fails), ``priority``, ``labels``, ``execution_timeout_s``, ``max_attempts``,
        ``depends_on``, ``spec`` (a TaskSpec template). Raises ChildRefused if refused (e.g. this
        attempt is stale, or the depth bound). For sync handlers; async ones use
        ``submit_child_async``."""
        children = self._children()
        return children._run(children.submit_async(build_child_spec(task_type, input, key=key, **options)), timeout_s)

    async def submit_child_async(self, task_type: str, input: Any = None, *, key: str, **options: Any) -> ChildHandle:
        """``submit_child`` for async handlers."""
        return await self._children().submit_async(build_child_spec(task_type, input, key=key, **options))

    def wait_child(self, child: ChildHandle | str, timeout_s: float | None = None) -> Any:
        """Block until the child is terminal: its output if it SUCCEEDED, else raises ChildFailed.
        Default timeout: what is left of this attempt. For sync handlers."""
        task_id = child.task_id if isinstance(child, ChildHandle) else child
        children = self._children()
        if timeout_s is None and self.deadline != math.inf:
            timeout_s = self.remaining_s()
        return children._run(children.wait_async(task_id), timeout_s)

    async def wait_child_async(self, child: ChildHandle | str) -> Any:
        """``wait_child`` for async handlers."""
        task_id = child.task_id if isinstance(child, ChildHandle) else child
        return await self._children().wait_async(task_id)
