"""`mace merge`: find every element whose run ended but whose results are not home yet, and finalize them.

That is: PENDING_MERGE (an epilogue could not finish), COMPLETED/FAILED/TIMEOUT/CANCELLED without
an epilogue state (the element ran with `--no-epilogue`, or was killed between its state write
and its epilogue), and RUNNING elements whose job is over (the scheduler says so in one query per
submission, or `--ended`: the backstop job runs after every element by construction).

Work is done in chunks through `finalize` (so merges go through `merge_many`: one lock, batched
transactions); rerunning finds nothing left to do, which is what makes it idempotent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, load_config, resolve_scratch_root
from ..errors import InputError
from ..records import states as st
from ..records.element_state import read_state
from ..records.layout import MANIFEST_FILE, STATE_FILE, SubmissionPaths, submissions_root
from ..records.manifest import Manifest, read_manifest
from ..records.submission import read_record
from ..schedulers import get_backend
from ..util.ids import validate_workflow_id
from .finalize import (
    QUARANTINED,
    Options,
    Outcome,
    Target,
    finalize,
    target_from_context,
    target_from_manifest,
)

CHUNK = 512


@dataclass
class MergeSummary:
    """What one `mace merge` did, for printing and --json."""

    plans: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(o.action for o in self.outcomes))

    def problems(self) -> list[Outcome]:
        """Elements that need a person: left pending or busy, quarantined by this run or an earlier one.

        A quarantined element is never retried (it stays "skipped"), but it is not home either:
        `mace merge` keeps exiting 1 while one is left, as its help says.
        """
        return [o for o in self.outcomes if o.action in ("pending", "quarantined", "busy") or o.state == QUARANTINED]

    def conflicts(self) -> int:
        return sum(o.conflicts for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plans": self.plans,
            "counts": self.counts(),
            "conflicts": self.conflicts(),
            "elements": [o.to_dict() for o in self.outcomes if o.action not in ("skipped",)],
        }


def known_plans(scratch_root: Path) -> list[str]:
    base = submissions_root(scratch_root)
    return sorted(p.parent.name for p in base.glob(f"*/{MANIFEST_FILE}")) if base.is_dir() else []


def load_plan_manifest(scratch_root: Path, plan: str) -> Manifest:
    validate_workflow_id(plan, "plan")
    manifest = read_manifest(SubmissionPaths.of(scratch_root, plan).manifest)
    if manifest is None:
        known = ", ".join(known_plans(scratch_root)) or "none"
        raise InputError(f"no submitted plan {plan!r} under {submissions_root(scratch_root)}; known plans: {known}")
    return manifest


def scheduler_final_states(scratch_root: Path, plan: str, manifest: Manifest, running: set[int]) -> dict[str, str]:
    """Workflow id -> final scheduler state, for elements whose state file still says RUNNING.

    One backend query for the whole submission (invariant: never one per element); best effort,
    an unreachable scheduler just means those elements wait for the next merge.
    """
    if not running:
        return {}
    record = read_record(SubmissionPaths.of(scratch_root, plan).record)
    if record is None or record.backend not in ("slurm", "pbs"):
        return {}
    jobs = [j for j in record.jobs if j.kind == "array"]
    try:
        states = get_backend(record.backend).query([j.job_id for j in jobs])
    except Exception:  # noqa: BLE001 - scheduler down or not on this host
        return {}
    by_index = {e.index: e.workflow_id for e in manifest.elements}
    final = set(st.FINAL_RUN_STATES)
    return {by_index[i]: s for i, s in states.items() if i in running and i in by_index and s in final}


def _plan_targets(scratch_root: Path, plan: str, cfg: Config, opts: Options) -> list[Target]:
    manifest = load_plan_manifest(scratch_root, plan)
    targets = [target_from_manifest(e, manifest, cfg) for e in manifest.elements]
    running = {t.index for t in targets if t.index is not None and read_state(t.context_dir).state == st.RUNNING}
    if running and not opts.ended:
        opts.scheduler_states = {**opts.scheduler_states, **scheduler_final_states(scratch_root, plan, manifest, running)}
    return targets


def _bare_targets(scratch_root: Path, listed: set[Path], cfg: Config) -> list[Target]:
    """Contexts no manifest lists (made by WorkflowContext / `mace workflow`): config policies."""
    out = []
    if not scratch_root.is_dir():
        return out
    for d in sorted(scratch_root.iterdir()):
        if d.name.startswith(".") or d.is_symlink() or not d.is_dir() or d in listed:
            continue
        if not (d / STATE_FILE).exists():
            continue
        try:
            out.append(target_from_context(d, cfg))
        except InputError:
            continue
    return out


def merge_pending(
    scratch_root: str | Path | None = None,
    plans: Iterable[str] | None = None,
    *,
    all_plans: bool = False,
    options: Options | None = None,
    config: Config | None = None,
) -> MergeSummary:
    """Finalize every ended-but-not-home element of `plans` (or of everything with `all_plans`)."""
    cfg = config or load_config()
    root = resolve_scratch_root(cfg, scratch_root)
    opts = options or Options()
    names = list(plans or [])
    if all_plans:
        names = known_plans(root)
    elif not names:
        raise InputError("mace merge: name a plan (see `mace status`) or pass --all")
    summary = MergeSummary(plans=names)
    targets: list[Target] = []
    for name in names:
        targets.extend(_plan_targets(root, name, cfg, opts))
    if all_plans:
        targets.extend(_bare_targets(root, {t.context_dir for t in targets}, cfg))
    seen: set[str] = set()
    unique = [t for t in targets if not (t.workflow_id in seen or seen.add(t.workflow_id))]  # type: ignore[func-returns-value]
    for start in range(0, len(unique), CHUNK):
        summary.outcomes.extend(finalize(unique[start : start + CHUNK], opts))
    return summary
