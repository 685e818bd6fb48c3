"""The hand-off formats between the stages, and their one reader/writer each.

plan -> contexts -> submission -> element run -> epilogue -> shared results pass these files to
each other: the manifest (`manifest.py`), the submission record (`submission.py`), each element's
state file (`element_state.py`), the directory layout (`layout.py`), the `MACE_*` variables
(`env.py`) and the one state vocabulary (`states.py`). No other module reads them by key.

The names below load on first use (PEP 562): `from mace_hpc.records import env` in an element's
runner must not import the submission record's module, which only submitting and status read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..util.lazy import lazy_attributes

if TYPE_CHECKING:
    from ._io import RecordError
    from .element_state import ElementState, read_state, read_state_strict, write_state
    from .layout import ContextPaths, SubmissionPaths
    from .manifest import Manifest, ManifestEntry, load_manifest, read_manifest, write_manifest
    from .states import (
        ARCHIVED,
        CANCELLED,
        COMPLETED,
        FAILED,
        KEPT,
        MERGED,
        PENDING,
        PENDING_MERGE,
        QUARANTINED,
        RUNNING,
        TIMEOUT,
        State,
    )
    from .submission import (
        JobEntry,
        Runner,
        SubmissionRecord,
        find_record,
        list_records,
        load_record,
        write_record,
    )

__all__ = [
    "ARCHIVED", "CANCELLED", "COMPLETED", "FAILED", "KEPT", "MERGED", "PENDING", "PENDING_MERGE", "QUARANTINED",
    "RUNNING", "TIMEOUT",
    "ContextPaths", "ElementState", "JobEntry", "Manifest", "ManifestEntry", "RecordError", "Runner", "State",
    "SubmissionPaths", "SubmissionRecord", "find_record", "list_records", "load_manifest", "load_record",
    "read_manifest", "read_state", "read_state_strict", "write_manifest", "write_record", "write_state",
]

_HOMES = {
    "RecordError": "_io",
    **dict.fromkeys(("ElementState", "read_state", "read_state_strict", "write_state"), "element_state"),
    **dict.fromkeys(("ContextPaths", "SubmissionPaths"), "layout"),
    **dict.fromkeys(("Manifest", "ManifestEntry", "load_manifest", "read_manifest", "write_manifest"), "manifest"),
    **dict.fromkeys(("ARCHIVED", "CANCELLED", "COMPLETED", "FAILED", "KEPT", "MERGED", "PENDING", "PENDING_MERGE",
                     "QUARANTINED", "RUNNING", "TIMEOUT", "State"), "states"),
    **dict.fromkeys(("JobEntry", "Runner", "SubmissionRecord", "find_record", "list_records", "load_record",
                     "write_record"), "submission"),
}


__getattr__ = lazy_attributes(__name__, _HOMES, globals())
