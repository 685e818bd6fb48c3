"""A context's identity file, `<context>/context.json`: which workflow, which mode, made when and by whom.

It survives cleanup (a tombstone keeps it) so a context is still known after its data is gone.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..util.atomic import atomic_write_json, read_json
from ..util.procs import hostname
from .layout import ContextPaths


@dataclass(frozen=True)
class ContextIdentity:
    """Who a context belongs to and who created it (`<context>/context.json`)."""

    workflow_id: str
    isolation_mode: str
    created_at: float = field(default_factory=time.time)
    created_by: dict[str, Any] = field(default_factory=lambda: {"host": hostname(), "pid": os.getpid()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_identity(context_dir: str | os.PathLike[str]) -> ContextIdentity | None:
    """The identity, or None when the file is missing or unusable (the directory name still tells)."""
    data = read_json(ContextPaths(context_dir).identity)
    if not isinstance(data, dict) or not isinstance(data.get("workflow_id"), str):
        return None
    return ContextIdentity(data["workflow_id"], str(data.get("isolation_mode") or "isolated"),
                           data.get("created_at") or 0.0, dict(data.get("created_by") or {}))


def write_identity(context_dir: str | os.PathLike[str], identity: ContextIdentity) -> None:
    atomic_write_json(ContextPaths(context_dir).identity, identity.to_dict())
