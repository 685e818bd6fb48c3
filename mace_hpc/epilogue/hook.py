"""The epilogue: bring one finished element's results home, and never fail the node.

Policy (`on_complete` for COMPLETED elements, `on_failure` for FAILED/TIMEOUT/CANCELLED):
merge into the shared database (exactly once), archive, both, or keep. Any error is caught,
logged in the context and recorded as PENDING_MERGE for a later `mace merge`.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from ..element import state as st
from ..util.atomic import read_json


def _log(context_dir: Path, line: str) -> None:
    try:
        logs = context_dir / "logs"
        logs.mkdir(exist_ok=True, mode=0o700)
        with open(logs / "epilogue.log", "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
    except OSError:
        pass


def run_epilogue(
    context_dir: str | Path,
    *,
    manifest: dict[str, Any] | None = None,
    on_complete: str | None = None,
    on_failure: str | None = None,
    shared_database: str | Path | None = None,
    archive_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Apply the policy to one context; returns the new state dict. Never raises."""
    context_dir = Path(context_dir)
    manifest = manifest or {}
    try:
        state = st.read_state(context_dir)
        run_state = state.get("run_state", state["state"])
        if state["state"] in (st.MERGED, st.ARCHIVED, st.KEPT):
            return state
        if run_state not in st.FINAL_RUN_STATES:
            return state
        ident = read_json(context_dir / "context.json", {}) or {}
        workflow_id = ident.get("workflow_id", context_dir.name)
        policy = (
            (on_complete or manifest.get("on_complete") or "merge")
            if run_state == st.COMPLETED
            else (on_failure or manifest.get("on_failure") or "keep")
        )
        isolated = (manifest.get("isolation_mode") or ident.get("isolation_mode")) == "isolated"
        epilogue: dict[str, Any] = {"policy": policy, "at": time.time()}
        new_state = st.KEPT
        if "merge" in policy and isolated:
            from ..database.merge import merge_database

            shared = Path(shared_database or manifest["shared_database"])
            report = merge_database(shared, context_dir / "materials.db", workflow_id)
            epilogue["merge"] = {"status": report.status, "counts": report.counts, "conflicts": len(report.conflicts)}
            if report.status == "corrupt":
                raise RuntimeError(f"context database is corrupt: {getattr(report, 'error', '')}")
            new_state = st.MERGED
        elif "merge" in policy:
            new_state = st.MERGED  # shared mode: the steps wrote the shared database directly
        if "archive" in policy:
            from ..config import load_config
            from .archive import archive_context

            target = Path(archive_dir or manifest.get("archive_dir") or load_config().path("archive_dir"))
            epilogue["archive"] = str(archive_context(context_dir, target, workflow_id))
            new_state = st.ARCHIVED if new_state != st.MERGED else st.MERGED
            epilogue["archived"] = True
        _log(context_dir, f"{run_state} -> {new_state} ({policy})")
        return st.write_state(context_dir, state=new_state, epilogue=epilogue)
    except Exception as exc:
        _log(context_dir, f"epilogue failed, left for `mace merge`: {exc}\n{traceback.format_exc()}")
        try:
            return st.write_state(context_dir, state=st.PENDING_MERGE, epilogue_error=str(exc))
        except Exception:
            return {"state": st.PENDING_MERGE, "epilogue_error": str(exc)}
