"""The merged results of a plan, read back from the shared database as one table."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ..database.journal import check_database_file, connect_readonly
from ..errors import ConfigError


def results_table(shared_db: Path, material_ids: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Rows: material id + its latest value of every property; columns sorted by name.

    A shared database that is not one (a directory, another file) is a ConfigError, not a traceback.
    """
    if not Path(shared_db).exists() or not material_ids:
        return ["material_id"], []
    check_database_file(shared_db, "shared_database")
    try:
        conn = connect_readonly(shared_db, timeout=30)
    except sqlite3.Error as exc:
        raise ConfigError(f"shared_database: cannot open {shared_db} ({exc})") from None
    try:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(properties)")}
        if not cols:
            return ["material_id"], []
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
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"shared_database: {shared_db} cannot be read as a materials database ({exc})") from None
    finally:
        conn.close()
    names.sort()  # merge order is not creation order: sorted columns read the same every run
    rows = [[mid, *(per_material[mid].get(n) for n in names)] for mid in material_ids if mid in per_material]
    return ["material_id", *names], rows
