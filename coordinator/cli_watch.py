"""`corral watch`: follow a set of tasks (and, with --children, their children) until all are terminal.

Owns: `WatchSet`, the client's view of the watched tasks (pure: built from `Task` snapshots and
`TaskEvent`s), and `follow`, which feeds it from the coordinator's streams — no polling:

1. GetTask each id (NOT_FOUND ends the command before anything is opened), noting their types;
2. open `WatchEvents` filtered by those types, and one filtered by `parent_task_id` per watched
   parent with --children, and wait for each stream's initial metadata (the subscription is then in
   place: every later commit reaches it);
3. take the snapshot: GetTask each id again, ListTasks(parent_task_id) for the children;
4. apply events as they come, until every watched task is terminal; with --children, list the
   children once more then (a child's events and its parent's come on different streams), and go
   on if that found one still running.

Invariants of `WatchSet`: a task's view never moves back — an event older than what the view
already holds (a lower seq, or a commit time before the snapshot's `updated_at`, i.e. an event
the snapshot already reflects) is ignored, and a terminal state is final. Only events of watched
tasks are applied: the type filter also brings other tasks of those types, which are dropped; a
task is added only as the child of a watched parent (from that parent's stream or listing).
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import grpc

from corral.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

from .cli_output import TERMINAL, ts_ms

TaskEvent = task_service_pb2.TaskEvent


@dataclass
class Watched:
    task_id: str
    type: str
    state: int
    attempt: int = 0
    actor_id: str = ""
    reason: str = ""
    parent: str = ""
    updated_ms: int = 0
    seq: int = 0


def snapshot_event(task: task_pb2.Task) -> TaskEvent:
    """A task's current state as an event (seq 0, kind UNSPECIFIED): the first line `watch --json`
    prints for each watched task."""
    event = TaskEvent(task_id=task.task_id, type=task.spec.type, state=task.state, labels=task.spec.labels)
    event.time.CopyFrom(task.updated_at)
    if task.attempts:
        last = task.attempts[-1]
        event.attempt = last.number
        event.actor_id = last.actor_id
        event.outcome = last.outcome
    if task.HasField("error"):
        event.reason = task.error.message
    elif task.state_reason:
        event.reason = task.state_reason
    return event


class WatchSet:
    def __init__(self, task_ids: Sequence[str], parents: Sequence[str] = ()) -> None:
        self.roots = list(dict.fromkeys(task_ids))
        self.parents = frozenset(parents)
        self.tasks: dict[str, Watched] = {}

    def add_snapshot(self, task: task_pb2.Task, *, child_of: str = "") -> TaskEvent | None:
        """Take a task's state from GetTask/ListTasks; the snapshot event if it changed the view."""
        if task.task_id not in self.roots and not (child_of and child_of in self.parents
                                                  and task.parent_task_id == child_of):
            return None
        event = snapshot_event(task)
        known = self.tasks.get(task.task_id)
        if known is not None and (known.state in TERMINAL or ts_ms(task.updated_at) < known.updated_ms):
            return None
        self.tasks[task.task_id] = Watched(task.task_id, task.spec.type, task.state, event.attempt,
                                           event.actor_id, event.reason, task.parent_task_id,
                                           ts_ms(task.updated_at), known.seq if known else 0)
        return event

    def apply(self, event: TaskEvent, *, child_of: str = "") -> bool:
        """Apply one streamed event; True if it changed the view (so it is shown)."""
        known = self.tasks.get(event.task_id)
        if known is None:
            if not (child_of and child_of in self.parents):
                return False  # another task of a watched type, or not snapshotted yet
            known = self.tasks[event.task_id] = Watched(event.task_id, event.type, event.state, parent=child_of)
        elif (known.state in TERMINAL or event.seq <= known.seq
              or ts_ms(event.time) < known.updated_ms):
            return False
        known.state = event.state
        known.seq = event.seq
        known.updated_ms = ts_ms(event.time)
        if event.attempt:
            known.attempt = event.attempt
            known.actor_id = event.actor_id
        known.reason = event.reason
        return True

    def done(self) -> bool:
        return all(r in self.tasks for r in self.roots) and all(t.state in TERMINAL for t in self.tasks.values())

    def finished(self) -> int:
        return sum(1 for t in self.tasks.values() if t.state in TERMINAL)

    def all_succeeded(self) -> bool:
        return all(t.state == task_pb2.TASK_STATE_SUCCEEDED for t in self.tasks.values())


class StreamEnded(Exception):
    """An event stream ended without a status (it never should: WatchEvents does not end)."""


def list_children(stub, parent: str, timeout_s: float) -> Iterator[task_pb2.Task]:
    token = ""
    while True:
        resp = stub.ListTasks(task_service_pb2.ListTasksRequest(parent_task_id=parent, page_size=1000,
                                                                page_token=token), timeout=timeout_s)
        yield from resp.tasks
        token = resp.next_page_token
        if not token:
            return


def follow(channel: grpc.Channel, task_ids: Sequence[str], *, children: bool, timeout_s: float,
           watch: WatchSet | None = None) -> Iterator[TaskEvent]:
    """Every change of the watched tasks: first one snapshot event per task, then streamed events,
    ending when all are terminal. gRPC errors propagate (the caller maps them to exit codes)."""
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    watch = watch if watch is not None else WatchSet(task_ids, task_ids if children else ())
    first = [stub.GetTask(task_service_pb2.GetTaskRequest(task_id=t), timeout=timeout_s).task for t in watch.roots]
    inbox: queue.Queue = queue.Queue()
    calls: list = []

    def reader(call, child_of: str) -> None:
        try:
            for resp in call:
                inbox.put((child_of, resp.events, None))
            inbox.put((child_of, (), StreamEnded("the coordinator ended the event stream")))
        except grpc.RpcError as exc:
            inbox.put((child_of, (), exc))

    try:
        streams = [("", task_service_pb2.WatchEventsRequest(types=sorted({t.spec.type for t in first})))]
        streams += [(p, task_service_pb2.WatchEventsRequest(parent_task_id=p)) for p in sorted(watch.parents)]
        for child_of, request in streams:
            call = stub.WatchEvents(request)
            calls.append(call)
            call.initial_metadata()  # the subscription is in place once this arrives
            threading.Thread(target=reader, args=(call, child_of), daemon=True,
                             name=f"corral-watch-{child_of or 'types'}").start()
        for task_id in watch.roots:
            event = watch.add_snapshot(stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id),
                                                    timeout=timeout_s).task)
            if event is not None:
                yield event
        for parent in sorted(watch.parents):
            for task in list_children(stub, parent, timeout_s):
                event = watch.add_snapshot(task, child_of=parent)
                if event is not None:
                    yield event
        while True:
            while not watch.done():
                try:
                    child_of, events, error = inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                if error is not None:
                    raise error
                for event in events:
                    if watch.apply(event, child_of=child_of):
                        yield event
            if not watch.parents:
                return
            # All terminal as far as the streams said; but a parent's events and its children's
            # come on different streams, so a child submitted after the listing may still be in
            # flight. The committed state decides: list the children again before ending.
            for parent in sorted(watch.parents):
                for task in list_children(stub, parent, timeout_s):
                    event = watch.add_snapshot(task, child_of=parent)
                    if event is not None:
                        yield event
            if watch.done():
                return
    finally:
        for call in calls:
            call.cancel()
