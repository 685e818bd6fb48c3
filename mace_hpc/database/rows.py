"""Turning rows into the dicts upstream MACE's callers read, and validating what goes into them.

Shared by `MaterialDatabase` and its mixins (workflow records, analysis) and by the JSON export.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sqlite3
from collections.abc import Mapping
from typing import Any

from ..errors import InputError


def require_text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{field}: must be a non-empty string, got {value!r}")
    return value


def opt_text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)  # type: ignore[return-value]
    if not isinstance(value, str):
        raise InputError(f"{field}: must be a string or None, got {type(value).__name__}")
    return value


def opt_int(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{field}: must be an integer or None, got {value!r}")
    return int(value)


def opt_float(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{field}: must be a number or None, got {value!r}")
    return float(value)


def encode_json(value: Any, field: str, empty: str | None = "{}") -> str | None:
    """Canonical JSON (sorted keys, compact): equal content gives equal text, so merge can compare.
    None (or an empty dict, when `empty` is None) gives `empty`."""
    if value is None or (empty is None and not value):
        return empty
    if not isinstance(value, Mapping):
        raise InputError(f"{field}: must be a dict (JSON object), got {type(value).__name__}")
    try:
        return json.dumps(dict(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{field}: not JSON-serialisable ({exc})") from None


def encode_any_json(value: Any, field: str) -> str:
    """JSON of any serialisable value (lists of workflow steps, sequences...)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{field}: not JSON-serialisable ({exc})") from None


def split_property_value(value: Any, field: str = "property_value") -> tuple[Any, str | None]:
    """(property_value, property_value_text) as upstream stores them: numbers in the first (kept
    exactly: an int stays an int), text in the second, None in neither."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return None, value
    if isinstance(value, bool):
        return int(value), None
    if isinstance(value, numbers.Integral):
        value = int(value)
        if not -(2**63) <= value < 2**63:
            raise InputError(f"{field}: integer {value} does not fit in 64 bits; store it as a string")
        return value, None
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            raise InputError(f"{field}: NaN cannot be stored (SQLite turns it into NULL); use None")
        return value, None
    raise InputError(f"{field}: must be a number, a string or None, got {type(value).__name__}")


def unused_id(conn: sqlite3.Connection, table: str, column: str, base: str) -> str:
    """`base`, or `base-2`, `base-3`... whichever is not yet used (call inside the write
    transaction): upstream's time-stamped ids collide when two are made within one tick."""
    candidate, n = base, 1
    while conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ?", (candidate,)).fetchone():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def decode_row(row: sqlite3.Row) -> dict[str, Any]:
    """Row -> dict, as upstream returns it plus conveniences: a non-empty `*_json` column also
    appears decoded without the suffix (`metadata`, `settings`...; absent when NULL, as upstream),
    `extra` is always a dict and its keys are flattened in, and a property's `property_value`
    falls back to `property_value_text`."""
    record = {key: row[key] for key in row.keys()}
    for key in [k for k in record if k.endswith("_json")]:
        name = key[: -len("_json")]
        try:
            decoded = json.loads(record[key]) if record[key] else None
        except ValueError:
            decoded = None
        if name == "extra":
            record["extra"] = decoded if isinstance(decoded, dict) else {}
            for k, v in record["extra"].items():
                record.setdefault(k, v)
        elif decoded is not None:
            record[name] = decoded
    if record.get("property_value") is None and record.get("property_value_text") is not None:
        record["property_value"] = record["property_value_text"]
    return record
