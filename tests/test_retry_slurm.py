"""Retries without a daemon and the efficiency report, on the real local SLURM cluster.

Every plan is submitted at once (module fixture) so they run concurrently; each test then waits
for its own. The retries are made by the backstop jobs themselves (`mace merge --ended` in a
SLURM job, `afterany` on the arrays): the test only submits and watches. A partition with
MaxTime=3 minutes is created for the session with `scontrol create` (and deleted afterwards), so
the time escalation (2 -> 4 minutes) is capped at 3 by a real partition limit.

Memory: this cluster (.ci/slurm/start.sh) has no cgroups; it enforces --mem with
JobAcctGatherParams=OverMemoryKill (memory a consumable resource, sampled every 2 s), which kills
the step with SIGKILL (sacct: FAILED 0:9, the peak above the request). An element that allocates
past its request is classified OUT_OF_MEMORY and retried with more memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slurm_fixtures import job_root

from mace_hpc.config import load_config
from mace_hpc.records import find_record, load_manifest
from mace_hpc.records.element_state import read_state
from mace_hpc.schedulers.base import get_backend
from mace_hpc.schedulers.slurm.accounting import parse_sacct, sacct_argv
from mace_hpc.status.reconcile import Report, collect
from mace_hpc.submission.retry import retry_pass
from mace_hpc.submission.submit import submit_plan

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent
WAIT_S = 420
PARTITION = f"maceretry{os.getpid()}"

# sleeps `nap` seconds on its first attempt only when told so; prints and fails as asked
STEP = r"""
import os, sys, time
kind, nap = sys.argv[1], float(sys.argv[2])
marker = os.path.join(os.environ["MACE_CONTEXT_DIR"], "attempts")
with open(marker, "a") as fh:
    fh.write("x")
attempt = len(open(marker).read())
if kind == "scf" and attempt == 1:
    print("cycle 80: SCF NOT CONVERGED"); sys.exit(2)
if kind == "basis":
    print("ERROR: BASIS SET LINEARLY DEPENDENT"); sys.exit(3)
if kind == "hog":
    if attempt == 1:
        x = bytearray(int(nap) << 20)
        for i in range(0, len(x), 4096):
            x[i] = 1
        time.sleep(10)  # held past the next accounting sample: killed there
    sys.exit(0)
if kind == "busy":
    end = time.time() + nap
    while time.time() < end:
        pass
    sys.exit(0)
time.sleep(nap)
"""


def _scontrol(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def retry_run(slurm_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root, environ = job_root(tmp_path_factory, "retry")
    scratch = root / "scratch"
    step = root / "step.py"
    step.write_text(STEP)
    node = subprocess.run(["sinfo", "-h", "-o", "%N", "-p", slurm_cluster.partition], capture_output=True,
                          text=True, timeout=15).stdout.split()[0]
    made = _scontrol("create", f"PartitionName={PARTITION}", f"Nodes={node}", "MaxTime=3", "State=UP")
    assert made.returncode == 0, f"cannot create the test partition: {made.stderr}"
    notified = root / "notified.jsonl"
    notify_sh = root / "notify.sh"
    notify_sh.write_text(f'#!/bin/sh\ncat "$MACE_NOTIFY_FILE" >> {notified}\necho >> {notified}\n')
    notify_sh.chmod(0o755)

    def cmd(kind: str, nap: float = 0) -> list[dict[str, Any]]:
        return [{"name": "work", "command": [sys.executable, str(step), kind, str(nap)]}]

    def plan(name: str, data: dict[str, Any]) -> Path:
        path = root / f"{name}.json"
        path.write_text(json.dumps({"name": name, **data}))
        return path

    timed = {"partition": PARTITION, "time": 2, "signal_margin": 60}
    plans = {
        # attempt 1: USR2 at 60 s of a 2-minute limit -> TIMEOUT; attempt 2 gets min(2*2, MaxTime 3) = 3
        # minutes (USR2 at 120 s) and completes its 90 s
        "rt-timeout": {"resources": timed, "retry": {"max_attempts": 3, "causes": ["TIMEOUT"], "time_factor": 2},
                       "elements": [{"id": "slow", "steps": cmd("sleep", 90)}]},
        # never fits: TIMEOUT twice, then "retries exhausted" and one notification
        "rt-exhaust": {"resources": timed, "retry": {"max_attempts": 2, "causes": ["TIMEOUT"]},
                       "notify": {"command": [str(notify_sh)], "on": ["retries_exhausted"]},
                       "elements": [{"id": "never", "steps": cmd("sleep", 400)}]},
        # named application errors: scf is retryable (passes on attempt 2), basis is not
        "rt-named": {"retry": {"max_attempts": 3},
                     "app_errors": [{"name": "scf", "pattern": "SCF NOT CONVERGED", "retryable": True},
                                    {"name": "basis", "pattern": "BASIS SET LINEARLY DEPENDENT"}],
                     "elements": [{"id": "scf", "steps": cmd("scf")}, {"id": "basis", "steps": cmd("basis")}]},
        # attempt 1 holds 300 MB under a 150M request: killed for memory, retried with 150M x 3
        "rt-oom": {"resources": {"mem": "150M"}, "retry": {"max_attempts": 2, "causes": ["OUT_OF_MEMORY"],
                                                            "mem_factor": 3},
                   "elements": [{"id": "hog", "steps": cmd("hog", 300)}]},
        # 20 elements burning CPU ~3 s each: the efficiency report
        "rt-eff": {"max_parallel": 8, "resources": {"mem": "200M"},
                   "elements": [{"id": f"e{i}", "steps": cmd("busy", 3)} for i in range(20)]},
    }
    cfg = load_config(site="ci-slurm", environ=environ, cli={"scheduler.partition": slurm_cluster.partition})
    old = {k: os.environ.get(k) for k in environ}
    os.environ.update(environ)  # the jobs (--export=ALL) and their backstops find the same scratch root
    try:
        results = {name: submit_plan(plan(name, data), config=cfg, backend="slurm") for name, data in plans.items()}
        yield {"root": root, "scratch": scratch, "results": results, "cfg": cfg, "notified": notified,
               "environ": environ}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        ids = [j.job_id for name in plans for j in find_record(scratch, name)[1].jobs]
        get_backend("slurm").cancel(ids)
        for _ in range(30):  # a partition with jobs in it cannot be deleted
            if _scontrol("delete", f"PartitionName={PARTITION}").returncode == 0:
                break
            time.sleep(2)


def _report(run_: dict[str, Any], name: str) -> Report:
    paths, record = find_record(run_["scratch"], name)
    return collect(record, load_manifest(paths.manifest), get_backend("slurm"))


def _record(run_: dict[str, Any], name: str) -> Any:
    return find_record(run_["scratch"], name)[1]


def _wait(run_: dict[str, Any], name: str, until: Any, timeout: float = WAIT_S) -> Report:
    end = time.monotonic() + timeout
    report = _report(run_, name)
    while time.monotonic() < end:
        report = _report(run_, name)
        if until(report, _record(run_, name)):
            return report
        time.sleep(2)
    pytest.fail(f"{name}: not done after {timeout}s: {report.summary_line()}; "
                f"decisions {_record(run_, name).retries}")


def _payloads(path: Path) -> list[dict[str, Any]]:
    """The JSON documents the notify command appended to `path`, one per call."""
    text, out, pos = path.read_text(), [], 0
    decoder = json.JSONDecoder()
    while text[pos:].strip():
        pos += len(text[pos:]) - len(text[pos:].lstrip())
        doc, pos = decoder.raw_decode(text, pos)
        out.append(doc)
    return out


def _decided(n: int) -> Any:
    """Every element settled and at least `n` decisions recorded, none of them still queued."""
    return lambda report, record: len(record.retries) >= n and report.all_settled()


def test_timeout_is_retried_with_double_time_capped_by_the_partition(retry_run: dict[str, Any]) -> None:
    report = _wait(retry_run, "rt-timeout", lambda rep, rec: rep.rows[0]["state"] == "MERGED")
    record = _record(retry_run, "rt-timeout")
    [decision] = record.retries
    assert decision["cause"] == "TIMEOUT" and decision["action"] == "retry" and decision["attempt"] == 1
    assert decision["old"] == {"time": 2, "partition": PARTITION}
    assert decision["new"] == {"time": 3, "partition": PARTITION}  # 2 x 2 = 4, capped at MaxTime 3
    retry_jobs = [j for j in record.jobs if j.kind == "resubmit"]
    assert [j.resources for j in retry_jobs] == [{"time": 3, "partition": PARTITION}]
    assert decision["job_id"] == retry_jobs[0].job_id
    # the retry really ran with 3 minutes (sacct's Timelimit), and completed on attempt 2
    proc = subprocess.run(sacct_argv([retry_jobs[0].job_id]), capture_output=True, text=True, timeout=30)
    [(u, _)] = parse_sacct(proc.stdout, names=True).values()
    assert u.time_limit_s == 180 and u.state == "COMPLETED"
    state = read_state(retry_run["scratch"] / "rt-timeout-slow")
    assert state.attempts == 2 and state.run_state == "COMPLETED"
    assert [h[0] for h in state.history].count("TIMEOUT") == 1
    # `mace status` shows both attempts and why
    row = report.rows[0]
    assert row["attempts"] == 2
    assert row["retries"] == [f"attempt 1 TIMEOUT: retried (time 2 -> 3) as job {retry_jobs[0].job_id}"]
    out = subprocess.run([sys.executable, "-m", "mace_hpc.cli.main", "status", "rt-timeout"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, **retry_run["environ"]}, cwd=REPO)
    assert "attempt 1 TIMEOUT: retried (time 2 -> 3)" in out.stdout and " 2 " in out.stdout, out.stdout + out.stderr


def test_max_attempts_reached_gives_up_and_notifies_once(retry_run: dict[str, Any]) -> None:
    _wait(retry_run, "rt-exhaust", _decided(2))
    record = _record(retry_run, "rt-exhaust")
    first, last = record.retries
    assert (first["action"], first["cause"], first["new"]["time"]) == ("retry", "TIMEOUT", 3)
    assert (last["action"], last["attempt"], last["cause"]) == ("give_up", 2, "TIMEOUT")
    assert last["reason"] == "retries exhausted (2 of 2 attempts)"
    assert len([j for j in record.array_jobs() if 0 in j.indices]) == 2  # no third submission
    report = _report(retry_run, "rt-exhaust")
    assert "retries exhausted" in report.rows[0]["retries"][-1]
    lines = _payloads(retry_run["notified"])
    assert [x["milestone"] for x in lines] == ["retries_exhausted"]
    assert lines[0]["plan"] == "rt-exhaust" and lines[0]["given_up"] == [0]
    assert set(record.notified) == {"retries_exhausted"}
    # a later pass (a second backstop, a person) decides nothing new and notifies nobody again
    again = retry_pass("rt-exhaust", retry_run["cfg"])
    assert again.decisions == [] and again.notified == []
    assert len(_payloads(retry_run["notified"])) == 1


def test_named_errors_retryable_and_not(retry_run: dict[str, Any]) -> None:
    report = _wait(retry_run, "rt-named", lambda rep, rec: rep.rows[0]["state"] == "MERGED" and rep.all_settled()
                   and len(rec.retries) >= 2)
    record = _record(retry_run, "rt-named")
    by_index = {d["index"]: d for d in record.retries}
    assert by_index[0]["cause"] == "APP_ERROR:scf" and by_index[0]["action"] == "retry"
    assert by_index[1]["cause"] == "APP_ERROR:basis" and by_index[1]["action"] == "give_up"
    assert by_index[1]["reason"] == "named error basis is not retryable"
    assert [j.indices for j in record.array_jobs()] == [(0, 1), (0,)]  # basis never resubmitted
    assert [r["state"] for r in report.rows] == ["MERGED", "KEPT"]
    assert read_state(retry_run["scratch"] / "rt-named-basis").attempts == 1
    # the dry run shows what the policy decides now, without queuing anything
    out = subprocess.run([sys.executable, "-m", "mace_hpc.cli.main", "resubmit", "rt-named", "--failed", "--dry-run",
                          "--json"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **retry_run["environ"]}, cwd=REPO)
    data = json.loads(out.stdout)
    assert [(d["index"], d["action"], d["reason"]) for d in data["decisions"]] == [
        (1, "give_up", "named error basis is not retryable")]
    assert len(_record(retry_run, "rt-named").jobs) == len(record.jobs)


def test_efficiency_report_of_a_20_element_array(retry_run: dict[str, Any], tmp_path: Path) -> None:
    _wait(retry_run, "rt-eff", lambda rep, rec: rep.all_settled(), timeout=300)
    [job] = retry_run["results"]["rt-eff"].job_ids
    wrap = tmp_path / "bin"
    wrap.mkdir()
    log = tmp_path / "sacct-calls.log"
    real = subprocess.run(["which", "sacct"], capture_output=True, text=True).stdout.strip()
    (wrap / "sacct").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    (wrap / "sacct").chmod(0o755)
    env = {**os.environ, **retry_run["environ"], "PATH": f"{wrap}:{os.environ['PATH']}"}
    deadline = time.monotonic() + 60
    while True:  # sacct lags the controller by seconds: wait until every task is final there
        log.unlink(missing_ok=True)
        out = subprocess.run([sys.executable, "-m", "mace_hpc.cli.main", "report", "rt-eff", "--efficiency", "--json"],
                             capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        if all(r["state"] == "COMPLETED" and r["source"].startswith("sacct") for r in data["elements"]):
            break
        assert time.monotonic() < deadline, data["elements"]
        time.sleep(3)
    assert len(log.read_text().splitlines()) == 1  # one sacct call for the array
    rows = data["elements"]
    assert len(rows) == 20 and sorted(r["index"] for r in rows) == list(range(20))
    assert len({r["index"] for r in rows}) == 20  # batch/extern steps folded: no duplicates
    # a sample element against sacct itself
    sample = rows[7]
    direct = subprocess.run(["sacct", "--noheader", "--parsable2", "-j", f"{job}_7", "-o",
                             "JobID,ElapsedRaw,TimelimitRaw,ReqMem,AllocCPUS,TotalCPU,State"],
                            capture_output=True, text=True, timeout=30).stdout.splitlines()
    jid, elapsed, limit, reqmem, cpus, totalcpu, state = direct[0].split("|")
    assert jid == f"{job}_7" and state == "COMPLETED"
    assert sample["elapsed_s"] == int(elapsed) and sample["time_limit_s"] == int(limit) * 60
    assert sample["req_mem_bytes"] == 200 << 20 and reqmem == "200M"
    assert sample["alloc_cpus"] == int(cpus) == 1
    minutes, seconds = totalcpu.split(":")
    assert sample["total_cpu_s"] == pytest.approx(int(minutes) * 60 + float(seconds))
    assert sample["cpu_efficiency"] == pytest.approx(sample["total_cpu_s"] / sample["elapsed_s"], abs=1e-3)
    assert sample["core_hours"] == pytest.approx(sample["elapsed_s"] / 3600, abs=1e-6)
    # sampled every 2 s here (.ci/slurm/start.sh): a 3 s job has its MaxRSS in sacct (a job shorter
    # than the sampling has none, and the runner's own figure fills in: "sacct+runner rss")
    assert sample["max_rss_bytes"] and sample["source"] in ("sacct", "sacct+runner rss")
    summary = data["summary"]
    assert summary["completed"] == 20 and summary["percentiles"]["elapsed_s"]["n"] == 20
    assert summary["recommended"]["time"] >= 1 and summary["recommended"]["mem"].endswith("M")
    assert data["scheduler_calls"] == 1
    # issue 11: `mace report --refresh` takes its histograms' figures from the same one sacct call
    log.unlink()
    page = subprocess.run([sys.executable, "-m", "mace_hpc.cli.main", "report", "rt-eff", "--refresh", "--json",
                           "-o", str(tmp_path / "r.html")], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert page.returncode == 0, page.stderr
    report = json.loads(page.stdout)
    cols = report["elements"]["columns"]
    elements = [dict(zip(cols, r, strict=True)) for r in report["elements"]["rows"]]
    assert report["resource_source"] == "sacct"
    assert [e["sacct_elapsed_s"] for e in elements] == [r["elapsed_s"] for r in rows]
    assert elements[7]["sacct_elapsed_s"] == int(elapsed)
    assert len([c for c in log.read_text().splitlines() if "JobID,JobName,State,ExitCode" in c]) == 1


def test_out_of_memory_is_classified_and_retried_with_more_memory(retry_run: dict[str, Any]) -> None:
    """Attempt 1 is killed by SLURM for memory (a real sacct record: FAILED 0:9, peak above 150M):
    OUT_OF_MEMORY; the backstop retries it with 450M and it completes on attempt 2."""
    _wait(retry_run, "rt-oom", lambda r, _: r.rows[0]["state"] == "MERGED")
    _, record = find_record(retry_run["scratch"], "rt-oom")
    [decision] = [d for d in record.retries if d["action"] == "retry"]
    assert decision["cause"] == "OUT_OF_MEMORY" and decision["attempt"] == 1
    assert decision["old"]["mem"] == "150M" and decision["new"]["mem"] in ("450M", "450")
    first, second = record.array_jobs()
    acct = subprocess.run(["sacct", "-n", "-P", "-X", "-j", first.job_id, "-o", "State,ExitCode,ReqMem"],
                          capture_output=True, text=True, timeout=30).stdout.split("|")
    assert acct[0] == "FAILED" and acct[1] == "0:9" and acct[2].strip() == "150M"
    assert second.resources.get("mem") == decision["new"]["mem"]
    assert read_state(retry_run["scratch"] / "rt-oom-hog").attempts == 2
