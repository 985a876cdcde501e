"""The task state machine (coordinator/core/states.py): wire values and the transition table."""
from __future__ import annotations

import itertools

import pytest

from corral.v1 import task_pb2
from coordinator.core.states import (TERMINAL_STATES, TRANSITIONS, IllegalTransition, State, can_transition,
                                     check_transition, is_terminal)

# The table as the design states it (proto comments + states.py), written out independently.
EXPECTED_ALLOWED = {
    (State.SCHEDULED, State.READY), (State.SCHEDULED, State.CANCELED),
    (State.READY, State.RUNNING), (State.READY, State.CANCELED), (State.READY, State.FAILED),
    (State.RUNNING, State.SUCCEEDED), (State.RUNNING, State.FAILED), (State.RUNNING, State.CANCELED),
    (State.RUNNING, State.READY), (State.RUNNING, State.RETRY_WAIT),
    (State.RETRY_WAIT, State.READY), (State.RETRY_WAIT, State.CANCELED),
    # task graphs: DeclareDependency before the first attempt; prerequisites done / one failed.
    (State.SCHEDULED, State.WAITING_FOR_DEPENDENCIES), (State.READY, State.WAITING_FOR_DEPENDENCIES),
    (State.WAITING_FOR_DEPENDENCIES, State.READY), (State.WAITING_FOR_DEPENDENCIES, State.SCHEDULED),
    (State.WAITING_FOR_DEPENDENCIES, State.CANCELED),
    # children: the handler returned, children pending; the last child ended / one failed / cancel.
    (State.RUNNING, State.WAITING_FOR_CHILDREN), (State.WAITING_FOR_CHILDREN, State.SUCCEEDED),
    (State.WAITING_FOR_CHILDREN, State.FAILED), (State.WAITING_FOR_CHILDREN, State.CANCELED),
    # total (schedule-to-close) timeout from every waiting state (READY -> FAILED is above).
    (State.SCHEDULED, State.FAILED), (State.RETRY_WAIT, State.FAILED),
    (State.WAITING_FOR_DEPENDENCIES, State.FAILED),
}
ALL_PAIRS = list(itertools.product(State, State))
FORBIDDEN = [pair for pair in ALL_PAIRS if pair not in EXPECTED_ALLOWED]


def test_state_values_equal_proto_enum_values() -> None:
    proto = {name.removeprefix("TASK_STATE_"): value for name, value in task_pb2.TaskState.items()}
    assert proto.pop("UNSPECIFIED") == 0
    assert {s.name: int(s) for s in State} == proto


def test_unspecified_is_not_a_state() -> None:
    with pytest.raises(ValueError):
        State(task_pb2.TASK_STATE_UNSPECIFIED)


def test_terminal_states_are_succeeded_failed_canceled() -> None:
    assert TERMINAL_STATES == {State.SUCCEEDED, State.FAILED, State.CANCELED}
    assert {s for s in State if is_terminal(s)} == TERMINAL_STATES
    assert is_terminal(int(State.FAILED))  # plain ints (wire values) work too


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
def test_terminal_states_have_no_exits(terminal: State) -> None:
    assert TRANSITIONS[terminal] == frozenset()
    for to in State:
        assert not can_transition(terminal, to)
        with pytest.raises(IllegalTransition):
            check_transition("t1", terminal, to)


def test_transition_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(State)


def test_transition_table_is_exactly_the_documented_one() -> None:
    table = {(f, t) for f, tos in TRANSITIONS.items() for t in tos}
    assert table == EXPECTED_ALLOWED


def test_no_state_transitions_to_itself() -> None:
    for s in State:
        assert not can_transition(s, s)


@pytest.mark.parametrize(("from_state", "to_state"), sorted(EXPECTED_ALLOWED))
def test_every_allowed_transition_passes_check_and_can_transition(from_state: State, to_state: State) -> None:
    check_transition("t1", from_state, to_state)  # does not raise
    check_transition("t1", int(from_state), int(to_state))  # wire ints too
    assert can_transition(from_state, to_state)
    assert can_transition(int(from_state), int(to_state))


@pytest.mark.parametrize(("from_state", "to_state"), [
    (State.SCHEDULED, State.RUNNING),     # must be promoted first
    (State.SCHEDULED, State.SUCCEEDED),
    (State.READY, State.SUCCEEDED),       # nothing ran
    (State.READY, State.RETRY_WAIT),
    (State.RETRY_WAIT, State.RUNNING),    # must be promoted first
    (State.RETRY_WAIT, State.SUCCEEDED),
    (State.RUNNING, State.SCHEDULED),
    (State.SUCCEEDED, State.READY),       # a finished task never comes back
    (State.FAILED, State.RETRY_WAIT),
    (State.CANCELED, State.READY),
])
def test_sample_forbidden_transitions_raise_illegal_transition(from_state: State, to_state: State) -> None:
    assert not can_transition(from_state, to_state)
    with pytest.raises(IllegalTransition) as info:
        check_transition("task-9", from_state, to_state)
    err = info.value
    assert (err.task_id, err.from_state, err.to_state) == ("task-9", from_state, to_state)
    assert "task-9" in str(err) and from_state.name in str(err) and to_state.name in str(err)


def test_can_transition_agrees_with_check_transition_on_every_pair() -> None:
    for f, t in ALL_PAIRS:
        try:
            check_transition("t", f, t)
            ok = True
        except IllegalTransition:
            ok = False
        assert ok == can_transition(f, t) == ((f, t) in EXPECTED_ALLOWED), (f, t)


def test_every_non_terminal_state_can_reach_a_terminal_state() -> None:
    for start in State:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & TERMINAL_STATES, start


def test_every_non_terminal_state_can_be_canceled() -> None:
    for s in State:
        if not is_terminal(s):
            assert can_transition(s, State.CANCELED), s


def test_transition_to_unspecified_state_raises_illegal_transition() -> None:
    with pytest.raises(IllegalTransition):
        check_transition("t1", State.READY, task_pb2.TASK_STATE_UNSPECIFIED)

