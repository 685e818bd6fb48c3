"""A real scheduler the tests need: skip with the reason on a laptop, fail in CI (`CI=true`).

`.ci/run` starts every real scheduler the tests use (SLURM, OpenPBS) before pytest, so in CI a
missing one is a broken run, never a silent skip; elsewhere `pytest -ra` shows how to start it.
"""

from __future__ import annotations

import os
from typing import TypeVar

import pytest

T = TypeVar("T")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def require(found: T | str, ci_message: str, local_message: str) -> T:
    """`found` when it is the service; else fail (CI) or skip (elsewhere) with why (`found`)."""
    if isinstance(found, str):
        if in_ci():
            pytest.fail(f"{ci_message} [{found}]")
        pytest.skip(f"{local_message} [{found}]")
    return found


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """Most (start, end) spans running at once: what a throttle test measures from inside the jobs."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:  # at equal times the end (-1) sorts first
        running += step
        peak = max(peak, running)
    return peak
