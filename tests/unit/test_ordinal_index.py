"""The ListTasks index (coordinator/core/ordinal_index.py): append, remove with holes, seek, compaction."""
from __future__ import annotations

import pytest

from coordinator.core.ordinal_index import OrdinalIndex


class T:
    def __init__(self, ordinal: int) -> None:
        self.ordinal = ordinal


def test_seek_skips_removed_tasks_and_compaction_keeps_order() -> None:
    index = OrdinalIndex()
    tasks = [T(o) for o in range(1, 5001)]
    for t in tasks:
        index.add(t)
    for o in range(1, 5001):  # remove 3 of every 4: compaction happens on the way
        if o % 4:
            index.remove(o)
    assert len(index) == 1250 and len(index.tasks) < 5000  # compacted
    assert [t.ordinal for t in index.after(4985)] == [4988, 4992, 4996, 5000]
    assert [t.ordinal for t in index.after(0)][:3] == [4, 8, 12]
    assert list(index)[:3] == [4, 8, 12]
    with pytest.raises(KeyError):
        index.remove(3)  # already gone
    with pytest.raises(ValueError):
        index.add(T(10))  # ordinals only grow


def test_empty_and_after_the_end() -> None:
    index = OrdinalIndex()
    assert list(index.after(0)) == [] and len(index) == 0
    index.add(T(7))
    assert list(index.after(7)) == [] and [t.ordinal for t in index.after(6)] == [7]
