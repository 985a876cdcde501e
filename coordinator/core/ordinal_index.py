"""The ListTasks index: tasks by submission ordinal, for paging without scanning from the start.

Owns `OrdinalIndex`. Ordinals only grow (1, 2, ... in submission order), so the index is two
append-only lists (ordinals, tasks) searched by bisection; a removed task (retention) leaves a
hole that is skipped, and the lists are compacted once holes are the majority.

Invariants:
- `ordinals` is strictly increasing; `tasks[i]` is the task with `ordinals[i]`, or None once it
  was removed. `add` takes an ordinal above every one before it (a submission) — O(1);
  `remove` is O(log n) plus an amortised O(1) share of compaction; a page seeks in O(log n).
- Iterating yields the ordinals of the tasks present, in order.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Iterable, Iterator


class OrdinalIndex:
    __slots__ = ("ordinals", "tasks", "holes")

    def __init__(self) -> None:
        self.ordinals: list[int] = []
        self.tasks: list = []
        self.holes = 0

    def add(self, task) -> None:
        ordinals = self.ordinals
        if ordinals and task.ordinal <= ordinals[-1]:
            raise ValueError(f"ordinal {task.ordinal} is not above {ordinals[-1]}")
        ordinals.append(task.ordinal)
        self.tasks.append(task)

    def load(self, tasks: Iterable) -> None:
        """Add tasks already sorted by ordinal (a snapshot's)."""
        for task in tasks:
            self.add(task)

    def remove(self, ordinal: int) -> None:
        i = bisect_right(self.ordinals, ordinal) - 1
        if i < 0 or self.ordinals[i] != ordinal or self.tasks[i] is None:
            raise KeyError(ordinal)
        self.tasks[i] = None
        self.holes += 1
        if self.holes > 1024 and 2 * self.holes > len(self.tasks):
            keep = [k for k, task in enumerate(self.tasks) if task is not None]
            self.ordinals = [self.ordinals[k] for k in keep]
            self.tasks = [self.tasks[k] for k in keep]
            self.holes = 0

    def after(self, ordinal: int) -> Iterator:
        """The tasks with an ordinal above `ordinal`, in order."""
        tasks = self.tasks
        for i in range(bisect_right(self.ordinals, ordinal), len(tasks)):
            task = tasks[i]
            if task is not None:
                yield task

    def __iter__(self) -> Iterator[int]:
        return (o for o, task in zip(self.ordinals, self.tasks) if task is not None)

    def __len__(self) -> int:
        return len(self.tasks) - self.holes
