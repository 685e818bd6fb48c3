"""Failure causes, accounting readers, the retry policy, notifications and the efficiency report,
without a cluster: sacct/qstat text captured from the real schedulers (tests/golden), the local
backend for whole plans. The real-SLURM versions are in test_retry_slurm.py."""

from __future__ import annotations

import html
import http.server
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mace_hpc.cli.main import run
from mace_hpc.errors import PlanError
from mace_hpc.plan import load_plan_data
from mace_hpc.plan.policy import AppError, Notify, RetryPolicy, failure_policy
from mace_hpc.records.causes import Cause, Limits, Usage
from mace_hpc.records.element_state import ElementState
from mace_hpc.records.submission import find_record
from mace_hpc.schedulers.pbs.accounting import parse_queue_limits, pbs_state, usage_from_records
from mace_hpc.schedulers.slurm.accounting import SlurmAccounting, parse_partition, parse_sacct, size_bytes
from mace_hpc.status.classify import classify
from mace_hpc.status.efficiency import percentile, summarize
from mace_hpc.submission.notify import post, run_command
from mace_hpc.submission.retry import decide
from mace_hpc.util.atomic import read_json

GOLDEN = Path(__file__).parent / "golden"
NO_LIMITS = lambda partition: Limits(name=partition)  # noqa: E731


# ---------------------------------------------------------------------------- causes
@pytest.mark.parametrize("text", ["COMPLETED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "CANCELLED",
                                  "APP_ERROR:scf", "FAILED(exit 3)", "FAILED(exit -29)"])
def test_cause_spelling_round_trips(text: str) -> None:
    assert str(Cause.parse(text)) == text


def test_a_cause_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not a cause"):
        Cause.parse("OOM")


# ---------------------------------------------------------------------------- sacct
def test_real_sacct_array_rows_fold_steps_into_their_element() -> None:
    rows = parse_sacct((GOLDEN / "sacct_array_slurm2205.txt").read_text(), names=True)
    assert sorted(rows) == [("1", 0), ("1", 1), ("1", 2), ("4", 0), ("4", 1)]  # no .batch duplicates
    u, name = rows[("4", 1)]
    assert name == "j.sh" and u.state == "FAILED" and (u.exit_code, u.signal) == (1, 0)
    assert u.elapsed_s == 40 and u.time_limit_s == 120 and u.req_mem_bytes == 100 << 20
    assert u.max_rss_bytes == 118704 * 1024  # from the batch step
    assert u.total_cpu_s == pytest.approx(36.024) and u.alloc_cpus == 1 and u.partition == "debug"
    assert rows[("1", 0)][0].max_rss_bytes is None  # 3 s: shorter than the sampling interval


def test_out_of_memory_in_a_step_wins_over_the_allocation_row() -> None:
    # the shape slurm 22.05 writes for a cgroup OOM kill (the allocation may say FAILED, the step OUT_OF_MEMORY)
    text = ("9_2|n@100|FAILED|0:125|0:0|31|10|2G||00:30.000|2|debug|vm\n"
            "9_2.batch|batch|OUT_OF_MEMORY|0:125||31|||2100000K|00:29.000|2||vm\n"
            "9_2.extern|extern|COMPLETED|0:0||31|||1000K|00:00:00|2||vm\n"
            "9_[3-5]|n@100|PENDING|0:0|0:0|0|10|2G||00:00:00|2|debug|None assigned\n")
    [((job, task), (u, name))] = parse_sacct(text, names=True).items()
    assert (job, task, name) == ("9", 2, "n@100")
    assert u.state == "OUT_OF_MEMORY" and u.max_rss_bytes == 2100000 * 1024
    assert str(classify(u, ElementState(state="RUNNING", run_state="RUNNING"))) == "OUT_OF_MEMORY"


def test_one_sacct_call_for_many_arrays_and_offsets_from_job_names() -> None:
    calls: list[list[str]] = []

    def fake(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        out = "5_0|p|COMPLETED|0:0|0:0|7|5|1G||00:03.000|1|debug|vm\n6_1|p@1001|TIMEOUT|0:15|0:0|300|5|1G||00:01:00|1|debug|vm\n"
        return subprocess.CompletedProcess(argv, 0, out, "")

    acc = SlurmAccounting(run=fake)
    usage = acc.usage(["5", "6"])
    assert len(calls) == 1 and calls[0][calls[0].index("-j") + 1] == "5,6"
    assert list(usage["5"]) == [0] and list(usage["6"]) == [1002]
    assert usage["6"][1002].state == "TIMEOUT" and usage["6"][1002].total_cpu_s == 60


@pytest.mark.parametrize(("text", "expected"), [("100M", 100 << 20), ("2G", 2 << 30), ("123K", 123 << 10),
                                                ("500Mc", None), ("1000Mn", 1000 << 20), ("", None)])
def test_sacct_sizes(text: str, expected: int | None) -> None:
    if text == "500Mc":
        assert size_bytes(text, cpus=4) == 2000 << 20
    else:
        assert size_bytes(text) == expected


def test_partition_limits_from_scontrol() -> None:
    line = ("PartitionName=short AllowGroups=ALL Default=NO MaxNodes=UNLIMITED MaxTime=00:03:00 MinNodes=1 "
            "Nodes=vm State=UP DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED MaxMemPerCPU=4000\n"
            "PartitionName=debug Default=YES MaxTime=UNLIMITED MaxMemPerNode=64000\n")
    short = parse_partition(line, "short")
    assert (short.max_time_min, short.max_mem_mb_per_node, short.max_mem_mb(4)) == (3, None, 16000)
    default = parse_partition(line, None)
    assert (default.name, default.max_time_min, default.max_mem_mb(1)) == ("debug", None, 64000)
    assert parse_partition("PartitionName=long MaxTime=2-00:00:00", "long").max_time_min == 2880


# ---------------------------------------------------------------------------- PBS
@pytest.mark.parametrize(("exit_status", "state"), [(0, "COMPLETED"), (-29, "TIMEOUT"), (-27, "OUT_OF_MEMORY"),
                                                    (-20, "NODE_FAIL"), (271, "CANCELLED"), (265, "FAILED"),
                                                    (3, "FAILED")])
def test_pbs_exit_status_convention(exit_status: int, state: str) -> None:
    got, code, sig = pbs_state({"job_state": "F", "Exit_status": exit_status, "exec_host": "vm/0"})
    assert got == state
    if exit_status > 256:
        assert sig == exit_status - 256 and code is None


def test_pbs_usage_from_a_real_openpbs_record() -> None:
    records = json.loads((GOLDEN / "qstat_openpbs_hardkill.json").read_text())["Jobs"]
    usage = usage_from_records(records)
    [seq] = usage
    u = usage[seq][0]
    assert u.state == "FAILED" and u.exit_code == 137 and u.max_rss_bytes == 28456 * 1024
    assert u.time_limit_s == 600 and u.elapsed_s == 1 and u.alloc_cpus == 1
    assert str(classify(u, ElementState(state="RUNNING"))) == "FAILED(exit 137)"


def test_pbs_queue_limits() -> None:
    text = json.dumps({"Queue": {"workq": {"resources_max": {"walltime": "02:00:00", "mem": "8gb"}}}})
    limits = parse_queue_limits(text, "workq")
    assert (limits.max_time_min, limits.max_mem_mb_per_node) == (120, 8192)


# ---------------------------------------------------------------------------- classification
def _state(run_state: str, steps: list[dict[str, Any]] | None = None, message: str = "") -> ElementState:
    return ElementState(state=run_state, run_state=run_state, steps=steps or [], message=message)


def test_classifier_precedence(tmp_path: Path) -> None:
    failed = [{"name": "scf", "status": "failed", "exit_code": 2}]
    step_dir = tmp_path / "calculations" / "scf"
    step_dir.mkdir(parents=True)
    (step_dir / "stdout.txt").write_text("cycle 1\nSCF NOT CONVERGED after 50 cycles\n")
    errors = [AppError("conv", "TOO MANY CYCLES"), AppError("scf", r"SCF NOT CONVERGED", retryable=True)]
    runner_timeout = Usage(0, "1", state="FAILED", exit_code=124)
    assert str(classify(runner_timeout, _state("TIMEOUT"))) == "TIMEOUT"
    assert str(classify(Usage(0, "1", state="NODE_FAIL"), _state("RUNNING"))) == "NODE_FAIL"
    assert str(classify(Usage(0, "1", state="PREEMPTED"), _state("CANCELLED"))) == "PREEMPTED"
    assert str(classify(None, _state("CANCELLED"))) == "CANCELLED"
    cause = classify(Usage(0, "1", state="FAILED", exit_code=1), _state("FAILED", failed), errors, tmp_path)
    assert str(cause) == "APP_ERROR:scf" and cause.retryable is True
    assert cause.detail == "stdout.txt: SCF NOT CONVERGED after 50 cycles"
    assert str(classify(None, _state("FAILED", failed), [AppError("x", "nomatch")], tmp_path)) == "FAILED(exit 2)"
    killed = Usage(0, "1", state="FAILED", exit_code=0, signal=9)
    assert str(classify(killed, _state("RUNNING"))) == "FAILED(exit 137)"
    assert str(classify(Usage(0, "1", state="COMPLETED"), _state("COMPLETED"))) == "COMPLETED"


def test_a_symlinked_output_file_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("SCF NOT CONVERGED\n")
    step_dir = tmp_path / "ctx" / "calculations" / "scf"
    step_dir.mkdir(parents=True)
    (step_dir / "stdout.txt").symlink_to(secret)
    failed = [{"name": "scf", "status": "failed", "exit_code": 2}]
    assert str(classify(None, _state("FAILED", failed), [AppError("scf", "SCF")], tmp_path / "ctx")) == "FAILED(exit 2)"


# ---------------------------------------------------------------------------- the policy
def test_timeout_doubles_time_capped_by_max_time_then_moves_to_next_partition() -> None:
    limits = {"short": Limits("short", max_time_min=3), "long": Limits("long", max_time_min=30)}.__getitem__
    old = {"time": 2, "partition": "short"}
    d = decide(0, 1, Cause("TIMEOUT"), old, RetryPolicy(max_attempts=3, enabled=True), None, limits)
    assert (d.action, d.new) == ("retry", {"time": 3, "partition": "short"})
    stuck = decide(0, 2, Cause("TIMEOUT"), {"time": 3, "partition": "short"}, RetryPolicy(max_attempts=3, enabled=True), None, limits)
    assert stuck.action == "give_up" and stuck.reason == "time already at the partition's MaxTime (3 min)"
    moved = decide(0, 2, Cause("TIMEOUT"), {"time": 3, "partition": "short"},
                   RetryPolicy(max_attempts=3, next_partition="long", enabled=True), None, limits)
    assert (moved.action, moved.new) == ("retry", {"time": 6, "partition": "long"})


def test_out_of_memory_grows_mem_capped_per_cpu() -> None:
    limits = lambda p: Limits(p, max_mem_mb_per_cpu=1000)  # noqa: E731
    d = decide(0, 1, Cause("OUT_OF_MEMORY"), {"mem": "1G", "cpus": 2}, RetryPolicy(max_attempts=2, mem_factor=1.5, enabled=True),
               None, limits)
    assert (d.action, d.new["mem"]) == ("retry", "1536M")
    capped = decide(0, 1, Cause("OUT_OF_MEMORY"), {"mem": "1800M", "cpus": 2}, RetryPolicy(max_attempts=2, enabled=True), None, limits)
    assert capped.new["mem"] == "2000M" and capped.action == "retry"
    # no mem asked: the scheduler's record of what was granted is the base
    granted = Usage(0, "1", req_mem_bytes=512 << 20)
    d = decide(0, 1, Cause("OUT_OF_MEMORY"), {}, RetryPolicy(max_attempts=2, enabled=True), granted, NO_LIMITS)
    assert d.new["mem"] == "768M"


@pytest.mark.parametrize(("cause", "policy", "reason"), [
    (Cause("CANCELLED"), RetryPolicy(max_attempts=5, enabled=True), "cancelled: never retried"),
    (Cause("APP_ERROR", name="basis", retryable=False), RetryPolicy(max_attempts=5, enabled=True),
     "named error basis is not retryable"),
    (Cause("FAILED", exit_code=1), RetryPolicy(max_attempts=5, enabled=True), "FAILED is not in retry.causes"),
    (Cause("TIMEOUT"), RetryPolicy(max_attempts=2, enabled=True), "retries exhausted (2 of 2 attempts)"),
])
def test_never_retried(cause: Cause, policy: RetryPolicy, reason: str) -> None:
    d = decide(4, 2, cause, {"time": 5}, policy, None, NO_LIMITS)
    assert (d.action, d.reason) == ("give_up", reason)


def test_retryable_named_error_and_listed_exit_failures_rerun_unchanged() -> None:
    d = decide(0, 1, Cause("APP_ERROR", name="scf", retryable=True), {"time": 5}, RetryPolicy(max_attempts=3, enabled=True),
               None, NO_LIMITS)
    assert (d.action, d.new) == ("retry", {"time": 5})
    d = decide(0, 1, Cause("FAILED", exit_code=1), {}, RetryPolicy(max_attempts=3, causes=("FAILED",), enabled=True), None, NO_LIMITS)
    assert d.action == "retry"


# ---------------------------------------------------------------------------- plan keys
BASE = {"name": "p", "elements": [{"id": "a", "steps": [{"name": "s", "command": ["true"]}]}]}


@pytest.mark.parametrize(("extra", "message"), [
    ({"retry": {"max_attempts": 0}}, "retry.max_attempts: "),
    ({"retry": {"time_factor": 0.5}}, "retry.time_factor: must be a number between 1.0 and 100.0, got 0.5"),
    ({"retry": {"causes": ["CANCELLED"]}}, "retry.causes[0]: CANCELLED is never retried"),
    ({"retry": {"causes": ["APP_ERROR:x"]}}, "retry.causes[0]: 'APP_ERROR:x' names no error of app_errors"),
    ({"retry": {"next_partition": "a b"}}, "retry.next_partition: 'a b' is not a partition name"),
    ({"app_errors": [{"name": "x", "pattern": "("}]}, "app_errors[0].pattern: is not a regular expression"),
    ({"app_errors": [{"name": "x", "pattern": "y", "files": ["../etc/passwd"]}]}, "app_errors[0].files[0]: "),
    ({"app_errors": [{"name": "x", "pattern": "y", "retryable": "yes"}]}, "app_errors[0].retryable: must be true"),
    ({"notify": {"command": "echo hi"}}, "notify.command: must be an argv list"),
    ({"notify": {"url": "file:///etc/passwd"}}, "notify.url: must be an http:// or https:// URL"),
    ({"notify": {"on": ["sometimes"]}}, "notify: give a command"),
    ({"notify": {"command": ["x"], "on": ["sometimes"]}}, "notify.on: must be a list of finished"),
])
def test_policy_keys_are_validated_in_one_line(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError) as exc:
        load_plan_data({**BASE, **extra})
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_policy_round_trips_through_the_saved_plan() -> None:
    data = {**BASE, "retry": {"max_attempts": 3, "causes": ["TIMEOUT", "APP_ERROR:scf"], "next_partition": "long"},
            "app_errors": [{"name": "scf", "pattern": "SCF", "retryable": True}],
            "notify": {"url": "https://example.org/hook", "failure_rate": 0.2}}
    plan = load_plan_data(data)
    again = load_plan_data(plan.to_dict())
    policy = failure_policy(again)
    assert policy.retry == RetryPolicy(3, ("TIMEOUT", "APP_ERROR:scf"), 2.0, 1.5, "long", enabled=True)
    assert policy.app_errors == (AppError("scf", "SCF", ("stdout.txt", "stderr.txt"), True),)
    assert policy.notify is not None and policy.notify.failure_rate == 0.2
    assert failure_policy(load_plan_data(BASE)).retry == RetryPolicy(max_attempts=1, enabled=False)
    d = decide(0, 1, Cause("TIMEOUT"), {"time": 5}, failure_policy(load_plan_data(BASE)).retry, None, NO_LIMITS)
    assert (d.action, d.reason) == ("give_up", "the plan has no retry policy (add `retry` to it)")


# ---------------------------------------------------------------------------- notifications
def test_a_hanging_notifier_is_left_detached_after_its_timeout(tmp_path: Path) -> None:
    t0 = time.monotonic()
    said = run_command(Notify(command=("sleep", "30"), timeout=0.5), {"milestone": "finished"}, "p", tmp_path)
    assert time.monotonic() - t0 < 3 and said.startswith("command still running after 0.5s")
    pid = int(said.rsplit("pid ", 1)[1].rstrip(")"))
    os.kill(pid, signal.SIGKILL)


def test_a_failing_notifier_never_raises(tmp_path: Path) -> None:
    said = run_command(Notify(command=(str(tmp_path / "missing"),)), {"milestone": "finished"}, "p", tmp_path)
    assert said.startswith("command failed: FileNotFoundError")
    assert post("http://127.0.0.1:9/", {"x": 1}, 1.0).startswith("webhook failed")


def test_webhook_posts_the_payload() -> None:
    got: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.handle_request, daemon=True).start()
    said = post(f"http://127.0.0.1:{server.server_port}/hook", {"milestone": "finished", "plan": "p"}, 5.0)
    server.server_close()
    assert said == "webhook HTTP 204" and got == [{"milestone": "finished", "plan": "p"}]


# ---------------------------------------------------------------------------- local backend, whole plans
FLAKY = r"""
import os, sys
kind = sys.argv[1]
marker = os.path.join(os.environ["MACE_CONTEXT_DIR"], "tried")
first = not os.path.exists(marker)
open(marker, "a").write("x")
if kind == "scf" and first:
    print("SCF NOT CONVERGED"); sys.exit(2)
if kind == "basis":
    print("BASIS SET LINEARLY DEPENDENT"); sys.exit(3)
print("ok")
"""


def test_local_plan_retries_named_errors_and_notifies_once(tmp_path: Path, mace_env: dict[str, Path],
                                                           chromium: Any) -> None:
    flaky = tmp_path / "flaky.py"
    flaky.write_text(FLAKY)
    out = tmp_path / "notified.txt"
    notify = tmp_path / "notify.sh"
    notify.write_text(f'#!/bin/sh\necho "$MACE_NOTIFY_MILESTONE $MACE_NOTIFY_PLAN" >> {out}\n')
    notify.chmod(0o755)
    plan = {"name": "loc", "retry": {"max_attempts": 3},
            "app_errors": [{"name": "scf", "pattern": "SCF NOT CONVERGED", "retryable": True},
                           {"name": "basis", "pattern": "BASIS SET"}],
            "notify": {"command": [str(notify)]},
            "elements": [{"id": k, "steps": [{"name": "s", "command": [sys.executable, str(flaky), k]}]}
                         for k in ("scf", "basis", "ok")]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert run(["submit", str(path), "--backend", "local"]) == 1  # basis stays failed
    _, record = find_record(mace_env["scratch_root"], "loc")
    assert [(d["index"], d["cause"], d["action"]) for d in record.retries] == [
        (0, "APP_ERROR:scf", "retry"), (1, "APP_ERROR:basis", "give_up")]
    assert [j.indices for j in record.array_jobs()] == [(0, 1, 2), (0,)]
    assert read_json(mace_env["scratch_root"] / "loc-scf" / "state.json")["state"] == "MERGED"
    assert out.read_text().splitlines() == ["finished loc"]
    assert run(["resubmit", "loc", "--failed", "--dry-run"]) == 0  # shows, queues nothing
    assert len(find_record(mace_env["scratch_root"], "loc")[1].jobs) == len(record.jobs)
    # the report says why, in a real browser: the attention list carries the policy's decision
    assert run(["report", "loc", "-o", str(tmp_path / "loc.html")]) == 0
    page = chromium.load(tmp_path / "loc.html")
    assert not [c for c in page.console if "error" in c.lower()] and page.page_requests == []
    attention = html.unescape(page.dom.split('id="attention"')[1].split("</section>")[0])
    assert "attempt 1 APP_ERROR:basis: not retried (named error basis is not retryable)" in attention


def test_local_efficiency_report_from_the_runner_records(tmp_path: Path, mace_env: dict[str, Path], capsys) -> None:
    plan = {"name": "effl", "resources": {"time": 2, "mem": "1G"}, "max_parallel": 1,
            "elements": [{"id": f"e{i}", "steps": [{"name": "s", "command": [
                sys.executable, "-c", "import time; t = time.time()\nwhile time.time() - t < 0.3: pass"]}]}
                for i in range(3)]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert run(["submit", str(path), "--backend", "local"]) == 0
    capsys.readouterr()
    assert run(["report", "effl", "--efficiency", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = data["elements"]
    assert [r["index"] for r in rows] == [0, 1, 2] and all(r["source"] == "runner" for r in rows)
    for r in rows:
        assert r["time_limit_s"] == 120 and r["req_mem_bytes"] == 1 << 30 and r["alloc_cpus"] == 1
        assert 0.3 <= r["elapsed_s"] < 10 and r["max_rss_bytes"] > 1 << 20
        assert 0 < r["cpu_efficiency"] <= 1.5 and r["core_hours"] == pytest.approx(r["elapsed_s"] / 3600, abs=1e-6)
    rec = data["summary"]["recommended"]
    assert rec["time"] == 1 and rec["mem"].endswith("M")
    assert rec["pack"] == 3  # short elements, one at a time: all three in one task would still keep it busy
    # --rightsize applies it to the next submission of the plan (and passes the packing advice on)
    assert run(["submit", str(path), "--backend", "local", "--rightsize"]) == 0
    out, err = capsys.readouterr()
    note = next(line for line in out.splitlines() + err.splitlines() if "rightsized from" in line)
    assert note.endswith('; its elements are short: consider `"pack": 3` in the plan'), note
    _, record = find_record(mace_env["scratch_root"], "effl")
    assert record.scheduler["time"] == 1 and record.scheduler["mem"] == rec["mem"]


def test_rightsize_without_an_earlier_submission_is_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**BASE, "name": "fresh"}))
    assert run(["submit", str(path), "--backend", "local", "--rightsize"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mace: error: --rightsize: plan 'fresh' has no earlier submission to measure; "
                   "submit it once without --rightsize"]


def test_percentiles_and_recommendation() -> None:
    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile(list(range(1, 101)), 95) == 95
    assert percentile([], 50) is None
    rows = [{"completed": True, "elapsed_s": 60.0 * i, "max_rss_bytes": (100 << 20) * i, "cpu_efficiency": 0.5,
             "time_used": 0.1, "mem_used": 0.1, "core_hours": 0.1, "core_hours_wasted": 0.05} for i in range(1, 21)]
    s = summarize(rows)
    assert s["percentiles"]["elapsed_s"]["p95"] == 19 * 60.0
    assert s["recommended"] == {"time": 24, "mem": f"{math.ceil(1900 * 1.25)}M", "margin": 0.25, "pack": None}


def test_retries_are_grouped_by_their_new_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    from mace_hpc.records.submission import RetryDecision
    from mace_hpc.submission import retry as retry_mod
    from mace_hpc.submission.control import ResubmitResult

    calls: list[tuple[list[int], dict[str, Any]]] = []

    def fake_resubmit(plan: str, *, elements: list[int], cfg: Any, resources: dict[str, Any]) -> ResubmitResult:
        calls.append((elements, resources))
        if resources.get("mem") == "9G":
            raise retry_mod.SchedulerError("sbatch: error: Memory specification can not be satisfied")
        return ResubmitResult(plan, "slurm", elements, job_ids=[str(100 + len(calls))])

    monkeypatch.setattr(retry_mod, "resubmit", fake_resubmit)
    pass_ = retry_mod.RetryPass("p", decisions=[
        RetryDecision(0, 1, "TIMEOUT", "retry", new={"time": 4}),
        RetryDecision(1, 1, "OUT_OF_MEMORY", "retry", new={"mem": "9G"}),
        RetryDecision(2, 1, "TIMEOUT", "retry", new={"time": 4}),
        RetryDecision(3, 1, "CANCELLED", "give_up", reason="cancelled: never retried"),
    ])
    out = retry_mod._submit_groups("p", pass_, cfg=None)  # type: ignore[arg-type]
    assert sorted(calls, key=str) == sorted([([0, 2], {"time": 4}), ([1], {"mem": "9G"})], key=str)
    by = {d.index: d for d in out}
    assert by[0].job_id == by[2].job_id and by[0].action == "retry"
    assert by[1].action == "give_up" and by[1].reason.startswith("retry not queued: sbatch: error: Memory")
    assert by[3].reason == "cancelled: never retried"


def test_the_backstop_never_asks_more_time_than_the_partition_allows() -> None:
    from mace_hpc.epilogue.backstop import backstop_request

    req = backstop_request("p", ["12"], scratch_root="/tmp", work_dir="/tmp", scheduler={"partition": "short"},
                           elements=10, max_time=3)
    assert req.scheduler["time"] == 3 and req.scheduler["partition"] == "short"
    assert backstop_request("p", ["12"], scratch_root="/tmp", work_dir="/tmp").scheduler["time"] == 10
