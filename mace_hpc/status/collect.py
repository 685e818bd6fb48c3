"""Element states read from the elements' own state files (no scheduler involved)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..records.element_state import read_state
from ..records.manifest import Manifest


def element_states(manifest: Manifest) -> list[dict[str, Any]]:
    """One row per element: its manifest entry and what its state file says."""
    return [{**e.to_dict(), **read_state(e.context_dir).to_dict()} for e in manifest.elements]


def summarize(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(str(r["state"]) for r in rows))
