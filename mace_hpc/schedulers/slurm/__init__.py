"""SLURM: `sbatch --array` per chunk (backend.py), its state table (states.py), inside a job (jobenv.py)."""

from typing import Any

from .jobenv import SlurmJobEnv
from .states import normalize_slurm_state

__all__ = ["SlurmBackend", "SlurmJobEnv", "normalize_slurm_state"]


def __getattr__(name: str) -> Any:
    """`SlurmBackend` loads on first use: a job asking its environment must not import submitit."""
    if name == "SlurmBackend":
        from .backend import SlurmBackend  # lazy: submitit only for submitting

        return SlurmBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
