"""PBS Pro and Torque end to end through the real CLI, against the stateful fake qsub/qstat/qdel.

Same scenarios as on SLURM: `mace-submit --backend pbs` creates the contexts and one array, each
element's MACE_* values are seen from inside the job, the epilogue merges every element into the
shared database exactly once, `mace cancel` and `mace resubmit --failed` work. PBS Pro runs the same
scenarios against a real OpenPBS in tests/test_submission_pbs_real.py; Torque has no installable server, so the
fake (tests/fakepbs/README.md says what it emulates) is what judges it here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fakepbs"
BIN = Path(sys.executable).parent

PROBE = (
    "import json, os, sys;"
    "keys = ['MACE_WORKFLOW_ID', 'MACE_ISOLATION_MODE', 'MACE_CONTEXT_DIR', 'PLAN_VAR'];"
    "json.dump({k: os.environ.get(k) for k in keys}, open('seen.json', 'w'));"
    "json.dump(dict(score=float(os.environ['MACE_WORKFLOW_ID'].rsplit('e', 1)[1])), open('results.json', 'w'));"
    "ok = not os.environ['MACE_WORKFLOW_ID'].endswith('e2') or os.path.exists(os.environ['FLAG']);"
    "sys.exit(0 if ok else 3)"
)


@pytest.fixture(params=["pbspro", "torque"])
def pbs_site(request, tmp_path, monkeypatch, mace_env):
    """Fake PBS on PATH and a site config for it; yields (flavor, site file)."""
    monkeypatch.setenv("PATH", f"{FAKE}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKEPBS_STATE", str(tmp_path / "fakepbs-state"))
    monkeypatch.setenv("FAKEPBS_FLAVOR", request.param)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    site = tmp_path / "pbs-site.yaml"
    site.write_text(yaml.safe_dump({
        "backend": "pbs", "scratch_root": str(mace_env["scratch_root"]), "max_parallel": 2,
        "scheduler": {"pbs_flavor": request.param, "time": 10, "signal_margin": 5,
                      "partition": "batch" if request.param == "torque" else "workq"},
    }))
    yield request.param, site
    state = tmp_path / "fakepbs-state" / "jobs"
    for f in state.glob("*.json") if state.exists() else []:  # nothing outlives the test
        job = json.loads(f.read_text())
        if job["state"] not in ("F", "C"):
            target = f"{job['seq']}[]" if job["array"] else str(job["seq"])
            subprocess.run(["qdel", target], capture_output=True)


def mace(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mace"), *argv], capture_output=True, text=True)


def write_plan(tmp_path: Path, name: str, steps_for, n: int) -> Path:
    plan = {
        "name": name, "isolation_mode": "isolated", "env": {"PLAN_VAR": "from-plan"},
        "elements": [
            {"id": f"e{i}", "materials": [{"material_id": f"{name}-m{i}", "formula": "Al"}], "steps": steps_for(i)}
            for i in range(n)
        ],
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(plan))
    return path


def wait_status(name: str, site: Path, until, limit: float = 90.0) -> dict:
    """Poll `mace status --json` (a safety net against hangs, not a timing assertion)."""
    end = time.monotonic() + limit
    while True:
        proc = mace("status", name, "--site", str(site), "--json")
        assert proc.returncode in (0, 1), proc.stderr
        report = json.loads(proc.stdout)
        if until(report) or time.monotonic() > end:
            return report
        time.sleep(0.5)


def states(report: dict) -> dict[str, str]:
    return {e["workflow_id"]: e["state"] for e in report["elements"]}


def test_submit_env_merge_resubmit(pbs_site, tmp_path, mace_env, monkeypatch):
    flavor, site = pbs_site
    flag = tmp_path / "let-e2-pass"
    monkeypatch.setenv("FLAG", str(flag))
    plan = write_plan(tmp_path, "pbsrun", lambda i: [{"name": "probe", "command": [sys.executable, "-c", PROBE]}], 4)
    proc = subprocess.run([str(BIN / "mace-submit"), str(plan), "--site", str(site), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["backend"] == "pbs"
    assert [j["kind"] for j in record["jobs"]] == ["array", "backstop"]  # merge job after the array

    # the state file is final a moment before the subjob's process exits: wait for both
    report = wait_status("pbsrun", site, lambda r: all(
        s in ("MERGED", "FAILED", "KEPT", "ARCHIVED") for s in states(r).values())
        and not any(e["scheduler_state"] in ("PENDING", "RUNNING") for e in r["elements"]))
    assert states(report) == {"pbsrun-e0": "MERGED", "pbsrun-e1": "MERGED", "pbsrun-e2": "KEPT", "pbsrun-e3": "MERGED"}
    failed = report["elements"][2]
    assert (failed["run_state"], failed["scheduler_state"]) == ("FAILED", "FAILED")  # kept, as on_failure says
    assert failed["message"] == "step probe: exit code 3"
    for i in (0, 1, 3):
        ctx = mace_env["scratch_root"] / f"pbsrun-e{i}"
        seen = json.loads((ctx / "calculations" / "probe" / "seen.json").read_text())
        assert seen == {"MACE_WORKFLOW_ID": f"pbsrun-e{i}", "MACE_ISOLATION_MODE": "isolated",
                        "MACE_CONTEXT_DIR": str(ctx), "PLAN_VAR": "from-plan"}

    flag.touch()
    proc = mace("resubmit", "pbsrun", "--failed", "--site", str(site), "--json")
    assert proc.returncode == 0, proc.stderr
    report = wait_status("pbsrun", site, lambda r: states(r)["pbsrun-e2"] == "MERGED")
    assert set(states(report).values()) == {"MERGED"}
    attempts = {e["workflow_id"]: e.get("attempts") for e in report["elements"]}
    assert attempts == {"pbsrun-e0": 1, "pbsrun-e1": 1, "pbsrun-e2": 2, "pbsrun-e3": 1}
    # the resubmission's script and logs sit beside the first attempt's instead of replacing them
    # (PBS Pro expands no job id in -o; Torque names each subjob's file by its job's sequence number)
    logs = {p.name for p in (mace_env["scratch_root"] / ".submissions" / "pbsrun" / "logs").iterdir()}
    assert {"pbsrun.pbs", "pbsrun.r2.pbs", "pbsrun-merge.pbs", "pbsrun-merge.r2.pbs"} <= logs, sorted(logs)
    if flavor == "pbspro":
        assert {"pbsrun.2.log", "pbsrun.r2.2.log"} <= logs, sorted(logs)

    conn = sqlite3.connect(mace_env["shared_database"])
    rows = conn.execute("SELECT material_id, property_value FROM properties WHERE property_name='score'").fetchall()
    assert sorted(rows) == [(f"pbsrun-m{i}", float(i)) for i in range(4)]  # each element exactly once
    assert conn.execute("SELECT COUNT(*) FROM merge_ledger").fetchone()[0] == 4


def test_cancel(pbs_site, tmp_path, mace_env):
    flavor, site = pbs_site
    plan = write_plan(tmp_path, "pbsnap", lambda i: [{"name": "nap", "command": ["sleep", "300"]}], 3)
    proc = subprocess.run([str(BIN / "mace-submit"), str(plan), "--site", str(site), "--max-parallel", "1"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wait_status("pbsnap", site, lambda r: "RUNNING" in states(r).values())
    proc = mace("cancel", "pbsnap", "--site", str(site))
    assert proc.returncode == 0, proc.stderr
    report = wait_status("pbsnap", site, lambda r: set(states(r).values()) <= {"CANCELLED", "KEPT"})
    assert set(states(report).values()) <= {"CANCELLED", "KEPT"}, states(report)
    running = mace_env["scratch_root"] / "pbsnap-e0" / "state.json"
    assert json.loads(running.read_text())["run_state"] == "CANCELLED"  # the running one was stopped, not lost


def test_stages_chain_whole_arrays(pbs_site, tmp_path, mace_env):
    """PBS has no element-wise array dependency: each stage's array waits for the whole upstream
    array (afterany; Torque afteranyarray) and the runner skips an element whose upstream stage
    did not complete. Element 1's first stage fails: its second stage is SKIPPED, not run."""
    flavor, site = pbs_site
    mark = "import os; open(os.path.join(os.environ['MACE_CONTEXT_DIR'], os.environ['MACE_STAGE']), 'w').write('x')"
    plan = tmp_path / "pbsstages.json"
    plan.write_text(json.dumps({
        "name": "pbsstages", "isolation_mode": "isolated",
        "stages": [{"name": "first"}, {"name": "second", "resources": {"cpus": 2}}],
        "elements": [{"id": f"e{i}", "steps": [
            {"name": "one", "stage": "first", "command": [sys.executable, "-c", mark + ("; raise SystemExit(3)" if i == 1 else "")]},
            {"name": "two", "stage": "second", "command": [sys.executable, "-c", mark]},
        ]} for i in range(3)],
    }))
    proc = subprocess.run([str(BIN / "mace-submit"), str(plan), "--site", str(site), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    arrays = {j["stage"]: j for j in record["jobs"] if j["kind"] == "array"}
    assert arrays["second"]["depends_on"] == [arrays["first"]["job_id"]]
    script = (mace_env["scratch_root"] / ".submissions" / "pbsstages" / "logs" / "pbsstages.second.pbs")
    kind = "afteranyarray" if flavor == "torque" else "afterany"
    assert f"#PBS -W depend={kind}:{arrays['first']['job_id']}" in script.read_text()
    report = wait_status("pbsstages", site, lambda r: all(
        s in ("MERGED", "KEPT", "FAILED") for s in states(r).values()))
    assert states(report) == {"pbsstages-e0": "MERGED", "pbsstages-e1": "KEPT", "pbsstages-e2": "MERGED"}
    assert report["stages"] == {"first": {"COMPLETED": 2, "FAILED": 1}, "second": {"COMPLETED": 2, "SKIPPED": 1}}
    skipped = mace_env["scratch_root"] / "pbsstages-e1"
    assert (skipped / "first").exists() and not (skipped / "second").exists()  # the skipped stage ran nothing
    assert all((mace_env["scratch_root"] / f"pbsstages-e{i}" / "second").exists() for i in (0, 2))
