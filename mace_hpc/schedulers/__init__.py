"""Schedulers: local, slurm and pbs, each a package of the same shape (backend, states, jobenv).

`get_backend(name)` submits, queries and cancels; `job_environment()` answers a process inside a
job. Nothing here knows about plans or contexts: requests come in as `base.ArrayRequest`.

Requests and backends (`base.py`) load on first use (PEP 562): an element asking its job
environment at every start (`jobenv.py`) needs none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..util.lazy import lazy_attributes
from .jobenv import JobEnvironment, job_environment

if TYPE_CHECKING:
    from .base import ArrayRequest, Backend, get_backend

__all__ = ["ArrayRequest", "Backend", "JobEnvironment", "get_backend", "job_environment"]

__getattr__ = lazy_attributes(__name__, dict.fromkeys(("ArrayRequest", "Backend", "get_backend"), "base"), globals())
