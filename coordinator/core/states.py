"""Task states and the one validated transition table.

Owns: which state a task may move to from which. Every mutation of a task's state in the
projection goes through `check_transition`, in live dispatch and in WAL replay alike, so a WAL
that asks for an impossible transition is detected instead of silently applied.

The numeric values are the wire values of `corral.v1.TaskState` (a unit test keeps them equal),
so states are stored and compared as plain ints on the hot path.
"""
from __future__ import annotations

from enum import IntEnum

from corral.v1 import task_pb2


class State(IntEnum):
    SCHEDULED = task_pb2.TASK_STATE_SCHEDULED
    READY = task_pb2.TASK_STATE_READY
    RUNNING = task_pb2.TASK_STATE_RUNNING
    RETRY_WAIT = task_pb2.TASK_STATE_RETRY_WAIT
    SUCCEEDED = task_pb2.TASK_STATE_SUCCEEDED
    FAILED = task_pb2.TASK_STATE_FAILED
    CANCELED = task_pb2.TASK_STATE_CANCELED
    # Prerequisites (task graphs, core/graph.py) have not all SUCCEEDED yet.
    WAITING_FOR_DEPENDENCIES = task_pb2.TASK_STATE_WAITING_FOR_DEPENDENCIES
    # The handler returned; non-detached children (core/children.py) have not all finished.
    WAITING_FOR_CHILDREN = task_pb2.TASK_STATE_WAITING_FOR_CHILDREN


# Plain-int aliases for hot paths (an Enum member lookup costs more than a global int).
SCHEDULED, READY, RUNNING, RETRY_WAIT, SUCCEEDED, FAILED, CANCELED = (
    int(s) for s in (State.SCHEDULED, State.READY, State.RUNNING, State.RETRY_WAIT, State.SUCCEEDED,
                     State.FAILED, State.CANCELED))
WAITING = int(State.WAITING_FOR_DEPENDENCIES)
WAITING_FOR_CHILDREN = int(State.WAITING_FOR_CHILDREN)

TERMINAL_STATES: frozenset[State] = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELED})

# from-state -> the states it may move to. Terminal states move nowhere.
TRANSITIONS: dict[State, frozenset[State]] = {
    # not_before reached; canceled while waiting; prerequisites declared (DeclareDependency);
    # total (schedule-to-close) timeout, as from every non-terminal state.
    State.SCHEDULED: frozenset({State.READY, State.CANCELED, State.WAITING_FOR_DEPENDENCIES, State.FAILED}),
    # leased; canceled; schedule-to-start timeout; prerequisites declared before its first attempt.
    State.READY: frozenset({State.RUNNING, State.CANCELED, State.FAILED, State.WAITING_FOR_DEPENDENCIES}),
    # outcome or lease expiry: done, retry now (lost attempt), retry later, give up; the handler
    # returned but its children have not all finished.
    State.RUNNING: frozenset(
        {State.SUCCEEDED, State.FAILED, State.CANCELED, State.READY, State.RETRY_WAIT,
         State.WAITING_FOR_CHILDREN}
    ),
    # backoff over; canceled while waiting.
    State.RETRY_WAIT: frozenset({State.READY, State.CANCELED, State.FAILED}),
    # every prerequisite SUCCEEDED (SCHEDULED if its not_before is ahead); a prerequisite failed
    # or was canceled, or the task was canceled.
    State.WAITING_FOR_DEPENDENCIES: frozenset({State.READY, State.SCHEDULED, State.CANCELED, State.FAILED}),
    # the last child finished; a child that may not fail failed; canceled; total timeout.
    State.WAITING_FOR_CHILDREN: frozenset({State.SUCCEEDED, State.FAILED, State.CANCELED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELED: frozenset(),
}


# The same table with int keys and values, for check_transition.
_ALLOWED: dict[int, frozenset[int]] = {int(k): frozenset(int(s) for s in v) for k, v in TRANSITIONS.items()}


class IllegalTransition(Exception):
    """A state change the table does not allow (a bug, or a WAL that was not written by us)."""

    def __init__(self, task_id: str, from_state: int, to_state: int) -> None:
        super().__init__(f"task {task_id}: illegal transition {_name(from_state)} -> {_name(to_state)}")
        self.task_id = task_id
        self.from_state = from_state
        self.to_state = to_state


def _name(state: int) -> str:
    return State(state).name if state in State._value2member_map_ else f"unknown state {state}"


def is_terminal(state: int) -> bool:
    return state in TERMINAL_STATES


def can_transition(from_state: int, to_state: int) -> bool:
    return to_state in TRANSITIONS[State(from_state)]


def check_transition(task_id: str, from_state: int, to_state: int) -> None:
    allowed = _ALLOWED.get(from_state)
    if allowed is None or to_state not in allowed:
        raise IllegalTransition(task_id, from_state, to_state)
