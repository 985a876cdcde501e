"""The projection's records: one TaskRecord per task, one AttemptRecord per attempt.

Owns: the in-memory shape of durable state. Fields are only written by `Projection.apply`
(coordinator/core/projection.py), so everything here is rebuilt exactly by WAL replay.
Plain classes with __slots__: there may be millions of them and they sit on the hot path.
"""
from __future__ import annotations

from corral.v1 import task_pb2, wal_pb2

from .backoff import BackoffPolicy
from .durations import to_ms

DEFAULT_BACKOFF = BackoffPolicy()
# Policies are immutable and few distinct ones exist: parse each serialized form once.
_BACKOFF_CACHE: dict[bytes, BackoffPolicy] = {}


class AttemptRecord:
    __slots__ = (
        "number", "fencing_token", "actor_id", "actor_incarnation", "started_ms", "deadline_ms",
        "ended_ms", "outcome", "error",
    )

    def __init__(self, number: int, fencing_token: int, actor_id: str, actor_incarnation: str,
                 started_ms: int, deadline_ms: int) -> None:
        self.number = number
        self.fencing_token = fencing_token
        self.actor_id = actor_id
        self.actor_incarnation = actor_incarnation
        self.started_ms = started_ms
        self.deadline_ms = deadline_ms
        self.ended_ms = 0
        self.outcome = task_pb2.ATTEMPT_OUTCOME_UNSPECIFIED
        self.error: task_pb2.TaskError | None = None

    def as_tuple(self) -> tuple:
        return (self.number, self.fencing_token, self.actor_id, self.actor_incarnation, self.started_ms,
                self.deadline_ms, self.ended_ms, self.outcome,
                self.error.SerializeToString(deterministic=True) if self.error is not None else None)


class TaskRecord:
    __slots__ = (
        "task_id", "spec", "type", "priority", "queue_key", "state", "created_ms", "updated_ms",
        "ready_at_ms", "eligible_since_ms", "ready_order", "attempts", "failed_attempts",
        "lost_attempts", "max_attempts", "max_lost_attempts", "execution_timeout_ms",
        "schedule_to_start_ms", "cancel_requested", "cancel_reason", "state_reason",
        "error", "result", "started_once", "ordinal", "concurrency_key", "prerequisites",
        "unfinished_prerequisites", "parent_id", "depth", "children", "unfinished_children",
        "failed_child", "close_at_ms",
    )

    def __init__(self, task_id: str, spec: task_pb2.TaskSpec, state: int, created_ms: int,
                 ready_at_ms: int) -> None:
        self.task_id = task_id
        self.spec = spec
        self.type = spec.type
        self.priority = spec.priority
        caps = spec.required_capabilities
        self.queue_key: tuple[str, frozenset[str]] = (spec.type, frozenset(caps) if caps else frozenset())
        self.state = state
        self.created_ms = created_ms
        self.updated_ms = created_ms
        self.ready_at_ms = ready_at_ms
        self.eligible_since_ms = 0
        self.ready_order = 0
        self.attempts: list[AttemptRecord] = []
        self.failed_attempts = 0
        self.lost_attempts = 0
        retry = spec.retry
        self.max_attempts = retry.max_attempts
        self.max_lost_attempts = retry.max_lost_attempts
        self.execution_timeout_ms = to_ms(spec.execution_timeout)
        self.schedule_to_start_ms = (
            to_ms(spec.schedule_to_start_timeout) if spec.HasField("schedule_to_start_timeout") else 0
        )
        self.cancel_requested = False
        self.cancel_reason = ""
        self.state_reason = ""
        self.error: task_pb2.TaskError | None = None
        # The AttemptEnded record that made the task SUCCEEDED (carries the output).
        self.result: wal_pb2.AttemptEnded | None = None
        self.started_once = False
        # Submission order (1, 2, ...): the order ListTasks pages through.
        self.ordinal = 0
        # "" for most tasks: the projection's hot path tests this one attribute.
        self.concurrency_key = spec.concurrency_key
        # Task graphs (core/graph.py): every prerequisite (spec.depends_on, then DeclareDependency)
        # and how many of them have not SUCCEEDED. () for most tasks; set by Projection.apply.
        self.prerequisites: list[str] | tuple = ()
        self.unfinished_prerequisites = 0
        # Children (core/children.py), set by Projection.apply: the parent's id ("" for a root
        # task) and depth; the ids of the children submitted so far (() for most tasks), how many
        # non-detached ones are not terminal, and the first one that ended FAILED/CANCELED while
        # not allowed to ("" if none).
        self.parent_id = ""
        self.depth = 0
        self.children: list[str] | tuple = ()
        self.unfinished_children = 0
        self.failed_child = ""
        # Total (schedule-to-close) timeout: when the task must be terminal by (0: no limit).
        self.close_at_ms = 0

    @property
    def backoff(self) -> BackoffPolicy:
        """The retry backoff; parsed when a retry needs it (most tasks never do)."""
        msg = self.spec.retry.backoff
        key = msg.SerializeToString(deterministic=True)
        policy = _BACKOFF_CACHE.get(key)
        if policy is None:
            policy = BackoffPolicy.from_proto(msg) if self.spec.retry.HasField("backoff") else DEFAULT_BACKOFF
            if len(_BACKOFF_CACHE) < 1024:
                _BACKOFF_CACHE[key] = policy
        return policy

    @property
    def current_attempt(self) -> AttemptRecord | None:
        return self.attempts[-1] if self.attempts else None

    def as_tuple(self) -> tuple:
        """Everything durable about the task, for comparing two projections."""
        return (
            self.task_id, self.spec.SerializeToString(deterministic=True), self.state, self.created_ms,
            self.updated_ms, self.ready_at_ms, self.eligible_since_ms, self.ready_order,
            tuple(a.as_tuple() for a in self.attempts), self.failed_attempts, self.lost_attempts,
            self.cancel_requested, self.cancel_reason, self.state_reason,
            self.error.SerializeToString(deterministic=True) if self.error is not None else None,
            self.result.SerializeToString(deterministic=True) if self.result is not None else None,
            tuple(self.prerequisites), self.unfinished_prerequisites,
            self.parent_id, self.depth, tuple(self.children), self.unfinished_children, self.failed_child,
            self.close_at_ms,
        )
