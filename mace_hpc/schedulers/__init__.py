"""Schedulers: local, slurm and pbs, each a package of the same shape (backend, states, jobenv).

`get_backend(name)` submits, queries and cancels; `job_environment()` answers a process inside a
job. Nothing here knows about plans or contexts: requests come in as `base.ArrayRequest`.
"""

from .base import ArrayRequest, Backend, JobEnvironment, get_backend, job_environment

__all__ = ["ArrayRequest", "Backend", "JobEnvironment", "get_backend", "job_environment"]
