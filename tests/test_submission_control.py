"""mace_hpc.submission.control: `mace cancel` and `mace resubmit` called directly.

(tests/test_status.py drives the same through the CLI.) The scheduler is `FakeBackend` where one
is needed; the local backend needs none: its elements are known from their state files.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from submit_fakes import FakeBackend, set_state_file, simple_plan, submitted_to_fake

from mace_hpc.errors import InputError
from mace_hpc.records import RecordError, load_record, read_state, write_record
from mace_hpc.records.layout import SubmissionPaths
from mace_hpc.records.submission import Runner
from mace_hpc.submission.control import cancel, find_submission, parse_elements, resubmit
from mace_hpc.submission.submit import own_runner, submit_plan
from mace_hpc.util.procs import process_start_time


def _record_path(scratch: Path, plan: str) -> Path:
    return SubmissionPaths.of(scratch, plan).record


# ---------------------------------------------------------------------------- parse_elements
@pytest.mark.parametrize(
    ("text", "expected"),
    [("3,7,12", [3, 7, 12]), ("0-2,9, 2", [0, 1, 2, 9]), (" , 4,", [4]), ("5-5", [5]), ("12", [12])],
)
def test_parse_elements_reads_lists_and_ranges(text: str, expected: list[int]) -> None:
    assert parse_elements(text, 13) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("two", "--elements: 'two' is not an index or a range like 3-7"),
        ("5-3", "--elements: '5-3' is not an index or a range like 3-7"),
        ("-1", "--elements: '-1' is not an index or a range like 3-7"),
        ("1-x", "--elements: '1-x' is not an index or a range like 3-7"),
        ("", "--elements: give element indices like 3,7,12"),
        (" , ", "--elements: give element indices like 3,7,12"),
        ("0,13", "--elements: 13 is not an element of this plan (indices 0-12)"),
        ("10-20", "--elements: 13 is not an element of this plan (indices 0-12)"),
    ],
)
def test_parse_elements_bad_input_is_one_line(text: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        parse_elements(text, 13)
    assert str(err.value) == message and err.value.exit_code == 2


# ---------------------------------------------------------------------------- cancel (local backend)
def test_cancel_marks_never_started_local_elements_and_records_when(tmp_path: Path, mace_env: dict[str, Path]) -> None:
    scratch = mace_env["scratch_root"]
    submit_plan(simple_plan("lc", 3), backend="local", prepare_only=True)
    set_state_file(scratch, "lc-e0", "MERGED", run_state="COMPLETED", attempts=1)
    set_state_file(scratch, "lc-e1", "RUNNING", attempts=1)
    before = time.time()
    result = cancel("lc")
    assert (result.plan, result.job_ids, result.marked, result.running) == ("lc", [], 1, 1)
    e2 = read_state(scratch / "lc-e2")
    assert e2.state == e2.run_state == "CANCELLED" and e2.message == "cancelled (mace cancel) before it started"
    assert e2.finished_at >= before and e2.attempts == 0
    assert read_state(scratch / "lc-e0").state == "MERGED"  # finished: left alone
    assert read_state(scratch / "lc-e1").state == "RUNNING"  # its runner records how it ends
    assert before <= load_record(_record_path(scratch, "lc")).cancelled_at <= time.time()


def test_cancel_stops_the_process_running_a_local_plan(tmp_path: Path, mace_env: dict[str, Path]) -> None:
    """Locally the plan's runner (the `mace submit` process in the foreground) is what gets SIGTERM."""
    scratch = mace_env["scratch_root"]
    result = submit_plan(simple_plan("lr", 1), backend="local", prepare_only=True)
    runner = subprocess.Popen(["sleep", "60"])
    try:
        started = process_start_time(runner.pid)
        write_record(result.submission.directory, result.record.replace(
            runner=Runner(runner.pid, own_runner().host, started)))
        cancel("lr")
        assert runner.wait(10) == -15
    finally:
        runner.kill()
        runner.wait(10)
    assert read_state(scratch / "lr-e0").state == "CANCELLED"


# ---------------------------------------------------------------------------- resubmit (fake SLURM)
@pytest.fixture
def mixed(tmp_path: Path, mace_env: dict[str, Path], fake_backend: FakeBackend) -> Path:
    """Plan `rs`, 6 elements: 0 merged, 1 failed, 2 timed out (archived), 3 cancelled,
    4 completed with its merge pending, 5 still running; returns the scratch root."""
    scratch = mace_env["scratch_root"]
    [job] = submitted_to_fake(tmp_path, "rs", 6, max_parallel=3)
    fake_backend.set_state(job, "COMPLETED")
    files = {0: ("MERGED", "COMPLETED"), 1: ("KEPT", "FAILED"), 2: ("ARCHIVED", "TIMEOUT"),
             3: ("CANCELLED", "CANCELLED"), 4: ("PENDING_MERGE", "COMPLETED"), 5: ("RUNNING", "RUNNING")}
    for i, (state, run_state) in files.items():
        set_state_file(scratch, f"rs-e{i}", state, run_state=run_state, attempts=1)
    fake_backend.set_state(job, "RUNNING", [5])
    return scratch


def test_resubmit_failed_picks_exactly_the_failed_timed_out_and_cancelled(mixed: Path,
                                                                         fake_backend: FakeBackend) -> None:
    result = resubmit("rs")
    assert result.indices == [1, 2, 3] and result.job_ids == ["1003"] and result.backstop_job_id == "1004"
    new = fake_backend.array_requests()[-1]
    assert new.indices == [1, 2, 3] and new.max_parallel == 3 and new.command == fake_backend.submitted[0].command
    for i in (1, 2, 3):
        state = read_state(mixed / f"rs-e{i}")
        assert state.state == "PENDING" and state.attempts == 1 and state.resubmitted_at  # the runner counts on
    assert [read_state(mixed / f"rs-e{i}").state for i in (0, 4, 5)] == ["MERGED", "PENDING_MERGE", "RUNNING"]
    record = load_record(_record_path(mixed, "rs"))
    assert [(j.job_id, j.kind, j.attempt, j.indices) for j in record.jobs] == [
        ("1001", "array", 1, (0, 1, 2, 3, 4, 5)), ("1002", "backstop", 1, ()),
        ("1003", "resubmit", 2, (1, 2, 3)), ("1004", "backstop", 1, ())]
    assert record.resubmissions[-1]["indices"] == [1, 2, 3] and record.resubmissions[-1]["attempt"] == 2
    assert record.runner is None and record.next_attempt() == 3

    # the second round: element 2 failed again; found by one of its job ids this time
    fake_backend.set_state("1003", "COMPLETED")
    fake_backend.set_state("1003", "FAILED", [2])
    for i in (1, 3):
        set_state_file(mixed, f"rs-e{i}", "MERGED", run_state="COMPLETED", attempts=2)
    set_state_file(mixed, "rs-e2", "KEPT", run_state="FAILED", attempts=2)
    again = resubmit("1003_2")
    assert again.indices == [2]
    assert [(j.job_id, j.attempt) for j in again.record.array_jobs()][-1] == ("1005", 3)


def test_resubmit_refuses_elements_still_running(mixed: Path, fake_backend: FakeBackend) -> None:
    arrays = len(fake_backend.array_requests())
    with pytest.raises(InputError) as err:
        resubmit("rs", elements="1,5")
    assert str(err.value) == ("--elements: element(s) 5 of 'rs' are still queued or running; "
                              "wait for them or `mace cancel rs` first")
    assert len(fake_backend.array_requests()) == arrays
    assert read_state(mixed / "rs-e1").state == "KEPT"  # nothing was reset
    assert read_state(mixed / "rs-e5").state == "RUNNING"


def test_resubmit_refuses_while_the_plan_is_still_being_submitted(mixed: Path, fake_backend: FakeBackend) -> None:
    paths = SubmissionPaths.of(mixed, "rs")
    write_record(paths.root, load_record(paths.record).replace(runner=own_runner()))
    with pytest.raises(InputError, match=r"^plan 'rs' is still being run by pid \d+; wait for it or `mace cancel rs`$"):
        resubmit("rs", elements=[1])
    assert read_state(mixed / "rs-e1").state == "KEPT"


def test_an_unknown_plan_or_job_is_one_line_naming_the_known_plans(mixed: Path) -> None:
    assert find_submission("1001_4")[1].plan == "rs"
    with pytest.raises(RecordError, match=r"^no submission named or with job id '999' under .*; known plans: rs "):
        find_submission("999")
