"""`{context_dir}` in a plan's values, filled in at run time: all the element runner needs of
`plan`, kept apart from the plan model so an element's start does not build its dataclasses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CONTEXT_DIR_TOKEN = "{context_dir}"


_RESOLVED_RE = re.compile(r"\{\{|\}\}|\{context_dir\}")


def resolve_context_dir(value: Any, context_dir: str | Path) -> Any:
    """Fill in `{context_dir}` at run time (for the step runner) and undo the literal escaping.

    A string in template form (it contains the token) reads `{{`/`}}` as literal braces; any
    other string is returned as it is (see `plan.model`).
    """
    if isinstance(value, str):
        if CONTEXT_DIR_TOKEN not in value:
            return value
        directory = str(context_dir)
        return _RESOLVED_RE.sub(lambda m: directory if len(m.group(0)) > 2 else m.group(0)[0], value)
    if isinstance(value, list):
        return [resolve_context_dir(v, context_dir) for v in value]
    if isinstance(value, dict):
        return {k: resolve_context_dir(v, context_dir) for k, v in value.items()}
    return value
