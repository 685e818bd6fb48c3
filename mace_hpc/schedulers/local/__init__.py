"""The embedded default: array elements as processes on this machine (see backend.py)."""

from __future__ import annotations

from .jobenv import LocalJobEnv

TYPE_CHECKING = False  # typing's own, without importing typing when the runner starts
if TYPE_CHECKING:
    from typing import Any

__all__ = ["LocalBackend", "LocalJobEnv"]


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from .backend import LocalBackend  # lazy: an element asking its environment needs no pool

        return LocalBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
