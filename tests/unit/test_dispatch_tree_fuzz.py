"""Randomized histories on a real dispatch loop, in process (real projection, fleet and LMDB WAL; a
fake clock; no gRPC): trees of children, cancels of parents and subtrees, child waits, concurrency
keys under their three policies, dependency cascades, retries, lease expiry and retention,
interleaved at random from a fixed list of seeds.

Owns: the invariants that must hold after every step of any such history (the loop runs; the
tree's links and counters; keys under their limits; nothing starts before its prerequisites
SUCCEEDED; what ended a task ends its subtree), that a history driven to quiescence leaves every
task finished, and that the WAL replays, record by record, to the live projection.

A failing seed is reproduced exactly by running its test alone: task ids, the clock, the retry
jitter and every choice come from the seed."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import random

import pytest

from corral.v1 import actor_service_pb2, task_pb2
from coordinator.core.concurrency import CANCEL_IN_PROGRESS, DROP_NEW, QUEUE
from coordinator.core.errors import CorralError
from coordinator.core.fleet import Fleet
from coordinator.core.graph import DECLARABLE_STATES
from coordinator.core.projection import Projection
from coordinator.core.spec import SpecLimits, normalize_spec
from coordinator.core.states import TERMINAL_STATES, State
from coordinator.dispatch import commands as C
from coordinator.dispatch import loop as loop_module
from coordinator.dispatch.actor_link import ActorLink
from coordinator.dispatch.loop import DispatchLoop
from coordinator.storage.wal import WriteAheadLog

from .test_dispatch_operations import connect
from .test_dispatch_retention import Clock

pytestmark = pytest.mark.timeout(60)

SEEDS = range(30)
STEPS_PER_SEED = 80
# Every key has one limit, whoever uses it, so "at most `limit` holders" can be checked.
KEY_LIMITS = {"k1": 1, "k2": 2}
POLICIES = (QUEUE, CANCEL_IN_PROGRESS, DROP_NEW)
CHILD_KEYS = ("c0", "c1", "c2", "c3")
SUCCEEDED = task_pb2.ATTEMPT_OUTCOME_SUCCEEDED
FAILED = task_pb2.ATTEMPT_OUTCOME_FAILED
CANCELED = task_pb2.ATTEMPT_OUTCOME_CANCELED
CANCEL_REQUESTED = actor_service_pb2.CANCEL_REASON_REQUESTED
QUIESCENCE_ROUNDS = 200


def finished(task) -> bool:
    return task.state in TERMINAL_STATES


@contextlib.asynccontextmanager
async def fuzz_loop(path, clock: Clock, rng: random.Random, retention_ms: int):
    """A loop whose wall and lease clocks are both `clock` (so time advances expire leases too),
    with the retry jitter drawn from the seed."""
    wal = WriteAheadLog(path, sync=False)
    loop = DispatchLoop(wal, Projection(track_expiry=True), Fleet(lease_ttl_ms=60_000), coordinator_id="fuzz",
                        heartbeat_interval_ms=20_000, clock=clock, monotonic=clock, rand=rng.random,
                        retention_ms=retention_ms)
    runner = asyncio.create_task(loop.run())
    try:
        yield loop
    finally:
        loop.stop()
        with contextlib.suppress(BaseException):
            await runner
        wal.close()


class FakeActor:
    """One actor: the leases it was granted, and the child answers, child outcomes and cancels the
    loop sent it. It runs no handler: the history decides what each attempt does."""

    def __init__(self, loop: DispatchLoop, link) -> None:
        self.loop = loop
        self.link = link
        self.leases: dict[str, actor_service_pb2.Lease] = {}  # task id -> its latest lease
        self.answers: dict[int, actor_service_pb2.ChildSubmitted] = {}
        self.outcomes: set[tuple[str, int, str, int]] = set()  # (parent, token, child, state)
        self.cancel_requested: set[tuple[str, int]] = set()  # (task, token) the loop asked to cancel
        self.new_leases: list[actor_service_pb2.Lease] = []
        self.request_ids = itertools.count(1)

    def drain(self) -> None:
        while not self.link.queue.empty():
            msg = self.link.queue.get_nowait()
            for lease in msg.leases:
                self.leases[lease.ref.task_id] = lease
                self.new_leases.append(lease)
            for answer in msg.child_submitted:
                self.answers[answer.request_id] = answer
            for outcome in msg.child_outcomes:
                self.outcomes.add((outcome.parent.task_id, outcome.parent.fencing_token, outcome.task_id,
                                   outcome.state))
            for cancel in msg.cancels:
                if cancel.reason == CANCEL_REQUESTED:
                    self.cancel_requested.add((cancel.lease.task_id, cancel.lease.fencing_token))

    def live(self) -> list[actor_service_pb2.Lease]:
        """Leases whose attempt is still the task's current one (the others were fenced off)."""
        tasks = self.loop.projection.tasks
        live = []
        for task_id, lease in sorted(self.leases.items()):
            task = tasks.get(task_id)
            if (task is not None and task.state == State.RUNNING
                    and task.attempts[-1].fencing_token == lease.ref.fencing_token):
                live.append(lease)
        return live

    async def send(self, request: actor_service_pb2.ConnectRequest) -> None:
        self.loop.post(C.ActorUpdate(self.link, request))
        await settle(self.loop)  # commands run in order: it was handled
        self.drain()


async def settle(loop: DispatchLoop) -> None:
    """One step after whatever was posted before (its effects are queued before the reply)."""
    await loop.call(lambda f: C.ClusterStatus(f))


class History:
    """One seed's history: the choices, what was done, and the checks after each step."""

    def __init__(self, seed: int, loop: DispatchLoop, actor: FakeActor, clock: Clock, rng: random.Random,
                 slots: int) -> None:
        self.seed = seed
        self.slots = slots
        self.loop = loop
        self.actor = actor
        self.clock = clock
        self.rng = rng
        self.roots = 0
        # Task id -> the index of the root of its tree. A task may only depend on a task of an
        # earlier tree: then no tree can wait (through children and prerequisites) for itself, so
        # every history can be driven to the end.
        self.tree_of: dict[str, int] = {}
        self.explicitly_canceled: set[str] = set()
        self.waits: list[tuple[str, int, str]] = []  # (parent, token, child) a handler waits for
        self.bursting = False
        self.log: list[str] = []

    @property
    def tasks(self):
        return self.loop.projection.tasks

    # ---- choices ------------------------------------------------------------------------------

    def prerequisites_for(self, tree: int, at_most: int) -> list[str]:
        candidates = sorted(t for t in self.tasks if self.tree_of.get(t, tree) < tree)
        if not candidates:
            return []
        return self.rng.sample(candidates, min(len(candidates), self.rng.randint(1, at_most)))

    def keyed_fields(self) -> dict:
        key = self.rng.choice(sorted(KEY_LIMITS))
        return dict(concurrency_key=key, concurrency_limit=KEY_LIMITS[key],
                    concurrency_policy=self.rng.choice(POLICIES), hold_key_during_retry=self.rng.random() < 0.3)

    def limits(self, spec: task_pb2.TaskSpec) -> None:
        """Sometimes fewer attempts, sometimes a total (schedule-to-close) timeout."""
        if self.rng.random() < 0.3:
            spec.retry.max_attempts = self.rng.randint(1, 3)
        if self.rng.random() < 0.15:
            spec.schedule_to_close_timeout.FromMilliseconds(self.rng.choice((2_000, 10_000, 40_000)))

    def root_spec(self) -> task_pb2.TaskSpec:
        rng = self.rng
        self.roots += 1
        task_id = f"r{self.roots}"
        self.tree_of[task_id] = self.roots
        fields: dict = dict(task_id=task_id, type="t")
        if rng.random() < 0.3:
            fields.update(self.keyed_fields())
        if rng.random() < 0.3:
            fields["depends_on"] = self.prerequisites_for(self.roots, 2)
        delayed = rng.random() < 0.1
        spec = task_pb2.TaskSpec(**fields)
        self.limits(spec)
        if delayed:
            spec.not_before.FromMilliseconds(self.loop.now_ms() + rng.randint(500, 5_000))
        return spec

    # ---- operations ---------------------------------------------------------------------------

    async def submit_roots(self) -> None:
        specs = [self.root_spec() for _ in range(self.rng.choice((1, 1, 1, 2, 3)))]
        if self.rng.random() < 0.5:
            specs.reverse()  # prerequisites after their dependents: the batch is reordered
        fields = [f"tasks[{i}]" for i in range(len(specs))]
        for spec, field in zip(specs, fields):
            normalize_spec(spec, field, SpecLimits(), self.loop.now_ms())
        try:
            results = await self.loop.call(lambda f: C.SubmitTasks(specs, fields, f))
        except CorralError as exc:
            self.log.append(f"submit {[s.task_id for s in specs]} refused: {exc}")
            return
        self.log.append(f"submit {[(tid, State(state).name) for tid, _, state in results]}")

    async def submit_child(self) -> None:
        live = self.actor.live()
        if not live:
            return
        rng = self.rng
        lease = rng.choice(live)
        parent_id = lease.ref.task_id
        tree = self.tree_of[parent_id]
        fields: dict = dict(type="t", child_key=rng.choice(CHILD_KEYS))
        if rng.random() < 0.25:
            fields["detached"] = True
        if rng.random() < 0.25:
            fields["allow_failure"] = True
        if rng.random() < 0.25:
            fields.update(self.keyed_fields())
        if rng.random() < 0.2:
            fields["depends_on"] = self.prerequisites_for(tree, 1)
        spec = task_pb2.TaskSpec(**fields)
        self.limits(spec)
        normalize_spec(spec, "child_submissions[0].task", SpecLimits(), self.loop.now_ms(), child=True)
        request_id = next(self.actor.request_ids)
        request = actor_service_pb2.ConnectRequest()
        request.child_submissions.add(parent=lease.ref, request_id=request_id, task=spec)
        being_canceled = self.tasks[parent_id].cancel_requested
        await self.actor.send(request)
        answer = self.actor.answers[request_id]
        if answer.code:
            # Refusals a live parent may get: it is being canceled, or a prerequisite was forgotten
            # (in a burst, another command of the step may have canceled or ended it first).
            assert being_canceled or self.bursting or "unknown task" in answer.message, (self.seed, answer)
            self.log.append(f"child of {parent_id} refused: {answer.message}")
            return
        self.tree_of.setdefault(answer.task_id, tree)
        child = self.tasks[answer.task_id]
        assert child.parent_id == parent_id and answer.task_id in self.tasks[parent_id].children
        self.log.append(f"child {answer.task_id} of {parent_id} key {spec.child_key} created={answer.created} "
                        f"{State(answer.state).name}")

    async def wait_for_child(self) -> None:
        parents = [lease for lease in self.actor.live() if self.tasks[lease.ref.task_id].children]
        if not parents:
            return
        lease = self.rng.choice(parents)
        parent_id = lease.ref.task_id
        child_id = self.rng.choice(list(self.tasks[parent_id].children))
        request = actor_service_pb2.ConnectRequest()
        request.child_waits.add(parent=lease.ref, task_ids=[child_id])
        self.waits.append((parent_id, lease.ref.fencing_token, child_id))
        await self.actor.send(request)
        self.log.append(f"{parent_id} waits for {child_id}")

    async def report(self, lease=None, outcome=None) -> None:
        rng = self.rng
        if lease is None:
            live = self.actor.live()
            if not live:
                return
            lease = rng.choice(live)
        task_id = lease.ref.task_id
        if outcome is None:
            if (task_id, lease.ref.fencing_token) in self.actor.cancel_requested and rng.random() < 0.6:
                outcome = CANCELED  # the handler saw its cancel (else it returns as if it had not)
            else:
                outcome = rng.choice((SUCCEEDED, SUCCEEDED, SUCCEEDED, FAILED, FAILED, CANCELED))
        request = actor_service_pb2.ConnectRequest()
        result = request.results.add(lease=lease.ref, outcome=outcome)
        if outcome == FAILED:
            result.error.message = "nope"
            result.error.non_retryable = rng.random() < 0.5
        await self.actor.send(request)
        self.log.append(f"report {task_id} #{lease.ref.attempt} {task_pb2.AttemptOutcome.Name(outcome)} -> "
                        f"{State(self.tasks[task_id].state).name if task_id in self.tasks else 'forgotten'}")

    def pick_task(self, prefer) -> str | None:
        """A task id: mostly one for which `prefer(task)` holds, sometimes any (to be refused)."""
        preferred = sorted(t.task_id for t in self.tasks.values() if prefer(t))
        if preferred and self.rng.random() < 0.85:
            return self.rng.choice(preferred)
        return self.rng.choice(sorted(self.tasks)) if self.tasks else None

    async def cancel(self) -> None:
        if self.rng.random() < 0.5:  # most orderings are around parents: prefer them
            task_id = self.pick_task(lambda t: not finished(t) and t.children)
        else:
            task_id = self.pick_task(lambda t: not finished(t))
        if task_id is None:
            return
        try:
            view = await self.loop.call(lambda f: C.CancelTask(task_id, "fuzz", f))
        except CorralError as exc:
            self.log.append(f"cancel {task_id} refused: {exc}")
            return
        self.explicitly_canceled.add(task_id)
        self.log.append(f"cancel {task_id} -> {State(view.state).name}")

    async def declare(self) -> None:
        task_id = self.pick_task(lambda t: not t.started_once and t.state in DECLARABLE_STATES)
        if task_id is None:
            return
        prerequisites = self.prerequisites_for(self.tree_of[task_id], 2)
        if not prerequisites:
            return
        try:
            view = await self.loop.call(lambda f: C.DeclareDependency(task_id, prerequisites, f))
        except CorralError as exc:
            self.log.append(f"declare {task_id} on {prerequisites} refused: {type(exc).__name__}")
            return
        self.log.append(f"declare {task_id} on {prerequisites} -> {State(view.state).name}")

    async def heartbeat(self) -> None:
        """The actor speaks (so it is not suspect after a lease of it expired), extending its leases."""
        request = actor_service_pb2.ConnectRequest()
        request.heartbeats.extend(lease.ref for lease in self.actor.live())
        await self.actor.send(request)

    async def reconnect(self) -> None:
        """The actor's stream breaks; it reconnects at once, re-presents its leases (one may be
        forgotten: it stays bound until it expires) and re-sends the waits of its live attempts."""
        actor = self.actor
        live = actor.live()
        self.loop.post(C.ActorGone(actor.link))
        link = ActorLink()
        hello = actor_service_pb2.Hello(identity=task_pb2.ExecutorIdentity(
            actor_id="a1", incarnation="1", task_types=["t"], slots=self.slots))
        hello.held_leases.extend(lease.ref for lease in live if self.rng.random() < 0.9)
        await self.loop.call(lambda f: C.ActorHello(link, hello, f))
        actor.drain()  # the last messages on the old stream
        actor.link = link
        actor.drain()
        request = actor_service_pb2.ConnectRequest()
        tokens = {lease.ref.task_id: lease.ref.fencing_token for lease in actor.live()}
        for parent_id, token, child_id in self.waits:
            if tokens.get(parent_id) == token:
                request.child_waits.add(parent=actor.leases[parent_id].ref, task_ids=[child_id])
        await actor.send(request)
        self.log.append(f"reconnect: {len(hello.held_leases)} of {len(live)} leases re-presented, "
                        f"{len(request.child_waits)} waits re-sent")

    async def advance(self, seconds: float | None = None) -> None:
        if seconds is None:
            if self.rng.random() < 0.8:
                await self.heartbeat()  # leases stay live across most advances
            seconds = self.rng.choice((0.2, 1, 1, 3, 8, 30, 70))
        self.clock.t += seconds
        await settle(self.loop)  # timers, lease expiry, retention: in the step this runs
        self.actor.drain()
        self.log.append(f"advance {seconds}s")

    def operations(self) -> list[tuple]:
        """(operation, weight); the first ones may share a step (see burst)."""
        return [
            (self.submit_roots, 4), (self.submit_child, 5), (self.wait_for_child, 3), (self.report, 6),
            (self.cancel, 2), (self.declare, 1), (self.advance, 2), (self.reconnect, 0.5), (self.burst, 2),
        ]

    async def burst(self) -> None:
        """Two to four operations whose commands are queued before the loop runs, so that one step
        takes them all, in the order chosen (e.g. a result and a cancel of the same task)."""
        shareable = self.operations()[:6]
        chosen = self.rng.choices([o for o, _ in shareable], weights=[w for _, w in shareable],
                                  k=self.rng.randint(2, 4))
        self.log.append(f"burst of {[op.__name__ for op in chosen]}:")
        self.bursting = True
        try:
            await asyncio.gather(*(op() for op in chosen))
        finally:
            self.bursting = False

    async def step(self) -> None:
        operations = self.operations()
        [op] = self.rng.choices([o for o, _ in operations], weights=[w for _, w in operations])
        await op()

    # ---- to the end ---------------------------------------------------------------------------

    async def drive_to_quiescence(self) -> None:
        """Every handler returns (SUCCEEDED, or CANCELED when asked to), time passes for retries
        and not_before: every task must finish."""
        for _ in range(QUIESCENCE_ROUNDS):
            self.actor.drain()
            live = self.actor.live()
            for lease in live:
                asked = (lease.ref.task_id, lease.ref.fencing_token) in self.actor.cancel_requested
                await self.report(lease, CANCELED if asked else SUCCEEDED)
                self.check()
            if all(finished(t) for t in self.tasks.values()):
                return
            if not live:
                await self.heartbeat()
                await self.advance(10)
                self.check()
        unfinished = {t.task_id: State(t.state).name for t in self.tasks.values() if not finished(t)}
        pytest.fail(f"seed {self.seed}: tasks never finished: {unfinished}\n" + "\n".join(self.log[-30:]))

    # ---- invariants ---------------------------------------------------------------------------

    def check(self) -> None:
        loop = self.loop
        self.actor.drain()  # what the last step sent (it was queued before its replies resolved)
        assert loop.fatal_error is None, f"seed {self.seed}: the loop failed: {loop.fatal_error!r}\n" + \
            "\n".join(self.log[-30:])
        try:
            self._check_tasks()
            self._check_keys()
            self._check_child_waits()
        except AssertionError as exc:
            raise AssertionError(f"seed {self.seed}: {exc}\n" + "\n".join(self.log[-30:])) from None

    def _check_tasks(self) -> None:
        tasks = self.tasks
        leases = self.loop.fleet.leases
        for task in tasks.values():
            tid = task.task_id
            # Tree links and counters.
            if task.parent_id:
                assert tid in tasks[task.parent_id].children, f"{tid}: parent {task.parent_id} does not list it"
            for child_id in task.children:
                assert tasks[child_id].parent_id == tid, f"{tid} lists {child_id}, which names another parent"
            kids = [tasks[c] for c in task.children]
            unfinished = [c for c in kids if not c.spec.detached and not finished(c)]
            assert task.unfinished_children == len(unfinished), f"{tid}: unfinished_children is wrong"
            if task.state == State.WAITING_FOR_CHILDREN:
                assert unfinished and not task.failed_child, f"{tid} waits for children with nothing to wait for"
            if task.state == State.SUCCEEDED:
                assert not unfinished and not task.failed_child, f"{tid} SUCCEEDED before its children"
            # What ended a task ends its non-detached subtree (a running descendant is asked to);
            # an explicit cancel reaches the detached ones too.
            if task.state in (State.FAILED, State.CANCELED) or tid in self.explicitly_canceled:
                for descendant in self._subtree(tid, include_detached=tid in self.explicitly_canceled):
                    assert finished(descendant) or (descendant.state == State.RUNNING and descendant.cancel_requested), \
                        f"{descendant.task_id} is {State(descendant.state).name} under {tid} " \
                        f"({State(task.state).name})"
            # A task canceled by request ends CANCELED, unless its handler returned success first
            # with nothing to wait for, or its total timeout came first.
            if tid in self.explicitly_canceled and finished(task):
                timed_out = task.error is not None and task.error.kind == "schedule_to_close_timeout"
                assert task.state in (State.CANCELED, State.SUCCEEDED) or task.state == State.FAILED and timed_out, \
                    f"{tid} was canceled and ended {State(task.state).name} ({task.state_reason}, {task.error})"
            # Attempts and leases.
            if task.state == State.RUNNING:
                lease = leases.get(tid)
                assert lease is not None and lease.token == task.attempts[-1].fencing_token, f"{tid}: RUNNING, no lease"
            else:
                assert tid not in leases, f"{tid} is {State(task.state).name} and still leased"
                if task.attempts:
                    assert task.attempts[-1].outcome != task_pb2.ATTEMPT_OUTCOME_UNSPECIFIED, f"{tid}: attempt open"
            # Prerequisites: nothing past WAITING_FOR_DEPENDENCIES with one unfinished; a waiting
            # task waits only for prerequisites that may still succeed.
            prerequisites = [tasks[p] for p in task.prerequisites if p in tasks]
            if task.state == State.WAITING_FOR_DEPENDENCIES:
                assert task.unfinished_prerequisites > 0
                assert all(p.state not in (State.FAILED, State.CANCELED) for p in prerequisites), \
                    f"{tid} waits for a prerequisite that ended"
            elif task.state != State.CANCELED and task.state != State.FAILED or task.started_once:
                assert task.unfinished_prerequisites == 0 and all(p.state == State.SUCCEEDED for p in prerequisites), \
                    f"{tid} is {State(task.state).name} with unfinished prerequisites"
            if any(p.state in (State.FAILED, State.CANCELED) for p in prerequisites) and not task.started_once:
                timed_out = task.error is not None and task.error.kind == "schedule_to_close_timeout"
                assert task.state == State.CANCELED or task.state == State.FAILED and timed_out, \
                    f"{tid} outlived a failed prerequisite"
        for lease in self.actor.new_leases:  # (replay_step_by_step checks it at each grant exactly)
            task = tasks.get(lease.ref.task_id)
            prerequisites = task.prerequisites if task is not None else ()
            assert all(tasks[p].state == State.SUCCEEDED for p in prerequisites if p in tasks), \
                f"{lease.ref.task_id} was leased before its prerequisites SUCCEEDED"
        self.actor.new_leases.clear()

    def _subtree(self, task_id: str, include_detached: bool):
        tasks = self.tasks
        stack = list(tasks[task_id].children)
        while stack:
            child = tasks[stack.pop()]
            if child.spec.detached and not include_detached:
                continue
            yield child
            stack.extend(child.children)

    def _check_keys(self) -> None:
        running: dict[str, int] = {}
        for task in self.tasks.values():
            if task.concurrency_key and task.state == State.RUNNING:
                running[task.concurrency_key] = running.get(task.concurrency_key, 0) + 1
        for key, n in running.items():
            assert n <= KEY_LIMITS[key], f"key {key}: {n} running, limit {KEY_LIMITS[key]}"
        for key, gate in self.loop.projection.concurrency.gates.items():
            assert len(gate.occupants) <= KEY_LIMITS[key], f"key {key}: occupants {sorted(gate.occupants)}"

    def _check_child_waits(self) -> None:
        tasks = self.tasks
        for child_id, entries in self.loop._child_waits.items():
            assert child_id in tasks and not finished(tasks[child_id]), f"a wait for finished {child_id} is kept"
            for _, ref in entries:
                parent = tasks[ref.task_id]
                assert parent.state == State.RUNNING and parent.attempts[-1].fencing_token == ref.fencing_token, \
                    f"a wait of an ended attempt of {ref.task_id} is kept"
        for parent_id, token, child_id in self.waits:
            parent, child = tasks.get(parent_id), tasks.get(child_id)
            if (parent is not None and parent.state == State.RUNNING and parent.attempts[-1].fencing_token == token
                    and child is not None and finished(child)):
                assert (parent_id, token, child_id, child.state) in self.actor.outcomes, \
                    f"{parent_id} waits for {child_id} ({State(child.state).name}) and was not told"


def replay_step_by_step(path, live_fingerprint: str) -> None:
    """Replay the WAL one record at a time: no attempt is granted before its prerequisites
    SUCCEEDED, no finished task changes state, and the end is the live projection."""
    fresh = Projection(track_expiry=True)
    wal = WriteAheadLog(path, sync=False)
    try:
        for record in wal.records(1):
            kind = record.WhichOneof("event")
            if kind == "lease_granted":
                task = fresh.tasks[record.lease_granted.task_id]
                assert all(fresh.tasks[p].state == State.SUCCEEDED for p in task.prerequisites if p in fresh.tasks)
            elif kind in ("task_state_changed", "attempt_ended", "cancel_requested"):
                task = fresh.tasks[getattr(record, kind).task_id]
                assert not finished(task), f"record {record.seq} changes finished task {task.task_id}"
            fresh.apply(record, record.at_unix_ms)
    finally:
        wal.close()
    assert fresh.fingerprint() == live_fingerprint


@pytest.mark.parametrize("seed", SEEDS)
def test_random_history_keeps_the_invariants_and_replays(seed, tmp_path, monkeypatch):
    ids = itertools.count(1)
    monkeypatch.setattr(loop_module, "new_task_id", lambda now_ms: f"x{next(ids)}")
    rng = random.Random(seed)
    retention_ms = rng.choice((0, 5_000, 20_000))

    async def go():
        clock = Clock()
        async with fuzz_loop(tmp_path, clock, random.Random(seed + 1_000), retention_ms) as loop:
            slots = rng.choice((2, 4, 8))
            actor = FakeActor(loop, await connect(loop, slots=slots))
            history = History(seed, loop, actor, clock, rng, slots)
            for _ in range(STEPS_PER_SEED):
                await history.step()
                history.check()
            await history.drive_to_quiescence()
            history.check()
            assert not loop._child_waits
            fingerprint = loop.projection.fingerprint()
        replay_step_by_step(tmp_path, fingerprint)

    asyncio.run(go())
