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
from ..plan import Plan
from ..records.layout import SubmissionPaths, submissions_root
from ..records.manifest import Manifest, ManifestEntry, write_element_specs, write_manifest
from ..records.stages import Stage
from ..util.atomic import atomic_write_json
from ..util.ids import validate_workflow_id
from ..util.private import check_private, ensure_private_dir


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
    archive_dir: str | Path  # a directory or an s3:// URL
    plan_dir: str = ""
    stages: tuple[Stage, ...] = ()
    entries: list[ManifestEntry] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # context dirs this submission made
    created_directory: bool = False  # the submission dir itself was made by this submission

    @property
    def paths(self) -> SubmissionPaths:
        return SubmissionPaths(self.directory)

    @property
    def manifest_path(self) -> Path:
        return self.paths.manifest

    @property
    def record_path(self) -> Path:
        return self.paths.record

    def manifest(self) -> Manifest:
        return Manifest(
            plan=self.name, isolation_mode=self.isolation_mode, scratch_root=str(self.scratch_root),
            shared_database=str(self.shared_database), archive_dir=str(self.archive_dir),
            on_complete=self.on_complete, on_failure=self.on_failure, plan_dir=self.plan_dir,
            elements=tuple(self.entries), stages=self.stages,
        )


def submission_dir(scratch_root: Path, plan_name: str) -> Path:
    return SubmissionPaths.of(scratch_root, validate_workflow_id(plan_name, "name")).root


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
        archive_dir=cfg.archive_dir(),
        plan_dir=str(plan.plan_dir),
        stages=plan.stages,
        **settings,
    )
    root = str(scratch_root)
    sub.entries = [ManifestEntry(e.index, e.workflow_id, f"{root}/{e.workflow_id}") for e in plan.elements]
    return sub


def create_contexts(sub: Submission, plan: Plan) -> Submission:
    """Create the context directories (0700) and write elements.json, plan.json and the manifest.

    Directories that already exist are resumed, not recreated; `sub.created` lists the new ones
    so a failed submission can remove exactly what it made. Bulk files skip fsync: if the machine
    crashes during submission, nothing was queued and the user submits again.
    """
    try:
        sub.scratch_root.mkdir(parents=True, exist_ok=True)
        ensure_private_dir(submissions_root(sub.scratch_root), "submissions directory")
        try:
            sub.directory.mkdir(mode=0o700)
            sub.created_directory = True
        except FileExistsError:
            check_private(sub.directory, "submission directory")
        for entry in sub.entries:
            path = entry.context_dir
            try:
                os.mkdir(path, 0o700)
                sub.created.append(path)
            except FileExistsError:
                check_private(path, "context directory")
        write_element_specs(sub.paths.elements, [e.to_dict() for e in plan.elements])
        atomic_write_json(sub.paths.plan, plan.to_dict(), indent=None, fsync=False)
        write_manifest(sub.manifest_path, sub.manifest())
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
