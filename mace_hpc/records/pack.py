"""Packing: K consecutive elements of an array run inside one array task.

The one mapping between array tasks and elements that the runner, `status`, the accounting and
`resubmit` all use. A packed array's element list (sorted) is cut into slices of K: task t runs
`elements[t*K:(t+1)*K]`. Unpacked (K = 1) arrays keep the old rule, element = task id + offset.

Lanes: a packed task asking for C > 1 cpus runs min(C, K) of its elements at once, each with
C // lanes of the cpus; one element at a time otherwise. Its time limit covers the elements one
lane runs at most, ceil(K / lanes), each with its own `time` (`lane_slots`).
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


def lanes(pack: int, cpus: int | None) -> int:
    """How many elements of a packed task run at once: its cpus, at most its K elements (1 when
    unpacked: an unpacked element has all of its cpus for itself)."""
    pack = max(1, int(pack))
    return 1 if pack == 1 else max(1, min(int(cpus or 1), pack))


def lane_cpus(pack: int, cpus: int | None) -> int:
    """The cpus each element of a packed task has while it runs (the task's cpus shared by its lanes)."""
    return max(1, int(cpus or 1) // lanes(pack, cpus))


def lane_slots(pack: int, cpus: int | None) -> int:
    """How many elements one lane runs at most, ceil(K / lanes): a packed task's time limit is this
    many times an element's. Whether a lane takes the next element when its previous one ends
    (what the runner does) or a fixed share, no lane runs longer than that many element limits."""
    return task_count(max(1, int(pack)), lanes(pack, cpus))
