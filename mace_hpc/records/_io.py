"""Shared reading rules for the hand-off files: versioned JSON objects, clear errors when foreign."""

from __future__ import annotations

import os
from typing import Any

from ..errors import InputError
from ..util.atomic import read_json
from ..util.private import is_private_file


class RecordError(InputError):
    """A hand-off file is missing, truncated, foreign or from a newer mace-hpc (exit 2, one line)."""


def read_versioned(path: str | os.PathLike[str], kind: str, version: int, fix: str) -> dict[str, Any]:
    """The JSON object at `path`; RecordError naming the file, what is wrong and `fix`."""
    if os.path.lexists(path) and not is_private_file(path):
        raise RecordError(f"{path}: {kind} is not a regular file of yours that only you can write; "
                          "refusing to take commands or settings from it (another user could have written it)")
    data = read_json(path)
    if data is None:
        why = "missing" if not os.path.lexists(path) else "truncated or not JSON"
        raise RecordError(f"{path}: {kind} is {why}; {fix}")
    if not isinstance(data, dict):
        raise RecordError(f"{path}: not a mace-hpc {kind}; {fix}")
    found = data.get("version", 1)
    if not isinstance(found, int) or found > version:
        raise RecordError(f"{path}: {kind} version {found!r} is newer than this mace-hpc reads ({version}); "
                          "upgrade mace-hpc")
    return data
