"""`mace cleanup`: only finished-and-safe contexts go, oldest first, and the tombstone keeps status right."""

from __future__ import annotations

import json
import os
import time

import pytest
from epilogue_helpers import make_context, make_submission, shared_rows, state_of

from mace_hpc import records as st
from mace_hpc.cli.main import main
from mace_hpc.epilogue.cleanup import cleanup, parse_age, parse_size
from mace_hpc.epilogue.hook import run_epilogue
from mace_hpc.errors import InputError

DAY = 86400.0


@pytest.fixture
def contexts(mace_env):
    """Six contexts finished 30..5 days ago: merged, archived, kept, pending, failed-kept, running."""
    root = mace_env["scratch_root"]
    manifest = make_submission(root, "cp", 6, shared_database=mace_env["shared_database"],
                               archive_dir=mace_env["archive_dir"], on_failure="keep",
                               run_states={4: st.FAILED, 5: st.RUNNING})
    now = time.time()
    policies = {0: "merge", 1: "archive", 2: "keep"}
    for i, policy in policies.items():
        run_epilogue(root / f"cp-e{i}", manifest=manifest, on_complete=policy)
    st.write_state(root / "cp-e3", state=st.PENDING_MERGE, pending_reason="lock busy")
    run_epilogue(root / "cp-e4", manifest=manifest)  # FAILED + keep -> KEPT
    for i in range(6):  # ages: 30, 25, 20, 15, 10, 5 days
        st.write_state(root / f"cp-e{i}", finished_at=now - (30 - 5 * i) * DAY)
    return root


def _names(report_list):
    return sorted(c.workflow_id for c in report_list)


def test_parse_size_and_age() -> None:
    assert parse_size("50G") == 50 << 30 and parse_size("512M") == 512 << 20 and parse_size("1000") == 1000
    assert parse_size("1.5KiB") == 1536
    assert parse_age("14d") == 14 * DAY and parse_age("12h") == 43200 and parse_age("2w") == 14 * DAY
    for bad in ("", "ten", "5x", "-3d"):
        with pytest.raises(InputError):
            parse_age(bad)
    with pytest.raises(InputError):
        parse_size("lots")


def test_only_merged_and_archived_contexts_are_removed(contexts, mace_env) -> None:
    states = [state_of(contexts / f"cp-e{i}")["state"] for i in range(6)]
    assert states == [st.MERGED, st.ARCHIVED, st.KEPT, st.PENDING_MERGE, st.KEPT, st.RUNNING]
    report = cleanup(older_than=1 * DAY)
    assert _names(report.removed) == ["cp-e0", "cp-e1"]
    for i in (0, 1):
        assert sorted(os.listdir(contexts / f"cp-e{i}")) == ["context.json", "state.json"]
        assert state_of(contexts / f"cp-e{i}")["removed"] is True
    for i in (2, 3, 4, 5):
        assert (contexts / f"cp-e{i}" / "materials.db").is_file()
    # the merged one was archived before removal (archive_results defaults to on)
    assert (mace_env["archive_dir"] / "cp-e0.tar.gz").is_file()
    assert shared_rows(mace_env["shared_database"])["materials"] == 1
    assert cleanup(older_than=0).removed == []  # tombstones and unsafe ones stay


def test_older_than_uses_the_finish_time(contexts) -> None:
    report = cleanup(older_than=27 * DAY, dry_run=True)
    assert _names(report.removed) == ["cp-e0"]
    assert (contexts / "cp-e0" / "materials.db").is_file()  # dry run


def test_max_total_size_removes_oldest_safe_first(contexts) -> None:
    (contexts / "cp-e1" / "calculations" / "s" / "big.bin").write_bytes(os.urandom(1 << 20))
    (contexts / "cp-e0" / "calculations" / "s" / "big.bin").write_bytes(os.urandom(1 << 20))
    sizes = {c.workflow_id: c.size for c in cleanup(max_total_size=1 << 40, dry_run=True).kept}
    total = sum(sizes.values())
    one = cleanup(max_total_size=total - 1, dry_run=True)  # one removal is enough: the oldest safe one
    assert _names(one.removed) == ["cp-e0"]
    everything = cleanup(max_total_size=0, dry_run=True)  # never more than the safe ones
    assert _names(everything.removed) == ["cp-e0", "cp-e1"]
    done = cleanup(max_total_size=total - 1)
    assert _names(done.removed) == ["cp-e0"] and done.total_after < total


def test_merged_without_a_ledger_entry_is_not_trusted(contexts, mace_env) -> None:
    os.unlink(mace_env["shared_database"])  # the shared DB was lost or replaced: MERGED is a claim now
    report = cleanup(older_than=0)
    assert _names(report.removed) == ["cp-e1"]
    assert (contexts / "cp-e0" / "materials.db").is_file()
    kept = {c.workflow_id: c.why for c in report.kept}
    assert "no ledger entry" in kept["cp-e0"]


def test_archived_without_its_archive_is_not_removed(contexts, mace_env) -> None:
    os.unlink(mace_env["archive_dir"] / "cp-e1.tar.gz")
    report = cleanup(older_than=0, archive_merged=False)
    assert _names(report.removed) == ["cp-e0"]
    assert (contexts / "cp-e1" / "materials.db").is_file()


def test_contexts_without_a_manifest_follow_the_config(mace_env) -> None:
    root = mace_env["scratch_root"]
    make_context(root / "loose", "loose")
    run_epilogue(root / "loose", on_complete="archive")
    st.write_state(root / "loose", finished_at=time.time() - 20 * DAY)
    assert _names(cleanup().removed) == ["loose"]  # default: older than 14 days


def test_cli_cleanup(contexts, capsys) -> None:
    assert main(["cleanup", "--older-than", "1d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove {contexts / 'cp-e0'}" in out and f"would remove {contexts / 'cp-e2'}" not in out
    assert "not safe to remove" in out and "2 context(s) would be removed" in out
    assert (contexts / "cp-e0" / "materials.db").is_file()
    assert main(["cleanup", "--max-total-size", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(c["workflow_id"] for c in report["removed"]) == ["cp-e0", "cp-e1"]
    assert main(["cleanup", "--older-than", "soon"]) == 2
