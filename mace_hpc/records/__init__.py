"""The hand-off formats between the stages, and their one reader/writer each.

plan -> contexts -> submission -> element run -> epilogue -> shared results pass these files to
each other: the manifest (`manifest.py`), the submission record (`submission.py`), each element's
state file (`element_state.py`), the directory layout (`layout.py`), the `MACE_*` variables
(`env.py`) and the one state vocabulary (`states.py`). No other module reads them by key.
"""

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
