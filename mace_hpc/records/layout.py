"""Where every file of a context and of a submission lives: one path object each.

In the spirit of submitit's `JobPaths`: code asks `ContextPaths(dir).state` instead of joining
"state.json" itself, so the layout is written down once (docs/architecture.md shows it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "state.json"
IDENTITY_FILE = "context.json"
ELEMENT_FILE = "element.json"
DATABASE_FILE = "materials.db"
EPILOGUE_LOCK = ".epilogue.lock"
CONTEXT_SUBDIRS = ("config", "calculations", "exports", "logs")
# a tombstone (a merged or archived context whose data was removed) keeps only these
TOMBSTONE_FILES = (STATE_FILE, IDENTITY_FILE)

SUBMISSIONS_DIR = ".submissions"
QUARANTINE_DIR = ".quarantine"
REGISTRY_DIR = ".registry"
MANIFEST_FILE = "manifest.json"
ENDED_DIR = "ended"  # <submission>/ended/<task key>: runners that finalized their elements
RECORD_FILE = "record.json"
ELEMENTS_FILE = "elements.json"
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class ContextPaths:
    """The files of one workflow context directory (`<scratch_root>/<workflow_id>/`)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def scratch_root(self) -> Path:
        return self.root.parent

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    @property
    def identity(self) -> Path:
        return self.root / IDENTITY_FILE

    @property
    def element(self) -> Path:
        return self.root / ELEMENT_FILE

    @property
    def database(self) -> Path:
        return self.root / DATABASE_FILE

    @property
    def calculations(self) -> Path:
        return self.root / "calculations"

    def step_dir(self, step: str) -> Path:
        return self.calculations / step

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def epilogue_log(self) -> Path:
        return self.logs / "epilogue.log"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def epilogue_lock(self) -> Path:
        return self.root / EPILOGUE_LOCK

    @property
    def quarantine_dir(self) -> Path:
        return self.scratch_root / QUARANTINE_DIR


def state_path(context_dir: str | os.PathLike[str]) -> str:
    """`<context>/state.json` as a string: `mace status` builds 10,000 of these per call."""
    return os.path.join(context_dir, STATE_FILE)


def submissions_root(scratch_root: str | os.PathLike[str]) -> Path:
    return Path(scratch_root) / SUBMISSIONS_DIR


@dataclass(frozen=True)
class SubmissionPaths:
    """The files of one submitted plan (`<scratch_root>/.submissions/<plan>/`)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, scratch_root: str | os.PathLike[str], plan: str) -> SubmissionPaths:
        return cls(submissions_root(scratch_root) / plan)

    @property
    def scratch_root(self) -> Path:
        return self.root.parent.parent

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    def ended_marker(self, task_key: str) -> Path:
        """Left by a runner that finalized every element of its task itself, so the scheduler's task
        epilogue (a second Python per element) exits at once; jobscripts/slurm-task-epilog.sh
        spells this path in shell."""
        return self.root / ENDED_DIR / task_key

    @property
    def record(self) -> Path:
        return self.root / RECORD_FILE

    @property
    def elements(self) -> Path:
        return self.root / ELEMENTS_FILE

    @property
    def plan(self) -> Path:
        return self.root / PLAN_FILE

    @property
    def logs(self) -> Path:
        return self.root / "logs"
