"""Workflow ids: the one piece of user input that becomes a path, so it is validated strictly."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InputError

WORKFLOW_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
WORKFLOW_ID_RULE = "1-128 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"


def validate_workflow_id(workflow_id: object, field: str = "workflow_id") -> str:
    """Return the id if valid; raise InputError naming `field` otherwise."""
    if not isinstance(workflow_id, str) or not WORKFLOW_ID_RE.fullmatch(workflow_id) or ".." in workflow_id:
        shown = repr(workflow_id) if len(repr(workflow_id)) <= 60 else repr(workflow_id)[:57] + "...'"
        raise InputError(f"{field}: invalid workflow id {shown}; use {WORKFLOW_ID_RULE}")
    return workflow_id


def path_inside(root: Path, workflow_id: str) -> Path:
    """The directory of `workflow_id` under `root`, guaranteed not to escape it."""
    validate_workflow_id(workflow_id)
    root = Path(root).resolve()
    target = (root / workflow_id).resolve()
    if target.parent != root:
        raise InputError(f"workflow_id: {workflow_id!r} resolves outside the scratch root {root}")
    return target


def random_uid() -> str:
    """`uuid.uuid4().hex` (32 hex digits, version 4 and variant bits set) without importing
    `uuid`, which loads `platform` (~2 ms of every element's start)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()
