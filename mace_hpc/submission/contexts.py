"""Plan -> one context directory per element + the submission's manifest.

Submission does only cheap work per element (one mkdir); databases and sub-directories are
created lazily by the element itself, so 10,000 elements take well under a second
(see benchmarks/). The manifest maps array index -> workflow id -> context directory.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import InputError
from ..plan import Plan
from ..util.atomic import atomic_write_json, read_json
from ..util.ids import validate_workflow_id

SUBMISSIONS_DIR = ".submissions"


@dataclass
class Submission:
    """Everything later stages need to find a submitted plan again."""

    name: str
    directory: Path
    scratch_root: Path
    isolation_mode: str
    shared_database: Path
    on_complete: str
    on_failure: str
    archive_dir: Path
    entries: list[dict[str, Any]] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        return {
            "version": 1,
            "plan": self.name,
            "isolation_mode": self.isolation_mode,
            "scratch_root": str(self.scratch_root),
            "shared_database": str(self.shared_database),
            "archive_dir": str(self.archive_dir),
            "on_complete": self.on_complete,
            "on_failure": self.on_failure,
            "plan_dir": self.plan_dir,
            "elements": self.entries,
        }

    plan_dir: str = ""


def submission_dir(scratch_root: Path, plan_name: str) -> Path:
    return scratch_root / SUBMISSIONS_DIR / validate_workflow_id(plan_name, "name")


def plan_settings(plan: Plan, cfg: Config) -> dict[str, Any]:
    """Plan values override the configuration; the configuration fills the rest."""
    shared = Path(plan.shared_database) if plan.shared_database else cfg.path("shared_database").absolute()
    return {
        "isolation_mode": plan.isolation_mode or cfg["isolation_mode"],
        "on_complete": plan.on_complete or cfg["on_complete"],
        "on_failure": plan.on_failure or cfg["on_failure"],
        "shared_database": shared,
    }


def build_submission(plan: Plan, cfg: Config, isolation_mode: str | None = None) -> Submission:
    """Compute (without touching the disk) where every element's context goes."""
    scratch_root = cfg.path("scratch_root").absolute()
    settings = plan_settings(plan, cfg)
    if isolation_mode:
        settings["isolation_mode"] = isolation_mode
    sub = Submission(
        name=plan.name,
        directory=submission_dir(scratch_root, plan.name),
        scratch_root=scratch_root,
        archive_dir=cfg.path("archive_dir").absolute(),
        plan_dir=str(plan.plan_dir),
        **settings,
    )
    root = str(scratch_root)
    sub.entries = [
        {"index": e.index, "workflow_id": e.workflow_id, "context_dir": f"{root}/{e.workflow_id}"}
        for e in plan.elements
    ]
    return sub


def create_contexts(sub: Submission, plan: Plan) -> Submission:
    """Create the context directories (0700) and write elements.json, plan.json and the manifest.

    Directories that already exist are resumed, not recreated; `sub.created` lists the new ones
    so a failed submission can remove exactly what it made.
    """
    try:
        sub.scratch_root.mkdir(parents=True, exist_ok=True)
        sub.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for entry in sub.entries:
            path = entry["context_dir"]
            try:
                os.mkdir(path, 0o700)
                sub.created.append(Path(path))
            except FileExistsError:
                if os.path.islink(path) or not os.path.isdir(path):
                    raise InputError(f"context {path} exists and is not a directory; remove it or rename the plan") from None
        atomic_write_json(sub.directory / "elements.json", [e.to_dict() for e in plan.elements], indent=None)
        atomic_write_json(sub.directory / "plan.json", plan.to_dict(), indent=None)
        atomic_write_json(sub.manifest_path, sub.manifest(), indent=None)
    except BaseException:
        remove_created(sub)
        raise
    return sub


def remove_created(sub: Submission) -> None:
    """Undo create_contexts for directories this submission made (used when submission fails)."""
    for path in sub.created:
        shutil.rmtree(path, ignore_errors=True)
    sub.created = []


def load_record(scratch_root: Path, name_or_job: str) -> tuple[Path, dict[str, Any]]:
    """Find a submission by plan name, or by a job id recorded in any submission's record."""
    base = scratch_root / SUBMISSIONS_DIR
    direct = base / name_or_job / "record.json"
    record = read_json(direct) if direct.parent.is_dir() else None
    if isinstance(record, dict):
        return direct.parent, record
    if base.is_dir():
        for rec_path in base.glob("*/record.json"):
            rec = read_json(rec_path)
            if isinstance(rec, dict) and any(
                name_or_job == j["job_id"] or name_or_job.split("_")[0] == j["job_id"] for j in rec.get("jobs", [])
            ):
                return rec_path.parent, rec
    known = sorted(p.name for p in base.iterdir()) if base.is_dir() else []
    raise InputError(
        f"no submission named or with job id {name_or_job!r} under {base}; known plans: {', '.join(known) or 'none'}"
    )
