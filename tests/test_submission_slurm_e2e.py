"""mace-submit on the real local SLURM cluster: every scenario is submitted at once (module fixture)
so they run concurrently, then each test waits for its own plan and checks what the jobs wrote.

What is checked comes from inside the jobs: each step writes what it saw (`seen.json`: MACE_*,
plan/element env, SLURM_ARRAY_*, cwd, start/end times) into its calculation directory; the
element's state file says what the runner and the epilogue did. Needs `slurm_cluster`
(skips with the reason without SLURM, fails in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from real_cluster import peak_overlap
from slurm_fixtures import job_root

from mace_hpc.cli.main import run
from mace_hpc.config import load_config
from mace_hpc.records import find_record, load_manifest
from mace_hpc.schedulers.base import get_backend
from mace_hpc.status.reconcile import Report, collect
from mace_hpc.submission.submit import submit_plan
from mace_hpc.util.atomic import read_json

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent
WAIT_S = 240

PROBE = r"""
import json, os, sys, time
start = time.time()
args = sys.argv[1:]
nap = float(args[0]) if args else 0.0
time.sleep(nap)
out = {"env": {k: v for k, v in os.environ.items() if k.startswith(("MACE_", "PLAN_", "ELEM_", "SLURM_ARRAY", "SLURM_GET_USER_ENV"))},
       "cwd": os.getcwd(), "start": start, "end": time.time()}
with open("seen.json.tmp", "w") as fh:
    json.dump(out, fh)
os.replace("seen.json.tmp", "seen.json")
if len(args) > 1 and not os.path.exists(args[1]):
    sys.exit(3)  # fails until the test creates the file
"""


def _element(i: int, steps: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {"id": f"e{i}", "steps": steps, **kw}


def _steps_probe(probe: Path, nap: float = 0.0, extra: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"name": "probe", "command": [sys.executable, str(probe), str(nap), *(extra or [])]}]


@pytest.fixture(scope="module")
def cluster_run(slurm_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Write the plans, submit them all (real sbatch), return where everything is."""
    root, environ = job_root(tmp_path_factory, "e2e")
    scratch = root / "scratch"
    probe = root / "probe.py"
    probe.write_text(PROBE)
    part = {"scheduler.partition": slurm_cluster.partition}

    def cfg(**cli: Any) -> Any:
        return load_config(site="ci-slurm", environ=environ, cli={**part, **cli})

    def plan(name: str, data: dict[str, Any]) -> Path:
        path = root / f"{name}.json"
        path.write_text(json.dumps({"name": name, "isolation_mode": "isolated", **data}))
        return path

    fixed = root / "fixed-marker"
    plans = {
        # element env, throttle (4 elements, 2 at once, 3 s each), element 3 fails until `fixed` exists
        "envp": (plan("envp", {
            "max_parallel": 2, "env": {"PLAN_VAR": "plan value, with comma"},
            "elements": [_element(i, _steps_probe(probe, 3)
                                  + ([{"name": "gate", "command": [sys.executable, str(probe), "0", str(fixed)]}]
                                     if i == 3 else []),
                                  env={"ELEM_VAR": f"elem {i}"}) for i in range(4)],
        }), cfg()),
        # 5 elements over a lowered MaxArraySize of 2: three arrays with offsets 0, 2, 4
        "chunked": (plan("chunked", {"elements": [_element(i, _steps_probe(probe)) for i in range(5)]}),
                    cfg(**{"scheduler.max_array_size": 2})),
        # a step sleeping past a 2-minute limit: USR2 40 s before it -> TIMEOUT + epilogue (not a
        # 1-minute limit: slurmctld may send the warning up to 30 s early, before the step launched)
        "timeout": (plan("timeout", {"resources": {"time": 2, "signal_margin": 40},
                                     "elements": [_element(0, [{"name": "nap", "command": ["sleep", "300"]}])]}), cfg()),
        # same with requeue: the second attempt resumes, skipping the completed first step
        "requeue": (plan("requeue", {
            "resources": {"time": 2, "signal_margin": 40, "requeue": True},
            "elements": [_element(0, [
                {"name": "one", "command": ["sh", "-c", 'echo run >> "$MACE_CONTEXT_DIR/one_runs"']},
                {"name": "two", "command": ["sh", "-c", 'if [ -e "$MACE_CONTEXT_DIR/attempted" ]; then echo ok > done.txt;'
                                            ' else touch "$MACE_CONTEXT_DIR/attempted"; sleep 300; fi']},
            ])]}), cfg()),
        # long sleepers, one at a time: cancelled by the test
        "cancelme": (plan("cancelme", {"max_parallel": 1, "elements": [
            _element(i, [{"name": "nap", "command": ["sleep", "300"]}]) for i in range(3)]}), cfg()),
    }
    results = {name: submit_plan(path, config=c, backend="slurm") for name, (path, c) in plans.items()}
    yield {"root": root, "scratch": scratch, "probe": probe, "fixed": fixed, "environ": environ,
           "cfg": cfg, "results": results, "cluster": slurm_cluster}
    # whatever a failed test left queued (sleepers, backstop jobs) must not outlive the session
    ids = [j.job_id for name in plans for j in find_record(scratch, name)[1].jobs]
    get_backend("slurm").cancel(ids)


def _report(run_: dict[str, Any], name: str) -> Report:
    paths, record = find_record(run_["scratch"], name)
    return collect(record, load_manifest(paths.manifest), get_backend("slurm"))


def _wait(run_: dict[str, Any], name: str, until: Any = None, timeout: float = WAIT_S) -> Report:
    """Poll status (one scheduler query each) until `until(report)` or every element settled."""
    end = time.monotonic() + timeout
    report = _report(run_, name)
    while time.monotonic() < end:
        report = _report(run_, name)
        if (until(report) if until else report.all_settled()):
            return report
        time.sleep(1)
    pytest.fail(f"{name}: not done after {timeout}s: {report.summary_line()}")


def _state(run_: dict[str, Any], wid: str) -> dict[str, Any]:
    return read_json(run_["scratch"] / wid / "state.json") or {}


def _seen(run_: dict[str, Any], wid: str, step: str = "probe") -> dict[str, Any]:
    return json.loads((run_["scratch"] / wid / "calculations" / step / "seen.json").read_text())


def _use_scratch(monkeypatch: pytest.MonkeyPatch, run_: dict[str, Any]) -> None:
    for key, value in run_["environ"].items():
        monkeypatch.setenv(key, value)


# ---------------------------------------------------------------------------- env, throttle, resubmit
def test_element_env_from_inside_the_jobs(cluster_run: dict[str, Any]) -> None:
    report = _wait(cluster_run, "envp")
    [job] = cluster_run["results"]["envp"].job_ids
    scratch = cluster_run["scratch"]
    for i in range(4):
        env = _seen(cluster_run, f"envp-e{i}")["env"]
        assert env["MACE_WORKFLOW_ID"] == f"envp-e{i}"
        assert env["MACE_ISOLATION_MODE"] == "isolated"
        assert env["MACE_CONTEXT_DIR"] == str(scratch / f"envp-e{i}")
        assert env["MACE_MANIFEST"] == str(scratch / ".submissions" / "envp" / "manifest.json")
        assert env["PLAN_VAR"] == "plan value, with comma" and env["ELEM_VAR"] == f"elem {i}"
        assert env["SLURM_ARRAY_JOB_ID"] == job and env["SLURM_ARRAY_TASK_ID"] == str(i)
        assert env["MACE_INDEX_OFFSET"] == "0"
        # exported through sbatch's environment, not an --export list: no login shell per task
        assert "SLURM_GET_USER_ENV" not in env
        state = _state(cluster_run, f"envp-e{i}")
        assert state["scheduler"]["SLURM_ARRAY_JOB_ID"] == job and state["attempts"] == 1
    assert [r["state"] for r in report.rows] == ["MERGED", "MERGED", "MERGED", "KEPT"]


def test_throttle_never_more_than_max_parallel(cluster_run: dict[str, Any]) -> None:
    _wait(cluster_run, "envp")
    spans = [(_seen(cluster_run, f"envp-e{i}")["start"], _seen(cluster_run, f"envp-e{i}")["end"]) for i in range(4)]
    peak = peak_overlap(spans)
    assert peak == 2, f"max_parallel=2 but {peak} probes overlapped: {spans}"


def test_failed_element_resubmitted_alone(cluster_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    report = _wait(cluster_run, "envp")
    assert [r["state"] for r in report.rows] == ["MERGED", "MERGED", "MERGED", "KEPT"]
    assert report.rows[3]["run_state"] == "FAILED" and "exit code 3" in report.rows[3]["message"]
    cluster_run["fixed"].write_text("")
    _use_scratch(monkeypatch, cluster_run)
    assert run(["resubmit", "envp", "--failed"]) == 0
    out = capsys.readouterr().out
    [new_job] = out.splitlines()[0].split()
    assert "resubmitted 1 element(s) of envp (3)" in out
    record = read_json(cluster_run["scratch"] / ".submissions" / "envp" / "record.json")
    resub = [j for j in record["jobs"] if j["kind"] == "resubmit"]
    assert [(j["job_id"], j["indices"], j["array"]) for j in resub] == [(new_job, [3], "3")]
    assert any(j["kind"] == "backstop" and j["depends_on"] == [new_job] for j in record["jobs"])
    report = _wait(cluster_run, "envp")
    assert [r["state"] for r in report.rows] == ["MERGED"] * 4
    assert report.rows[3]["job_id"] == new_job
    state = _state(cluster_run, "envp-e3")
    assert state["attempts"] == 2 and state["scheduler"]["SLURM_ARRAY_JOB_ID"] == new_job
    assert state["scheduler"]["SLURM_ARRAY_TASK_ID"] == "3"  # the sparse array kept the index
    assert [s["status"] for s in state["steps"]] == ["skipped", "completed"]
    assert [_state(cluster_run, f"envp-e{i}")["attempts"] for i in range(3)] == [1, 1, 1]


# ---------------------------------------------------------------------------- chunks
def test_chunks_over_lowered_max_array_size(cluster_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                            capsys) -> None:
    result = cluster_run["results"]["chunked"]
    assert [(r.index_offset, r.task_ids()) for r in result.requests] == [(0, [0, 1]), (2, [0, 1]), (4, [0])]
    report = _wait(cluster_run, "chunked")
    assert [r["state"] for r in report.rows] == ["MERGED"] * 5
    assert report.scheduler_queries == 1
    for i in range(5):
        env = _seen(cluster_run, f"chunked-e{i}")["env"]
        offset = 4 if i == 4 else (i // 2) * 2
        assert env["MACE_WORKFLOW_ID"] == f"chunked-e{i}"
        assert env["SLURM_ARRAY_TASK_ID"] == str(i - offset) and env["MACE_INDEX_OFFSET"] == str(offset)
        assert env["SLURM_ARRAY_JOB_ID"] == result.job_ids[[0, 2, 4].index(offset)]
    _use_scratch(monkeypatch, cluster_run)
    assert run(["status", f"{result.job_ids[2]}_0"]) == 0  # an element's job id finds the plan
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("chunked: 5 elements: 5 MERGED (backend slurm, jobs ")


# ---------------------------------------------------------------------------- time limit, requeue
def test_time_limit_signal_records_timeout_and_runs_epilogue(cluster_run: dict[str, Any]) -> None:
    result = cluster_run["results"]["timeout"]
    script = result.rendered[0][0]
    assert "#SBATCH --signal=B:USR2@40" in script and "#SBATCH --time=2" in script
    assert "\nexec " in script  # the runner is the batch shell: it receives B:USR2
    report = _wait(cluster_run, "timeout")
    state = _state(cluster_run, "timeout-e0")
    assert state["run_state"] == "TIMEOUT" and state["state"] == "KEPT"
    assert state["epilogue"]["policy"] == "keep"
    # stopped by the signal, not killed at the 120 s limit: slurmctld checks warning signals every
    # 30 s, so USR2 comes signal_margin (40 s) to 70 s before the limit, i.e. 50-80 s after the start
    assert state["finished_at"] - state["started_at"] < 110
    assert (cluster_run["scratch"] / "timeout-e0" / "logs" / "epilogue.log").is_file()
    assert report.rows[0]["state"] == "KEPT" and report.rows[0]["run_state"] == "TIMEOUT"


def test_requeue_resumes_in_the_same_context(cluster_run: dict[str, Any]) -> None:
    [job] = cluster_run["results"]["requeue"].job_ids
    assert "#SBATCH --requeue" in cluster_run["results"]["requeue"].rendered[0][0]

    def held(_: Report) -> bool:  # requeued by the element itself, now waiting in the queue
        proc = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%T|%r"], capture_output=True, text=True)
        return proc.stdout.strip() == "PENDING|BeginTime"

    _wait(cluster_run, "requeue", until=held, timeout=150)
    state = _state(cluster_run, "requeue-e0")
    assert state["state"] == "PENDING" and state["requeued"] is True and state["attempts"] == 1
    # Slurm holds a requeued job (BeginTime) until its old credential has expired: about a minute on
    # the test cluster (AuthInfo=cred_expire=10 in .ci/slurm/start.sh; two minutes by default).
    # Forcing StartTime=now instead races that expiry: the restart is then killed with "Job
    # credential revoked" (seen in CI), so the test waits.
    report = _wait(cluster_run, "requeue")
    state = _state(cluster_run, "requeue-e0")
    assert state["attempts"] == 2 and state["state"] == "MERGED" and state["run_state"] == "COMPLETED"
    assert [s["status"] for s in state["steps"]] == ["skipped", "completed"]
    ctx = cluster_run["scratch"] / "requeue-e0"
    assert (ctx / "one_runs").read_text() == "run\n"  # the completed step did not run again
    assert (ctx / "calculations" / "two" / "done.txt").read_text() == "ok\n"
    assert [h[0] for h in state["history"]][:3] == ["RUNNING", "PENDING", "RUNNING"]
    assert report.rows[0]["state"] == "MERGED"


# ---------------------------------------------------------------------------- cancel, already submitted
def test_cancel_and_no_double_submission(cluster_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                         capsys) -> None:
    _wait(cluster_run, "cancelme", until=lambda r: r.rows[0]["file_state"] == "RUNNING", timeout=120)
    _use_scratch(monkeypatch, cluster_run)
    rc = run(["submit", str(cluster_run["root"] / "cancelme.json"), "--site", "ci-slurm", "--backend", "slurm"])
    err = capsys.readouterr().err
    assert rc == 2 and "already submitted" in err and "mace cancel cancelme" in err
    assert run(["cancel", "cancelme"]) == 0
    assert "2 queued element(s) marked CANCELLED, 1 running element(s) signalled" in capsys.readouterr().out
    report = _wait(cluster_run, "cancelme", timeout=90)
    assert [r["run_state"] for r in report.rows] == ["CANCELLED"] * 3
    first = _state(cluster_run, "cancelme-e0")
    assert first["attempts"] == 1 and "epilogue" in first  # its runner got the signal, recorded, ran the epilogue
    assert _state(cluster_run, "cancelme-e1").get("attempts", 0) == 0  # never started


def test_bad_partition_exit_2_nothing_left(cluster_run: dict[str, Any], tmp_path: Path, mace_env: dict[str, Path],
                                           capsys) -> None:
    plan = tmp_path / "badpart.json"
    plan.write_text(json.dumps({"name": "badpart", "resources": {"partition": "nosuchpartition"},
                                "elements": [{"id": f"e{i}", "steps": [{"name": "s", "command": ["true"]}]}
                                             for i in range(3)]}))
    rc = run(["submit", str(plan), "--backend", "slurm"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == ("mace: error: sbatch refused badpart: sbatch: error: invalid partition specified: "
                           "nosuchpartition")
    scratch = mace_env["scratch_root"]
    assert [p.name for p in scratch.iterdir() if not p.name.startswith(".")] == []
    assert not (scratch / ".submissions" / "badpart").exists()


# ---------------------------------------------------------------------------- a user's own sbatch script
def test_user_array_script_with_real_sbatch(cluster_run: dict[str, Any], tmp_path: Path, mace_env: dict[str, Path],
                                            capsys) -> None:
    plan = tmp_path / "own.json"
    plan.write_text(json.dumps({"name": "own", "isolation_mode": "isolated", "env": {"PLAN_VAR": "own"},
                                "elements": [_element(i, _steps_probe(cluster_run["probe"])) for i in range(3)]}))
    assert run(["submit", str(plan), "--no-submit", "--backend", "slurm"]) == 0
    capsys.readouterr()
    scratch = mace_env["scratch_root"]
    manifest = scratch / ".submissions" / "own" / "manifest.json"
    os.chmod(tmp_path, 0o755)
    proc = subprocess.run(
        ["sbatch", "--parsable", "--array=0,2", f"--partition={cluster_run['cluster'].partition}",
         str(REPO / "jobscripts" / "slurm-array.sh")],
        cwd=tmp_path, capture_output=True, text=True, check=True, env={**os.environ, "MACE_MANIFEST": str(manifest)},
    )
    job = proc.stdout.strip().split(";")[0]
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end and not all(
        _state({"scratch": scratch}, f"own-e{i}").get("state") == "MERGED" for i in (0, 2)
    ):
        time.sleep(1)
    for i in (0, 2):
        env = json.loads((scratch / f"own-e{i}" / "calculations" / "probe" / "seen.json").read_text())["env"]
        assert env["MACE_WORKFLOW_ID"] == f"own-e{i}" and env["PLAN_VAR"] == "own"
        assert env["MACE_CONTEXT_DIR"] == str(scratch / f"own-e{i}")
        assert env["SLURM_ARRAY_JOB_ID"] == job and env["SLURM_ARRAY_TASK_ID"] == str(i)
        assert _state({"scratch": scratch}, f"own-e{i}")["state"] == "MERGED"
    assert not (scratch / "own-e1" / "state.json").exists()  # not in --array=0,2
    assert sorted(p.name for p in tmp_path.glob(f"mace-array_{job}_*.out")) == [
        f"mace-array_{job}_0.out", f"mace-array_{job}_2.out"]


# ---------------------------------------------------------------------------- the example, end to end
def test_example_plan_end_to_end(cluster_run: dict[str, Any], tmp_path: Path, mace_env: dict[str, Path],
                                 capsys) -> None:
    pytest.importorskip("ase")
    example = tmp_path / "al_eos"
    shutil.copytree(REPO / "examples" / "al_eos", example, ignore=shutil.ignore_patterns("results", "__pycache__"))
    os.chmod(tmp_path, 0o755)
    assert run(["submit", str(example / "plan.json"), "--backend", "slurm", "--site", "ci-slurm"]) == 0
    capsys.readouterr()
    assert run(["status", "al_eos", "--watch", "--interval", "1"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("al_eos: 8 elements: 8 MERGED")
    from mace_hpc.status.results import results_table

    headers, rows = results_table(example / "results" / "al_eos.db", [f"Al_fcc_a{a}" for a in
                                                                      ("3.85", "3.9", "3.95", "4.0", "4.05", "4.1", "4.15", "4.2")])
    assert len(rows) == 8 and "energy_eV" in headers
    energies = [r[headers.index("energy_eV")] for r in rows]
    assert min(energies) == energies[3]  # the EMT minimum is near a0 = 4.0 Å
