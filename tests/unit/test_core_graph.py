"""Task graphs (coordinator/core/graph.py): validation, readiness, cascades, and replay.

`GraphSim` drives the pure core as the dispatch loop does: after every record that ends a task,
`graph.cascade` emits the dependents' records (applied at once), and the whole history is appended
to a real LMDB WAL, one batch per step, so replay can be compared with the live projection.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from corral.v1 import task_pb2, wal_pb2
from coordinator.core import graph
from coordinator.core.admission import queued_tasks
from coordinator.core.errors import FailedPrecondition, InvalidField, NotFound
from coordinator.core.projection import CorruptProjection
from coordinator.core.spec import SpecLimits, normalize_spec
from coordinator.core.states import State, is_terminal
from coordinator.storage.wal import WriteAheadLog

from .core_fixtures import T0, Sim, identity, json_value, replay, spec, submitted

O = task_pb2
W = State.WAITING_FOR_DEPENDENCIES


class GraphSim(Sim):
    """Sim plus the loop's task-graph hook (DispatchLoop._emit)."""

    def emit(self, record: wal_pb2.WalRecord) -> wal_pb2.WalRecord:
        super().emit(record)
        kind = record.WhichOneof("event")
        task_id = getattr(record, kind).task_id if kind != "actor_registered" else ""
        task = self.projection.tasks.get(task_id)
        if task is not None and is_terminal(task.state) and task_id in self.projection.dependents:
            graph.cascade(self.projection, task_id, self.now, lambda r, _tid: Sim.emit(self, r))
        return record

    def submit_dep(self, task_id: str, depends_on: list[str], **kw) -> int:
        """Submit as DispatchLoop._write_submission does; returns the state it ended up in."""
        s = spec(now_ms=self.now, **kw)
        s.depends_on.extend(depends_on)
        rec = submitted(task_id, s, self.now)
        state, doomed = graph.submission_state(self.projection, depends_on, rec.task_submitted.state)
        rec.task_submitted.state = state
        self.emit(rec)
        if doomed is not None:
            self.emit(graph.canceled_record(task_id, self.projection.tasks[doomed]))
        return self.state(task_id)

    def declare(self, task_id: str, depends_on: list[str]) -> None:
        new = graph.check_declare(self.projection, task_id, depends_on)
        for record in graph.declare_records(self.projection, self.projection.tasks[task_id], new):
            self.emit(record)

    def run_ok(self, task_id: str, output=None) -> None:
        """Grant task_id to the actor 'a1' and report SUCCEEDED."""
        self.grant_to(task_id, ("a1", "i1"))
        self.report(task_id, O.ATTEMPT_OUTCOME_SUCCEEDED, output=json_value(output if output is not None else task_id))

    def fail(self, task_id: str) -> None:
        self.grant_to(task_id, ("a1", "i1"))
        self.report(task_id, O.ATTEMPT_OUTCOME_FAILED,
                    error=task_pb2.TaskError(message="boom", kind="ValueError", non_retryable=True))


@pytest.fixture
def sim() -> GraphSim:
    s = GraphSim()
    s.connect(identity(slots=100))
    return s


def diamond(sim: GraphSim) -> None:
    sim.submit("A")
    sim.submit_dep("B", ["A"])
    sim.submit_dep("C", ["A"])
    sim.submit_dep("D", ["B", "C"])


# ---- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("deps, field, words", [
    (["t-1"], "tasks[2].depends_on[0]", "itself"),
    (["a", "b", "a"], "tasks[2].depends_on[2]", "twice"),
    (["ok", "bad id!"], "tasks[2].depends_on[1]", "task id"),
])
def test_spec_depends_on_shape_is_checked(deps, field, words) -> None:
    s = task_pb2.TaskSpec(task_id="t-1", type="t", depends_on=deps)
    with pytest.raises(InvalidField) as e:
        normalize_spec(s, "tasks[2]", SpecLimits(), T0)
    assert e.value.field == field and words in e.value.message


def test_spec_depends_on_is_bounded() -> None:
    s = task_pb2.TaskSpec(type="t", depends_on=[f"p{i}" for i in range(graph.MAX_PREREQUISITES + 1)])
    with pytest.raises(InvalidField, match="at most"):
        normalize_spec(s, "task", SpecLimits(), T0)


def specs_of(*pairs) -> list[task_pb2.TaskSpec]:
    return [task_pb2.TaskSpec(task_id=tid, type="t", depends_on=deps) for tid, deps in pairs]


def test_plan_batch_unknown_prerequisite_names_the_field() -> None:
    specs = specs_of(("a", []), ("b", ["a", "nope"]))
    with pytest.raises(InvalidField) as e:
        graph.plan_batch(specs, ["tasks[0]", "tasks[1]"], lambda tid: False)
    assert e.value.field == "tasks[1].depends_on[1]" and "unknown task 'nope'" in e.value.message


def test_plan_batch_in_order_needs_no_reordering() -> None:
    specs = specs_of(("a", []), ("b", ["a", "old"]))
    assert graph.plan_batch(specs, ["tasks[0]", "tasks[1]"], lambda tid: tid == "old") is None


def test_plan_batch_forward_references_are_written_prerequisites_first() -> None:
    specs = specs_of(("d", ["b", "c"]), ("b", ["a"]), ("c", ["a"]), ("a", []))
    order = graph.plan_batch(specs, [f"tasks[{i}]" for i in range(4)], lambda tid: False)
    ids = [specs[i].task_id for i in order]
    assert ids.index("a") < ids.index("b") < ids.index("d") and ids.index("c") < ids.index("d")
    assert sorted(order) == [0, 1, 2, 3]


def test_plan_batch_cycle_is_refused_naming_the_edge() -> None:
    specs = specs_of(("a", ["c"]), ("b", ["a"]), ("c", ["b"]))
    with pytest.raises(InvalidField) as e:
        graph.plan_batch(specs, ["tasks[0]", "tasks[1]", "tasks[2]"], lambda tid: False)
    assert e.value.field.endswith(".depends_on[0]") and "cycle" in e.value.message


def test_plan_batch_long_reversed_chain_has_no_recursion_limit() -> None:
    n = 5_000
    specs = specs_of(*[(f"t{i}", [f"t{i + 1}"] if i + 1 < n else []) for i in range(n)])
    order = graph.plan_batch(specs, [f"tasks[{i}]" for i in range(n)], lambda tid: False)
    assert [specs[i].task_id for i in order][:2] == [f"t{n - 1}", f"t{n - 2}"]


def test_declare_checks(sim: GraphSim) -> None:
    sim.submit("A", type="nobody")
    sim.submit_dep("B", ["A"])
    sim.submit_dep("C", ["B"])
    with pytest.raises(NotFound):
        graph.check_declare(sim.projection, "zzz", ["A"])
    with pytest.raises(InvalidField) as e:
        graph.check_declare(sim.projection, "A", ["B", "nope"])
    assert e.value.field == "depends_on[1]"
    with pytest.raises(InvalidField, match="itself"):
        graph.check_declare(sim.projection, "A", ["A"])
    with pytest.raises(InvalidField) as e:
        graph.check_declare(sim.projection, "A", ["C"])  # C -> B -> A: A -> C closes a cycle
    assert e.value.field == "depends_on[0]" and "A -> C -> B -> A" in e.value.message
    # Already a prerequisite, or repeated: ignored.
    assert graph.check_declare(sim.projection, "C", ["B", "A", "A"]) == ["A"]


def test_declare_on_a_started_task_is_a_failed_precondition(sim: GraphSim) -> None:
    sim.submit("X")
    sim.submit("Y", type="nobody")
    sim.grant_to("X", ("a1", "i1"))
    with pytest.raises(FailedPrecondition, match="RUNNING"):
        graph.check_declare(sim.projection, "X", ["Y"])


def test_declare_on_a_failed_prerequisite_is_refused(sim: GraphSim) -> None:
    sim.submit("F")
    sim.fail("F")
    sim.submit("Z", type="nobody")
    with pytest.raises(FailedPrecondition, match="'F' already ended FAILED"):
        graph.check_declare(sim.projection, "Z", ["F"])


def test_cycle_detection_skips_finished_tasks_and_visits_each_task_once(sim: GraphSim) -> None:
    # A wide layered graph: every task of layer k depends on every task of layer k-1.
    prev: list[str] = []
    for layer in range(6):
        ids = [f"L{layer}-{i}" for i in range(6)]
        for tid in ids:
            if prev:
                sim.submit_dep(tid, prev, type="nobody")
            else:
                sim.submit(tid, type="nobody")
        prev = ids
    sim.submit("solo", type="nobody")
    assert graph.find_cycle(sim.projection, "solo", prev) is None
    assert graph.find_cycle(sim.projection, "L0-0", ["L5-3"]) is not None


# ---- readiness and cascades ------------------------------------------------------------------------

def test_diamond_runs_in_order_and_leases_carry_outputs(sim: GraphSim) -> None:
    diamond(sim)
    assert [sim.state(t) for t in "ABCD"] == [State.READY, W, W, W]
    assert sim.projection.tasks["D"].unfinished_prerequisites == 2
    sim.run_ok("A")
    assert [sim.state(t) for t in "BCD"] == [State.READY, State.READY, W]
    sim.run_ok("B", {"from": "B"})
    assert sim.state("D") == W and sim.projection.tasks["D"].unfinished_prerequisites == 1
    sim.run_ok("C", {"from": "C"})
    assert sim.state("D") == State.READY and sim.projection.tasks["D"].state_reason == "prerequisites succeeded"
    from corral.v1 import actor_service_pb2
    lease = actor_service_pb2.Lease()
    graph.fill_prerequisites(sim.projection, sim.projection.tasks["D"], lease)
    assert [(p.task_id, p.output.struct_value["from"]) for p in lease.prerequisites] == [("B", "B"), ("C", "C")]


def test_waiting_task_with_future_not_before_goes_to_scheduled_then_ready(sim: GraphSim) -> None:
    sim.submit("A")
    sim.submit_dep("B", ["A"], not_before_ms=T0 + 60_000)
    assert sim.state("B") == W
    sim.run_ok("A")
    assert sim.state("B") == State.SCHEDULED
    with sim.step(T0 + 60_000):
        sim.fire_timers()
    assert sim.state("B") == State.READY


def test_failed_prerequisite_cancels_dependents_transitively_in_one_step(sim: GraphSim) -> None:
    diamond(sim)
    sim.submit_dep("E", ["D"])
    sim.submit("other")
    before = len(sim.all_records)
    sim.fail("A")
    assert [sim.state(t) for t in "ABCDE"] == [State.FAILED] + [State.CANCELED] * 4
    assert sim.state("other") == State.READY
    b, d, e = (sim.projection.tasks[t] for t in "BDE")
    assert b.state_reason == "prerequisite 'A' ended FAILED"
    assert b.error.kind == "dependency_failed"
    assert d.state_reason.startswith("prerequisite 'B' ended CANCELED") and "'A' ended FAILED" in d.state_reason
    assert e.error.message == "prerequisite 'A' ended FAILED"  # the root cause, at any depth
    # One record per canceled task (B, C, D, E), after the grant and the AttemptEnded.
    assert len(sim.all_records) - before == 2 + 4


def test_canceling_a_prerequisite_cancels_its_dependents(sim: GraphSim) -> None:
    diamond(sim)
    sim.cancel("A")
    assert [sim.state(t) for t in "BCD"] == [State.CANCELED] * 3
    assert sim.projection.tasks["B"].state_reason == "prerequisite 'A' ended CANCELED"


def test_submission_on_an_already_failed_prerequisite_is_canceled_at_once(sim: GraphSim) -> None:
    sim.submit("A")
    sim.fail("A")
    sim.submit("ok")
    sim.run_ok("ok")
    assert sim.submit_dep("late", ["ok", "A"]) == State.CANCELED
    assert sim.submit_dep("fine", ["ok"]) == State.READY  # every prerequisite SUCCEEDED already


def test_declare_moves_a_ready_task_to_waiting_and_back(sim: GraphSim) -> None:
    sim.submit("P", type="nobody")
    sim.submit("T", type="nobody")
    sim.declare("T", ["P"])
    assert sim.state("T") == W and list(sim.projection.tasks["T"].prerequisites) == ["P"]
    sim.grant_to("P", ("a1", "i1"))
    sim.report("P", O.ATTEMPT_OUTCOME_SUCCEEDED)
    assert sim.state("T") == State.READY


def test_waiting_keyed_task_does_not_take_its_key(sim: GraphSim) -> None:
    sim.submit("P", type="nobody")
    k = spec(now_ms=sim.now)
    k.concurrency_key, k.concurrency_limit = "k", 1
    k.depends_on.append("P")
    rec = submitted("K1", k, sim.now)
    rec.task_submitted.state = W
    sim.emit(rec)
    sim.submit("K2", task_pb2.TaskSpec(type="t", concurrency_key="k", concurrency_limit=1,
                                        retry=k.retry, execution_timeout=k.execution_timeout,
                                        concurrency_policy=task_pb2.CONCURRENCY_POLICY_QUEUE))
    assert sim.projection.concurrency.holds("K2", "k")  # K1 waits for P, not for the key
    assert not sim.projection.concurrency.holds("K1", "k")


def test_waiting_tasks_count_as_queued(sim: GraphSim) -> None:
    diamond(sim)
    assert queued_tasks(sim.projection) == 4


def test_unknown_prerequisite_in_the_wal_is_refused() -> None:
    s = spec()
    s.depends_on.append("ghost")
    rec = submitted("x", s, T0)
    rec.task_submitted.state = W
    sim = GraphSim()
    with pytest.raises(CorruptProjection):
        sim.projection.apply(rec, T0)


# ---- replay --------------------------------------------------------------------------------------

def graph_history(sim: GraphSim) -> None:
    with sim.step():
        sim.connect(identity(slots=100))
        diamond(sim)
        sim.submit("P", type="nobody")
        sim.submit_dep("Q", ["P"], not_before_ms=T0 + 5_000)
        sim.submit("X")
        sim.submit_dep("Y", ["X"])
        sim.submit_dep("Z", ["Y"])
        sim.submit("R", type="nobody")
        sim.submit("S", type="nobody")
    with sim.step(T0 + 500):
        sim.run_ok("A")
        sim.fail("X")
        sim.declare("S", ["R"])
    with sim.step(T0 + 1_000):
        sim.run_ok("B", {"b": 1})
        sim.run_ok("C", {"c": 2})
        sim.cancel("R")
        sim.grant_to("P", ("a1", "i1"))
        sim.report("P", O.ATTEMPT_OUTCOME_SUCCEEDED)
    with sim.step(T0 + 1_500):
        sim.run_ok("D")
    with sim.step(T0 + 6_000):
        sim.fire_timers()


def test_replay_of_a_graph_history_equals_live(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "wal", map_size_bytes=1 << 24, sync=False) as wal:
        sim = GraphSim(wal)
        graph_history(sim)
        expected = {"A": State.SUCCEEDED, "B": State.SUCCEEDED, "C": State.SUCCEEDED, "D": State.SUCCEEDED,
                    "P": State.SUCCEEDED, "Q": State.READY, "X": State.FAILED, "Y": State.CANCELED,
                    "Z": State.CANCELED, "R": State.CANCELED, "S": State.CANCELED}
        assert {t: sim.state(t) for t in expected} == expected
        replayed = replay(wal.records())
        assert replayed.fingerprint() == sim.projection.fingerprint()
        assert replayed.dependents == sim.projection.dependents
        assert {t: r.unfinished_prerequisites for t, r in replayed.tasks.items()} == \
            {t: r.unfinished_prerequisites for t, r in sim.projection.tasks.items()}
        assert replayed.state_counts == sim.projection.state_counts
