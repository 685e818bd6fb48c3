"""Scheduler hooks without a job environment: finding the element from a job id, dropping to the
job's user, and the PBS epilogue against the stateful fake qsub/qstat in tests/fakepbs."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest
from epilogue_helpers import make_submission, shared_rows, state_of

from mace_hpc import records as st
from mace_hpc.cli.main import main
from mace_hpc.epilogue import sitehook
from mace_hpc.records.states import FINAL_RUN_STATES as FINAL_STATES
from mace_hpc.schedulers import pbs
from mace_hpc.schedulers.base import ArrayRequest

REPO = Path(__file__).resolve().parent.parent
PBS_EPILOGUE = REPO / "jobscripts" / "pbs-epilogue.sh"
FAKE = REPO / "tests" / "fakepbs"

SCONTROL = (
    "JobId=318 ArrayJobId=317 ArrayTaskId=1 JobName=epi20 UserId=root(0) GroupId=root(0) MCS_label=N/A "
    "Priority=1 Nice=0 Account=(null) QOS=(null) JobState=COMPLETED Reason=None Dependency=(null) "
    "Command=/tmp/s/.submissions/epi20/logs/epi20.sbatch WorkDir=/tmp/s/.submissions/epi20/logs "
    "StdErr=/tmp/s/.submissions/epi20/logs/epi20_317_1.err StdOut=/tmp/s/.submissions/epi20/logs/epi20_317_1.out"
)


def test_parse_scontrol_one_line_output() -> None:
    info = sitehook.parse_scontrol(SCONTROL)
    assert info["JobId"] == "318" and info["ArrayJobId"] == "317" and info["ArrayTaskId"] == "1"
    assert info["Command"] == "/tmp/s/.submissions/epi20/logs/epi20.sbatch"
    assert info["UserId"] == "root(0)" and info["Account"] == "(null)"


def test_locate_slurm_maps_task_ids_through_the_recorded_offset(mace_env) -> None:
    root = mace_env["scratch_root"]
    jobs = [{"job_id": "500", "offset": 0, "kind": "array"}, {"job_id": "501", "offset": 3, "kind": "array"},
            {"job_id": "502", "kind": "backstop"}]
    make_submission(root, "loc", 5, shared_database=mace_env["shared_database"],
                    archive_dir=mace_env["archive_dir"], backend="slurm", jobs=jobs)
    script = str(root / ".submissions" / "loc" / "logs" / "loc@3.sbatch")
    found = sitehook.locate_slurm("9", {"ArrayJobId": "501", "ArrayTaskId": "1", "Command": script})
    assert found is not None and found.index == 4 and found.context_dir == root / "loc-e4"
    # the batch script moved or unknown: the records under the configured scratch root still know
    found = sitehook.locate_slurm("9", {"ArrayJobId": "500", "ArrayTaskId": "2", "Command": "/elsewhere/x.sh"})
    assert found is not None and found.index == 2
    assert sitehook.locate_slurm("9", {"JobId": "502", "Command": script}) is None  # the backstop: not an element
    assert sitehook.locate_slurm("9", {"ArrayJobId": "999", "ArrayTaskId": "0", "Command": script}) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_run_as_user_drops_to_the_user_with_a_clean_environment(monkeypatch) -> None:
    monkeypatch.setenv("MACE_SECRET", "root's")
    nobody = pwd.getpwnam("nobody")
    check = f'test "$(id -u)" = {nobody.pw_uid} && test "$(id -g)" = {nobody.pw_gid} && test -z "$MACE_SECRET"'
    assert sitehook.run_as_user("nobody", ["/bin/sh", "-c", check], timeout=30) == 0
    assert sitehook.run_as_user(str(nobody.pw_uid), ["/bin/sh", "-c", check], timeout=30) == 0
    assert sitehook.run_as_user("no-such-user-xyz", ["/bin/true"], timeout=30) == 0  # unknown user: no-op


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_root_epilog_mode_runs_the_lookup_as_the_job_user(monkeypatch) -> None:
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setenv("SLURM_JOB_ID", "123456789")
    monkeypatch.setenv("SLURM_JOB_UID", str(nobody.pw_uid))
    calls = []
    monkeypatch.setattr(sitehook, "run_as_user", lambda user, argv, timeout: calls.append((user, argv)) or 0)
    assert main(["epilogue"]) == 0
    assert calls and calls[0][0] == str(nobody.pw_uid)
    assert calls[0][1][-3:] == ["--slurm-job", "123456789", "--ended"]


# ---------------------------------------------------------------------------- PBS (fake qsub/qstat)
@pytest.fixture(params=pbs.FLAVORS)
def fakepbs(request, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKEPBS_STATE", str(tmp_path / "fakepbs-state"))
    monkeypatch.setenv("FAKEPBS_FLAVOR", request.param)
    pbs.dialect._detect.cache_clear()
    yield request.param
    pbs.dialect._detect.cache_clear()


def _wait(fn, what: str, limit: float = 120.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if value := fn():
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def test_pbs_epilogue_finds_subjobs_through_qstat_and_merges(fakepbs, mace_env, tmp_path) -> None:
    root = mace_env["scratch_root"]
    manifest = make_submission(root, "pbsp", 3, shared_database=mace_env["shared_database"],
                               archive_dir=mace_env["archive_dir"], backend="pbs")
    manifest_path = root / ".submissions" / "pbsp" / "manifest.json"
    backend = pbs.PbsBackend(flavor=fakepbs)
    req = ArrayRequest(name="pbsp", indices=[0, 1, 2], max_parallel=3, command=[sys.executable, "-c", "pass"],
                       env={"MACE_MANIFEST": str(manifest_path)}, work_dir=tmp_path / "logs",
                       scheduler={"time": 10, "pbs_flavor": fakepbs})
    job_id = backend.submit(req)
    _wait(lambda: (s := backend.query([job_id])) and len(s) == 3 and set(s.values()) <= set(FINAL_STATES), "the array")
    seq = pbs.parse_job_id(job_id)
    for i in range(3):  # the elements "ran" without an epilogue: their contexts say COMPLETED
        assert state_of(Path(manifest.elements[i].context_dir))["state"] == st.COMPLETED
    assert main(["epilogue", "--pbs-job", seq.subjob(1), "-q"]) == 0
    assert state_of(root / "pbsp-e1")["state"] == st.MERGED
    # the array parent and non-array jobs are not elements
    assert main(["epilogue", "--pbs-job", job_id]) == 0
    assert [state_of(root / f"pbsp-e{i}")["state"] for i in (0, 2)] == [st.COMPLETED] * 2
    # without qstat (job long gone): the records under the scratch root find it too
    record = json.loads((root / ".submissions" / "pbsp" / "record.json").read_text())
    record["jobs"] = [{"job_id": job_id, "offset": 0, "kind": "array"}]
    (root / ".submissions" / "pbsp" / "record.json").write_text(json.dumps(record))
    found = sitehook._search_records(seq.seq, 2)
    assert found is not None and found.index == 2
    assert shared_rows(mace_env["shared_database"])["materials"] == 1


def test_pbs_epilogue_script_filters_and_always_exits_zero(tmp_path) -> None:
    marker = tmp_path / "called"
    fake = tmp_path / "fake-mace-epilogue"
    fake.write_text(f'#!/bin/sh\necho "$@" > {marker}\nexit 7\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "MACE_EPILOGUE": str(fake)}
    proc = subprocess.run(["/bin/bash", str(PBS_EPILOGUE), "123.server", "alice"], env=env, timeout=30)
    assert proc.returncode == 0 and not marker.exists()  # not an array subjob: nothing started
    proc = subprocess.run(["/bin/bash", str(PBS_EPILOGUE), "123[4].server", "alice", "users"], env=env, timeout=30)
    assert proc.returncode == 0  # even though mace-epilogue "failed"
    args = marker.read_text().split()
    expected = ["--pbs-job", "123[4].server", "--user", "alice"] if os.geteuid() == 0 else ["--pbs-job", "123[4].server", "--ended"]
    assert args[: len(expected)] == expected
    proc = subprocess.run(["/bin/bash", str(PBS_EPILOGUE)], env=env, timeout=30)
    assert proc.returncode == 0
