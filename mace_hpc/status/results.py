"""The merged results of a plan, read back from the shared database as one table."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def results_table(shared_db: Path, material_ids: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Rows: material id + its latest value of every property; columns sorted by name."""
    if not Path(shared_db).exists() or not material_ids:
        return ["material_id"], []
    conn = sqlite3.connect(f"file:{shared_db}?mode=ro", uri=True, timeout=30)
    try:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(properties)")}
        value_expr = "COALESCE(property_value, property_value_text)" if "property_value_text" in cols else "property_value"
        order = "rowid"
        wanted = set(material_ids)
        per_material: dict[str, dict[str, Any]] = {}
        names: list[str] = []
        for mid, name, value in conn.execute(
            f"SELECT material_id, property_name, {value_expr} FROM properties ORDER BY {order}"
        ):
            if mid not in wanted:
                continue
            per_material.setdefault(mid, {})[name] = value
            if name not in names:
                names.append(name)
    finally:
        conn.close()
    names.sort()  # merge order is not creation order: sorted columns read the same every run
    rows = [[mid, *(per_material[mid].get(n) for n in names)] for mid in material_ids if mid in per_material]
    return ["material_id", *names], rows
