"""`mace status`, `mace cancel`, `mace resubmit`: state files reconciled with one scheduler query.

The scheduler is `FakeBackend` (or the real SlurmBackend with its subprocess calls replaced), so
every reconciliation rule is exercised deterministically; tests/test_submission_slurm_e2e.py does it for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from submit_fakes import (
    PY,
    FakeBackend,
    set_state_file,
    submitted_to_fake,
    write_plan,
)
from submit_fakes import cli as _cli

from mace_hpc import records as st
from mace_hpc.cli.main import run
from mace_hpc.records import ElementState, JobEntry, Manifest, SubmissionRecord
from mace_hpc.status.reconcile import collect, query_per_job, reconcile_one
from mace_hpc.util.atomic import read_json


def _ctx(scratch: Path, wid: str) -> Path:
    return scratch / wid


def _record(scratch: Path, plan: str) -> dict[str, Any]:
    return json.loads((scratch / ".submissions" / plan / "record.json").read_text())


def _manifest(scratch: Path, plan: str) -> dict[str, Any]:
    return json.loads((scratch / ".submissions" / plan / "manifest.json").read_text())


# ---------------------------------------------------------------------------- the rules
@pytest.mark.parametrize(
    ("file_state", "sched", "shown"),
    [
        ("MERGED", "RUNNING", "MERGED"),  # sacct lag: the element already finished and said so
        ("COMPLETED", "FAILED", "COMPLETED"),  # finished elements: the state file is the truth
        ("KEPT", None, "KEPT"),
        ("RUNNING", "FAILED", "FAILED"),  # died hard (OOM, node failure): the scheduler wins
        ("RUNNING", "TIMEOUT", "TIMEOUT"),  # killed at the limit without recording it
        ("PENDING", "CANCELLED", "CANCELLED"),  # cancelled while queued
        ("PENDING", "RUNNING", "RUNNING"),  # started, the runner has not written yet
        ("RUNNING", "COMPLETED", "FAILED"),  # job ended, element never recorded a result
        ("PENDING", "PENDING", "PENDING"),
        ("PENDING", None, "PENDING"),
    ],
)
def test_reconcile_rules(file_state: str, sched: str | None, shown: str) -> None:
    state, note = reconcile_one(ElementState.from_dict({"state": file_state}), sched)
    assert state == shown
    assert bool(note) == (state != file_state and state != "RUNNING")  # overrides are explained


def test_query_per_job_splits_one_answer_by_array() -> None:
    """Element 2 is in the failed first array and in its resubmission: each keeps its own state."""
    fake = FakeBackend()
    from mace_hpc.schedulers.base import ArrayRequest

    first = ArrayRequest("p", [0, 1, 2], 2, ["x"])
    chunk = ArrayRequest("p", [3, 4], 2, ["x"], index_offset=3)
    again = ArrayRequest("p", [2], 2, ["x"])
    ids = [fake.submit(first), fake.submit(chunk), fake.submit(again)]
    fake.set_state(ids[0], "COMPLETED", [0, 1])
    fake.set_state(ids[0], "FAILED", [2])
    fake.set_state(ids[1], "RUNNING")
    fake.set_state(ids[2], "PENDING")
    jobs = [
        {"job_id": ids[0], "offset": 0, "indices": [0, 1, 2]},
        {"job_id": ids[1], "offset": 3, "indices": [3, 4]},
        {"job_id": ids[2], "offset": 0, "indices": [2]},
    ]
    jobs = [JobEntry.from_dict(j) for j in jobs]
    per_job = query_per_job(fake, jobs)
    assert fake.queries == [ids]  # one call for all arrays
    assert per_job == {
        ids[0]: {0: "COMPLETED", 1: "COMPLETED", 2: "FAILED"},
        ids[1]: {3: "RUNNING", 4: "RUNNING"},
        ids[2]: {2: "PENDING"},
    }


def test_status_with_real_slurm_backend_makes_one_squeue_and_one_sacct(
    tmp_path: Path, mace_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """10 arrays (chunks of 3 plus offsets): one query, two subprocesses, indices mapped back."""
    from mace_hpc.schedulers.slurm import backend as slurm

    calls: list[list[str]] = []
    jobs = {str(500 + k): k * 3 for k in range(10)}  # job id -> offset

    def fake_run(self: Any, argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        if argv[0] == "squeue":  # the last array still running, the others gone from squeue
            rows = ["509_0|RUNNING|plan@27"]
        elif argv[0] == "sacct":
            rows = [f"{j}_{t}|COMPLETED|plan" for j in jobs for t in range(3) if j != "509"]
            rows[4] = "501_1|OUT_OF_MEMORY|plan@3"
        else:
            raise AssertionError(argv)
        return subprocess.CompletedProcess(argv, 0, "\n".join(rows) + "\n", "")

    monkeypatch.setattr(slurm.SlurmBackend, "_run", fake_run)
    manifest = {"plan": "plan", "elements": [
        {"index": i, "workflow_id": f"plan-e{i}", "context_dir": str(tmp_path / f"plan-e{i}")} for i in range(28)]}
    for i in range(27):
        (tmp_path / f"plan-e{i}").mkdir()
        if i != 4:  # element 4 died hard: its state file still says RUNNING
            st.write_state(tmp_path / f"plan-e{i}", state="MERGED", run_state="COMPLETED", attempts=1)
        else:
            st.write_state(tmp_path / f"plan-e{i}", state="RUNNING", run_state="RUNNING", attempts=1)
    record = {"plan": "plan", "backend": "slurm", "jobs": [
        {"job_id": j, "kind": "array", "offset": off, "indices": [off + t for t in range(3 if j != "509" else 1)]}
        for j, off in jobs.items()] + [{"job_id": "510", "kind": "backstop"}]}
    report = collect(SubmissionRecord.from_dict({**record, "manifest": "", "scratch_root": ""}),
                     Manifest.from_dict(manifest), slurm.SlurmBackend())
    assert [c[0] for c in calls] == ["squeue", "sacct"] and report.scheduler_queries == 1
    assert "510" not in calls[0][calls[0].index("-j") + 1]  # the backstop is not an element array
    states = {r["index"]: r["state"] for r in report.rows}
    assert states[4] == "FAILED" and "OUT_OF_MEMORY" not in report.rows[4]["message"]
    assert states[27] == "RUNNING"
    assert all(states[i] == "MERGED" for i in range(27) if i != 4)
    assert report.counts == {"MERGED": 26, "FAILED": 1, "RUNNING": 1}


# ---------------------------------------------------------------------------- status over a submission
def test_status_table_json_and_lookup_by_job_id(tmp_path: Path, mace_env: dict[str, Path],
                                                 fake_backend: FakeBackend, capsys) -> None:
    scratch = mace_env["scratch_root"]
    fake_backend.max_size = 2
    ids = submitted_to_fake(tmp_path, "sp", 3)
    assert ids == ["1001", "1002"]
    set_state_file(scratch, "sp-e0", "MERGED", run_state="COMPLETED", attempts=1)
    set_state_file(scratch, "sp-e1", "RUNNING", attempts=1)
    fake_backend.set_state("1001", "COMPLETED", [0])
    fake_backend.set_state("1001", "TIMEOUT", [1])  # killed at the limit before it could record it
    fake_backend.set_state("1002", "PENDING")
    rc, out, err = _cli(capsys, "status", "sp")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["index", "workflow_id", "state", "attempts", "job_id", "message"]
    assert lines[2].split()[:5] == ["0", "sp-e0", "MERGED", "1", "1001"]
    assert lines[3].split()[:5] == ["1", "sp-e1", "TIMEOUT", "1", "1001"]
    assert lines[4].split()[:5] == ["2", "sp-e2", "PENDING", "0", "1002"]
    assert lines[-1] == "sp: 3 elements: 1 PENDING, 1 TIMEOUT, 1 MERGED (backend slurm, jobs 1001 1002)"
    assert len(fake_backend.queries) == 1

    rc, out, _ = _cli(capsys, "status", "1002_0", "--json")  # an element's job id finds the plan
    data = json.loads(out)
    assert data["plan"] == "sp" and data["scheduler_queries"] == 1 and data["summary"]["TIMEOUT"] == 1
    assert data["elements"][1]["file_state"] == "RUNNING" and data["elements"][1]["scheduler_state"] == "TIMEOUT"

    rc, out, err = _cli(capsys, "status", "nope")
    assert rc == 2 and "no submission named or with job id 'nope'" in err and "known plans: sp" in err

    rc, out, _ = _cli(capsys, "status")
    assert out.splitlines()[0].split()[:3] == ["plan", "backend", "elements"]
    assert "sp" in out and "1001 1002" in out and "1 MERGED" in out
    assert len(fake_backend.queries) == 2  # the listing asks no scheduler


def test_watch_polls_until_everything_settles(tmp_path: Path, mace_env: dict[str, Path],
                                               fake_backend: FakeBackend, capsys) -> None:
    scratch = mace_env["scratch_root"]
    [job] = submitted_to_fake(tmp_path, "w", 2)
    fake_backend.set_state(job, "RUNNING")
    real_query = fake_backend.query

    def advancing(job_ids: list[str], offsets: Any = None) -> dict[int, str]:
        answer = real_query(job_ids, offsets)
        n = len(fake_backend.queries)
        if n == 2:  # element 0 finishes (file first, as the runner does)
            set_state_file(scratch, "w-e0", "MERGED", run_state="COMPLETED")
        if n == 3:
            set_state_file(scratch, "w-e1", "KEPT", run_state="FAILED", message="step s: exit code 3")
            fake_backend.set_state(job, "COMPLETED", [0])
            fake_backend.set_state(job, "FAILED", [1])
        return answer

    fake_backend.query = advancing  # type: ignore[method-assign]
    rc, out, err = _cli(capsys, "status", "w", "--watch", "--interval", "0.01")
    assert rc == 1  # one element failed
    assert len(fake_backend.queries) == 4  # the 3rd poll sees files final but the jobs still running
    assert "w: 0/2 done" in err and "w: 2/2 done, 1 failed" in err
    assert "element 1 (w-e1): KEPT step s: exit code 3" in out
    assert out.strip().splitlines()[-1].startswith("w: 2 elements: 1 MERGED, 1 KEPT")


# ---------------------------------------------------------------------------- cancel
def test_cancel_one_call_marks_queued_elements(tmp_path: Path, mace_env: dict[str, Path],
                                               fake_backend: FakeBackend, capsys) -> None:
    scratch = mace_env["scratch_root"]
    fake_backend.max_size = 2
    ids = submitted_to_fake(tmp_path, "c", 4)
    set_state_file(scratch, "c-e0", "MERGED", run_state="COMPLETED")
    set_state_file(scratch, "c-e1", "RUNNING")
    fake_backend.set_state(ids[0], "COMPLETED", [0])
    fake_backend.set_state(ids[0], "RUNNING", [1])
    fake_backend.set_state(ids[1], "PENDING")
    rc, out, err = _cli(capsys, "cancel", "c")
    assert rc == 0, err
    assert fake_backend.cancelled == [["1001", "1002", "1003"]]  # both arrays and the backstop, one call
    assert "2 queued element(s) marked CANCELLED, 1 running element(s) signalled" in out
    states = {i: read_json(scratch / f"c-e{i}" / "state.json")["state"] for i in range(4)}
    assert states == {0: "MERGED", 1: "RUNNING", 2: "CANCELLED", 3: "CANCELLED"}
    assert read_json(scratch / "c-e2" / "state.json")["message"].startswith("cancelled (mace cancel)")
    assert _record(scratch, "c")["cancelled_at"] > 0


# ---------------------------------------------------------------------------- resubmit
def test_resubmit_failed_only_as_a_sparse_array(tmp_path: Path, mace_env: dict[str, Path],
                                               fake_backend: FakeBackend, capsys) -> None:
    scratch = mace_env["scratch_root"]
    [job] = submitted_to_fake(tmp_path, "r", 6, max_parallel=3)
    fake_backend.set_state(job, "COMPLETED")
    for i in range(6):
        if i in (1, 4):
            set_state_file(scratch, f"r-e{i}", "KEPT", run_state="FAILED", attempts=1)
        else:
            set_state_file(scratch, f"r-e{i}", "MERGED", run_state="COMPLETED", attempts=1)
    fake_backend.set_state(job, "FAILED", [1])
    set_state_file(scratch, "r-e5", "RUNNING", attempts=1)  # died hard: the scheduler says TIMEOUT
    fake_backend.set_state(job, "TIMEOUT", [5])

    rc, out, err = _cli(capsys, "resubmit", "r", "--failed")
    assert rc == 0, err
    new = fake_backend.array_requests()[-1]
    assert new.indices == [1, 4, 5] and new.task_ids() == [1, 4, 5] and new.max_parallel == 3
    assert new.env["MACE_MANIFEST"].endswith("/r/manifest.json")
    assert "#SBATCH --array=1,4-5%3" in fake_backend.render(new)[0]
    new_id = out.splitlines()[0]
    assert new_id == "1003" and "resubmitted 3 element(s) of r (1,4,5)" in out
    for i in (1, 4, 5):
        state = read_json(scratch / f"r-e{i}" / "state.json")
        assert state["state"] == "PENDING" and state["attempts"] == 1  # the runner counts the next one
    record = _record(scratch, "r")
    resub = [j for j in record["jobs"] if j["kind"] == "resubmit"]
    assert [(j["job_id"], j["indices"], j["attempt"]) for j in resub] == [("1003", [1, 4, 5], 2)]
    assert record["jobs"][-1] == {"job_id": "1004", "kind": "backstop", "depends_on": ["1003"]}

    # the old array still says FAILED for 1; the new one is queued: status shows it queued
    fake_backend.set_state("1003", "PENDING")
    rc, out, _ = _cli(capsys, "status", "r", "--json")
    rows = {e["index"]: e for e in json.loads(out)["elements"]}
    assert rows[1]["state"] == "PENDING" and rows[1]["job_id"] == "1003"
    assert rows[0]["state"] == "MERGED" and rows[0]["job_id"] == job

    # still queued: not again
    rc, out, err = _cli(capsys, "resubmit", "r", "--elements", "4")
    assert rc == 2 and "element(s) 4 of 'r' are still queued or running" in err
    rc, out, err = _cli(capsys, "resubmit", "r", "--elements", "0,9")
    assert rc == 2 and "--elements: 9 is not an element of this plan (indices 0-5)" in err
    rc, out, err = _cli(capsys, "resubmit", "r", "--elements", "two")
    assert rc == 2 and "--elements: 'two' is not an index" in err
    assert len(fake_backend.array_requests()) == 2


def test_resubmit_nothing_failed(tmp_path: Path, mace_env: dict[str, Path], fake_backend: FakeBackend, capsys) -> None:
    [job] = submitted_to_fake(tmp_path, "fine", 2)
    for i in range(2):
        set_state_file(mace_env["scratch_root"], f"fine-e{i}", "MERGED", run_state="COMPLETED")
    fake_backend.set_state(job, "COMPLETED")
    rc, out, _ = _cli(capsys, "resubmit", "fine")
    assert rc == 0 and "nothing to resubmit" in out and len(fake_backend.submitted) == 2


def test_local_resubmit_resumes_in_the_same_context(tmp_path: Path, mace_env: dict[str, Path], capsys) -> None:
    """A failed element reruns only its failed step, in its context; attempts counted."""
    scratch = mace_env["scratch_root"]
    fix = tmp_path / "fixed"
    count = [PY, "-c", "import os; open(os.environ['MACE_CONTEXT_DIR'] + '/first_runs', 'a').write('x')"]
    check = [PY, "-c", f"import os, sys; sys.exit(0 if os.path.exists({str(fix)!r}) else 3)"]
    plan = write_plan(tmp_path, {"name": "lr", "isolation_mode": "isolated", "elements": [
        {"id": f"e{i}", "steps": [{"name": "first", "command": count},
                                  {"name": "second", "command": check if i == 1 else ["true"]}]}
        for i in range(3)]})
    rc, _, _ = _cli(capsys, "submit", str(plan))
    assert rc == 1
    assert read_json(scratch / "lr-e1" / "state.json")["run_state"] == "FAILED"
    fix.write_text("")
    rc, out, err = _cli(capsys, "resubmit", "lr", "--failed")
    assert rc == 0, err
    assert "element 1 (lr-e1): MERGED (attempt 2)" in out and "lr: 3 elements: 3 MERGED" in out
    states = {i: read_json(scratch / f"lr-e{i}" / "state.json") for i in range(3)}
    assert states[1]["run_state"] == "COMPLETED" and states[1]["attempts"] == 2
    assert [s["status"] for s in states[1]["steps"]] == ["skipped", "completed"]
    assert (scratch / "lr-e1" / "first_runs").read_text() == "x"  # not run again
    assert states[0]["attempts"] == 1 and states[2]["attempts"] == 1
    assert [j["kind"] for j in _record(scratch, "lr")["jobs"]] == ["array", "resubmit"]


def test_cancel_a_local_run(tmp_path: Path, mace_env: dict[str, Path]) -> None:
    """`mace cancel` from another terminal stops a foreground local run; all elements CANCELLED."""
    scratch = mace_env["scratch_root"]
    plan = write_plan(tmp_path, {"name": "lc", "max_parallel": 1, "elements": [
        {"id": f"e{i}", "steps": [{"name": "nap", "command": ["sleep", "60"]}]} for i in range(3)]})
    proc = subprocess.Popen([sys.executable, "-m", "mace_hpc.cli.main", "submit", str(plan)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (read_json(scratch / "lc-e0" / "state.json") or {}).get("state") == "RUNNING":
                break
            time.sleep(0.1)
        else:
            pytest.fail("element 0 never started")
        rc = run(["cancel", "lc"])
        assert rc == 0
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    assert proc.returncode == 130 and "interrupted" in err
    states = {i: read_json(scratch / f"lc-e{i}" / "state.json") for i in range(3)}
    assert states[0]["run_state"] == "CANCELLED" and states[0]["attempts"] == 1  # recorded by its runner
    assert states[1]["run_state"] == states[2]["run_state"] == "CANCELLED"
    assert "attempts" not in states[1] or states[1]["attempts"] == 0


def test_status_shows_merge_conflicts_and_pending_reasons(tmp_path, mace_env):
    """A material that already exists with other content is kept, and status says so."""
    import json as _json

    from mace_hpc.database.materials import MaterialDatabase
    from mace_hpc.records import write_state
    from mace_hpc.submission.control import status_of
    from mace_hpc.submission.submit import submit_plan

    MaterialDatabase(mace_env["shared_database"]).create_material(material_id="clash", formula="NaCl")
    plan = {"name": "conf", "isolation_mode": "isolated", "elements": [
        {"id": "a", "materials": [{"material_id": "clash", "formula": "KCl"}], "steps": [{"name": "s", "command": ["true"]}]},
        {"id": "b", "materials": [{"material_id": "fine", "formula": "Al"}], "steps": [{"name": "s", "command": ["true"]}]},
    ]}
    submit_plan(plan, backend="local")
    report = status_of("conf")
    rows = {r["workflow_id"]: r for r in report.rows}
    assert rows["conf-a"]["state"] == "MERGED" and rows["conf-a"]["conflicts"] == 1
    assert rows["conf-b"]["conflicts"] == 0
    assert "1 merge conflict(s)" in report.summary_line()
    assert MaterialDatabase(mace_env["shared_database"]).get_material("clash")["formula"] == "NaCl"

    write_state(mace_env["scratch_root"] / "conf-b", state="PENDING_MERGE", pending_reason="shared database busy: held by pid 1")
    row = {r["workflow_id"]: r for r in status_of("conf").rows}["conf-b"]
    assert (row["state"], row["message"]) == ("PENDING_MERGE", "shared database busy: held by pid 1")
    assert _json.dumps(status_of("conf").to_json())  # JSON-able
