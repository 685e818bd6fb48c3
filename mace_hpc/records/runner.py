"""The command a job runs to start the element runner: the one hand-off every backend's job
script (and a packed task's lanes) shares, and that the local backend's workers recognise.

`python -S <mace_hpc>/element/start.py`: without site-packages at start, ~17 ms less per element
here (element/start.py says how site still reaches user code).
A site's own interpreter (`scheduler.python`) may be another environment, where this
installation's file path means nothing: it gets `python -m mace_hpc.element`, with site.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

RUNNER_MODULE = "mace_hpc.element"
START_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "element", "start.py")


def runner_argv(python: str | None = None) -> list[str]:
    """The interpreter and its arguments before the runner's own (manifest, --index, ...)."""
    if python and python != sys.executable:
        return [python, "-m", RUNNER_MODULE]
    return [sys.executable, "-S", START_FILE]


def runner_module(command: Sequence[str]) -> str | None:
    """The runner's module when `command` starts it in either form (its own arguments from
    `command[3:]`), else None."""
    if len(command) >= 3 and tuple(command[1:3]) in (("-m", RUNNER_MODULE), ("-S", START_FILE)):
        return RUNNER_MODULE
    return None
