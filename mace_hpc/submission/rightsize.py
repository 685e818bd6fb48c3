"""`mace-submit PLAN --rightsize`: the plan's `time` and `mem` from what its previous submission
really used (the efficiency report's p95 plus a margin), read with one accounting call."""

from __future__ import annotations

import dataclasses

from ..config import Config
from ..errors import InputError
from ..plan import Plan
from ..records.manifest import load_manifest
from ..records.submission import find_record
from ..schedulers.base import get_accounting
from ..status.efficiency import efficiency_report
from .contexts import scratch_root_of


def rightsize(plan: Plan, cfg: Config) -> tuple[Plan, str]:
    """The plan with resources.time/mem from its last submission's recommendation, and a note."""
    try:
        paths, record = find_record(scratch_root_of(cfg), plan.name)
    except Exception:  # noqa: BLE001 - RecordError: nothing submitted under this name yet
        raise InputError(f"--rightsize: plan {plan.name!r} has no earlier submission to measure; "
                         "submit it once without --rightsize") from None
    report = efficiency_report(record, load_manifest(paths.manifest), get_accounting(record.backend, record.scheduler))
    rec = report["summary"]["recommended"]
    if rec["time"] is None:
        raise InputError(f"--rightsize: no completed element of {plan.name!r} to measure yet; "
                         f"see `mace report {plan.name} --efficiency`")
    changes = {"time": rec["time"], **({"mem": rec["mem"]} if rec["mem"] else {})}
    before = {k: plan.resources.get(k, record.scheduler.get(k)) for k in changes}
    note = ", ".join(f"{k} {before[k]} -> {v}" for k, v in changes.items())
    advice = f"; its elements are short: consider `\"pack\": {rec['pack']}` in the plan" if rec["pack"] else ""
    return dataclasses.replace(plan, resources={**plan.resources, **changes}), (
        f"rightsized from {report['summary']['completed']} completed element(s) of the last submission: {note}{advice}")
