"""Snapshots (coordinator/core/snapshot.py) and retention (coordinator/core/retention.py), pure.

The main check: for rich WAL histories (retries, lost and timed-out attempts, cancels, keys with
holds and waiting tasks, task graphs, pause, forgotten tasks, attempts still running), a snapshot
taken after ANY prefix of the WAL, loaded into a fresh projection, has the fingerprint of the
prefix's replay, and applying the rest of the WAL to it gives the fingerprint of the full replay.
A durable field that the snapshot forgets makes one of these differ.
"""
from __future__ import annotations

import random

import pytest

from corral.v1 import snapshot_pb2, task_pb2, wal_pb2
from coordinator.core import admission, decisions, retention
from coordinator.core.fleet import ConnectedActor, Fleet
from coordinator.core.projection import CorruptProjection, Projection
from coordinator.core.snapshot import capture_head, finished_row, load
from coordinator.core.states import TERMINAL_STATES, State

from .core_fixtures import T0, FakeSession, Sim, identity, json_value, spec
from .test_core_admission import kspec
from .test_core_graph import GraphSim, graph_history
from .test_core_projection_replay import run_history

O = task_pb2
pytestmark = pytest.mark.timeout(120)


def round_trip(p: Projection) -> Projection:
    """Snapshot `p` (head + finished rows, through their serialized form) and load it fresh."""
    rows = [finished_row(t) for t in p.tasks.values() if t.state in TERMINAL_STATES]
    random.Random(1).shuffle(rows)  # rows come back from storage in any order
    head = capture_head(p, p.last_seq, T0, len(rows))
    q = Projection(deadline_grace_ms=p.deadline_grace_ms, priority_aging_ms=p.priority_aging_ms,
                   track_expiry=p.expiry is not None)
    load(q, snapshot_pb2.SnapshotHead.FromString(head.SerializeToString()),
         rows)
    return q


def replay(records, aging_ms: int = 60_000, track_expiry: bool = False) -> Projection:
    p = Projection(priority_aging_ms=aging_ms, track_expiry=track_expiry)
    for r in records:
        p.apply(r, r.at_unix_ms)
    return p


def derived(p: Projection) -> tuple:
    """Indexes outside the fingerprint that must also come back."""
    return (p.ready_count, dict(p.state_counts), dict(p.idempotency), list(p.by_ordinal),
            dict(p.ready_live), sorted(p.ready_queues), p.submitted_count, p._ready_order,
            list(p.tasks))


def effective_timers(p: Projection, at_ms: int) -> list[bytes]:
    out = []
    for kind, task_id, attempt in p.pop_due_timers(at_ms):
        rec = decisions.timer_record(p, kind, task_id, attempt, at_ms, lambda: 0.5)
        if rec is not None:
            out.append(rec.SerializeToString(deterministic=True))
    return sorted(out)


def picks(p: Projection) -> list[tuple[str, str]]:
    fleet = Fleet(10_000)
    fleet.connect(ConnectedActor(identity("n1", "i1", types=("nobody", "t", "k"), caps=("gpu",), slots=50), T0,
                                 FakeSession("n1")))
    return [(t.task_id, a.key[0]) for t, a in decisions.select_grants(p, fleet)]


def check_every_cut(records: list[wal_pb2.WalRecord], track_expiry: bool = False) -> None:
    full = replay(records, track_expiry=track_expiry)
    for k in range(len(records) + 1):
        prefix = replay(records[:k], track_expiry=track_expiry)
        loaded = round_trip(prefix)
        assert loaded.fingerprint() == prefix.fingerprint(), f"snapshot after record {k}"
        assert derived(loaded) == derived(prefix), f"indexes after record {k}"
        for r in records[k:]:
            loaded.apply(r, r.at_unix_ms)
        assert loaded.fingerprint() == full.fingerprint(), f"snapshot after record {k}, then the tail"
        assert derived(loaded) == derived(full)
    far = records[-1].at_unix_ms + 1000 * 3_600_000
    last = round_trip(full)
    assert picks(last) == picks(full)
    assert effective_timers(last, far) == effective_timers(replay(records, track_expiry=track_expiry), far)


# ---- histories ---------------------------------------------------------------------------------

def keyed_history() -> list[wal_pb2.WalRecord]:
    """Concurrency keys (holds, waiting, admitted, lost, retry with hold, DROP_NEW,
    CANCEL_IN_PROGRESS), priorities, pause, idempotency keys, capabilities."""
    sim = Sim()

    def submit(task_id, s):
        sim.submit(task_id, s)
        for record in admission.on_submitted(sim.projection, sim.projection.tasks[task_id]):
            sim.emit(record)

    backoff = task_pb2.Backoff()
    backoff.initial.FromMilliseconds(1_000)
    with sim.step(T0):
        sim.connect(identity("a1", "i1", types=("k",), slots=3))
        for i in range(4):
            submit(f"q{i}", kspec("A", type="k", priority=i % 2, now_ms=sim.now))
        submit("h", kspec("B", hold=True, type="k", max_attempts=3, backoff=backoff, now_ms=sim.now))
        submit("h2", kspec("B", type="k", now_ms=sim.now))
        submit("two", kspec("C", limit=2, type="k", idempotency_key="idem-1", now_ms=sim.now))
        submit("gpu", spec(type="k", caps=("gpu",), now_ms=sim.now))
        sim.tick()
    with sim.step(T0 + 500):
        sim.emit(wal_pb2.WalRecord(dispatch_paused=wal_pb2.DispatchPaused(reason="maintenance")))
        sim.report("h", O.ATTEMPT_OUTCOME_FAILED, error=task_pb2.TaskError(message="x", kind="E"))
        submit("drop", kspec("A", policy=task_pb2.CONCURRENCY_POLICY_DROP_NEW, type="k", now_ms=sim.now))
        sim.cancel("q3", "not needed")
    with sim.step(T0 + 1_000):
        sim.emit(wal_pb2.WalRecord(dispatch_resumed=wal_pb2.DispatchResumed(reason="done")))
        running = [tid for tid, t in sim.projection.tasks.items() if t.state == State.RUNNING]
        for task_id in running[:1]:
            sim.report(task_id, O.ATTEMPT_OUTCOME_SUCCEEDED, output=json_value({"ok": task_id}))
        sim.tick()
    with sim.step(T0 + 2_000):
        submit("cip", kspec("A", policy=task_pb2.CONCURRENCY_POLICY_CANCEL_IN_PROGRESS, type="k",
                            now_ms=sim.now))
        sim.tick()
    with sim.step(T0 + 20_000):
        sim.tick()  # leases of silent attempts expire: lost, READY again with their key
    with sim.step(T0 + 21_000):
        sim.tick()
    return sim.all_records_with_seq()


def forget_history() -> list[wal_pb2.WalRecord]:
    """Tasks finishing and being forgotten (TasksForgotten), ids and idempotency keys reused."""
    sim = GraphSim()
    sim.projection = Projection(track_expiry=True)
    with sim.step(T0):
        sim.connect(identity(slots=10))
        sim.submit("a", idempotency_key="key-a")
        sim.submit("b")
        sim.submit_dep("c", ["a"])
        sim.submit("far", not_before_ms=T0 + 3_600_000)
    with sim.step(T0 + 100):
        sim.run_ok("a")
        sim.run_ok("b")
    with sim.step(T0 + 1_200):
        # a has an unfinished dependent (c): kept; b goes.
        due, _ = retention.due_forgets(sim.projection, sim.now, 1_000)
        assert due == ["b"]
        for r in retention.forget_records(due):
            Sim.emit(sim, r)
        sim.run_ok("c")
    with sim.step(T0 + 2_500):
        due, _ = retention.due_forgets(sim.projection, sim.now, 1_000)
        assert sorted(due) == ["a", "c"]
        for r in retention.forget_records(due):
            Sim.emit(sim, r)
        sim.submit("a", idempotency_key="key-a")  # the id and the key are free again
        sim.submit("b", type="nobody")
    return sim.all_records_with_seq()


def _with_seq(self) -> list[wal_pb2.WalRecord]:
    """The live records, with seq and at_unix_ms as a WAL would give them (Sim keeps no WAL here)."""
    return self._stamped


def _stamp_commit(self) -> None:
    for r in self.pending:
        stamped = wal_pb2.WalRecord()
        stamped.CopyFrom(r)
        stamped.seq = len(self._stamped) + 1
        stamped.at_unix_ms = self.now
        self._stamped.append(stamped)
    self.pending = []


@pytest.fixture(autouse=True)
def stamped_sim(monkeypatch):
    monkeypatch.setattr(Sim, "_stamped", None, raising=False)
    orig_init = Sim.__init__

    def init(self, *a, **kw):
        orig_init(self, *a, **kw)
        self._stamped = []

    monkeypatch.setattr(Sim, "__init__", init)
    monkeypatch.setattr(Sim, "commit", _stamp_commit)
    monkeypatch.setattr(Sim, "all_records_with_seq", _with_seq, raising=False)


# ---- snapshot round trips -----------------------------------------------------------------------

def test_snapshot_after_any_prefix_of_a_retry_cancel_and_lost_history_equals_replay() -> None:
    sim = run_history(None)
    records = sim.all_records_with_seq()
    assert len(records) > 80
    check_every_cut(records)


def test_snapshot_after_any_prefix_of_a_task_graph_history_equals_replay() -> None:
    sim = GraphSim()
    graph_history(sim)
    check_every_cut(sim.all_records_with_seq())


def test_snapshot_after_any_prefix_of_a_keyed_and_paused_history_equals_replay() -> None:
    records = keyed_history()
    kinds = {r.WhichOneof("event") for r in records}
    assert {"dispatch_paused", "dispatch_resumed", "cancel_requested"} <= kinds
    p = replay(records)
    assert p.concurrency.gates and any(g.waiting_count for g in p.concurrency.gates.values())
    assert any(t.state == State.RUNNING for t in p.tasks.values())
    check_every_cut(records)


def test_snapshot_after_any_prefix_of_a_history_with_forgotten_tasks_equals_replay() -> None:
    records = forget_history()
    assert sum(1 for r in records if r.HasField("tasks_forgotten")) == 2
    check_every_cut(records, track_expiry=True)


def test_a_snapshot_missing_a_finished_row_is_refused() -> None:
    p = replay(forget_history())
    rows = [finished_row(t) for t in p.tasks.values() if t.state in TERMINAL_STATES]
    head = capture_head(p, p.last_seq, T0, len(rows) + 1)
    from coordinator.core.snapshot import SnapshotMismatch
    with pytest.raises(SnapshotMismatch):
        load(Projection(), head, rows)


# ---- retention -----------------------------------------------------------------------------------

def test_forgetting_removes_a_task_from_every_index() -> None:
    records = forget_history()
    p = replay(records, track_expiry=True)
    assert set(p.tasks) == {"far", "a", "b"}
    assert p.tasks["a"].ordinal == 5 and p.idempotency == {"key-a": "a"}
    assert list(p.by_ordinal) == [t.ordinal for t in p.tasks.values()] == [4, 5, 6]
    assert p.dependents == {}
    assert p.state_counts[State.SUCCEEDED] == 0 and sum(p.state_counts.values()) == 3
    with pytest.raises(CorruptProjection, match="unknown task"):
        p.apply(wal_pb2.WalRecord(tasks_forgotten=wal_pb2.TasksForgotten(task_ids=["c"])), T0 + 3_000)
    with pytest.raises(CorruptProjection, match="forgotten while"):
        p.apply(wal_pb2.WalRecord(tasks_forgotten=wal_pb2.TasksForgotten(task_ids=["far"])), T0 + 3_000)


def test_due_forgets_is_bounded_and_skips_stale_entries() -> None:
    sim = Sim()
    sim.projection = Projection(track_expiry=True)
    with sim.step(T0):
        sim.connect(identity(slots=100))
        for i in range(30):
            sim.submit(f"t{i}")
        sim.grant()
    with sim.step(T0 + 10):
        for i in range(30):
            sim.report(f"t{i}", O.ATTEMPT_OUTCOME_SUCCEEDED)
    p = sim.projection
    assert retention.due_forgets(p, T0 + 1_009, 1_000) == ([], False)  # not due yet
    assert retention.next_due_ms(p, 1_000) == T0 + 1_010
    due, more = retention.due_forgets(p, T0 + 1_010, 1_000, limit=20)
    assert due == [f"t{i}" for i in range(20)] and more
    for r in retention.forget_records(due):
        p.apply(r, T0 + 1_010)
    due, more = retention.due_forgets(p, T0 + 1_010, 1_000, limit=20)
    assert due == [f"t{i}" for i in range(20, 30)] and not more
    assert len(retention.forget_records([str(i) for i in range(2_500)])) == 3


def test_empty_ready_queue_keys_are_dropped() -> None:
    sim = Sim()
    with sim.step(T0):
        for i in range(3):
            sim.submit(f"x{i}", type=f"client-type-{i}")
        assert len(sim.projection.ready_queues) == 3
        for i in range(3):
            sim.cancel(f"x{i}")
    assert sim.projection.ready_queues == {} and sim.projection.ready_live == {}
    with sim.step(T0 + 1):
        sim.connect(identity(slots=2))
        sim.submit("y1")
        sim.submit("y2")
        sim.submit("y3")
        assert len(sim.grant()) == 2
        assert sim.projection.ready_live == {("t", frozenset()): 1}
        sim.report("y1", O.ATTEMPT_OUTCOME_SUCCEEDED)
        sim.grant()
        assert sim.projection.ready_queues == {} and sim.projection.ready_count == 0


def children_history(reuse_parent: bool = False) -> list[wal_pb2.WalRecord]:
    """Parents waiting for children, a failed child failing its parent, a detached child, a
    running child canceled with its parent, a total timeout, a schedule, and forgotten children;
    with `reuse_parent`, then a parent forgotten before two of its children, a new task under
    its id, and one of the old children forgotten after that."""
    from corral.v1 import schedule_pb2

    from .test_core_children import TreeSim

    sim = TreeSim()
    with sim.step():
        sim.emit(wal_pb2.WalRecord(schedule_created=wal_pb2.ScheduleCreated(schedule=schedule_pb2.Schedule(
            spec=schedule_pb2.ScheduleSpec(schedule_id="s1", interval={"seconds": 60},
                                           task=O.TaskSpec(type="t")),
            state=schedule_pb2.SCHEDULE_STATE_ACTIVE, next_occurrence={"seconds": T0 // 1000 + 60}))))
        for pid in ("p", "q", "r"):
            sim.submit(pid)
            sim.run(pid)
    with sim.step(sim.now + 10):
        sim.child("p", "a", "pa")
        sim.child("p", "b", "pb", allow_failure=True)
        sim.child("p", "d", "pd", detached=True)
        sim.child("q", "a", "qa")
        sim.child("r", "a", "ra")
        closing = spec(now_ms=sim.now)
        closing.schedule_to_close_timeout.FromMilliseconds(5_000)
        sim.submit("z", closing)
    with sim.step(sim.now + 10):
        sim.ok("p", {"mine": 1})
        sim.run("pa")
        sim.run("pb")
        sim.run("qa")
    with sim.step(sim.now + 10):
        sim.ok("pa")
        sim.fail("pb")
        sim.fail("qa")
        sim.ok("q")
    with sim.step(sim.now + 10):
        sim.run("ra")
        sim.cancel("r")
    with sim.step(sim.now + 6_000):
        sim.fire_timers()
        sim.run("pd")
        sim.ok("pd")
    with sim.step(sim.now + 10):
        sim.emit(wal_pb2.WalRecord(tasks_forgotten=wal_pb2.TasksForgotten(task_ids=["pa", "qa", "z"])))
    if reuse_parent:
        with sim.step(sim.now + 10):
            sim.emit(wal_pb2.WalRecord(tasks_forgotten=wal_pb2.TasksForgotten(task_ids=["p"])))
        with sim.step(sim.now + 10):
            sim.submit("p")
        with sim.step(sim.now + 10):
            sim.emit(wal_pb2.WalRecord(tasks_forgotten=wal_pb2.TasksForgotten(task_ids=["pb"])))
    return sim.all_records_with_seq()


def test_snapshot_after_any_prefix_of_a_children_and_schedules_history_equals_replay() -> None:
    records = children_history()
    full = replay(records)
    assert full.tasks["p"].state == State.SUCCEEDED and full.tasks["q"].state == State.FAILED
    assert full.tasks["r"].cancel_requested and "z" not in full.tasks and "s1" in full.schedules
    assert ("p", "b") in full.child_keys and ("p", "a") not in full.child_keys
    check_every_cut(records)


def test_a_forgotten_parent_unlinks_its_children_and_a_new_task_with_its_id_adopts_none() -> None:
    records = children_history(reuse_parent=True)
    full = replay(records)
    assert full.tasks["p"].state == State.READY and not full.tasks["p"].children
    assert full.tasks["pd"].parent_id == "" and full.tasks["pd"].spec.parent_task_id == "p"
    assert "pb" not in full.tasks and not [k for k in full.child_keys if k[0] == "p"]
    check_every_cut(records)
