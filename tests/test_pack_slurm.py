"""Packing on the real local SLURM cluster: 20 trivial elements packed by 5 run as 4 array tasks
(sacct says so), every element MERGED with its own context, each recording the array task it ran
in; a staged packed plan keeps `aftercorr` pairing task i of one stage with task i of the next;
a packed task with 2 cpus runs its elements two at once (lanes) within a limit of 3 elements' time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mace_hpc.config import load_config
from mace_hpc.records import find_record, load_manifest
from mace_hpc.schedulers.base import get_backend
from mace_hpc.status.reconcile import Report, collect
from mace_hpc.submission.submit import submit_plan
from mace_hpc.util.atomic import read_json

pytestmark = pytest.mark.slurm
WAIT_S = 240
PROBE = ("import json, os, time; s = time.time(); json.dump({'env': {k: v for k, v in os.environ.items() "
         "if k.startswith(('MACE_', 'SLURM_ARRAY'))}, 'start': s, 'end': time.time()}, open('seen.json', 'w'))")


@pytest.fixture(scope="module")
def packed(slurm_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("pack")
    os.chmod(root, 0o755)
    scratch = root / "scratch"
    (root / "none.json").write_text("{}")
    environ = {"MACE_SCRATCH_ROOT": str(scratch), "MACE_SHARED_DATABASE": str(root / "shared.db"),
               "MACE_ARCHIVE_DIR": str(root / "archives"), "MACE_CONFIG": str(root / "none.json")}
    cfg = load_config(site="ci-slurm", environ=environ, cli={"scheduler.partition": slurm_cluster.partition})
    step = {"name": "s", "command": [sys.executable, "-c", PROBE]}
    plans = {
        "flat": {"name": "flat", "isolation_mode": "isolated", "max_parallel": 2, "pack": 5,
                 "elements": [{"id": f"e{i}", "steps": [step]} for i in range(20)]},
        "staged": {"name": "staged", "isolation_mode": "isolated", "max_parallel": 3, "pack": 3,
                   "stages": [{"name": "a"}, {"name": "b"}],
                   "elements": [{"id": f"s{i}", "steps": [{**step, "name": n, "stage": n} for n in ("a", "b")]}
                                for i in range(7)]},
        # cpus 2: the task runs its 6 elements in two lanes, each step sleeping 1 s
        "laned": {"name": "laned", "isolation_mode": "isolated", "pack": 6, "resources": {"cpus": 2, "time": 2},
                  "elements": [{"id": f"l{i}", "steps": [{**step, "command": [
                      sys.executable, "-c", "import time; time.sleep(1)\n" + PROBE]}]} for i in range(6)]},
    }
    results = {}
    for name, data in plans.items():
        path = root / f"{name}.json"
        path.write_text(json.dumps(data))
        results[name] = submit_plan(path, config=cfg, backend="slurm")
    yield {"scratch": scratch, "results": results}
    get_backend("slurm").cancel([j.job_id for name in plans for j in find_record(scratch, name)[1].jobs])


def _wait(run_: dict[str, Any], name: str) -> Report:
    end = time.monotonic() + WAIT_S
    while True:
        paths, record = find_record(run_["scratch"], name)
        report = collect(record, load_manifest(paths.manifest), get_backend("slurm"))
        if report.all_settled() or time.monotonic() > end:
            return report
        time.sleep(1)


def _seen(scratch: Path, wid: str, step: str) -> dict[str, Any]:
    return json.loads((scratch / wid / "calculations" / step / "seen.json").read_text())


def _sacct_tasks(job_id: str) -> list[str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID"], capture_output=True, text=True)
    return sorted(line for line in out.stdout.split() if line.startswith(f"{job_id}_"))


def test_twenty_elements_packed_by_five_run_as_four_tasks(packed: dict[str, Any]) -> None:
    report = _wait(packed, "flat")
    assert [r["state"] for r in report.rows] == ["MERGED"] * 20, report.summary_line()
    (job,) = [j for j in find_record(packed["scratch"], "flat")[1].jobs if j.kind == "array"]
    assert job.pack == 5 and job.array == "0-3"
    for _ in range(30):  # sacct lags the controller by a few seconds
        if len(_sacct_tasks(job.job_id)) == 4:
            break
        time.sleep(1)
    assert _sacct_tasks(job.job_id) == [f"{job.job_id}_{t}" for t in range(4)]
    contexts = set()
    for i in range(20):
        env = _seen(packed["scratch"], f"flat-e{i}", "s")["env"]
        assert env["SLURM_ARRAY_TASK_ID"] == str(i // 5) and env["SLURM_ARRAY_JOB_ID"] == job.job_id
        assert env["MACE_WORKFLOW_ID"] == f"flat-e{i}"
        contexts.add(env["MACE_CONTEXT_DIR"])
        state = read_json(packed["scratch"] / f"flat-e{i}" / "state.json") or {}
        assert state["index"] == i and state["scheduler"]["SLURM_ARRAY_TASK_ID"] == str(i // 5)
    assert len(contexts) == 20


def test_staged_pack_pairs_task_i_with_task_i(packed: dict[str, Any]) -> None:
    report = _wait(packed, "staged")
    assert [r["state"] for r in report.rows] == ["MERGED"] * 7, report.summary_line()
    arrays = {j.stage: j for j in find_record(packed["scratch"], "staged")[1].jobs if j.kind == "array"}
    assert arrays["a"].array == arrays["b"].array == "0-2" and arrays["b"].depends_on == (arrays["a"].job_id,)
    for i in range(7):
        a, b = (_seen(packed["scratch"], f"staged-s{i}", s) for s in ("a", "b"))
        assert a["env"]["SLURM_ARRAY_TASK_ID"] == b["env"]["SLURM_ARRAY_TASK_ID"] == str(i // 3)
        last = _seen(packed["scratch"], f"staged-s{min(6, i // 3 * 3 + 2)}", "a")
        assert b["start"] >= last["end"]  # task i of b waited for the whole task i of a (aftercorr)


def test_laned_pack_runs_two_elements_at_once(packed: dict[str, Any]) -> None:
    report = _wait(packed, "laned")
    assert [r["state"] for r in report.rows] == ["MERGED"] * 6, report.summary_line()
    (job,) = [j for j in find_record(packed["scratch"], "laned")[1].jobs if j.kind == "array"]
    assert job.pack == 6 and job.array == "0"
    states = [read_json(packed["scratch"] / f"laned-l{i}" / "state.json") or {} for i in range(6)]
    assert len({s["pid"] for s in states}) == 2  # the task's runner and the lane it started
    assert any(a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]
               for k, a in enumerate(states) for b in states[k + 1:])
    assert {_seen(packed["scratch"], f"laned-l{i}", "s")["env"]["MACE_CPUS"] for i in range(6)} == {"1"}
    out: list[str] = []
    for _ in range(30):  # sacct lags the controller by a few seconds
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job.job_id, "-o", "AllocCPUS,Timelimit"],
                             capture_output=True, text=True).stdout.split()
        if out:
            break
        time.sleep(1)
    assert out[:1] == ["2|00:06:00"]  # 2 cpus, 3 elements' time (6 elements, 2 at once, 2 min each)
