"""SLURM: `sbatch --array` per chunk (backend.py), its state table (states.py), inside a job (jobenv.py)."""

from .backend import SlurmBackend
from .jobenv import SlurmJobEnv
from .states import normalize_slurm_state

__all__ = ["SlurmBackend", "SlurmJobEnv", "normalize_slurm_state"]
