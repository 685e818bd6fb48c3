"""Multi-stage plans on the real local SLURM cluster: stage arrays chained element by element.

A 3-stage plan of 6 elements: element 2's first stage fails (until the test fixes its cause),
element 4's optional middle stage fails, element 5's first stage is slow. Every step records
what it saw and when (`seen.json`, written inside the job). Checked: element 2's later stages are
SKIPPED and cancelled (not left PENDING with DependencyNeverSatisfied), element 4 completes its last
stage, every element is merged exactly once, stage 2 of a fast element starts before stage 1 of the
slow one ends; with MaxArraySize below the plan's size every chunk still pairs element i with
element i; `mace resubmit --failed` reruns element 2 alone, from its failed stage.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slurm_fixtures import job_root

from mace_hpc.cli.main import run
from mace_hpc.config import load_config
from mace_hpc.records import find_record, load_manifest
from mace_hpc.schedulers.base import get_backend
from mace_hpc.status.reconcile import Report, collect
from mace_hpc.submission.submit import submit_plan
from mace_hpc.util.atomic import read_json

pytestmark = pytest.mark.slurm
WAIT_S = 240

PROBE = r"""
import json, os, sys, time
start = time.time()
nap, gate = float(sys.argv[1]), sys.argv[2]
time.sleep(nap)
seen = {k: v for k, v in os.environ.items() if k.startswith(("MACE_", "SLURM_ARRAY"))}
with open("seen.json.tmp", "w") as fh:
    json.dump({"env": seen, "start": start, "end": time.time()}, fh)
os.replace("seen.json.tmp", "seen.json")
sys.exit(3 if gate != "-" and not os.path.exists(gate) else 0)
"""


def _stage_step(probe: Path, stage: str, nap: float, gate: str = "-") -> dict[str, Any]:
    return {"name": stage, "stage": stage, "command": [sys.executable, str(probe), str(nap), gate]}


@pytest.fixture(scope="module")
def staged(slurm_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root, environ = job_root(tmp_path_factory, "stages")
    scratch = root / "scratch"
    probe = root / "probe.py"
    probe.write_text(PROBE)
    fixed = root / "fixed"
    never = root / "never-created"

    def cfg(**cli: Any) -> Any:
        return load_config(site="ci-slurm", environ=environ, cli={"scheduler.partition": slurm_cluster.partition, **cli})

    def elements(n: int) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            out.append({"id": f"e{i}", "steps": [
                _stage_step(probe, "first", 12 if i == 5 else 1, str(fixed) if i == 2 else "-"),
                _stage_step(probe, "second", 1, str(never) if i == 4 else "-"),
                _stage_step(probe, "third", 0),
            ]})
        return out

    stages = [{"name": "first"}, {"name": "second", "optional": True, "resources": {"cpus": 2}}, {"name": "third"}]
    plans = {
        "chain": ({"name": "chain", "isolation_mode": "isolated", "max_parallel": 6, "stages": stages,
                   "elements": elements(6)}, cfg()),
        "chunks": ({"name": "chunks", "isolation_mode": "isolated", "max_parallel": 6,
                    "stages": [{"name": "first"}, {"name": "second"}],
                    "elements": [{"id": f"c{i}", "steps": [_stage_step(probe, "first", 0),
                                                             _stage_step(probe, "second", 0)]} for i in range(5)]},
                   cfg(**{"scheduler.max_array_size": 2})),
        # element 1's runner is killed hard in its first stage (SIGKILL: nothing recorded by it)
        "lost": ({"name": "lost", "isolation_mode": "isolated", "max_parallel": 2,
                  "stages": [{"name": "first"}, {"name": "second"}],
                  "elements": [{"id": f"l{i}", "steps": [
                      {"name": "first", "stage": "first",
                       "command": ["sh", "-c", "kill -9 $PPID; sleep 5" if i == 1 else "true"]},
                      _stage_step(probe, "second", 0)]} for i in range(2)]}, cfg()),
    }
    results = {}
    for name, (data, c) in plans.items():
        path = root / f"{name}.json"
        path.write_text(json.dumps(data))
        results[name] = submit_plan(path, config=c, backend="slurm")
    yield {"root": root, "scratch": scratch, "environ": environ, "fixed": fixed, "results": results}
    ids = [j.job_id for name in plans for j in find_record(scratch, name)[1].jobs]
    get_backend("slurm").cancel(ids)


def _report(run_: dict[str, Any], name: str) -> Report:
    paths, record = find_record(run_["scratch"], name)
    return collect(record, load_manifest(paths.manifest), get_backend("slurm"))


def _wait(run_: dict[str, Any], name: str) -> Report:
    end = time.monotonic() + WAIT_S
    report = _report(run_, name)
    while time.monotonic() < end:
        report = _report(run_, name)
        if report.all_settled():
            return report
        time.sleep(1)
    pytest.fail(f"{name}: not done after {WAIT_S}s: {report.summary_line()} {report.stage_lines()}")


def _seen(run_: dict[str, Any], wid: str, stage: str) -> dict[str, Any]:
    return json.loads((run_["scratch"] / wid / "calculations" / stage / "seen.json").read_text())


def _state(run_: dict[str, Any], wid: str) -> dict[str, Any]:
    return read_json(run_["scratch"] / wid / "state.json") or {}


def _calc_rows(run_: dict[str, Any]) -> dict[tuple[str, str], int]:
    """(workflow id, status) -> calculations in the shared database (a duplicate merge would double them)."""
    with sqlite3.connect(Path(run_["environ"]["MACE_SHARED_DATABASE"])) as db:
        rows = db.execute("SELECT workflow_id, status, COUNT(*) FROM calculations GROUP BY 1, 2").fetchall()
    return {(w, s): n for w, s, n in rows if w.startswith("chain-")}


def test_three_stages_chain_element_by_element(staged: dict[str, Any]) -> None:
    report = _wait(staged, "chain")
    rows = {r["index"]: r for r in report.rows}
    assert [rows[i]["state"] for i in range(6)] == ["MERGED", "MERGED", "KEPT", "MERGED", "MERGED", "MERGED"]
    assert rows[2]["stages"] == {"first": "FAILED", "second": "SKIPPED", "third": "SKIPPED"}
    assert rows[4]["stages"] == {"first": "COMPLETED", "second": "FAILED", "third": "COMPLETED"}
    assert report.stage_counts["third"] == {"COMPLETED": 5, "SKIPPED": 1}
    # one array per stage, each downstream array after its upstream one by aftercorr
    record = read_json(staged["scratch"] / ".submissions" / "chain" / "record.json")
    arrays = {j["stage"]: j for j in record["jobs"] if j["kind"] == "array"}
    assert arrays["second"]["depends_on"] == [arrays["first"]["job_id"]]
    assert arrays["third"]["depends_on"] == [arrays["second"]["job_id"]]
    backstop = next(j for j in record["jobs"] if j["kind"] == "backstop")
    assert sorted(backstop["depends_on"]) == sorted(a["job_id"] for a in arrays.values())
    # element 2's downstream tasks were cancelled, not left pending forever
    for stage in ("second", "third"):
        job = arrays[stage]["job_id"]
        queued = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i %T %r"], capture_output=True, text=True)
        assert f"{job}_2 " not in queued.stdout, queued.stdout
    # the element's env in each stage: its own stage, its own index
    for i in (0, 4, 5):
        for stage in ("first", "second", "third"):
            env = _seen(staged, f"chain-e{i}", stage)["env"]
            assert env["MACE_STAGE"] == stage and env["SLURM_ARRAY_TASK_ID"] == str(i)
            assert env["SLURM_ARRAY_JOB_ID"] == arrays[stage]["job_id"]
    # element by element: a fast element's second stage started before the slow element's first ended
    slow_first_end = _seen(staged, "chain-e5", "first")["end"]
    assert _seen(staged, "chain-e0", "second")["start"] < slow_first_end
    assert _seen(staged, "chain-e0", "third")["start"] < slow_first_end
    # merged exactly once, at the end of the chain: one calculation per stage of each merged element
    expected = {(f"chain-e{i}", "completed"): 3 for i in (0, 1, 3, 5)}
    assert _calc_rows(staged) == {**expected, ("chain-e4", "completed"): 2, ("chain-e4", "failed"): 1}
    state = _state(staged, "chain-e4")
    assert state["run_state"] == "COMPLETED" and "optional stage(s) second" in state["message"]


def test_chunks_pair_element_i_with_element_i(staged: dict[str, Any]) -> None:
    report = _wait(staged, "chunks")
    assert [r["state"] for r in report.rows] == ["MERGED"] * 5
    record = read_json(staged["scratch"] / ".submissions" / "chunks" / "record.json")
    arrays = [j for j in record["jobs"] if j["kind"] == "array"]
    assert sorted((j["stage"], j["offset"], j["array"]) for j in arrays) == sorted(
        (s, o, a) for s in ("first", "second") for o, a in ((0, "0-1"), (2, "0-1"), (4, "0")))
    by_key = {(j["stage"], j["offset"]): j for j in arrays}
    for offset in (0, 2, 4):
        assert by_key[("second", offset)]["depends_on"] == [by_key[("first", offset)]["job_id"]]
    for i in range(5):
        first, second = (_seen(staged, f"chunks-c{i}", s)["env"] for s in ("first", "second"))
        for env in (first, second):
            assert int(env["SLURM_ARRAY_TASK_ID"]) + int(env["MACE_INDEX_OFFSET"]) == i
        assert second["MACE_INDEX_OFFSET"] == first["MACE_INDEX_OFFSET"]
        assert _seen(staged, f"chunks-c{i}", "second")["start"] >= _seen(staged, f"chunks-c{i}", "first")["end"]


def test_resubmit_failed_reruns_element_2_from_its_failed_stage(
    staged: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _wait(staged, "chain")
    before = {i: _state(staged, f"chain-e{i}") for i in range(6)}
    staged["fixed"].write_text("")
    for key, value in staged["environ"].items():
        monkeypatch.setenv(key, value)
    assert run(["resubmit", "chain", "--failed"]) == 0
    capsys.readouterr()
    record = read_json(staged["scratch"] / ".submissions" / "chain" / "record.json")
    resub = [j for j in record["jobs"] if j["kind"] == "resubmit"]
    assert [(j["stage"], j["indices"]) for j in resub] == [("first", [2]), ("second", [2]), ("third", [2])]
    assert resub[1]["depends_on"] == [resub[0]["job_id"]] and resub[2]["depends_on"] == [resub[1]["job_id"]]
    report = _wait(staged, "chain")
    assert [r["state"] for r in report.rows] == ["MERGED"] * 6
    state = _state(staged, "chain-e2")
    assert {k: v["state"] for k, v in state["stages"].items()} == dict.fromkeys(("first", "second", "third"),
                                                                             "COMPLETED")
    assert state["stages"]["first"]["attempts"] == 2
    # nothing else ran again, and element 2 is merged once with its three calculations
    for i in (0, 1, 3, 4, 5):
        assert _state(staged, f"chain-e{i}")["stages"] == before[i]["stages"]
    rows = _calc_rows(staged)
    assert (rows[("chain-e2", "completed")], rows[("chain-e2", "failed")]) == (3, 1)  # the failed try, kept


def test_runner_killed_in_a_stage_is_settled_not_left_waiting(staged: dict[str, Any]) -> None:
    """The settle job after stage `first` records the killed element's stage FAILED, skips and
    cancels its second stage (aftercorr would keep it PENDING forever), and the backstop runs."""
    report = _wait(staged, "lost")
    rows = {r["index"]: r for r in report.rows}
    assert rows[0]["state"] == "MERGED" and rows[1]["run_state"] == "FAILED"
    assert rows[1]["stages"] == {"first": "FAILED", "second": "SKIPPED"}
    state = _state(staged, "lost-l1")
    assert "runner ended without recording an end" in state["stages"]["first"]["message"]
    record = read_json(staged["scratch"] / ".submissions" / "lost" / "record.json")
    arrays = {j["stage"]: j for j in record["jobs"] if j["kind"] == "array"}
    [settle] = [j for j in record["jobs"] if j["kind"] == "settle"]
    assert (settle["stage"], settle["depends_on"]) == ("first", [arrays["first"]["job_id"]])
    second = arrays["second"]["job_id"]
    end = time.monotonic() + 60
    while time.monotonic() < end:  # the cancelled task leaves the queue; the backstop then runs
        queued = subprocess.run(["squeue", "-h", "-r", "-j", second, "-o", "%i %T %r"], capture_output=True, text=True)
        if f"{second}_1 " not in queued.stdout:
            break
        time.sleep(1)
    assert f"{second}_1 " not in queued.stdout, queued.stdout
    backstop = next(j for j in record["jobs"] if j["kind"] == "backstop")["job_id"]
    end = time.monotonic() + 90
    while time.monotonic() < end:
        acct = subprocess.run(["sacct", "-n", "-X", "-P", "-j", backstop, "-o", "State"], capture_output=True, text=True)
        if acct.stdout.strip() in ("COMPLETED", "FAILED"):
            break
        time.sleep(1)
    assert acct.stdout.strip() == "COMPLETED", acct.stdout
