"""The merged results of a plan, read back from the shared database as one table."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..database.journal import check_database_file, connect_readonly
from ..errors import ConfigError

# property-name suffixes the examples use for units (`energy_eV`), when the database has no unit
UNIT_SUFFIXES = {"eV": "eV", "meV": "meV", "A": "Å", "A2": "Å²", "A3": "Å³", "GPa": "GPa", "K": "K",
                 "s": "s", "eV_per_A": "eV/Å", "eV_A": "eV/Å", "amu": "amu", "bar": "bar"}


@dataclass
class MergedResults:
    """Every wanted material found in the shared database: its formula and latest property values."""

    names: list[str] = field(default_factory=list)  # property names, sorted
    units: dict[str, str] = field(default_factory=dict)  # property name -> unit ("" when unknown)
    formulas: dict[str, str] = field(default_factory=dict)  # material id -> formula, in plan order
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # material id -> name -> value


def read_merged(shared_db: Path, material_ids: list[str]) -> MergedResults:
    """The plan's materials (those of `material_ids` the database has) with their properties.

    A shared database that is not one (a directory, another file) is a ConfigError, not a traceback.
    """
    out = MergedResults()
    if not Path(shared_db).exists() or not material_ids:
        return out
    check_database_file(shared_db, "shared_database")
    try:
        conn = connect_readonly(shared_db, timeout=30)
    except sqlite3.Error as exc:
        raise ConfigError(f"shared_database: cannot open {shared_db} ({exc})") from None
    try:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(properties)")}
        if not cols:
            return out
        value_expr = "COALESCE(property_value, property_value_text)" if "property_value_text" in cols else "property_value"
        unit_expr = "property_unit" if "property_unit" in cols else "NULL"
        wanted = set(material_ids)
        found = dict(conn.execute("SELECT material_id, formula FROM materials"))
        units: dict[str, str] = {}
        for mid, name, value, unit in conn.execute(
            f"SELECT material_id, property_name, {value_expr}, {unit_expr} FROM properties ORDER BY rowid"
        ):
            if mid not in wanted:
                continue
            out.values.setdefault(mid, {})[name] = value
            if unit or name not in units:
                units[name] = unit or ""
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"shared_database: {shared_db} cannot be read as a materials database ({exc})") from None
    finally:
        conn.close()
    out.formulas = {m: found[m] for m in dict.fromkeys(material_ids) if m in found}
    out.names = sorted(units)  # merge order is not creation order: sorted columns read the same every run
    out.units = {n: units[n] or unit_from_name(n) for n in out.names}
    return out


def unit_from_name(name: str) -> str:
    """`energy_eV` -> eV, `volume_A3` -> Å³; "" when the name carries no known unit."""
    return split_unit(name)[1]


def split_unit(name: str) -> tuple[str, str]:
    """(`energy`, `eV`) from `energy_eV`: the longest known unit suffix; (name, "") without one."""
    parts = name.split("_")
    for k in range(1, len(parts)):
        suffix = "_".join(parts[k:])
        if suffix in UNIT_SUFFIXES:
            return "_".join(parts[:k]), UNIT_SUFFIXES[suffix]
    return name, ""


def results_table(shared_db: Path, material_ids: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Rows: material id + its latest value of every property; columns sorted by name."""
    merged = read_merged(shared_db, material_ids)
    if not merged.values:
        return ["material_id"], []
    rows = [[mid, *(merged.values[mid].get(n) for n in merged.names)] for mid in merged.formulas
            if mid in merged.values]
    return ["material_id", *merged.names], rows
