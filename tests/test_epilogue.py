"""The epilogue hook and `mace merge`: policies, exactly-once, deadlines, pending records, quarantine."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from epilogue_helpers import make_context, make_submission, material_ids, shared_rows, state_of, tree

from mace_hpc import records as st
from mace_hpc.cli.main import main
from mace_hpc.epilogue.backstop import backstop_request
from mace_hpc.epilogue.finalize import Options
from mace_hpc.epilogue.hook import run_epilogue, run_with_deadline
from mace_hpc.epilogue.pending import merge_pending
from mace_hpc.records.layout import QUARANTINE_DIR
from mace_hpc.records.states import QUARANTINED
from mace_hpc.util.nfslock import NfsLock

PLAN = "tp"


@pytest.fixture
def sub(mace_env):
    """A 4-element submission (default policies: merge / keep) under the test's scratch root."""

    def build(n: int = 4, **kw):
        return make_submission(mace_env["scratch_root"], kw.pop("plan", PLAN), n,
                               shared_database=mace_env["shared_database"], archive_dir=mace_env["archive_dir"], **kw)

    return build


def _ctx(mace_env, i: int, plan: str = PLAN) -> Path:
    return mace_env["scratch_root"] / f"{plan}-e{i}"


# ---------------------------------------------------------------------------- policies
def test_merge_policy_brings_rows_home_exactly_once(sub, mace_env) -> None:
    manifest = sub(3)
    for i in range(3):
        state = run_epilogue(_ctx(mace_env, i), manifest=manifest)
        assert state.state.state == st.MERGED
        assert state.state.epilogue["merge"]["status"] == "merged"
    assert shared_rows(mace_env["shared_database"]) == {"materials": 3, "calculations": 3, "properties": 6, "files": 3}
    again = run_epilogue(_ctx(mace_env, 0), manifest=manifest)  # a second epilogue: nothing new
    assert again.state.state == st.MERGED
    assert shared_rows(mace_env["shared_database"])["materials"] == 3
    log = (_ctx(mace_env, 0) / "logs" / "epilogue.log").read_text()
    assert "COMPLETED -> MERGED (merge)" in log


@pytest.mark.parametrize(
    ("policy", "state", "merged", "archived"),
    [("merge", st.MERGED, True, False), ("archive", st.ARCHIVED, False, True),
     ("merge+archive", st.MERGED, True, True), ("keep", st.KEPT, False, False)],
)
def test_on_complete_policies(sub, mace_env, policy, state, merged, archived) -> None:
    manifest = sub(1, on_complete=policy)
    result = run_epilogue(_ctx(mace_env, 0), manifest=manifest)
    assert result.state.state == state
    assert (shared_rows(mace_env["shared_database"])["materials"] == 1) is merged
    archive = mace_env["archive_dir"] / f"{PLAN}-e0.tar.gz"
    assert archive.is_file() is archived
    assert (_ctx(mace_env, 0) / "materials.db").is_file()  # no cleanup configured: context kept


@pytest.mark.parametrize(("policy", "state"), [("keep", st.KEPT), ("archive", st.ARCHIVED)])
def test_failed_elements_follow_on_failure_and_are_never_merged(sub, mace_env, policy, state) -> None:
    manifest = sub(2, on_failure=policy, run_states={0: st.FAILED, 1: st.TIMEOUT})
    for i in range(2):
        assert run_epilogue(_ctx(mace_env, i), manifest=manifest).state.state == state
    assert shared_rows(mace_env["shared_database"])["materials"] == 0
    assert (mace_env["archive_dir"] / f"{PLAN}-e1.tar.gz").is_file() is (policy == "archive")


def test_command_line_policy_overrides_the_plan(sub, mace_env) -> None:
    sub(2, on_complete="keep")
    assert main(["epilogue", str(_ctx(mace_env, 0)), "--on-complete", "archive", "-q"]) == 0
    assert state_of(_ctx(mace_env, 0))["state"] == st.ARCHIVED
    assert main(["epilogue", str(_ctx(mace_env, 1))]) == 0
    assert state_of(_ctx(mace_env, 1))["state"] == st.KEPT
    # kept contexts are revisited only when a policy is given explicitly
    assert main(["merge", PLAN]) == 0
    assert state_of(_ctx(mace_env, 1))["state"] == st.KEPT
    assert main(["merge", PLAN, "--on-complete", "merge"]) == 0
    assert state_of(_ctx(mace_env, 1))["state"] == st.MERGED
    assert material_ids(mace_env["shared_database"]) == [f"{PLAN}-e1-m0"]


def test_shared_mode_needs_no_merge(sub, mace_env) -> None:
    manifest = sub(1, isolation="shared")
    state = run_epilogue(_ctx(mace_env, 0), manifest=manifest)
    assert state.state.state == st.MERGED and state.state.epilogue["merge"] == {"status": "shared-mode"}
    assert not mace_env["shared_database"].exists()


def test_unfinished_element_is_left_alone(sub, mace_env) -> None:
    manifest = sub(1, run_states={0: st.RUNNING})
    assert run_epilogue(_ctx(mace_env, 0), manifest=manifest).state.state == st.RUNNING
    assert shared_rows(mace_env["shared_database"])["materials"] == 0


def test_auto_cleanup_archives_then_leaves_a_tombstone(sub, mace_env, monkeypatch) -> None:
    monkeypatch.setenv("MACE_AUTO_CLEANUP", "1")
    manifest = sub(1)
    state = run_epilogue(_ctx(mace_env, 0), manifest=manifest)
    assert state.state.state == st.MERGED and state.state.removed is True
    assert sorted(os.listdir(_ctx(mace_env, 0))) == ["context.json", "state.json"]
    assert (mace_env["archive_dir"] / f"{PLAN}-e0.tar.gz").is_file()  # archive_results (default on)
    assert shared_rows(mace_env["shared_database"])["materials"] == 1
    assert main(["merge", PLAN]) == 0  # a tombstone is never "merged" again
    assert shared_rows(mace_env["shared_database"])["materials"] == 1


def test_cleanup_is_skipped_when_the_archive_cannot_be_written(sub, mace_env, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MACE_AUTO_CLEANUP", "1")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    manifest = dataclasses.replace(sub(1), archive_dir=str(blocker / "archives"))
    state = run_epilogue(_ctx(mace_env, 0), manifest=manifest)
    assert state.state.state == st.MERGED and not state.state.removed
    assert "cleanup_error" in state.state.epilogue
    assert (_ctx(mace_env, 0) / "materials.db").is_file()


# ---------------------------------------------------------------------------- never fail, never hang
def test_lock_held_past_the_deadline_leaves_pending_merge_then_mace_merge_finishes(sub, mace_env) -> None:
    from mace_hpc.database.merge import lock_path

    manifest = sub(3)
    mace_env["shared_database"].parent.mkdir(parents=True, exist_ok=True)
    with NfsLock(lock_path(mace_env["shared_database"]), lifetime=600):
        for i in range(3):
            state = run_epilogue(_ctx(mace_env, i), manifest=manifest, deadline=1.0)
            assert state.state.state == st.PENDING_MERGE
            assert "busy" in state.state.pending_reason
        log = (_ctx(mace_env, 0) / "logs" / "epilogue.log").read_text()
        assert "PENDING_MERGE" in log and "could not acquire lock" in log
        assert main(["merge", PLAN, "--lock-timeout", "0.5"]) == 1  # still busy: exit 1, nothing lost
        assert state_of(_ctx(mace_env, 0))["state"] == st.PENDING_MERGE
    assert main(["merge", PLAN]) == 0
    assert [state_of(_ctx(mace_env, i))["state"] for i in range(3)] == [st.MERGED] * 3
    assert state_of(_ctx(mace_env, 0))["pending_reason"] is None
    assert shared_rows(mace_env["shared_database"])["materials"] == 3
    assert main(["merge", PLAN]) == 0  # idempotent
    assert shared_rows(mace_env["shared_database"])["materials"] == 3


def _hang(*args, **kwargs):
    time.sleep(3600)


def test_a_hanging_epilogue_is_stopped_at_its_deadline(sub, mace_env, monkeypatch) -> None:
    import mace_hpc.context.archive_store as archive_mod  # where finalize imports archive_to from, when it archives

    manifest = sub(1, on_complete="merge+archive")
    with monkeypatch.context() as patch:
        patch.setattr(archive_mod, "archive_to", _hang)
        state = run_epilogue(_ctx(mace_env, 0), manifest=manifest, deadline=1.0)
    assert state.state.state == st.PENDING_MERGE
    assert "deadline" in state.state.pending_reason
    assert not (_ctx(mace_env, 0) / ".epilogue.lock").exists()  # the child unwound and released it
    assert not list(mace_env["archive_dir"].glob("*.tmp")) if mace_env["archive_dir"].exists() else True
    assert main(["merge", PLAN]) == 0
    assert state_of(_ctx(mace_env, 0))["state"] == st.MERGED
    assert (mace_env["archive_dir"] / f"{PLAN}-e0.tar.gz").is_file()
    assert shared_rows(mace_env["shared_database"])["materials"] == 1


def test_child_that_ignores_the_stop_signal_is_killed() -> None:
    def stubborn():
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        time.sleep(3600)

    assert run_with_deadline(stubborn, 0.5, grace=0.5) == (False, None)
    assert run_with_deadline(lambda: {"ok": 1}, 30) == (True, {"ok": 1})


def test_epilogue_child_that_fails_leaves_pending_merge(sub, mace_env, monkeypatch) -> None:
    """Invariant 1: the forked epilogue child dying without a result (an exception, OOM kill,
    a crash in SQLite) was taken as 'finished': the element stayed COMPLETED with no
    PENDING_MERGE record and no reason, instead of saying the merge is still to do."""
    from mace_hpc.epilogue import hook

    manifest = sub(1, plan="crash")
    ctx = _ctx(mace_env, 0, plan="crash")
    assert hook._can_fork()

    def dies(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # like the OOM killer

    with monkeypatch.context() as patch:  # (undo only this: mace_env's variables stay)
        patch.setattr(hook, "finalize", dies)
        result = run_epilogue(ctx, manifest=manifest, deadline=30)
    assert result.state.state == st.PENDING_MERGE
    assert st.read_state(ctx).state == st.PENDING_MERGE and st.read_state(ctx).pending_reason
    assert run_with_deadline(lambda: 1 / 0, 30) == (False, None)
    assert run_epilogue(ctx, manifest=manifest, deadline=30).state.state == st.MERGED  # retried later


_HANGING_ARCHIVE_DRIVER = r"""
import sys, time
import mace_hpc.context.archive_store as archive_mod  # where finalize imports archive_to from
archive_mod.archive_to = lambda *a, **k: time.sleep(3600)
from mace_hpc.element import run
sys.exit(run.main([sys.argv[1], "--index", "0"]))
"""


def test_epilogue_after_the_time_limit_signal_still_has_its_deadline(tmp_path, mace_env) -> None:
    """Invariant 4: the time-limit signal starts a SIGKILL timer thread for the step's group; while
    it was alive the epilogue could not fork and ran in a thread instead, which cannot be stopped
    at the deadline: the runner then exited with the thread still holding the context's lock, and
    the step's processes could still be writing into the context being archived."""
    from submit_fakes import signal_when_started

    from mace_hpc.submission.submit import submit_plan

    started = tmp_path / "started"
    step = [sys.executable, "-c", f"open({str(started)!r}, 'w').close(); import time; time.sleep(120)"]
    plan = {"name": "tl", "isolation_mode": "isolated", "on_failure": "archive",
            "elements": [{"id": "e0", "steps": [{"name": "s", "command": step}]}]}
    result = submit_plan(plan, backend="local", prepare_only=True)
    argv = [sys.executable, "-c", _HANGING_ARCHIVE_DRIVER, str(result.submission.manifest_path)]
    assert signal_when_started(argv, started, signal.SIGUSR2, {"MACE_EPILOGUE_DEADLINE": "2"}) == 124
    ctx = mace_env["scratch_root"] / "tl-e0"
    state = st.read_state(ctx)
    assert state.run_state == "TIMEOUT" and state.state == "PENDING_MERGE"
    assert "deadline" in state.pending_reason
    assert not (ctx / ".epilogue.lock").exists()  # the stopped child released it


def test_epilogue_never_raises_on_garbage(tmp_path: Path) -> None:
    assert run_epilogue(tmp_path / "does-not-exist").state.state in (st.PENDING, st.PENDING_MERGE)
    weird = tmp_path / "bad id!"
    weird.mkdir()
    (weird / "state.json").write_text('{"state": "COMPLETED"}')
    assert run_epilogue(weird).state.state == st.PENDING_MERGE


@pytest.mark.parametrize(
    "argv",
    [["epilogue", "--no-such-flag"], ["epilogue", "/nonexistent/context"], ["epilogue"],
     ["epilogue", "--manifest", "/nonexistent/manifest.json", "--index", "3"], ["epilogue", "--deadline", "abc"]],
)
def test_cli_epilogue_always_exits_zero(argv) -> None:
    from mace_hpc.cli.main import epilogue_main

    assert epilogue_main(argv[1:]) == 0


def test_cli_epilogue_finds_the_element_from_the_array_environment(sub, mace_env, monkeypatch) -> None:
    manifest = sub(4)
    manifest_path = mace_env["scratch_root"] / ".submissions" / PLAN / "manifest.json"
    monkeypatch.setenv("MACE_MANIFEST", str(manifest_path))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("MACE_INDEX_OFFSET", "2")
    assert main(["epilogue", "--ended", "-q"]) == 0
    assert [state_of(_ctx(mace_env, i))["state"] for i in range(4)] == [st.COMPLETED] * 3 + [st.MERGED]
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    monkeypatch.delenv("MACE_INDEX_OFFSET")
    monkeypatch.setenv("PBS_ARRAY_INDEX", "0")
    assert main(["epilogue"]) == 0
    assert state_of(_ctx(mace_env, 0))["state"] == st.MERGED
    monkeypatch.setenv("MACE_CONTEXT_DIR", manifest.elements[2].context_dir)
    assert main(["epilogue", "--json"]) == 0
    assert state_of(_ctx(mace_env, 2))["state"] == st.MERGED


def test_mace_epilogue_console_script_exits_zero_for_a_non_mace_job(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MACE_", "SLURM_", "PBS_"))}
    proc = subprocess.run([sys.executable, "-m", "mace_hpc.cli.main", "epilogue"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "not a mace-hpc job" in proc.stderr


# ---------------------------------------------------------------------------- mace merge
def test_merge_picks_up_everything_not_home_yet(sub, mace_env, capsys) -> None:
    manifest = sub(5, on_failure="archive", run_states={3: st.FAILED, 4: st.RUNNING})
    run_epilogue(_ctx(mace_env, 0), manifest=manifest)  # already MERGED
    st.write_state(_ctx(mace_env, 1), state=st.PENDING_MERGE, pending_reason="earlier failure")
    assert main(["merge", PLAN]) == 0
    out = capsys.readouterr().out
    assert "2 merged" in out and "1 archived" in out and "1 running" in out
    states = [state_of(_ctx(mace_env, i))["state"] for i in range(5)]
    assert states == [st.MERGED, st.MERGED, st.MERGED, st.ARCHIVED, st.RUNNING]
    assert material_ids(mace_env["shared_database"]) == [f"{PLAN}-e{i}-m0" for i in range(3)]
    # the backstop says every job has ended: the RUNNING element's runner was killed
    assert main(["merge", PLAN, "--ended", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"archived": 1, "skipped": 4}
    lost = state_of(_ctx(mace_env, 4))
    assert lost["state"] == st.ARCHIVED and lost["run_state"] == st.FAILED and lost["lost"] is True
    assert shared_rows(mace_env["shared_database"])["materials"] == 3


def test_merge_all_covers_every_plan_and_stray_contexts(sub, mace_env) -> None:
    sub(2, plan="pa")
    sub(3, plan="pb")
    make_context(mace_env["scratch_root"] / "stray-wf", "stray-wf")
    summary = merge_pending(all_plans=True)
    assert sorted(summary.plans) == ["pa", "pb"]
    assert summary.counts() == {"merged": 6}
    assert len(material_ids(mace_env["shared_database"])) == 6
    assert main(["merge", "--all"]) == 0
    assert len(material_ids(mace_env["shared_database"])) == 6


def test_merge_unknown_plan_is_a_one_line_error(mace_env, capsys) -> None:
    assert main(["merge", "nope"]) == 2
    assert "no submitted plan 'nope'" in capsys.readouterr().err
    assert main(["merge"]) == 2


def test_conflicting_material_is_reported_not_overwritten(sub, mace_env, capsys) -> None:
    from mace_hpc.database.materials import MaterialDatabase

    sub(2)
    other = MaterialDatabase(_ctx(mace_env, 1) / "materials.db")
    other.create_material(f"{PLAN}-e0-m0", "Cu", 225)  # same id as element 0's, different formula
    other.close()
    assert main(["merge", PLAN]) == 0
    assert "conflict" in capsys.readouterr().out
    assert state_of(_ctx(mace_env, 1))["conflicts"] == 1
    import sqlite3

    conn = sqlite3.connect(mace_env["shared_database"])
    assert conn.execute("SELECT formula FROM materials WHERE material_id = ?", (f"{PLAN}-e0-m0",)).fetchone()[0] == "Al"
    conn.close()


# ---------------------------------------------------------------------------- quarantine
def test_truncated_state_and_corrupt_database_are_quarantined_and_the_rest_merged(sub, mace_env, capsys) -> None:
    sub(5)
    (_ctx(mace_env, 1) / "state.json").write_text('{"state": "COMPL')
    db = _ctx(mace_env, 3) / "materials.db"
    data = bytearray(db.read_bytes())
    data[100:4096] = os.urandom(3996)  # smash the first page after the header
    db.write_bytes(bytes(data))
    assert main(["merge", PLAN]) == 1  # something needs a human: exit 1
    out = capsys.readouterr().out
    assert "3 merged" in out and "2 quarantined" in out
    assert material_ids(mace_env["shared_database"]) == [f"{PLAN}-e{i}-m0" for i in (0, 2, 4)]
    qroot = mace_env["scratch_root"] / QUARANTINE_DIR
    moved = sorted(p.name.split(".")[0] for p in qroot.iterdir())
    assert moved == [f"{PLAN}-e1", f"{PLAN}-e3"]
    for i in (1, 3):
        stub = state_of(_ctx(mace_env, i))
        assert stub["state"] == QUARANTINED
        assert Path(stub["quarantine"]["path"]).is_dir()
        assert (Path(stub["quarantine"]["path"]) / "QUARANTINE.json").is_file()
    assert "truncated" in state_of(_ctx(mace_env, 1))["pending_reason"]
    assert "corrupt" in state_of(_ctx(mace_env, 3))["pending_reason"]
    quarantined_db = next(qroot.glob(f"{PLAN}-e3.*")) / "materials.db"
    assert quarantined_db.read_bytes() == bytes(data)  # the evidence is untouched
    capsys.readouterr()
    # quarantined ones are not retried, but they are not home either: exit 1 again, as the help says
    assert main(["merge", PLAN]) == 1
    out = capsys.readouterr().out
    assert f"{PLAN}-e1" in out and f"{PLAN}-e3" in out and "quarantined by an earlier run" in out
    assert sorted(p.name.split(".")[0] for p in qroot.iterdir()) == moved  # nothing quarantined twice


# ---------------------------------------------------------------------------- disk full
def test_disk_full_while_archiving_keeps_the_context_pending(sub, mace_env, tiny_fs) -> None:
    mnt = tiny_fs
    manifest = sub(2, on_complete="merge+archive")
    manifest = dataclasses.replace(manifest, archive_dir=str(mnt))
    manifest_path = mace_env["scratch_root"] / ".submissions" / PLAN / "manifest.json"
    manifest_path.write_text(json.dumps(manifest.to_dict()))
    big = _ctx(mace_env, 0) / "calculations" / "s" / "big.bin"
    big.write_bytes(os.urandom(2 << 20))
    before = tree(_ctx(mace_env, 0))
    state = run_epilogue(_ctx(mace_env, 0), manifest=manifest)
    assert state.state.state == st.PENDING_MERGE
    assert "No space left on device" in state.state.pending_reason and "context kept" in state.state.pending_reason
    assert state.state.epilogue["merged"] is True  # the merge itself went through
    assert sorted(os.listdir(mnt)) == []  # no partial archive, no temp file
    assert [p for p in tree(_ctx(mace_env, 0)) if p != "logs/epilogue.log"] == before  # context kept whole
    assert run_epilogue(_ctx(mace_env, 1), manifest=manifest).state.state == st.MERGED  # small one fits
    big.unlink()  # space is freed (here: the big output goes away); the next merge finishes
    assert main(["merge", PLAN]) == 0
    assert state_of(_ctx(mace_env, 0))["state"] == st.MERGED
    assert sorted(os.listdir(mnt)) == sorted(f"{PLAN}-e{i}.tar.gz{s}" for i in (0, 1) for s in ("", ".sha256"))
    assert shared_rows(mace_env["shared_database"])["materials"] == 2


# ---------------------------------------------------------------------------- concurrency
def _merge_proc(args: tuple[str, str, str]) -> int:
    root, shared, archive = args
    os.environ.update(MACE_SCRATCH_ROOT=root, MACE_SHARED_DATABASE=shared, MACE_ARCHIVE_DIR=archive)
    summary = merge_pending(root, [PLAN], options=Options(lock_timeout=120))
    return sum(o.action in ("merged+archived",) for o in summary.outcomes)


def test_concurrent_mergers_and_epilogues_finalize_each_context_once(sub, mace_env) -> None:
    manifest = sub(40, on_complete="merge+archive")
    args = (str(mace_env["scratch_root"]), str(mace_env["shared_database"]), str(mace_env["archive_dir"]))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        pending = pool.map_async(_merge_proc, [args] * 4)
        hooks = [run_epilogue(_ctx(mace_env, i), manifest=manifest) for i in range(0, 40, 3)]
        done = pending.get(timeout=600)
    assert all(h.state.state in (st.MERGED, st.COMPLETED) for h in hooks)  # COMPLETED: a merger had its lock
    assert main(["merge", PLAN]) == 0
    assert [state_of(_ctx(mace_env, i))["state"] for i in range(40)] == [st.MERGED] * 40
    assert sum(done) <= 40
    assert shared_rows(mace_env["shared_database"]) == {"materials": 40, "calculations": 40, "properties": 80, "files": 40}
    assert len(list(mace_env["archive_dir"].glob("*.tar.gz"))) == 40


# ---------------------------------------------------------------------------- the element runner
def _plan(tmp_path: Path, n: int, body: str, **extra) -> Path:
    plan = {
        "name": "rp", "isolation_mode": "isolated", "shared_database": str(tmp_path / "shared" / "materials.db"),
        "max_parallel": 2, "resources": {"time": 5},
        "elements": [
            {"id": f"e{i}", "materials": [{"material_id": f"rp-m{i}", "formula": "Al"}],
             "steps": [{"name": "s", "calc_type": "SP", "command": [sys.executable, "-c", body.replace("IDX", str(i))]}]}
            for i in range(n)
        ],
        **extra,
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def test_local_run_merges_successes_and_archives_failures(tmp_path, mace_env) -> None:
    from mace_hpc.submission.submit import submit_plan

    body = "import json,sys; json.dump(dict(energy=-IDX), open('results.json','w')); sys.exit(3 if IDX == 1 else 0)"
    submit_plan(_plan(tmp_path, 3, body, on_failure="archive"), backend="local")
    root = mace_env["scratch_root"]
    assert [state_of(root / f"rp-e{i}")["state"] for i in range(3)] == [st.MERGED, st.ARCHIVED, st.MERGED]
    assert material_ids(tmp_path / "shared" / "materials.db") == ["rp-m0", "rp-m2"]
    assert (mace_env["archive_dir"] / "rp-e1.tar.gz").is_file()


def test_time_limit_signal_still_runs_the_epilogue(tmp_path, mace_env) -> None:
    from mace_hpc.config import load_config
    from mace_hpc.plan import plan_from_any
    from mace_hpc.submission.contexts import build_submission, create_contexts

    body = "import json,time; json.dump(dict(x=1), open('results.json','w')); print('started', flush=True); time.sleep(600)"
    plan = plan_from_any(_plan(tmp_path, 1, body, on_failure="archive"))
    subm = create_contexts(build_submission(plan, load_config()), plan)
    proc = subprocess.Popen([sys.executable, "-m", "mace_hpc.element", str(subm.manifest_path), "--index", "0"])
    out = mace_env["scratch_root"] / "rp-e0" / "calculations" / "s" / "stdout.txt"
    for _ in range(600):
        if out.exists() and out.read_text().startswith("started"):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR2)  # what SLURM's --signal=B:USR2@margin sends before the limit
    assert proc.wait(timeout=120) == 124
    state = state_of(mace_env["scratch_root"] / "rp-e0")
    assert state["run_state"] == st.TIMEOUT and state["state"] == st.ARCHIVED
    assert (mace_env["archive_dir"] / "rp-e0.tar.gz").is_file()


# ---------------------------------------------------------------------------- backstop
def test_backstop_request_depends_on_every_array_and_runs_mace_merge(tmp_path) -> None:
    req = backstop_request("myplan", ["101", "102"], scratch_root=tmp_path / "s", work_dir=tmp_path / "logs",
                           scheduler={"partition": "debug", "gres": "gpu:1", "time": 600, "setup": ["module load x"]},
                           elements=20)
    assert req.indices is None and req.task_ids() == []
    assert req.dependency == "afterany:101:102"
    assert req.command[1:] == ["-m", "mace_hpc.cli.main", "merge", "myplan", "--ended"]
    assert req.env["MACE_SCRATCH_ROOT"] == str((tmp_path / "s").absolute())
    assert req.scheduler["partition"] == "debug" and "gres" not in req.scheduler
    assert req.scheduler["setup"] == ["module load x"] and req.scheduler["time"] >= 10
    with pytest.raises(ValueError):
        backstop_request("myplan", [], scratch_root=tmp_path, work_dir=tmp_path)
    from mace_hpc.errors import InputError

    with pytest.raises(InputError):
        backstop_request("../evil", ["1"], scratch_root=tmp_path, work_dir=tmp_path)


def test_hooks_leave_pending_merge_to_the_backstop(sub, mace_env) -> None:
    sub(1)
    st.write_state(_ctx(mace_env, 0), state=st.PENDING_MERGE, pending_reason="lock busy")
    assert main(["epilogue", str(_ctx(mace_env, 0)), "--ended", "--no-retry", "-q"]) == 0
    assert state_of(_ctx(mace_env, 0))["state"] == st.PENDING_MERGE  # not retried at once by a hook
    assert main(["epilogue", str(_ctx(mace_env, 0)), "-q"]) == 0
    assert state_of(_ctx(mace_env, 0))["state"] == st.MERGED


def test_running_state_of_a_live_runner_is_not_taken_for_dead(sub, mace_env) -> None:
    import socket

    sub(2, run_states={0: st.RUNNING, 1: st.RUNNING})
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        alive = {"host": socket.gethostname(), "pid": sleeper.pid, "started_at": time.time()}
        st.write_state(_ctx(mace_env, 0), **alive)
        # same pid, but that process started after the element did: a reused pid, the runner is gone
        st.write_state(_ctx(mace_env, 1), **{**alive, "started_at": time.time() - 3600})
        summary = merge_pending(plans=[PLAN], options=Options(ended=True))
        assert {o.workflow_id: o.action for o in summary.outcomes} == {f"{PLAN}-e0": "running", f"{PLAN}-e1": "kept"}
        assert state_of(_ctx(mace_env, 1))["lost"] is True
    finally:
        sleeper.kill()
        sleeper.wait()
