"""Task events (coordinator/core/events.py): which records are events, what they say, and filters."""
from __future__ import annotations

import pytest

from corral.v1 import task_pb2, task_service_pb2, wal_pb2
from coordinator.core import decisions
from coordinator.core.errors import InvalidField
from coordinator.core.events import EventFilter, record_task_id, task_event
from coordinator.core.states import State

from .core_fixtures import T0, Sim, const_draw, identity

pytestmark = pytest.mark.timeout(30)
E = task_service_pb2


def stamp(record: wal_pb2.WalRecord, seq: int, at_ms: int) -> wal_pb2.WalRecord:
    """As the WAL does at commit."""
    record.seq = seq
    record.at_unix_ms = at_ms
    return record


def test_a_task_life_as_events():
    sim = Sim()
    with sim.step():
        actor = sim.connect(identity("a1", types=("t",)))
        submitted = sim.submit("x", type="t", labels={"team": "media", "tier": "1"})
        [(_, attempt, token, key)] = sim.grant()
    with sim.step(T0 + 10):
        sim.cancel("x", "operator said so")
    with sim.step(T0 + 20):
        task = sim.projection.tasks["x"]
        ended = sim.emit_attempt_ended(decisions.end_attempt(task, task_pb2.ATTEMPT_OUTCOME_CANCELED, None, sim.now,
                                                             const_draw()))
    records = [r for r in sim.all_records if r.WhichOneof("event") != "actor_registered"]
    events = [task_event(stamp(r, i + 1, T0 + i), sim.projection.tasks["x"]) for i, r in enumerate(records)]
    assert [(e.kind, e.state, e.attempt, e.actor_id) for e in events] == [
        (E.TASK_EVENT_KIND_SUBMITTED, State.READY, 0, ""),
        (E.TASK_EVENT_KIND_ATTEMPT_STARTED, State.RUNNING, 1, "a1"),
        (E.TASK_EVENT_KIND_CANCEL_REQUESTED, State.RUNNING, 1, "a1"),
        (E.TASK_EVENT_KIND_ATTEMPT_ENDED, State.CANCELED, 1, "a1"),
    ]
    for i, e in enumerate(events):
        assert (e.seq, e.time.ToMilliseconds(), e.task_id, e.type) == (i + 1, T0 + i, "x", "t")
        assert dict(e.labels) == {"team": "media", "tier": "1"}
    assert events[2].reason == "operator said so"
    assert events[3].outcome == task_pb2.ATTEMPT_OUTCOME_CANCELED and events[3].reason
    assert submitted is records[0] and ended is records[-1]
    assert (attempt, token, key) == (1, 1, actor.key)


def test_state_changes_without_an_attempt_are_state_changed_events():
    sim = Sim()
    with sim.step():
        sim.submit("w", type="t")
        sim.cancel("w", "not needed")
    record = sim.all_records[-1]
    event = task_event(stamp(record, 2, T0), sim.projection.tasks["w"])
    assert (event.kind, event.state, event.reason, event.attempt) == (
        E.TASK_EVENT_KIND_STATE_CHANGED, State.CANCELED, "not needed", 0)


def test_records_about_no_task_are_no_events():
    paused = wal_pb2.WalRecord(dispatch_paused=wal_pb2.DispatchPaused(reason="r"))
    registered = wal_pb2.WalRecord(actor_registered=wal_pb2.ActorRegistered(identity=identity()))
    assert record_task_id(paused) is None and record_task_id(registered) is None
    assert record_task_id(wal_pb2.WalRecord(cancel_requested=wal_pb2.CancelRequested(task_id="c"))) == "c"


def test_filters_match_types_any_of_and_labels_all_of():
    sim = Sim()
    with sim.step():
        sim.submit("a", type="resize", labels={"team": "media", "env": "prod"})
        sim.submit("b", type="email", labels={"team": "media"})
        sim.submit("c", type="resize")
    tasks = sim.projection.tasks

    def matching(f: EventFilter) -> list[str]:
        return [t for t in "abc" if f.matches(tasks[t])]

    assert matching(EventFilter()) == ["a", "b", "c"]
    assert matching(EventFilter(frozenset({"resize"}))) == ["a", "c"]
    assert matching(EventFilter(frozenset({"resize", "email"}))) == ["a", "b", "c"]
    assert matching(EventFilter(labels={"team": "media"})) == ["a", "b"]
    assert matching(EventFilter(labels={"team": "media", "env": "prod"})) == ["a"]
    assert matching(EventFilter(labels={"team": "other"})) == []
    assert matching(EventFilter(frozenset({"email"}), {"env": "prod"})) == []
    # A parent filter matches the parent's direct children only.
    tasks["b"].parent_id = "a"
    assert matching(EventFilter(parent_task_id="a")) == ["b"]
    assert matching(EventFilter(frozenset({"resize"}), parent_task_id="a")) == []


@pytest.mark.parametrize("request_kwargs, field", [
    ({"types": ["ok", "not ok"]}, "types[1]"),
    ({"types": [""]}, "types[0]"),
    ({"labels": {"k": "v" * 257}}, "labels[k]"),
    ({"labels": {"k" * 64: "v"}}, "labels"),
    ({"parent_task_id": "p" * 129}, "parent_task_id"),
])
def test_a_bad_filter_is_refused_naming_the_field(request_kwargs, field):
    with pytest.raises(InvalidField) as info:
        EventFilter.from_request(task_service_pb2.WatchEventsRequest(**request_kwargs))
    assert info.value.field == field


def test_a_request_becomes_its_filter():
    f = EventFilter.from_request(task_service_pb2.WatchEventsRequest(types=["a", "b"], labels={"k": "v"}))
    assert f.types == {"a", "b"} and f.labels == (("k", "v"),) and f.parent_task_id == ""
