"""The embedded default: array elements as processes on this machine (see backend.py)."""

from typing import Any

from .jobenv import LocalJobEnv

__all__ = ["LocalBackend", "LocalJobEnv"]


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from .backend import LocalBackend  # lazy: an element asking its environment needs no pool

        return LocalBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
