"""The holes a hostile sweep found (issue 13, items 1-8), each reproduced as an attacker or a
careless user would, through the real CLI and library. Another user is simulated with a second
uid (files chowned to it, reads attempted with `setpriv --reuid`)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from submit_fakes import cli, simple_plan, write_plan

from mace_hpc import records as st
from mace_hpc.errors import InputError
from mace_hpc.records import read_state
from mace_hpc.submission import submit as submit_mod
from mace_hpc.submission.submit import submit_plan
from mace_hpc.workflow.context import WorkflowContext

OTHER_UID = 54321  # no such user needed: ownership is what the checks look at
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="simulating another user needs root (CI runs as root)")


def _shared(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _mace_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


# ---------------------------------------------------------------------------- 1. double submission
def test_two_submissions_started_together_one_runs_the_other_is_refused(tmp_path, mace_env) -> None:
    plan = simple_plan("twice", 4)
    for e in plan["elements"]:
        e["steps"] = [{"name": "s", "command": [sys.executable, "-c",
                                                "import json,time; time.sleep(1); json.dump({'x': 1}, open('results.json','w'))"]}]
        e["materials"] = [{"material_id": f"m-{e['id']}", "formula": "Al"}]
    path = write_plan(tmp_path, plan)
    argv = [sys.executable, "-m", "mace_hpc.cli.main", "submit", str(path)]
    procs = [subprocess.Popen(argv, env=_mace_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "already submitted" in refused or "being submitted" in refused
    db = mace_env["shared_database"]
    assert _shared(db, "SELECT count(*) FROM calculations") == [(4,)]  # every calculation once
    assert _shared(db, "SELECT count(*) FROM properties") == [(4,)]
    assert _shared(db, "SELECT count(*) FROM merge_ledger") == [(4,)]


# ---------------------------------------------------------------------------- 2. shared cleanup_on_exit
_HOLDER = textwrap.dedent("""
    import sys, time
    from mace_hpc.workflow.context import WorkflowContext
    i, root, arch = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    import os; os.environ["MACE_ARCHIVE_DIR"] = arch
    with WorkflowContext("together", "isolated", cleanup_on_exit=True, archive_results=True, scratch_root=root) as ctx:
        time.sleep(0.5 + 0.3 * i)  # the others are still inside when the first one leaves
        ctx.get_database().create_material(material_id=f"m{i}", formula="Al")
        time.sleep(0.1 * i)
""")


def test_context_used_by_several_processes_is_cleaned_up_by_the_last_one(tmp_path, mace_env) -> None:
    root, arch = tmp_path / "scratch", tmp_path / "archives"
    procs = [subprocess.Popen([sys.executable, "-c", _HOLDER, str(i), str(root), str(arch)], env=_mace_env(),
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    errs = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in errs), errs
    assert sum("cleanup deferred" in err for _, err in errs) >= 1  # said so
    assert not (root / "together").exists()  # the last holder cleaned up...
    restored = tmp_path / "restored"
    from mace_hpc.context.archive import archive_path, restore_archive

    restore_archive(archive_path(arch, "together"), restored)
    rows = _shared(restored / "together" / "materials.db", "SELECT material_id FROM materials ORDER BY 1")
    assert rows == [("m0",), ("m1",), ("m2",), ("m3",)]  # ...after every holder's result was in


# ---------------------------------------------------------------------------- 3. empty database
def test_an_emptied_context_database_is_quarantined_not_merged(tmp_path, mace_env, capsys) -> None:
    plan = simple_plan("emptied", 2, on_complete="keep")
    submit_plan(write_plan(tmp_path, plan), backend="local")
    ctx = mace_env["scratch_root"] / "emptied-e0"
    (ctx / "materials.db").write_bytes(b"")  # `: > CONTEXT/materials.db`
    (mace_env["scratch_root"] / "emptied-e1" / "materials.db").unlink()  # deleted
    rc, out, err = cli(capsys, "merge", "emptied", "--on-complete", "merge")
    assert rc == 1
    assert "merged" not in out.split("quarantined")[0] or "0 merged" in out or "quarantined" in out
    assert read_state(ctx).state == st.QUARANTINED
    assert read_state(mace_env["scratch_root"] / "emptied-e1").state == st.QUARANTINED
    db = mace_env["shared_database"]
    assert not db.exists() or _shared(db, "SELECT count(*) FROM merge_ledger") == [(0,)]


# ---------------------------------------------------------------------------- 4. ghosts after kill -9
def test_a_rerun_closes_the_calculations_a_hard_kill_left_running(tmp_path, mace_env, capsys) -> None:
    # the step kills its runner (like kill -9 of the job) the first time only
    step = ["sh", "-c", "test -f ../done-once || { touch ../done-once; kill -9 $PPID; sleep 5; }"]
    plan = {"name": "ghost", "isolation_mode": "isolated", "on_failure": "keep",
            "elements": [{"id": "e0", "steps": [{"name": "s", "command": step}]}]}
    path = write_plan(tmp_path, plan)
    submit_plan(path, backend="local")
    ctx = mace_env["scratch_root"] / "ghost-e0"
    assert read_state(ctx).run_state == st.FAILED and read_state(ctx).lost  # finalized as lost, not stuck
    rc, _, _ = cli(capsys, "resubmit", "ghost", "--failed")
    assert rc == 0
    rc, _, _ = cli(capsys, "merge", "ghost", "--on-complete", "merge")
    db = mace_env["shared_database"]
    statuses = _shared(db, "SELECT status FROM calculations ORDER BY created_at")
    assert ("running",) not in statuses
    assert statuses == [("failed",), ("completed",)]


# ---------------------------------------------------------------------------- 5. read-only target
@ROOT_ONLY
def test_a_read_only_shared_database_leaves_contexts_pending_not_quarantined(tmp_path, mace_env, capsys) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed")
    shared = mace_env["shared_database"]
    submit_plan(write_plan(tmp_path, simple_plan("first", 1), "first.json"), backend="local")  # schema + rows
    if subprocess.run(["chattr", "+i", str(shared)], capture_output=True).returncode:
        pytest.skip("this filesystem has no immutable attribute")
    try:  # a read-only file (root ignores modes, not the immutable flag): SQLite opens it read-only
        submit_plan(write_plan(tmp_path, simple_plan("rodb", 2)), backend="local")
        for i in range(2):
            state = read_state(mace_env["scratch_root"] / f"rodb-e{i}")
            assert state.state == st.PENDING_MERGE and "readonly" in state.pending_reason.lower().replace("-", "")
        assert not (mace_env["scratch_root"] / ".quarantine").exists()
    finally:
        subprocess.run(["chattr", "-i", str(shared)], capture_output=True)
    rc, _, _ = cli(capsys, "merge", "rodb")
    assert rc == 0
    assert _shared(shared, "SELECT count(*) FROM merge_ledger") == [(3,)]


# ---------------------------------------------------------------------------- 6. shared scratch takeover
@ROOT_ONLY
def test_precreated_foreign_or_world_writable_dirs_are_refused(tmp_path, mace_env, capsys) -> None:
    root = mace_env["scratch_root"]
    root.mkdir(parents=True)
    os.chmod(root, 0o1777)  # a shared scratch
    planted = root / "trap-e0"
    planted.mkdir()
    os.chown(planted, OTHER_UID, OTHER_UID)  # another user pre-created the victim's context
    path = write_plan(tmp_path, simple_plan("trap", 1))
    rc, _, err = cli(capsys, "submit", str(path))
    assert rc == 2 and "owned by uid 54321" in err and "\n" not in err.strip()
    assert list(planted.iterdir()) == []  # nothing written into it
    shutil.rmtree(planted)
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)  # ours, but world-writable: another user could plant files in it
    rc, _, err = cli(capsys, "submit", str(path))
    assert rc == 2 and "writable by other users" in err
    with pytest.raises(InputError, match="writable by other users"):
        WorkflowContext("trap-e0", "isolated", scratch_root=root).ensure_directory()


@ROOT_ONLY
def test_a_planted_database_symlink_is_never_followed(tmp_path, mace_env) -> None:
    victim = tmp_path / "victim.db"
    victim.write_bytes(b"")
    ctx = WorkflowContext("sym", "isolated", scratch_root=mace_env["scratch_root"])
    ctx.ensure_directory()
    os.symlink(victim, ctx.database_path)
    with pytest.raises(InputError, match="symlink"):
        ctx.get_database()
    assert victim.read_bytes() == b""  # the victim's file gained no tables


@ROOT_ONLY
def test_a_swapped_record_never_runs_another_users_command(tmp_path, mace_env, capsys) -> None:
    submit_plan(write_plan(tmp_path, simple_plan("swap", 1, on_failure="keep")), backend="local")
    record_path = mace_env["scratch_root"] / ".submissions" / "swap" / "record.json"
    record = json.loads(record_path.read_text())
    record["command"] = ["touch", str(tmp_path / "pwned")]
    record_path.write_text(json.dumps(record))
    os.chown(record_path, OTHER_UID, OTHER_UID)  # the attacker's file now
    rc, _, err = cli(capsys, "resubmit", "swap", "--elements", "0")
    assert rc == 2 and "no submission named" in err or "only you can write" in err
    assert not (tmp_path / "pwned").exists()


@ROOT_ONLY
def test_another_user_cannot_read_a_context(tmp_path, mace_env) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    submit_plan(write_plan(tmp_path, simple_plan("private", 1, on_complete="keep")), backend="local")
    ctx = mace_env["scratch_root"] / "private-e0"
    assert (os.stat(ctx).st_mode & 0o777) == 0o700
    assert (os.stat(ctx / "materials.db").st_mode & 0o077) == 0
    os.chmod(tmp_path, 0o755)  # let the other uid reach the directory at all
    os.chmod(mace_env["scratch_root"], 0o755)
    proc = subprocess.run(["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups",
                           "cat", str(ctx / "materials.db")], capture_output=True)
    assert proc.returncode != 0 and b"Permission denied" in proc.stderr


# ---------------------------------------------------------------------------- 7. stuck RUNNING
_STEPS = textwrap.dedent("""
    import os, signal, sys
    def exits():
        sys.exit(0)
    def interrupts():
        raise KeyboardInterrupt
    def kills_itself():
        os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize(("function", "run_state"), [
    ("exits", st.COMPLETED), ("interrupts", st.FAILED), ("kills_itself", st.FAILED),
])
def test_a_function_step_cannot_leave_its_element_running(tmp_path, mace_env, capsys, function, run_state) -> None:
    (tmp_path / "hostile_steps.py").write_text(_STEPS)
    plan = {"name": f"stuck-{function}".replace("_", "-"), "isolation_mode": "isolated",
            "elements": [{"id": "e0", "steps": [{"name": "s", "function": f"hostile_steps:{function}"}]}]}
    submit_plan(write_plan(tmp_path, plan), backend="local")
    state = read_state(mace_env["scratch_root"] / f"{plan['name']}-e0")
    assert state.run_state == run_state and state.state != st.RUNNING
    rc, out, _ = cli(capsys, "merge", plan["name"])
    assert "running" not in out


# ---------------------------------------------------------------------------- 8. disk full, record
def test_disk_full_while_writing_the_record_says_so(tmp_path, mace_env, capsys, monkeypatch) -> None:
    real = submit_mod.write_record
    calls = []

    def full(directory, record):
        calls.append(1)
        if len(calls) == 2:  # after the local elements ran: the record of their job
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return real(directory, record)

    monkeypatch.setattr(submit_mod, "write_record", full)
    path = write_plan(tmp_path, simple_plan("fullrec", 2))
    rc, _, err = cli(capsys, "submit", str(path))  # before the fix: SIGTERM to this very process
    assert rc == 1
    assert "No space left on device" in err.strip().splitlines()[-1] and "Traceback" not in err
