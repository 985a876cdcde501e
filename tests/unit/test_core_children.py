"""Children (coordinator/core/children.py) and the total timeout, on the pure core.

`TreeSim` drives the core as the dispatch loop does (DispatchLoop._emit/_after_tree_member_ended):
after a record that ends a tree member, a waiting parent is resolved and a failed/canceled
parent's non-detached descendants are canceled. Every history is replayed and must give the same
projection (fingerprint) as the live one.
"""
from __future__ import annotations

import pytest

from corral.v1 import task_pb2, wal_pb2
from coordinator.core import children, decisions
from coordinator.core.errors import FailedPrecondition
from coordinator.core.projection import CorruptProjection
from coordinator.core.states import State, is_terminal

from .core_fixtures import Sim, json_value, replay, spec, submitted

O = task_pb2
WFC = State.WAITING_FOR_CHILDREN


class TreeSim(Sim):
    def emit(self, record: wal_pb2.WalRecord) -> wal_pb2.WalRecord:
        record.at_unix_ms = self.now  # what the WAL stamps at commit (replay applies at this time)
        super().emit(record)
        kind = record.WhichOneof("event")
        task = self.projection.tasks.get(getattr(record, kind).task_id if kind != "actor_registered" else "")
        if task is None:
            return record
        if is_terminal(task.state):
            if task.children and task.state != State.SUCCEEDED:
                for d in children.descendants(self.projection, task.task_id, include_detached=False):
                    r = children.cancel_record(d, f"parent {task.task_id} ended")
                    if r is not None:
                        self.emit(r)
            parent = self.projection.tasks.get(task.parent_id) if task.parent_id else None
            if parent is not None:
                r = children.resolve(self.projection, parent)
                if r is not None:
                    self.emit(r)
        elif task.state == WFC:
            r = children.resolve(self.projection, task)
            if r is not None:
                self.emit(r)
        return record

    def child(self, parent_id: str, key: str, task_id: str, *, max_depth: int = 8, **flags) -> str:
        """A child submission from the parent's current attempt (as DispatchLoop._submit_child)."""
        s = spec(now_ms=self.now)
        s.child_key = key
        for name, value in flags.items():
            setattr(s, name, value)
        parent = self.projection.tasks[parent_id]
        existing = children.check_submission(self.projection, parent, s, max_depth)
        if existing is not None:
            return existing
        children.prepare_child_spec(parent, s)
        self.emit(submitted(task_id, s, self.now))
        return task_id

    def run(self, task_id: str) -> None:
        self.grant_to(task_id, ("a1", "i1"))

    def ok(self, task_id: str, output=None) -> None:
        self.report(task_id, O.ATTEMPT_OUTCOME_SUCCEEDED, output=json_value(output if output is not None else task_id))

    def fail(self, task_id: str) -> None:
        self.report(task_id, O.ATTEMPT_OUTCOME_FAILED, error=O.TaskError(message="nope", non_retryable=True))

    def check_replay(self) -> None:
        assert replay(self.all_records).fingerprint() == self.projection.fingerprint()


@pytest.fixture
def sim() -> TreeSim:
    s = TreeSim()
    s.submit("p")
    s.run("p")
    return s


def test_parent_waits_for_children_and_keeps_its_output(sim):
    sim.child("p", "a", "c1")
    sim.child("p", "b", "c2")
    sim.ok("p", {"mine": 1})
    p = sim.projection.tasks["p"]
    assert p.state == WFC and p.unfinished_children == 2
    sim.run("c1")
    sim.ok("c1")
    assert p.state == WFC and p.unfinished_children == 1
    sim.run("c2")
    sim.ok("c2")
    assert p.state == State.SUCCEEDED
    assert p.result.output == json_value({"mine": 1})
    assert (sim.projection.tasks["c1"].depth, sim.projection.tasks["c1"].parent_id) == (1, "p")
    sim.check_replay()


def test_children_finished_before_the_handler_returns_means_success_at_once(sim):
    sim.child("p", "a", "c1")
    sim.run("c1")
    sim.ok("c1")
    sim.ok("p")
    assert sim.projection.tasks["p"].state == State.SUCCEEDED
    sim.check_replay()


def test_failed_child_fails_the_waiting_parent_and_cancels_its_siblings(sim):
    sim.child("p", "a", "c1")
    sim.child("p", "b", "c2")
    sim.ok("p")
    sim.run("c1")
    sim.fail("c1")
    p = sim.projection.tasks["p"]
    assert p.state == State.FAILED and p.error.kind == children.CHILD_FAILED and "c1" in p.error.message
    assert sim.projection.tasks["c2"].state == State.CANCELED
    sim.check_replay()


def test_child_failed_while_parent_running_fails_it_when_the_handler_returns(sim):
    sim.child("p", "a", "c1")
    sim.run("c1")
    sim.fail("c1")
    assert sim.projection.tasks["p"].state == State.RUNNING  # the handler may still handle it
    sim.ok("p")
    assert sim.projection.tasks["p"].state == State.FAILED
    sim.check_replay()


@pytest.mark.parametrize("flag", ["detached", "allow_failure"])
def test_detached_or_allowed_child_does_not_fail_the_parent(sim, flag):
    sim.child("p", "a", "c1", **{flag: True})
    sim.run("c1")
    sim.fail("c1")
    sim.ok("p")
    assert sim.projection.tasks["p"].state == State.SUCCEEDED
    sim.check_replay()


def test_detached_child_is_not_waited_for_and_survives_a_failed_parent():
    sim = TreeSim()
    for pid in ("p", "q"):
        sim.submit(pid)
        sim.run(pid)
        sim.child(pid, "d", f"{pid}-d", detached=True)
        sim.child(pid, "n", f"{pid}-n")
    sim.ok("p")
    assert sim.projection.tasks["p"].state == WFC and sim.projection.tasks["p"].unfinished_children == 1
    sim.fail("q")
    assert sim.projection.tasks["q-n"].state == State.CANCELED
    assert sim.projection.tasks["q-d"].state == State.READY
    # An explicit cancel reaches detached children too.
    assert [t.task_id for t in children.descendants(sim.projection, "p", include_detached=True)] == ["p-d", "p-n"]
    assert [t.task_id for t in children.descendants(sim.projection, "p", include_detached=False)] == ["p-n"]
    sim.check_replay()


def test_same_key_returns_the_existing_child_and_depth_is_bounded(sim):
    assert sim.child("p", "a", "c1") == "c1"
    assert sim.child("p", "a", "other-id") == "c1"
    assert len(sim.projection.tasks["p"].children) == 1
    sim.run("c1")
    sim.child("c1", "g", "g1", max_depth=2)
    sim.run("g1")
    with pytest.raises(FailedPrecondition, match="depth 3, over the maximum task depth of 2"):
        sim.child("g1", "x", "x1", max_depth=2)
    sim.check_replay()


def test_parent_being_canceled_may_not_submit_children(sim):
    sim.cancel("p")
    with pytest.raises(FailedPrecondition, match="being canceled"):
        sim.child("p", "a", "c1")


def test_descendants_and_cancel_records(sim):
    sim.child("p", "a", "c1")
    sim.run("c1")
    sim.child("c1", "g", "g1")
    found = children.descendants(sim.projection, "p", include_detached=True)
    assert [t.task_id for t in found] == ["c1", "g1"]
    running = children.cancel_record(sim.projection.tasks["c1"], "r")
    waiting = children.cancel_record(sim.projection.tasks["g1"], "r")
    assert running.HasField("cancel_requested")
    assert waiting.task_state_changed.state == State.CANCELED


def test_replay_refuses_a_child_of_an_unknown_parent_or_a_duplicate_key(sim):
    s = spec(now_ms=sim.now)
    s.child_key = "a"
    s.parent_task_id = "ghost"
    with pytest.raises(CorruptProjection, match="unknown parent"):
        sim.projection.apply(submitted("c9", s, sim.now), sim.now)
    s.parent_task_id = "p"
    sim.projection.apply(submitted("c1", s, sim.now), sim.now)
    with pytest.raises(CorruptProjection, match="two children with key"):
        sim.projection.apply(submitted("c2", s, sim.now), sim.now)


# ---- total (schedule-to-close) timeout ---------------------------------------------------------

def closing_spec(sim, ms: int) -> task_pb2.TaskSpec:
    s = spec(now_ms=sim.now)
    s.schedule_to_close_timeout.FromMilliseconds(ms)
    return s


def test_total_timeout_fails_a_waiting_task():
    sim = TreeSim()
    sim.submit("t", closing_spec(sim, 5_000))
    assert sim.projection.tasks["t"].close_at_ms == sim.now + 5_000
    sim.now += 5_000
    records = sim.fire_timers()
    assert [r.task_state_changed.state for r in records] == [State.FAILED]
    task = sim.projection.tasks["t"]
    assert task.state == State.FAILED and task.error.kind == "schedule_to_close_timeout"
    sim.check_replay()


def test_total_timeout_ends_a_running_attempt_and_does_not_retry():
    sim = TreeSim()
    sim.submit("t", closing_spec(sim, 5_000))
    sim.run("t")
    sim.now += 5_000
    records = sim.fire_timers()
    ended = [r.attempt_ended for r in records if r.HasField("attempt_ended")]
    assert len(ended) == 1 and ended[0].outcome == O.ATTEMPT_OUTCOME_TIMED_OUT
    assert ended[0].next_state == State.FAILED and "schedule-to-close" in ended[0].reason
    sim.check_replay()


def test_total_timeout_is_moot_once_terminal():
    sim = TreeSim()
    sim.submit("t", closing_spec(sim, 5_000))
    sim.run("t")
    sim.ok("t")
    sim.now += 5_000
    assert sim.fire_timers() == []
    assert decisions.timer_record(sim.projection, 4, "t", 0, sim.now, lambda: 0.5) is None
