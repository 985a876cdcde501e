"""Task graphs: prerequisites (TaskSpec.depends_on, TaskService.DeclareDependency) and their effects.

Owns the pure decisions about dependencies:
- validation: the shape of `depends_on` (`normalize_depends_on`), unknown prerequisites and cycles
  within a SubmitTasks batch (`plan_batch`, which also gives an order to write the batch in so that
  every prerequisite is written before its dependents), and DeclareDependency's checks
  (`check_declare`: unknown, self, already FAILED/CANCELED, cycles);
- the state a new task starts in (`submission_state`): WAITING_FOR_DEPENDENCIES while any
  prerequisite has not SUCCEEDED;
- what happens to dependents when a task ends (`cascade`): when the last prerequisite SUCCEEDED a
  WAITING task becomes READY (SCHEDULED if its not_before is still ahead; ended at once if it is a
  DROP_NEW task whose key is full, as at not_before); when a prerequisite ends FAILED or CANCELED
  its WAITING dependents are CANCELED (error kind "dependency_failed", reason naming it), and so,
  transitively, are theirs — all in the same step, each as its own record.

The index (prerequisite -> dependents, unfinished prerequisites per task) is kept by
`Projection.apply` (core/projection.py), so replay rebuilds it; the records returned here are
applied and committed by the dispatch loop like any other, so replay never re-decides them.
Pure: no I/O, no clock.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

from corral.v1 import task_pb2, wal_pb2

from .admission import drop_when_ready
from .errors import FailedPrecondition, InvalidField, NotFound
from .model import TaskRecord
from .projection import Projection
from .states import CANCELED, FAILED, READY, SCHEDULED, SUCCEEDED, WAITING, State, is_terminal

MAX_PREREQUISITES = 1_000
DEPENDENCY_FAILED = "dependency_failed"
# States in which prerequisites may still be added (the task has not started).
DECLARABLE_STATES = frozenset({SCHEDULED, READY, WAITING})

Emit = Callable[[wal_pb2.WalRecord, str], None]


# ---- validation ------------------------------------------------------------------------------

def normalize_depends_on(spec: task_pb2.TaskSpec, field: str) -> None:
    """The shape of spec.depends_on: a bounded list of distinct task ids, not the task itself."""
    depends_on = spec.depends_on
    if not depends_on:
        return
    from .spec import TASK_ID_RE  # spec.py imports this module

    if len(depends_on) > MAX_PREREQUISITES:
        raise InvalidField(f"{field}.depends_on", f"at most {MAX_PREREQUISITES} prerequisites, got {len(depends_on)}")
    seen: set[str] = set()
    for j, prerequisite_id in enumerate(depends_on):
        where = f"{field}.depends_on[{j}]"
        if not TASK_ID_RE.fullmatch(prerequisite_id):
            raise InvalidField(where, "must be a task id (1-128 characters of [A-Za-z0-9._:-])")
        if prerequisite_id == spec.task_id:
            raise InvalidField(where, f"task {prerequisite_id!r} cannot depend on itself")
        if prerequisite_id in seen:
            raise InvalidField(where, f"{prerequisite_id!r} is listed twice")
        seen.add(prerequisite_id)


def plan_batch(specs: Sequence[task_pb2.TaskSpec], fields: Sequence[str],
               exists: Callable[[str], bool]) -> list[int] | None:
    """Check the prerequisites of the new specs of one SubmitTasks request (ids already assigned).

    Every prerequisite must exist (`exists`) or be another new spec of the request; the new specs
    must not form a cycle (existing tasks never depend on new ones, so a cycle can only be within
    the request). Returns the order (indexes into `specs`) to write them in so that prerequisites
    come first, or None when the request order already does. Raises InvalidField naming
    `fields[i].depends_on[j]`."""
    index = {spec.task_id: i for i, spec in enumerate(specs)}
    forward = False
    for i, spec in enumerate(specs):
        for j, prerequisite_id in enumerate(spec.depends_on):
            k = index.get(prerequisite_id)
            if k is None:
                if not exists(prerequisite_id):
                    raise InvalidField(f"{fields[i]}.depends_on[{j}]", f"unknown task {prerequisite_id!r}: neither an "
                                       f"existing task nor the task_id of another task of this request")
            elif k >= i:
                forward = True
    if not forward:
        return None
    # Depth-first, iterative (a chain of 10,000 must not hit the recursion limit): post-order.
    color = [0] * len(specs)  # 0 unvisited, 1 on the stack, 2 done
    order: list[int] = []
    for root in range(len(specs)):
        if color[root]:
            continue
        color[root] = 1
        stack = [(root, 0)]
        while stack:
            i, j = stack[-1]
            depends_on = specs[i].depends_on
            if j < len(depends_on):
                stack[-1] = (i, j + 1)
                k = index.get(depends_on[j])
                if k is None or color[k] == 2:
                    continue
                if color[k] == 1:
                    start = next(n for n, (node, _) in enumerate(stack) if node == k)
                    path = [specs[node].task_id for node, _ in stack[start:]] + [specs[k].task_id]
                    raise InvalidField(f"{fields[i]}.depends_on[{j}]",
                                       f"would make a cycle: {' -> '.join(path)} (each depends on the next)")
                color[k] = 1
                stack.append((k, 0))
            else:
                color[i] = 2
                order.append(i)
                stack.pop()
    return order


def check_declare(projection: Projection, task_id: str, depends_on: Sequence[str]) -> list[str]:
    """DeclareDependency's checks; returns the prerequisites the task does not have yet (in order).

    NotFound (the task), FailedPrecondition (the task has started or ended; a prerequisite already
    FAILED or CANCELED), InvalidField `depends_on[j]` (unknown task, the task itself, a cycle)."""
    tasks = projection.tasks
    task = tasks.get(task_id)
    if task is None:
        raise NotFound(f"task {task_id!r} not found")
    if task.state not in DECLARABLE_STATES or task.started_once:
        raise FailedPrecondition(f"task {task_id!r} is {State(task.state).name}"
                                 f"{' and has started' if task.started_once and not is_terminal(task.state) else ''}; "
                                 f"prerequisites can only be added before its first attempt")
    new: list[str] = []
    positions: dict[str, int] = {}
    for j, prerequisite_id in enumerate(depends_on):
        where = f"depends_on[{j}]"
        if prerequisite_id == task_id:
            raise InvalidField(where, f"task {task_id!r} cannot depend on itself")
        prerequisite = tasks.get(prerequisite_id)
        if prerequisite is None:
            raise InvalidField(where, f"unknown task {prerequisite_id!r}")
        if prerequisite_id in positions or prerequisite_id in task.prerequisites:
            continue
        if prerequisite.state == FAILED or prerequisite.state == CANCELED:
            raise FailedPrecondition(f"{where}: prerequisite {prerequisite_id!r} already ended "
                                     f"{State(prerequisite.state).name}; task {task_id!r} could never run")
        positions[prerequisite_id] = j
        new.append(prerequisite_id)
    cycle = find_cycle(projection, task_id, new)
    if cycle is not None:
        prerequisite_id, path = cycle
        raise InvalidField(f"depends_on[{positions[prerequisite_id]}]",
                           f"would make a cycle: {' -> '.join([task_id, *path])} (each depends on the next)")
    if task.parent_id:  # a child: the ancestors waiting for it must not be among its prerequisites
        ancestor_cycle(projection, task.parent_id, task.spec.detached, depends_on, "depends_on")
    return new


def find_cycle(projection: Projection, task_id: str, new_prerequisites: Iterable[str]) -> tuple[str, list[str]] | None:
    """Would the edges task_id -> new_prerequisites close a cycle? (the prerequisite and the path
    from it back to task_id), else None. Depth-first from the new prerequisites over prerequisite
    edges; each task is visited at most once, and terminal tasks are not entered (a finished task
    cannot depend, even transitively, on one that has not started), so the cost is bounded by the
    unfinished part of the graph."""
    tasks = projection.tasks
    visited: set[str] = set()
    for start in new_prerequisites:
        if start in visited:
            continue
        visited.add(start)
        stack = [(start, 0)]
        while stack:
            node, j = stack[-1]
            if node == task_id:
                return start, [n for n, _ in stack]
            record = tasks.get(node)
            prerequisites = record.prerequisites if record is not None and not is_terminal(record.state) else ()
            if j < len(prerequisites):
                stack[-1] = (node, j + 1)
                nxt = prerequisites[j]
                if nxt not in visited:
                    visited.add(nxt)
                    stack.append((nxt, 0))
            else:
                stack.pop()
    return None


def waiting_ancestors(projection: Projection, parent_id: str, detached: bool) -> list[str]:
    """The ancestors a task with this parent holds up, nearest first: a parent waits
    (WAITING_FOR_CHILDREN) for its non-detached children, so its parent unless the task is
    detached, then that parent's parent unless the parent is detached, and so on."""
    tasks = projection.tasks
    ancestors: list[str] = []
    while parent_id and not detached:
        parent = tasks.get(parent_id)
        if parent is None or is_terminal(parent.state):
            break
        ancestors.append(parent_id)
        parent_id, detached = parent.parent_id, parent.spec.detached
    return ancestors


def ancestor_cycle(projection: Projection, parent_id: str, detached: bool, depends_on: Sequence[str],
                   field: str) -> None:
    """Refuse (InvalidField `field[j]`) prerequisites of a task under `parent_id` that are, or
    transitively depend on, an ancestor waiting for that task: the ancestor would wait for the
    task and the task for the ancestor, forever. Prerequisite edges alone (find_cycle) miss it."""
    for ancestor_id in waiting_ancestors(projection, parent_id, detached):
        found = find_cycle(projection, ancestor_id, depends_on)
        if found is not None:
            prerequisite_id, path = found
            raise InvalidField(f"{field}[{list(depends_on).index(prerequisite_id)}]",
                               f"would make a cycle: the task depends on {' -> '.join(path)} (each depends on "
                               f"the next), and {ancestor_id!r} waits for it to finish (it is a non-detached "
                               f"descendant)")


# ---- submission ------------------------------------------------------------------------------

def submission_state(projection: Projection, depends_on: Sequence[str], state: int) -> tuple[int, str | None]:
    """The state a new task with these prerequisites starts in (WAITING unless all SUCCEEDED; else
    `state`, SCHEDULED or READY), and a prerequisite that already FAILED or was CANCELED (the new
    task is then canceled at once: `canceled_record`), if any."""
    tasks = projection.tasks
    waiting = False
    doomed = None
    for prerequisite_id in depends_on:
        prerequisite_state = tasks[prerequisite_id].state
        if prerequisite_state != SUCCEEDED:
            waiting = True
            if doomed is None and (prerequisite_state == FAILED or prerequisite_state == CANCELED):
                doomed = prerequisite_id
    return (WAITING if waiting else state), doomed


def declare_records(projection: Projection, task: TaskRecord, new: Sequence[str]) -> list[wal_pb2.WalRecord]:
    """DependencyDeclared for `new` (checked by check_declare), then the move to WAITING if one of
    them has not SUCCEEDED and the task is not waiting already."""
    if not new:
        return []
    records = [wal_pb2.WalRecord(dependency_declared=wal_pb2.DependencyDeclared(task_id=task.task_id, depends_on=new))]
    tasks = projection.tasks
    unfinished = [p for p in new if tasks[p].state != SUCCEEDED]
    if unfinished and task.state != WAITING:
        records.append(wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
            task_id=task.task_id, state=WAITING, reason=f"waiting for prerequisites: {', '.join(unfinished[:10])}"
                                                        f"{' ...' if len(unfinished) > 10 else ''}")))
    return records


# ---- when a task ends --------------------------------------------------------------------------

def _root_cause(prerequisite: TaskRecord) -> str:
    """What ended the chain: the clause naming the first task that failed or was canceled."""
    error = prerequisite.error
    if error is not None and error.kind == DEPENDENCY_FAILED and error.message:
        return error.message
    return f"prerequisite {prerequisite.task_id!r} ended {State(prerequisite.state).name}"


def canceled_record(dependent_id: str, prerequisite: TaskRecord) -> wal_pb2.WalRecord:
    """A dependent's CANCELED record because `prerequisite` ended FAILED or CANCELED. The reason
    names the prerequisite (and the task that started the cascade); the error's message names the
    latter, so a long chain does not grow its reasons."""
    root = _root_cause(prerequisite)
    direct = f"prerequisite {prerequisite.task_id!r} ended {State(prerequisite.state).name}"
    reason = direct if root == direct else f"{direct} ({root})"
    return wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
        task_id=dependent_id, state=CANCELED, reason=reason,
        error=task_pb2.TaskError(message=root, kind=DEPENDENCY_FAILED)))


def promotion_record(projection: Projection, task: TaskRecord, now_ms: int) -> wal_pb2.WalRecord:
    """A WAITING task whose prerequisites all SUCCEEDED: READY, SCHEDULED (not_before ahead), or,
    for a DROP_NEW task whose key is full, its drop (as when a delayed task reaches not_before)."""
    if task.ready_at_ms > now_ms:
        return wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
            task_id=task.task_id, state=SCHEDULED, reason="prerequisites succeeded; waiting for not_before"))
    dropped = drop_when_ready(projection, task, now_ms)
    if dropped is not None:
        return dropped
    return wal_pb2.WalRecord(task_state_changed=wal_pb2.TaskStateChanged(
        task_id=task.task_id, state=READY, reason="prerequisites succeeded"))


def cascade(projection: Projection, task_id: str, now_ms: int, emit: Emit) -> None:
    """Task `task_id` has just ended (its record applied). Emit, through `emit(record, task_id)`
    (which must apply the record before returning), what that means for its dependents, and
    transitively for theirs: promotions when their last prerequisite SUCCEEDED, cancels when one
    FAILED or was CANCELED. Each record is decided after the previous one was applied (a DROP_NEW
    key's room, for instance, depends on the promotions before it). No-op without dependents."""
    dependents_of = projection.dependents
    if task_id not in dependents_of:
        return
    tasks = projection.tasks
    pending = [task_id]  # breadth first: direct dependents before theirs
    next_index = 0
    while next_index < len(pending):
        ended = tasks[pending[next_index]]
        next_index += 1
        dependent_ids = dependents_of.get(ended.task_id)
        if not dependent_ids:
            continue
        succeeded = ended.state == SUCCEEDED
        for dependent_id in tuple(dependent_ids):
            dependent = tasks[dependent_id]
            if dependent.state != WAITING:
                continue  # already ended (canceled), or it never waited for this one
            if succeeded:
                if dependent.unfinished_prerequisites:
                    continue
                record = promotion_record(projection, dependent, now_ms)
            else:
                record = canceled_record(dependent_id, ended)
            emit(record, dependent_id)
            if is_terminal(dependent.state) and dependent_id in dependents_of:
                pending.append(dependent_id)


# ---- leases ------------------------------------------------------------------------------------

def fill_prerequisites(projection: Projection, task: TaskRecord, lease) -> None:
    """Copy the outputs of the task's prerequisites into its Lease (`prerequisites`)."""
    tasks = projection.tasks
    for prerequisite_id in task.prerequisites:
        item = lease.prerequisites.add(task_id=prerequisite_id)
        prerequisite = tasks.get(prerequisite_id)  # None: forgotten (retention), no output to pass
        result = prerequisite.result if prerequisite is not None else None
        if result is None:
            continue
        which = result.WhichOneof("result")
        if which == "output":
            item.output.CopyFrom(result.output)
        elif which == "output_bytes":
            item.output_bytes = result.output_bytes
