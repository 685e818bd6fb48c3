"""Element states read from the elements' own state files (no scheduler involved)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..element.state import read_state


def element_states(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per element: index, workflow id, context dir and its state file's content."""
    rows = []
    for entry in manifest["elements"]:
        st = read_state(Path(entry["context_dir"]))
        rows.append({**entry, **st, "state": st["state"]})
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(r["state"] for r in rows))
