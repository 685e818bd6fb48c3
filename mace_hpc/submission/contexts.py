"""Plan -> one context directory per element + the submission's manifest and record.

Submission does only cheap work per element (one mkdir); databases and sub-directories are
created lazily by the element itself, so 10,000 elements take well under a second
(see benchmarks/). The manifest maps array index -> workflow id -> context directory; the record
(`record.json`) says how and where the elements were submitted, so `status`, `cancel` and
`resubmit` find a submission again by plan name or by any of its job ids.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, resolve_scratch_root
from ..database.journal import check_database_file
from ..errors import InputError
from ..plan import Plan
from ..util.atomic import atomic_write_json, read_json
from ..util.ids import validate_workflow_id

SUBMISSIONS_DIR = ".submissions"
RECORD_FILE = "record.json"


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
    plan_dir: str = ""
    entries: list[dict[str, Any]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # context dirs this submission made
    created_directory: bool = False  # the submission dir itself was made by this submission

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    @property
    def record_path(self) -> Path:
        return self.directory / RECORD_FILE

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


def submissions_root(scratch_root: Path) -> Path:
    return Path(scratch_root) / SUBMISSIONS_DIR


def submission_dir(scratch_root: Path, plan_name: str) -> Path:
    return submissions_root(scratch_root) / validate_workflow_id(plan_name, "name")


def scratch_root_of(cfg: Config) -> Path:
    """The configured scratch root, absolute and checked (`mace_hpc.config.resolve_scratch_root`)."""
    return resolve_scratch_root(cfg)


def plan_settings(plan: Plan, cfg: Config) -> dict[str, Any]:
    """Plan values override the configuration; the configuration fills the rest.

    The shared database is checked now (a directory or a non-database file in its place), not
    after every element has run and the merge fails.
    """
    shared = Path(plan.shared_database) if plan.shared_database else cfg.path("shared_database").absolute()
    shared = check_database_file(shared, "shared_database")
    return {
        "isolation_mode": plan.isolation_mode or cfg["isolation_mode"],
        "on_complete": plan.on_complete or cfg["on_complete"],
        "on_failure": plan.on_failure or cfg["on_failure"],
        "shared_database": shared,
    }


def build_submission(plan: Plan, cfg: Config, isolation_mode: str | None = None) -> Submission:
    """Compute (without touching the disk) where every element's context goes."""
    scratch_root = scratch_root_of(cfg)
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
    so a failed submission can remove exactly what it made. Bulk files skip fsync: if the machine
    crashes during submission, nothing was queued and the user submits again.
    """
    try:
        sub.scratch_root.mkdir(parents=True, exist_ok=True)
        base = submissions_root(sub.scratch_root)
        if not base.is_dir():
            base.mkdir(mode=0o700, exist_ok=True)
        try:
            sub.directory.mkdir(mode=0o700)
            sub.created_directory = True
        except FileExistsError:
            pass
        for entry in sub.entries:
            path = entry["context_dir"]
            try:
                os.mkdir(path, 0o700)
                sub.created.append(path)
            except FileExistsError:
                if os.path.islink(path) or not os.path.isdir(path):
                    raise InputError(
                        f"context {path} exists and is not a directory; remove it or rename the plan"
                    ) from None
        atomic_write_json(sub.directory / "elements.json", [e.to_dict() for e in plan.elements], indent=None, fsync=False)
        atomic_write_json(sub.directory / "plan.json", plan.to_dict(), indent=None, fsync=False)
        atomic_write_json(sub.manifest_path, sub.manifest(), indent=None)
    except BaseException:
        remove_created(sub)
        raise
    return sub


def remove_created(sub: Submission) -> None:
    """Undo create_contexts: the context dirs this submission made, and its submission dir if new."""
    for path in sub.created:
        shutil.rmtree(path, ignore_errors=True)
    sub.created = []
    if sub.created_directory:
        shutil.rmtree(sub.directory, ignore_errors=True)
        sub.created_directory = False


def write_record(directory: Path, record: dict[str, Any]) -> None:
    atomic_write_json(Path(directory) / RECORD_FILE, record, indent=None)


def list_records(scratch_root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every submission under the scratch root (unreadable records are skipped), by plan name."""
    base = submissions_root(scratch_root)
    out = []
    for rec_path in sorted(base.glob(f"*/{RECORD_FILE}")) if base.is_dir() else []:
        rec = read_json(rec_path)
        if isinstance(rec, dict):
            out.append((rec_path.parent, rec))
    return out


def _job_matches(query: str, job_id: str) -> bool:
    # `123`, `123_4` (an element of array 123) and `123_[4-9]` all find array 123
    return query == job_id or query.split("_", 1)[0] == job_id


def load_record(scratch_root: Path, name_or_job: str) -> tuple[Path, dict[str, Any]]:
    """Find a submission by plan name, or by a job id recorded in any submission's record."""
    base = submissions_root(scratch_root)
    name_or_job = str(name_or_job).strip()
    if name_or_job and "/" not in name_or_job and name_or_job not in (".", ".."):
        direct = base / name_or_job / RECORD_FILE
        record = read_json(direct)
        if isinstance(record, dict):
            return direct.parent, record
    for directory, rec in list_records(scratch_root):
        jobs = list(rec.get("jobs", [])) + [j for old in rec.get("history", []) for j in old.get("jobs", [])]
        if any(_job_matches(name_or_job, str(j.get("job_id"))) for j in jobs):
            return directory, rec
    known = [d.name for d, _ in list_records(scratch_root)]
    raise InputError(
        f"no submission named or with job id {name_or_job!r} under {base}; "
        f"known plans: {', '.join(known) or 'none'} (see `mace status`)"
    )


def load_manifest(directory: Path) -> dict[str, Any]:
    manifest = read_json(Path(directory) / "manifest.json")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("elements"), list):
        raise InputError(f"{directory}/manifest.json: missing or truncated; submit the plan again")
    return manifest
