"""The embedded default: array elements as processes on this machine (see backend.py)."""

from .backend import LocalBackend
from .jobenv import LocalJobEnv

__all__ = ["LocalBackend", "LocalJobEnv"]
