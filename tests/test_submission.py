"""`mace-submit`: contexts, manifest, record, chunks, element env, dry-run, refusal cleanup, bad input.

Runs without a scheduler: the local backend for real, SLURM bookkeeping through `FakeBackend`
(tests/test_submission_slurm_e2e.py repeats the important parts on the real cluster).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from epilogue_helpers import shared_rows
from submit_fakes import (
    ENV_STEP,
    PY,
    FakeBackend,
    context_dirs,
    marker_plan,
    seen,
    simple_plan,
    write_plan,
)
from submit_fakes import cli as _cli

from mace_hpc.cli.main import run
from mace_hpc.errors import ConfigError, InputError, SchedulerError
from mace_hpc.records import read_state
from mace_hpc.submission.submit import submit_plan
from mace_hpc.util.atomic import read_json

REPO = Path(__file__).resolve().parent.parent


def _record(scratch: Path, plan: str) -> dict[str, Any]:
    return json.loads((scratch / ".submissions" / plan / "record.json").read_text())


# ---------------------------------------------------------------------------- local backend, end to end
def test_local_elements_see_their_identity_and_env(tmp_path: Path, mace_env: dict[str, Path], capsys) -> None:
    plan = write_plan(tmp_path, {
        "name": "envp", "isolation_mode": "isolated", "max_parallel": 2,
        "env": {"PLAN_VAR": "from plan", "PLAN_OVERRIDE": "plan"},
        "elements": [
            {"id": f"e{i}", "env": {"ELEM_VAR": f"value {i}", **({"PLAN_OVERRIDE": "element"} if i == 1 else {})},
             "steps": [{"name": "probe", "command": ENV_STEP}]}
            for i in range(3)
        ],
    })
    rc, out, err = _cli(capsys, "submit", str(plan))
    assert rc == 0, err
    scratch = mace_env["scratch_root"]
    manifest = read_json(scratch / ".submissions" / "envp" / "manifest.json")
    assert [e["workflow_id"] for e in manifest["elements"]] == ["envp-e0", "envp-e1", "envp-e2"]
    for i, entry in enumerate(manifest["elements"]):
        ctx = Path(entry["context_dir"])
        assert ctx == scratch / f"envp-e{i}" and (ctx.stat().st_mode & 0o777) == 0o700
        got = seen(ctx)
        env = got["env"]
        assert env["MACE_WORKFLOW_ID"] == f"envp-e{i}"
        assert env["MACE_ISOLATION_MODE"] == "isolated"
        assert env["MACE_CONTEXT_DIR"] == str(ctx)
        assert env["MACE_MANIFEST"] == str(scratch / ".submissions" / "envp" / "manifest.json")
        assert env["PLAN_VAR"] == "from plan" and env["ELEM_VAR"] == f"value {i}"
        assert env["PLAN_OVERRIDE"] == ("element" if i == 1 else "plan")
        assert got["argv"] == [str(ctx)]  # {context_dir} substituted
        assert got["cwd"] == str(ctx / "calculations" / "probe")
        state = read_json(ctx / "state.json")
        assert state["run_state"] == "COMPLETED" and state["attempts"] == 1 and state["index"] == i
    record = _record(scratch, "envp")
    assert record["backend"] == "local" and record["max_parallel"] == 2 and record["runner"] is None
    [job] = record["jobs"]
    assert job["kind"] == "array" and job["indices"] == [0, 1, 2] and job["offset"] == 0
    assert "envp: 3 elements: 3 MERGED" in out


def test_local_failure_exit_code_and_state(tmp_path: Path, mace_env: dict[str, Path], capsys) -> None:
    plan = write_plan(tmp_path, {
        "name": "failp", "isolation_mode": "isolated",
        "elements": [
            {"id": "ok", "steps": [{"name": "s", "command": ["true"]}]},
            {"id": "bad", "steps": [{"name": "s", "command": [PY, "-c", "import sys; sys.exit(3)"]}]},
        ],
    })
    rc, out, err = _cli(capsys, "submit", str(plan))
    assert rc == 1
    assert "element 1 (failp-bad)" in err and "exit code 3" in err
    bad = read_json(mace_env["scratch_root"] / "failp-bad" / "state.json")
    assert bad["run_state"] == "FAILED" and bad["steps"][0]["exit_code"] == 3


# ---------------------------------------------------------------------------- cleaned-up contexts run again
def _calcs_and_props(db: Path) -> tuple[int, int]:
    rows = shared_rows(db)
    return rows["calculations"], rows["properties"]


def test_resubmitted_failed_element_whose_context_was_cleaned_is_merged(tmp_path, mace_env, monkeypatch):
    """Invariant 1: a FAILED element archived and cleaned up (tombstone, removed=True) that is
    resubmitted and then succeeds used to stay COMPLETED forever: the epilogue (and `mace merge`)
    skipped it as 'data already removed', so its new results never reached the shared DB."""
    from mace_hpc.submission.control import resubmit

    monkeypatch.setenv("MACE_AUTO_CLEANUP", "true")
    flag = tmp_path / "allow"
    step = [PY, "-c", "import json, os, sys; json.dump({'e': 2.5}, open('results.json', 'w')); "
            f"sys.exit(0 if os.path.exists({str(flag)!r}) else 3)"]
    plan = {"name": "again", "isolation_mode": "isolated", "on_failure": "archive", "elements": [
        {"id": "e0", "materials": [{"material_id": "m", "formula": "Al"}], "steps": [{"name": "s", "command": step}]}]}
    submit_plan(plan, backend="local")  # the local backend records the failure; it does not raise
    ctx = mace_env["scratch_root"] / "again-e0"
    first = read_state(ctx)
    assert first.state == "ARCHIVED" and first.run_state == "FAILED" and first.removed
    flag.touch()
    resubmit("again")  # restores the context from its archive first (docs/object-storage.md), then resumes
    state = read_state(ctx)
    assert state.run_state == "COMPLETED" and state.restored_from == first.epilogue["archive"]
    assert state.state == "MERGED", state
    # the failed attempt's calculation came back with the context: the same two calculations (one
    # failed, one completed) and one property as when a kept context is resubmitted
    assert _calcs_and_props(mace_env["shared_database"]) == (2, 1)


def test_submitting_a_finished_cleaned_plan_again_adds_nothing(tmp_path, mace_env, monkeypatch):
    """Invariant 2: re-running a finished plan whose contexts were merged and cleaned up reran
    every step from scratch (the context's record of completed steps was gone) and left the
    element COMPLETED, unmerged; its results are home already, so nothing must run again."""
    monkeypatch.setenv("MACE_AUTO_CLEANUP", "true")
    marker = tmp_path / "ran"
    plan = marker_plan("twice", marker)
    submit_plan(plan, backend="local")
    ctx = mace_env["scratch_root"] / "twice-e0"
    assert read_state(ctx).state == "MERGED" and read_state(ctx).removed
    counts = _calcs_and_props(mace_env["shared_database"])
    submit_plan(plan, backend="local")
    assert marker.read_text() == "x"  # the step did not run again
    state = read_state(ctx)
    assert state.state == "MERGED" and state.run_state == "COMPLETED"
    assert _calcs_and_props(mace_env["shared_database"]) == counts


# ---------------------------------------------------------------------------- dry run
def test_dry_run_creates_nothing_and_shows_everything(tmp_path: Path, mace_env: dict[str, Path], capsys) -> None:
    (tmp_path / "site.yaml").write_text("scheduler:\n  max_array_size: 1000\n  partition: debug\n")
    plan = write_plan(tmp_path, {
        "name": "dry", "env": {"PLAN_VAR": "x y"},
        "sweep": {"parameters": {"i": list(range(2500))}, "id": "p{i}",
                  "template": {"steps": [{"name": "s", "command": ["echo", "{i}"]}]}},
    })
    scratch = mace_env["scratch_root"]
    before = sorted(os.listdir(tmp_path))
    rc, out, err = _cli(capsys, "submit", str(plan), "--backend", "slurm", "--site", str(tmp_path / "site.yaml"),
                        "--dry-run", "--max-parallel", "7")
    assert rc == 0, err
    assert not scratch.exists(), "dry run must not create the scratch root"
    assert sorted(os.listdir(tmp_path)) == before
    first = "dry-p0"
    assert f"element 0: workflow id {first}" in out
    assert f"MACE_WORKFLOW_ID={first}" in out and f"MACE_CONTEXT_DIR={scratch / first}" in out
    assert "PLAN_VAR='x y'" in out and "MACE_ISOLATION_MODE=shared" in out
    assert "... and 2497 more elements" in out
    assert "#SBATCH --array=0-999%7" in out and "#SBATCH --partition=debug" in out
    assert "submit: sbatch --parsable" in out and "3 array(s)" in out
    assert "nothing was created or submitted" in out

    rc, out, _ = _cli(capsys, "submit", str(plan), "--backend", "slurm", "--site", str(tmp_path / "site.yaml"),
                      "--dry-run", "--json")
    data = json.loads(out)
    assert data["created"] is False and len(data["elements"]) == 2500
    assert [a["index_offset"] for a in data["arrays"]] == [0, 1000, 2000]
    assert "#SBATCH --array=0-499%4" in data["arrays"][2]["script"]
    e = data["elements"][2345]
    assert e["workflow_id"] == "dry-p2345" and e["env"]["MACE_INDEX_OFFSET"] == "2000"
    assert data["isolation_mode"] == "shared" and e["env"]["MACE_ISOLATION_MODE"] == "shared"

    rc, out, _ = _cli(capsys, "submit", str(plan), "--backend", "local", "--isolation-mode", "isolated",
                      "--dry-run", "--json")
    data = json.loads(out)
    assert data["isolation_mode"] == "isolated" and data["elements"][0]["env"]["MACE_ISOLATION_MODE"] == "isolated"
    assert data["arrays"][0]["command"][-2:] == ["--index", "N"]
    assert not scratch.exists()


# ---------------------------------------------------------------------------- chunks, record, backstop
def test_chunks_offsets_record_and_backstop(tmp_path: Path, mace_env: dict[str, Path], fake_backend: FakeBackend,
                                            capsys) -> None:
    fake_backend.max_size = 3
    plan = write_plan(tmp_path, simple_plan("chunky", 7))
    rc, out, err = _cli(capsys, "submit", str(plan), "--backend", "slurm", "--max-parallel", "2")
    assert rc == 0, err
    arrays = fake_backend.array_requests()
    assert [(r.index_offset, r.task_ids()) for r in arrays] == [(0, [0, 1, 2]), (3, [0, 1, 2]), (6, [0])]
    assert all(r.max_parallel == 2 and r.env["MACE_INDEX_OFFSET"] == str(r.index_offset) for r in arrays)
    [backstop] = [r for r in fake_backend.submitted if r.indices is None]
    assert backstop.dependency == "afterany:1001:1002:1003"
    assert out.splitlines()[0] == "1001 1002 1003"
    record = _record(mace_env["scratch_root"], "chunky")
    kinds = [(j["job_id"], j["kind"]) for j in record["jobs"]]
    assert kinds == [("1001", "array"), ("1002", "array"), ("1003", "array"), ("1004", "backstop")]
    assert record["jobs"][1]["indices"] == [3, 4, 5] and record["jobs"][1]["offset"] == 3
    assert record["jobs"][2]["array"] == "0"
    assert record["scheduler"]["requeue"] is False and record["env"]["MACE_MANIFEST"].endswith("manifest.json")
    assert context_dirs(mace_env["scratch_root"]) == [f"chunky-e{i}" for i in range(7)]


def test_refusal_removes_everything_and_cancels_queued_chunks(
    tmp_path: Path, mace_env: dict[str, Path], fake_backend: FakeBackend, capsys
) -> None:
    fake_backend.max_size, fake_backend.refuse_at = 2, 1  # the second chunk is refused
    plan = write_plan(tmp_path, simple_plan("refused", 4))
    rc, out, err = _cli(capsys, "submit", str(plan), "--backend", "slurm")
    assert rc == 2
    assert err.strip() == "mace: error: sbatch refused t: sbatch: error: invalid partition specified: nope"
    assert fake_backend.cancelled == [["1001"]]
    scratch = mace_env["scratch_root"]
    assert context_dirs(scratch) == []
    assert not (scratch / ".submissions" / "refused").exists()


def test_refusal_keeps_contexts_that_existed(tmp_path: Path, mace_env: dict[str, Path], fake_backend: FakeBackend) -> None:
    plan = write_plan(tmp_path, simple_plan("again", 2))
    submit_plan(str(plan), backend="slurm")
    for jid in list(fake_backend.jobs):
        fake_backend.set_state(jid, "COMPLETED") if fake_backend.jobs[jid].indices is not None else None
    (mace_env["scratch_root"] / "again-e0" / "result.txt").write_text("keep me")
    fake_backend.refuse_at = fake_backend.calls
    with pytest.raises(SchedulerError):
        submit_plan(str(plan), backend="slurm")
    assert (mace_env["scratch_root"] / "again-e0" / "result.txt").read_text() == "keep me"
    record = _record(mace_env["scratch_root"], "again")
    assert [j["job_id"] for j in record["jobs"]] == ["1001", "1002"]  # the old record is back


def test_refused_resubmission_that_appends_keeps_the_old_manifest(
    tmp_path: Path, mace_env: dict[str, Path], fake_backend: FakeBackend
) -> None:
    submit_plan(simple_plan("grow", 2), backend="slurm")
    for jid in list(fake_backend.jobs):
        fake_backend.set_state(jid, "COMPLETED") if fake_backend.jobs[jid].indices is not None else None
    manifest = mace_env["scratch_root"] / ".submissions" / "grow" / "manifest.json"
    before = manifest.read_bytes()
    fake_backend.refuse_at = fake_backend.calls
    with pytest.raises(SchedulerError):
        submit_plan(simple_plan("grow", 3), backend="slurm")  # one element appended, then refused
    assert manifest.read_bytes() == before
    assert not (mace_env["scratch_root"] / "grow-e2").exists()


# ---------------------------------------------------------------------------- already submitted
def test_plan_still_queued_is_not_submitted_twice(
    tmp_path: Path, mace_env: dict[str, Path], fake_backend: FakeBackend, capsys
) -> None:
    plan = write_plan(tmp_path, simple_plan("twice", 3))
    assert _cli(capsys, "submit", str(plan), "--backend", "slurm")[0] == 0
    fake_backend.set_state("1001", "COMPLETED", [0, 1])
    fake_backend.set_state("1001", "RUNNING", [2])
    rc, out, err = _cli(capsys, "submit", str(plan), "--backend", "slurm")
    assert rc == 2
    assert "already submitted (jobs 1001 1002) and 1 of its elements are still queued or running" in err
    assert "mace cancel twice" in err and "mace resubmit twice --failed" in err
    assert len(err.strip().splitlines()) == 1
    assert len(fake_backend.submitted) == 2  # nothing new queued

    fake_backend.set_state("1001", "FAILED", [2])  # everything over: a new submission is allowed
    assert _cli(capsys, "submit", str(plan), "--backend", "slurm")[0] == 0
    record = _record(mace_env["scratch_root"], "twice")
    assert record["jobs"][0]["job_id"] == "1003"
    assert [j["job_id"] for j in record["history"][0]["jobs"]] == ["1001", "1002"]


# ---------------------------------------------------------------------------- --no-submit + run-element by hand
def test_no_submit_then_run_element_by_hand(tmp_path: Path, mace_env: dict[str, Path], capsys) -> None:
    plan = write_plan(tmp_path, {"name": "byhand", "elements": [
        {"id": f"e{i}", "steps": [{"name": "probe", "command": ENV_STEP}]} for i in range(2)]})
    rc, out, _ = _cli(capsys, "submit", str(plan), "--no-submit", "--backend", "slurm")
    assert rc == 0
    manifest = mace_env["scratch_root"] / ".submissions" / "byhand" / "manifest.json"
    assert f"MACE_MANIFEST={manifest}" in out and "sbatch --array=0-1%4" in out
    assert _record(mace_env["scratch_root"], "byhand")["jobs"] == []
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1"}
    proc = subprocess.run(["mace", "run-element", str(manifest)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = seen(mace_env["scratch_root"] / "byhand-e1")
    assert got["env"]["MACE_WORKFLOW_ID"] == "byhand-e1" and got["env"]["SLURM_ARRAY_TASK_ID"] == "1"
    rc, out, _ = _cli(capsys, "status", "byhand", "--json")
    states = {e["index"]: e["state"] for e in json.loads(out)["elements"]}
    assert states[0] == "PENDING" and states[1] in ("MERGED", "COMPLETED")
    rc, _, err = _cli(capsys, "status", "byhand", "--watch", "--interval", "0.1")
    assert rc == 1 and "1 element(s) wait for a job that was never submitted" in err  # it does not hang


# ---------------------------------------------------------------------------- bad input
def _bad_plans() -> dict[str, tuple[dict[str, Any], list[str], str]]:
    step = [{"name": "s", "command": ["true"]}]
    return {
        "no elements": ({"name": "b", "elements": []}, [], "elements: the plan has no elements"),
        "duplicate ids": ({"name": "b", "elements": [{"id": "x", "steps": step}, {"id": "x", "steps": step}]}, [],
                          "elements[1].id: duplicate element id 'x'"),
        "case collision": ({"name": "b", "elements": [{"id": "Ab", "steps": step}, {"id": "aB", "steps": step}]}, [],
                           "case-insensitive filesystem"),
        "zero max_parallel flag": ({"name": "b", "elements": [{"id": "x", "steps": step}]}, ["--max-parallel", "0"],
                                   "--max-parallel: 0 is invalid"),
        "negative max_parallel flag": ({"name": "b", "elements": [{"id": "x", "steps": step}]},
                                       ["--max-parallel", "-3"], "--max-parallel: -3 is invalid"),
        "zero max_parallel plan": ({"name": "b", "max_parallel": 0, "elements": [{"id": "x", "steps": step}]}, [],
                                   "max_parallel"),
        "unknown site": ({"name": "b", "elements": [{"id": "x", "steps": step}]}, ["--site", "nosuchsite"],
                         "--site: unknown site 'nosuchsite'"),
        "newline in partition": ({"name": "b", "resources": {"partition": "debug\n#SBATCH --uid=0"},
                                  "elements": [{"id": "x", "steps": step}]}, [], "resources.partition"),
        "command substitution in partition": ({"name": "b", "resources": {"partition": "$(reboot)"},
                                               "elements": [{"id": "x", "steps": step}]}, [], "resources.partition"),
        "newline in env": ({"name": "b", "env": {"X": "a\nb"}, "elements": [{"id": "x", "steps": step}]}, [],
                           "env.X: must not contain a newline"),
    }


@pytest.mark.parametrize("case", sorted(_bad_plans()))
def test_bad_input_is_one_line_exit_2_nothing_created(case: str, tmp_path: Path, mace_env: dict[str, Path],
                                                      fake_backend: FakeBackend, capsys) -> None:
    data, flags, message = _bad_plans()[case]
    plan = write_plan(tmp_path, data)
    rc, out, err = _cli(capsys, "submit", str(plan), "--backend", "slurm", *flags)
    assert rc == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("mace: error: ") and message in err
    assert not mace_env["scratch_root"].exists()
    assert fake_backend.submitted == []


def test_site_value_unsafe_for_a_job_script(tmp_path: Path, mace_env: dict[str, Path], fake_backend: FakeBackend,
                                            capsys) -> None:
    """A site config's partition with `$(...)` is caught when the script is rendered, before anything exists."""
    (tmp_path / "evil.yaml").write_text("scheduler:\n  partition: $(touch /tmp/pwned)\n")
    plan = write_plan(tmp_path, simple_plan("evil", 2))
    rc, out, err = _cli(capsys, "submit", str(plan), "--backend", "slurm", "--site", str(tmp_path / "evil.yaml"))
    assert rc == 2 and "scheduler.partition='$(touch /tmp/pwned)'" in err
    assert not mace_env["scratch_root"].exists() and fake_backend.calls == 0


def test_unset_scratch_variable_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_SCRATCH_VAR", raising=False)
    monkeypatch.setenv("MACE_SCRATCH_ROOT", "$NO_SUCH_SCRATCH_VAR/mace")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"scratch_root: '\$NO_SUCH_SCRATCH_VAR/mace' \(from environment"):
        submit_plan(simple_plan("x", 1), backend="local")
    assert os.listdir(tmp_path) == []


def test_missing_program_on_local_backend(tmp_path: Path, mace_env: dict[str, Path]) -> None:
    plan = {"name": "noprog", "elements": [{"id": "x", "steps": [{"name": "s", "command": ["no-such-prog-xyz"]}]}]}
    with pytest.raises(InputError, match=r"elements\[0\].steps\[0\].command: program 'no-such-prog-xyz' not found"):
        submit_plan(plan, backend="local")
    assert not mace_env["scratch_root"].exists()


def test_user_jobscript_is_valid_bash_and_documents_itself() -> None:
    script = REPO / "jobscripts" / "slurm-array.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert 'exec mace run-element "$MACE_MANIFEST"' in text
    assert "#SBATCH --signal=B:USR2@" in text and "mace-submit plan.json --no-submit" in text
    assert os.access(script, os.X_OK)


def test_help_lists_the_commands(capsys) -> None:
    with pytest.raises(SystemExit):
        run(["--help"])
    out = capsys.readouterr().out
    for command in ("submit", "status", "cancel", "resubmit", "run-element"):
        assert command in out


def test_runner_signal_stops_a_step_that_ignores_sigterm(tmp_path: Path, mace_env: dict[str, Path]) -> None:
    """SIGTERM to the runner: the step's group gets SIGTERM, then SIGKILL after the grace; recorded."""
    stubborn = [PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "open('started', 'w').close(); time.sleep(120)"]
    plan = {"name": "stubborn", "elements": [{"id": "e0", "steps": [{"name": "s", "command": stubborn}]}]}
    result = submit_plan(plan, backend="local", prepare_only=True)
    ctx = mace_env["scratch_root"] / "stubborn-e0"
    proc = subprocess.Popen([PY, "-m", "mace_hpc.element", str(result.submission.manifest_path), "--index", "0"])
    try:
        for _ in range(600):
            if (ctx / "calculations" / "s" / "started").exists():
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    state = read_json(ctx / "state.json")
    assert state["run_state"] == "CANCELLED"
    assert state["steps"][0]["exit_code"] == -signal.SIGKILL  # it ignored SIGTERM, so it was killed


def test_resubmitting_a_changed_plan_under_the_same_name_is_refused(tmp_path, mace_env):
    """Indices are the identity of elements in records and state files: they must not shift."""
    from mace_hpc.errors import InputError
    from mace_hpc.submission.submit import submit_plan

    def plan(ids):
        return {"name": "same", "elements": [{"id": i, "steps": [{"name": "s", "command": ["true"]}]} for i in ids]}

    submit_plan(plan(["a", "b"]), backend="local")
    with pytest.raises(InputError, match=r"index 0 was same-a, now same-x"):
        submit_plan(plan(["x", "a", "b"]), backend="local")
    result = submit_plan(plan(["a", "b", "c"]), backend="local")  # appending is fine
    assert [e.workflow_id for e in result.submission.entries] == ["same-a", "same-b", "same-c"]


# ---------------------------------------------------------------------------- local: mace-submit finalizes in batches
def test_local_elements_are_finalized_by_mace_submit_in_batches(tmp_path: Path, mace_env: dict[str, Path],
                                                              capsys) -> None:
    """The local runners leave the merge to mace-submit, which merges what ended in batches: every
    element merged exactly once (its rows once in the shared database), its own outcome in its state."""
    plan = write_plan(tmp_path, {"name": "batchp", "isolation_mode": "isolated", "max_parallel": 2, "elements": [
        {"id": f"e{i}", "materials": [{"material_id": f"m{i}", "formula": "Cu"}],
         "steps": [{"name": "s", "command": ["true"]}]} for i in range(12)]})
    rc, out, err = _cli(capsys, "submit", str(plan))
    assert rc == 0, err
    for i in range(12):
        state = read_json(mace_env["scratch_root"] / f"batchp-e{i}" / "state.json")
        assert state["state"] == "MERGED" and state["epilogue"]["by"] == "mace-submit", state
        assert state["epilogue"]["merge"]["counts"]["materials"] == 1
    assert shared_rows(mace_env["shared_database"])["materials"] == 12


def test_a_cancelled_local_run_still_finalizes_what_ended(tmp_path: Path, mace_env: dict[str, Path]) -> None:
    """SIGTERM to mace-submit (`mace cancel`) mid-run: the elements that completed are merged before
    it exits, none is left COMPLETED and unmerged; the running one is CANCELLED, the rest never start."""
    stop = ("import os, signal, sys; job = os.environ['MACE_JOB_ID']; "
            "os.kill(int(job.split('-')[1]), signal.SIGTERM) if os.environ['MACE_WORKFLOW_ID'].endswith('e3') else None")
    plan = write_plan(tmp_path, {"name": "cancelp", "isolation_mode": "isolated", "max_parallel": 1, "elements": [
        {"id": f"e{i}", "materials": [{"material_id": f"m{i}", "formula": "Cu"}],
         "steps": [{"name": "s", "command": [PY, "-c", stop]}, {"name": "wait", "command": ["sleep", "5" if i == 3 else "0"]}]}
        for i in range(6)]})
    proc = subprocess.run([PY, "-m", "mace_hpc.cli.main", "submit", str(plan)], capture_output=True, text=True,
                          timeout=120, env=os.environ)
    assert proc.returncode != 0
    states = {i: read_json(mace_env["scratch_root"] / f"cancelp-e{i}" / "state.json")["state"] for i in range(6)}
    assert [states[i] for i in range(3)] == ["MERGED"] * 3, (states, proc.stderr[-2000:])
    stopped = read_json(mace_env["scratch_root"] / "cancelp-e3" / "state.json")
    # the one running was stopped and then finalized by its policy (on_failure: keep), not left as it was
    assert stopped["run_state"] == "CANCELLED" and stopped["state"] == "KEPT", stopped
    assert stopped["epilogue"]["by"] == "mace-submit"
    assert {states[4], states[5]} == {"CANCELLED"}  # never started
    assert shared_rows(mace_env["shared_database"])["materials"] == 3


def test_a_busy_shared_database_delays_the_batches_and_loses_nothing(tmp_path: Path, mace_env: dict[str, Path],
                                                                      capsys) -> None:
    """Another merger holds the shared database's lock for a while: the batches that find it busy
    are retried with the next ones (the loop goes on starting elements), and every element ends
    MERGED exactly once."""
    import threading

    from mace_hpc.database.merge import lock_path
    from mace_hpc.util.nfslock import NfsLock

    shared = mace_env["shared_database"]
    shared.parent.mkdir(parents=True, exist_ok=True)
    lock = NfsLock(lock_path(shared), timeout=10).acquire()
    threading.Timer(3.0, lock.release).start()
    step = [PY, "-c", "import time; time.sleep(0.2)"]
    plan = write_plan(tmp_path, {"name": "busyp", "isolation_mode": "isolated", "max_parallel": 2, "elements": [
        {"id": f"e{i}", "materials": [{"material_id": f"m{i}", "formula": "Cu"}], "steps": [{"name": "s", "command": step}]}
        for i in range(8)]})
    rc, out, err = _cli(capsys, "submit", str(plan))
    assert rc == 0, err
    assert [read_json(mace_env["scratch_root"] / f"busyp-e{i}" / "state.json")["state"] for i in range(8)] == ["MERGED"] * 8
    assert shared_rows(shared)["materials"] == 8


def test_archive_policies_are_left_to_each_element_s_own_epilogue(tmp_path: Path, mace_env: dict[str, Path],
                                                                   capsys) -> None:
    """Archiving (maybe an upload) is slow: mace-submit batches plain merge/keep policies only."""
    plan = write_plan(tmp_path, {"name": "archp", "isolation_mode": "isolated", "on_complete": "merge+archive",
                                 "elements": [{"id": "e0", "steps": [{"name": "s", "command": ["true"]}]}]})
    rc, out, err = _cli(capsys, "submit", str(plan))
    assert rc == 0, err
    state = read_json(mace_env["scratch_root"] / "archp-e0" / "state.json")
    assert state["state"] == "MERGED" and state["epilogue"]["archived"] and state["epilogue"]["by"] == "epilogue"
