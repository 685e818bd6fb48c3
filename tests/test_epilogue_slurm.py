"""The epilogue on the real local SLURM cluster: arrays merged exactly once, the TaskEpilog and site
Epilog scripts, time limits, and the backstop job merging what element epilogues could not.

Needs `.ci/slurm/start.sh` (skipped visibly without it, a failure in CI). The TaskEpilog test also
needs the cluster started with LOCAL_SLURM_TASK_EPILOG=$PWD/jobscripts/slurm-task-epilog.sh, which
`.ci/run` does. Scratch lives under pytest's tmp dir in /tmp, reachable by the jobs on this node.
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
from epilogue_helpers import state_of

from mace_hpc import records as st

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent
TASK_EPILOG = REPO / "jobscripts" / "slurm-task-epilog.sh"
SITE_EPILOG = REPO / "jobscripts" / "slurm-epilog.sh"
ACTIVE = "PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED,REQUEUED,RESIZING,SIGNALING,STAGE_OUT"
DONE = (st.MERGED, st.ARCHIVED, st.KEPT, st.PENDING_MERGE, "QUARANTINED")


def _plan(tmp_path: Path, name: str, n: int, body: str, **extra) -> Path:
    plan = {
        "name": name, "isolation_mode": "isolated", "shared_database": str(tmp_path / "shared" / "materials.db"),
        "max_parallel": 8, "resources": {"time": 5, "signal_margin": 30},
        "elements": [
            {"id": f"e{i}", "materials": [{"material_id": f"{name}-m{i}", "formula": "Al", "space_group": 225}],
             "steps": [{"name": "s", "calc_type": "SP",
                        "command": [sys.executable, "-c", body.replace("IDX", str(i))]}]}
            for i in range(n)
        ],
        **extra,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(plan))
    return path


WRITE = "import json; json.dump(dict(energy=-IDX, volume=16.5), open('results.json', 'w'))"


def _active(job_ids: list[str]) -> bool:
    proc = subprocess.run(["squeue", "-h", "-r", "-t", ACTIVE, "-j", ",".join(job_ids), "-o", "%i"],
                          capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _wait(condition, what: str, timeout: float = 240.0, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _states(root: Path, name: str, n: int) -> list[str]:
    return [st.read_state(root / f"{name}-e{i}").state for i in range(n)]


def _rows(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("materials", "calculations", "properties", "files", "merge_ledger")}
    finally:
        conn.close()


def _per_material(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT material_id, count(*) FROM calculations GROUP BY material_id"))
    finally:
        conn.close()


def _submit(plan: Path, **kw):
    from mace_hpc.submission.submit import submit_plan

    return submit_plan(plan, site="ci-slurm", backend="slurm", **kw)


def _task_epilog_configured() -> bool:
    proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    for line in proc.stdout.splitlines():
        if line.startswith("TaskEpilog") and "=" in line:
            value = line.split("=", 1)[1].strip()
            return value not in ("(null)", "") and Path(value).resolve() == TASK_EPILOG.resolve()
    return False


def _own_array(sub_dir: Path, manifest: Path, n: int, extra: str = "") -> str:
    """sbatch our own array (as a user's script would) running the element WITHOUT its epilogue."""
    script = sub_dir / "logs" / "own.sbatch"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        "#!/bin/bash\n#SBATCH --time=5\n#SBATCH --partition=debug\n"
        f"#SBATCH --output={sub_dir}/logs/own_%A_%a.out\n{extra}"
        f'exec {sys.executable} -m mace_hpc.element "$MACE_MANIFEST" --no-epilogue\n'
    )
    proc = subprocess.run(
        ["sbatch", "--parsable", f"--array=0-{n - 1}", str(script)],
        capture_output=True, text=True, timeout=30, cwd=sub_dir, env={**os.environ, "MACE_MANIFEST": str(manifest)},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


# ---------------------------------------------------------------------------- 20 elements, merge
def test_twenty_element_array_is_merged_exactly_once(slurm_cluster, tmp_path, mace_env) -> None:
    name = "epi20"
    result = _submit(_plan(tmp_path, name, 20, WRITE))
    jobs = [*result.job_ids, *([result.backstop_job_id] if result.backstop_job_id else [])]
    assert result.backstop_job_id, "the slurm backend queues a backstop merge job"
    root = mace_env["scratch_root"]
    _wait(lambda: not _active(jobs), "the array and its backstop to finish")
    assert _states(root, name, 20) == [st.MERGED] * 20
    db = tmp_path / "shared" / "materials.db"
    assert _rows(db) == {"materials": 20, "calculations": 20, "properties": 40, "files": 60, "merge_ledger": 20}
    assert _per_material(db) == {f"{name}-m{i}": 1 for i in range(20)}
    from mace_hpc.cli.main import main

    assert main(["merge", name]) == 0  # nothing left, nothing duplicated
    assert _rows(db)["materials"] == 20 and _rows(db)["calculations"] == 20


# ---------------------------------------------------------------------------- the TaskEpilog
def test_task_epilog_script_merges_elements_that_ran_without_an_epilogue(slurm_cluster, tmp_path, mace_env) -> None:
    _require_task_epilog()
    name = "epitask"
    result = _submit(_plan(tmp_path, name, 4, WRITE), prepare_only=True)
    sub = result.submission
    job = _own_array(sub.directory, sub.manifest_path, 4)
    root = mace_env["scratch_root"]
    _wait(lambda: not _active([job]) and all(s in DONE for s in _states(root, name, 4)), "the TaskEpilog")
    assert _states(root, name, 4) == [st.MERGED] * 4
    for i in range(4):
        state = state_of(root / f"{name}-e{i}")
        assert state["epilogue"]["by"] == "mace epilogue"  # the hook did it: the runner had --no-epilogue
        assert state["scheduler"]["SLURM_ARRAY_JOB_ID"] == job
    assert _rows(tmp_path / "shared" / "materials.db")["materials"] == 4


def _require_task_epilog() -> None:
    if not _task_epilog_configured():
        msg = f"TaskEpilog is not {TASK_EPILOG}: start the cluster with LOCAL_SLURM_TASK_EPILOG={TASK_EPILOG}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


def test_task_epilog_starts_no_python_after_a_runner_that_finalized(slurm_cluster, tmp_path, mace_env,
                                                                    monkeypatch) -> None:
    """A runner that ran its own epilogue leaves `<submission>/ended/<job id>.<restarts>`; the
    TaskEpilog then exits without starting mace-epilogue. A runner killed hard leaves none, and the
    TaskEpilog finalizes its element as before."""
    _require_task_epilog()
    calls = tmp_path / "epilogue-calls.txt"
    recorder = tmp_path / "record-epilogue.sh"
    recorder.write_text(f'#!/bin/bash\necho "$SLURM_ARRAY_TASK_ID" >> {calls}\n'
                        f'exec {sys.executable} -m mace_hpc.cli.main epilogue "$@"\n')
    recorder.chmod(0o755)
    monkeypatch.setenv("MACE_EPILOGUE", str(recorder))  # the TaskEpilog runs $MACE_EPILOGUE (--export=ALL)
    name = "epimark"
    body = ("import json, os; json.dump(dict(energy=-IDX), open('results.json', 'w')); "
            "os.kill(os.getppid(), 9) if IDX == 2 else None")  # element 2's runner is killed hard
    result = _submit(_plan(tmp_path, name, 4, body))
    root = mace_env["scratch_root"]
    jobs = [*result.job_ids, *([result.backstop_job_id] if result.backstop_job_id else [])]
    _wait(lambda: not _active(result.job_ids) and all(s in DONE for s in _states(root, name, 4)), "the array")
    markers = sorted(p.name for p in (result.submission.directory / "ended").iterdir())
    assert len(markers) == 3 and all(m.endswith(".0") for m in markers), markers
    assert calls.read_text().split() == ["2"]  # mace-epilogue ran for the killed runner only
    states = _states(root, name, 4)
    assert [states[i] for i in (0, 1, 3)] == [st.MERGED] * 3 and states[2] != st.RUNNING
    assert state_of(root / f"{name}-e2")["epilogue"]["by"] == "mace epilogue"
    _wait(lambda: not _active(jobs), "the backstop")


def test_task_epilog_script_is_a_cheap_no_op_for_other_jobs(tmp_path) -> None:
    env = {"PATH": "/nonexistent", "SLURM_JOB_ID": "1"}  # no mace-epilogue reachable, no MACE_*
    proc = subprocess.run(["/bin/bash", str(TASK_EPILOG)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    env["MACE_MANIFEST"] = str(tmp_path / "missing.json")  # a broken mace job: still exit 0
    proc = subprocess.run(["/bin/bash", str(TASK_EPILOG)], env={**env, "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0


# ---------------------------------------------------------------------------- site Epilog (root)
def test_site_epilog_finds_the_element_from_the_job_id_alone(slurm_cluster, tmp_path, mace_env) -> None:
    name = "episite"
    result = _submit(_plan(tmp_path, name, 2, WRITE), prepare_only=True)
    sub = result.submission
    job = _own_array(sub.directory, sub.manifest_path, 2)
    record_path = sub.directory / "record.json"  # what mace-submit records for its own arrays
    record = json.loads(record_path.read_text()) if record_path.exists() else {"plan": name, "jobs": []}
    record["jobs"].append({"job_id": job, "offset": 0, "kind": "array", "indices": [0, 1]})
    record_path.write_text(json.dumps(record))
    root = mace_env["scratch_root"]
    _wait(lambda: not _active([job]) and all(s != st.RUNNING and s != st.PENDING for s in _states(root, name, 2)),
          "the array")
    ids = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", job, "-o", "%A %K"],
                         capture_output=True, text=True, timeout=30).stdout.split("\n")
    task_jobs = {int(k): a for a, k in (line.split() for line in ids if line.strip())}
    clean = {"PATH": os.environ["PATH"], "MACE_EPILOGUE": str(Path(sys.executable).with_name("mace-epilogue"))}
    for index, job_id in sorted(task_jobs.items()):
        if _states(root, name, 2)[index] == st.MERGED:
            continue  # the TaskEpilog (when configured) got there first
        env = {**clean, "SLURM_JOB_ID": job_id, "SLURM_JOB_UID": "0", "SLURM_JOB_USER": "root"}
        proc = subprocess.run(["/bin/bash", str(SITE_EPILOG)], env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0
        assert state_of(root / f"{name}-e{index}")["epilogue"]["by"] == "mace epilogue"
    assert _states(root, name, 2) == [st.MERGED] * 2
    # a job that is not ours: one scontrol call, exit 0, nothing else
    other = subprocess.run(["sbatch", "--parsable", "--wrap", "true", "-o", "/dev/null"],
                           capture_output=True, text=True, timeout=30).stdout.strip()
    proc = subprocess.run(["/bin/bash", str(SITE_EPILOG)], env={**clean, "SLURM_JOB_ID": other}, timeout=60)
    assert proc.returncode == 0


# ---------------------------------------------------------------------------- time limit
def test_element_killed_at_its_time_limit_is_archived(slurm_cluster, tmp_path, mace_env) -> None:
    name = "epitime"
    body = "import json,time; json.dump(dict(x=IDX), open('results.json','w')); time.sleep(600)"
    plan = _plan(tmp_path, name, 1, body, on_failure="archive")
    data = json.loads(plan.read_text())
    # SIGUSR2 30 s before a 2-minute limit (a 1-minute one lets slurmctld send it before launch)
    data["resources"] = {"time": 2, "signal_margin": 30}
    plan.write_text(json.dumps(data))
    result = _submit(plan)
    root = mace_env["scratch_root"]
    _wait(lambda: not _active(result.job_ids + [result.backstop_job_id]), "the time limit", timeout=300)
    state = state_of(root / f"{name}-e0")
    assert state["run_state"] == st.TIMEOUT and state["state"] == st.ARCHIVED
    assert (mace_env["archive_dir"] / f"{name}-e0.tar.gz").is_file()


def test_element_killed_hard_is_archived_by_a_hook_or_the_backstop(slurm_cluster, tmp_path, mace_env) -> None:
    name = "epikill"
    body = "import time; print('started', flush=True); time.sleep(600)"
    result = _submit(_plan(tmp_path, name, 1, body, on_failure="archive"))
    root = mace_env["scratch_root"]
    out = root / f"{name}-e0" / "calculations" / "s" / "stdout.txt"
    _wait(lambda: out.exists() and out.read_text().startswith("started"), "the element to start")
    # SIGKILL the element runner (the batch shell itself, via exec), as the OOM killer or a hard
    # time-limit kill would: it gets no chance to record anything or run its epilogue
    import psutil

    runner = psutil.Process(int(state_of(root / f"{name}-e0")["pid"]))
    children = runner.children(recursive=True)
    runner.kill()
    for child in children:
        child.kill()
    _wait(lambda: not _active(result.job_ids + [result.backstop_job_id]), "the backstop", timeout=300)
    state = state_of(root / f"{name}-e0")
    assert state["state"] == st.ARCHIVED and state["lost"] is True
    assert state["epilogue"]["by"] in ("backstop", "mace epilogue")
    assert (mace_env["archive_dir"] / f"{name}-e0.tar.gz").is_file()


# ---------------------------------------------------------------------------- backstop
def test_backstop_merges_what_the_element_epilogues_could_not(slurm_cluster, tmp_path, mace_env, monkeypatch) -> None:
    from mace_hpc.database.merge import lock_path
    from mace_hpc.util.nfslock import NfsLock

    name = "epiback"
    monkeypatch.setenv("MACE_EPILOGUE_DEADLINE", "3")  # exported to the jobs (--export=ALL)
    db = tmp_path / "shared" / "materials.db"
    db.parent.mkdir(parents=True)
    root = mace_env["scratch_root"]
    with NfsLock(lock_path(db), lifetime=900):  # the shared DB is "busy" for every element epilogue
        result = _submit(_plan(tmp_path, name, 4, WRITE))
        assert result.backstop_job_id
        _wait(lambda: not _active(result.job_ids) and _states(root, name, 4) == [st.PENDING_MERGE] * 4,
              "every element epilogue to give up")
        for i in range(4):
            log = (root / f"{name}-e{i}" / "logs" / "epilogue.log").read_text()
            assert "could not acquire lock" in log
        assert not db.exists() or _rows(db)["materials"] == 0
    _wait(lambda: not _active([result.backstop_job_id]), "the backstop job")
    assert _states(root, name, 4) == [st.MERGED] * 4
    assert {state_of(root / f"{name}-e{i}")["epilogue"]["by"] for i in range(4)} == {"backstop"}
    assert _rows(db) == {"materials": 4, "calculations": 4, "properties": 8, "files": 12, "merge_ledger": 4}
