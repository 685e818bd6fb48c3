"""JSON export of a materials database: the portable, human-readable copy of a context's results."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from ..util.atomic import atomic_write_json
from .journal import connect_readonly
from .rows import decode_row

TABLES = ("materials", "calculations", "properties", "files")


def dump_database(db_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of the result tables as dicts (read-only; a missing database dumps as empty)."""
    db_path = Path(db_path)
    if not db_path.exists():
        return {t: [] for t in TABLES}
    conn = connect_readonly(db_path)
    conn.row_factory = sqlite3.Row
    try:
        existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        out: dict[str, list[dict[str, Any]]] = {}
        for table in TABLES:
            rows = conn.execute(f"SELECT * FROM {table}").fetchall() if table in existing else []
            out[table] = [decode_row(r) for r in rows]
        return out
    finally:
        conn.close()


def export_json(db_path: Path, target: Path, **header: Any) -> Path:
    """Write the database's rows plus `header` fields to `target` atomically."""
    data = {"exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **header, **dump_database(db_path)}
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(target, data, mode=0o600)
