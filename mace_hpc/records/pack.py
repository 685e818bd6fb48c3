"""Packing: K consecutive elements of an array run one after another inside one array task.

The one mapping between array tasks and elements that the runner, `status`, the accounting and
`resubmit` all use. A packed array's element list (sorted) is cut into slices of K: task t runs
`elements[t*K:(t+1)*K]`. Unpacked (K = 1) arrays keep the old rule, element = task id + offset.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def task_count(n_elements: int, pack: int) -> int:
    """How many array tasks `n_elements` elements packed by `pack` take (ceil)."""
    return -(-int(n_elements) // max(1, int(pack)))


def task_elements(elements: Iterable[int], pack: int, task: int, offset: int = 0) -> list[int]:
    """The elements array task `task` runs: `[task + offset]` unpacked, else its slice of the
    sorted element list (an empty list for a task beyond it)."""
    pack = max(1, int(pack))
    if pack == 1:
        return [int(task) + int(offset)]
    ordered = sorted(set(elements))
    return ordered[int(task) * pack:(int(task) + 1) * pack] if task >= 0 else []


def element_task(elements: Sequence[int], pack: int, index: int, offset: int = 0) -> int | None:
    """The array task that runs element `index` (None when the array does not hold it)."""
    pack = max(1, int(pack))
    if pack == 1:
        return int(index) - int(offset) if index in elements else None
    ordered = sorted(set(elements))
    try:
        return ordered.index(int(index)) // pack
    except ValueError:
        return None
