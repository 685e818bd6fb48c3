"""Packing (`pack: K`): K consecutive elements run inside one array task, one after another or (cpus
> 1) in lanes at once, each with its own context, state, results, retries and resource usage; the
throttle and chunking count tasks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from mace_hpc.cli.main import run
from mace_hpc.errors import InputError
from mace_hpc.plan import load_plan_data
from mace_hpc.records.pack import element_task, task_count, task_elements
from mace_hpc.records.submission import JobEntry, read_record
from mace_hpc.schedulers.base import ArrayRequest, JobEnvironment
from mace_hpc.util.atomic import read_json

# writes what it saw (its pid, the scheduler's task id, its context) and fails when told to
STEP = ("import json, os, sys; json.dump({'pid': os.getppid(), 'wid': os.environ['MACE_WORKFLOW_ID'], "
        "'ctx': os.environ['MACE_CONTEXT_DIR'], 'task': os.environ.get('SLURM_ARRAY_TASK_ID')}, "
        "open('seen.json', 'w')); sys.exit(int(sys.argv[1]) if not os.path.exists(sys.argv[2]) else 0)")


def pack_plan(tmp_path: Path, name: str, n: int, pack: int, *, fail: set[int] = frozenset(),
              **top: Any) -> tuple[Path, Path]:
    """A plan of `n` elements packed by `pack`; elements in `fail` exit 3 until `fix` exists."""
    fix = tmp_path / f"{name}.fixed"
    elements = [{"id": f"e{i}", "steps": [{"name": "s", "command": [sys.executable, "-c", STEP,
                                                                     "3" if i in fail else "0", str(fix)]}]}
                for i in range(n)]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "isolation_mode": "isolated", "pack": pack,
                                "elements": elements, **top}))
    return path, fix


def state(scratch: Path, wid: str) -> dict[str, Any]:
    return read_json(scratch / wid / "state.json") or {}


# ------------------------------------------------------------------ the mapping
def test_tasks_map_to_consecutive_elements() -> None:
    assert task_count(10, 3) == 4
    elements = [7, 2, 3, 9, 11, 4, 5]
    assert [task_elements(elements, 3, t) for t in range(3)] == [[2, 3, 4], [5, 7, 9], [11]]
    assert element_task(elements, 3, 9) == 1 and element_task(elements, 3, 8) is None
    assert task_elements(elements, 1, 4, offset=100) == [104]  # unpacked: task id + offset
    job = JobEntry("1", indices=(2, 3, 4, 5, 7, 9, 11), pack=3)
    assert job.elements_of(2) == [11] and job.task_of(5) == 1
    assert JobEntry.from_dict(job.to_dict()) == job
    req = ArrayRequest("p", indices=list(range(10)), max_parallel=2, command=["x"], pack=3)
    assert req.task_ids() == [0, 1, 2, 3] and req.elements_of(3) == [9]


def test_runner_reads_its_elements_from_the_environment() -> None:
    env = JobEnvironment({"MACE_PACK": "4", "MACE_PACK_INDICES": "0-5,8,10-12"})
    assert env.packed_elements(0) == [0, 1, 2, 3] and env.packed_elements(1) == [4, 5, 8, 10]
    assert env.packed_elements(2) == [11, 12] and env.packed_elements(3) == []


# ------------------------------------------------------------------ plan validation
def test_pack_is_validated_and_stages_must_agree(tmp_path: Path) -> None:
    steps = [{"name": n, "command": ["true"], "stage": n} for n in ("x", "y")]
    base = {"name": "p", "elements": [{"id": "a", "steps": steps}]}
    with pytest.raises(InputError, match=r"^pack: "):
        load_plan_data({**base, "pack": 0}, plan_dir=tmp_path)
    stages = [{"name": "x", "pack": 5}, {"name": "y", "pack": 4}]
    with pytest.raises(InputError, match=r"stages\[1\]\.pack: stage y packs 4 .* stage x packs 5"):
        load_plan_data({**base, "stages": stages}, plan_dir=tmp_path)
    with pytest.raises(InputError, match=r"stages\[1\]\.pack"):  # a stage without pack takes the plan's
        load_plan_data({**base, "pack": 3, "stages": [{"name": "x"}, {"name": "y", "pack": 4}]}, plan_dir=tmp_path)
    plan = load_plan_data({**base, "stages": [{"name": "x", "pack": 5}, {"name": "y", "pack": 5}]}, plan_dir=tmp_path)
    assert plan.pack == 5
    flat = {"name": "p", "elements": [{"id": "a", "steps": [{"name": "s", "command": ["true"]}]}]}
    assert load_plan_data({**flat, "pack": 2}, plan_dir=tmp_path).pack == 2


# ------------------------------------------------------------------ local backend
def test_local_pack_keeps_elements_apart_and_reruns_only_the_failed(tmp_path: Path, mace_env: dict[str, Any],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path, fix = pack_plan(tmp_path, "lp", 10, 3, fail={4}, max_parallel=2)
    assert run(["submit", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "each task runs 3 elements" in out and "--task 0" in out and "# elements 0,1,2" in out
    assert run(["submit", str(path)]) == 1  # element 4 failed
    scratch = mace_env["scratch_root"]
    record = read_record(scratch / ".submissions" / "lp" / "record.json")
    assert record is not None and record.pack == 3
    (job,) = record.array_jobs()
    assert job.pack == 3 and job.array == "0-3" and job.indices == tuple(range(10))
    logs = sorted(p.name for p in (scratch / ".submissions" / "lp" / "logs").glob("*.out"))
    assert len(logs) == 4  # 4 tasks, not 10 elements
    seen = {}
    for i in range(10):
        s = state(scratch, f"lp-e{i}")
        assert s["index"] == i and s["workflow_id"] == f"lp-e{i}"
        if i == 4:
            assert s["run_state"] == "FAILED"
            continue
        assert s["state"] == "MERGED", (i, s)  # 3 and 5, its pack-mates, ran and merged
        seen[i] = json.loads(next((scratch / f"lp-e{i}").rglob("seen.json")).read_text()) if (
            scratch / f"lp-e{i}").is_dir() else None
    # one runner process per task: pack-mates share it (tasks may share a reused local worker)
    pids = {i: v["pid"] for i, v in seen.items() if v}
    assert pids[0] == pids[1] == pids[2] and pids[6] == pids[7] == pids[8]
    assert len({v["ctx"] for v in seen.values()}) == 9  # each its own context
    fix.write_text("ok")
    assert run(["resubmit", "lp", "--failed"]) == 0
    record = read_record(scratch / ".submissions" / "lp" / "record.json")
    again = record.array_jobs()[-1]
    assert again.indices == (4,) and again.pack == 3 and again.array == "0"
    assert state(scratch, "lp-e4")["state"] == "MERGED" and state(scratch, "lp-e4")["attempts"] == 2
    assert all(state(scratch, f"lp-e{i}")["attempts"] == 1 for i in range(10) if i != 4)


# ------------------------------------------------------------------ SLURM / PBS render (no cluster)
def packed_requests(n: int, pack: int, *, limit: int = 1001, stages: tuple[str, ...] = ()) -> list[ArrayRequest]:
    from mace_hpc.records.stages import Stage
    from mace_hpc.submission.submit import chain_requests

    class Limit:
        def max_array_size(self) -> int:
            return limit

    return chain_requests("pk", [Stage(s, needs=(stages[k - 1],) if k else ()) for k, s in enumerate(stages)],
                          [(list(range(n)), list(stages))], max_parallel=2, command=["python", "-m", "mace_hpc.element",
                          "/m/manifest.json"], env={"MACE_MANIFEST": "/m/manifest.json"}, work_dir=Path("/tmp/pk"),
                          scheduler={"time": 10, "signal_margin": 30}, backend=Limit(), pack=pack)  # type: ignore[arg-type]


def test_slurm_render_counts_tasks_and_throttles_tasks() -> None:
    from mace_hpc.schedulers.slurm.backend import SlurmBackend

    (req,) = packed_requests(10, 3)
    script, argv = SlurmBackend(max_array_size=1001).render(req)
    assert "--array=0-3%2" in " ".join(argv) + script  # 4 tasks, throttle 2 tasks at once
    assert "MACE_PACK=3" in script + " ".join(argv) and "MACE_PACK_INDICES=0-9" in script + " ".join(argv)
    assert "--time=30" in script + " ".join(argv) or "--time=0:30:00" in script + " ".join(argv)  # 3 x 10 min
    assert req.env["MACE_PACK_TIME"] == str(10 * 60 - 30)  # each element's own budget


def test_chunking_counts_tasks_not_elements() -> None:
    chunks = packed_requests(10, 3, limit=3)  # 4 tasks, at most 3 per array
    assert [(r.task_ids(), r.indices) for r in chunks] == [([0, 1, 2], list(range(9))), ([0], [9])]
    assert [r.env["MACE_PACK_INDICES"] for r in chunks] == ["0-8", "9"]
    assert len({r.name for r in chunks}) == 2  # distinct job names (and scripts)


def test_stages_pack_alike_so_aftercorr_pairs_tasks() -> None:
    a, b = packed_requests(7, 3, stages=("a", "b"))
    assert a.task_ids() == b.task_ids() == [0, 1, 2] and b.after == (0,)
    assert [a.elements_of(t) for t in a.task_ids()] == [b.elements_of(t) for t in b.task_ids()] == [
        [0, 1, 2], [3, 4, 5], [6]]
    assert b.env["MACE_STAGE"] == "b" and b.env["MACE_PACK"] == "3"


@pytest.mark.parametrize("flavor", ["pbspro", "torque"])
def test_pbs_render_counts_tasks(flavor: str) -> None:
    from mace_hpc.schedulers.pbs.backend import PbsBackend

    (req,) = packed_requests(10, 3)
    script, argv = PbsBackend(flavor=flavor, max_array_size=1001).render(req)
    text = script + " ".join(argv)
    assert "0-3%2" in text  # 4 tasks, 2 at once
    assert "MACE_PACK=3" in text and "MACE_PACK_INDICES=0-9" in text
    assert "00:30:00" in text  # walltime 3 x 10 min


def test_dry_run_shows_the_packing(tmp_path: Path, mace_env: dict[str, Any],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = pack_plan(tmp_path, "dp", 10, 3, max_parallel=2)
    assert run(["submit", str(path), "--backend", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "packed: 3 elements per array task" in out and "task 1: elements 3,4,5, task 2: elements 6,7,8, ...)" in out
    assert "4 tasks running 10 elements, 3 per task" in out and "--array=0-3%2" in out
    assert not (mace_env["scratch_root"] / "dp-e0").exists()


# ------------------------------------------------------------------ time limits inside a pack
def _slow_pack(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """3 elements; e1 touches a flag then sleeps 30 s. Contexts and manifest only (no jobs)."""
    from mace_hpc.submission.submit import submit_plan

    flag = tmp_path / f"{name}.started"
    slow = f"import pathlib, time; pathlib.Path({str(flag)!r}).touch(); time.sleep(30)"
    steps = {1: [sys.executable, "-c", slow]}
    elements = [{"id": f"e{i}", "steps": [{"name": "s", "command": steps.get(i, ["true"])}]} for i in range(3)]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "isolation_mode": "isolated", "pack": 3, "elements": elements}))
    result = submit_plan(path, backend="local", prepare_only=True)
    return result.submission.manifest_path, flag, result.submission.scratch_root


def test_time_limit_records_which_elements_finished(tmp_path: Path, mace_env: dict[str, Any]) -> None:
    """SIGUSR2 (the task's limit is near) while e1 runs: e0 finished, e1 TIMEOUT, e2 never started."""
    import signal

    from submit_fakes import signal_when_started

    manifest, flag, scratch = _slow_pack(tmp_path, "tl")
    env = {"MACE_PACK": "3", "MACE_PACK_INDICES": "0-2", "MACE_JOB_ID": "local-1"}
    rc = signal_when_started([sys.executable, "-m", "mace_hpc.element", str(manifest), "--task", "0"],
                             flag, signal.SIGUSR2, env)
    assert rc == 124
    assert state(scratch, "tl-e0")["state"] == "MERGED"
    assert state(scratch, "tl-e1")["run_state"] == "TIMEOUT"
    assert state(scratch, "tl-e2").get("state", "PENDING") == "PENDING" and "started_at" not in state(scratch, "tl-e2")


def test_each_element_keeps_its_own_time_budget(tmp_path: Path, mace_env: dict[str, Any]) -> None:
    """e1 exceeds its own budget (MACE_PACK_TIME): it records TIMEOUT and e2 still runs."""
    import subprocess

    manifest, _, scratch = _slow_pack(tmp_path, "tb")
    env = {**os.environ, "MACE_PACK": "3", "MACE_PACK_INDICES": "0-2", "MACE_PACK_TIME": "2",
           "MACE_JOB_ID": "local-1"}
    proc = subprocess.run([sys.executable, "-m", "mace_hpc.element", str(manifest), "--task", "0"], env=env,
                          timeout=60)
    assert proc.returncode == 124
    assert [state(scratch, f"tb-e{i}")["run_state"] for i in range(3)] == ["COMPLETED", "TIMEOUT", "COMPLETED"]
    assert "own time budget" in state(scratch, "tb-e1")["message"]



def test_a_one_minute_time_limit_leaves_a_packed_element_half_a_minute(tmp_path: Path, mace_env: dict[str, Any],
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`time: 1` with the default signal_margin (120 s, more than the limit) left each packed element
    a budget of one second, so every element longer than that was stopped as TIMEOUT. The margin
    follows one rule everywhere (config.effective_signal_margin: half the limit when the margin is
    not below it), and the element budget with it: 30 s, as SLURM's --signal and PBS's watchdog."""
    from mace_hpc.schedulers.pbs.backend import PbsBackend
    from mace_hpc.schedulers.slurm.backend import SlurmBackend

    elements = [{"id": f"e{i}", "steps": [{"name": "s", "command": [sys.executable, "-c", "import time; time.sleep(1.5)"]}]}
                for i in range(2)]
    path = tmp_path / "short.json"
    path.write_text(json.dumps({"name": "short", "isolation_mode": "isolated", "pack": 2, "resources": {"time": 1},
                                "elements": elements}))
    assert run(["submit", str(path), "--dry-run"]) == 0
    assert "MACE_PACK_TIME=30" in capsys.readouterr().out
    assert run(["submit", str(path)]) == 0
    assert [state(mace_env["scratch_root"], f"short-e{i}")["state"] for i in range(2)] == ["MERGED"] * 2
    req = ArrayRequest("short", indices=[0, 1], max_parallel=1, command=["x"], pack=2,
                       scheduler={"time": 2, "signal_margin": 120}, work_dir=tmp_path)
    assert "#SBATCH --signal=B:USR2@60" in SlurmBackend().render(req)[0]
    assert "( sleep 60 && kill -s USR2 $$ )" in PbsBackend(flavor="pbspro").render(req)[0]

# ------------------------------------------------------------------ lanes: cpus > 1 runs elements at once
# sleeps, then writes what it saw (its runner's pid, its cpus) and fails when told to
LANE_STEP = ("import json, os, sys, time; time.sleep(float(sys.argv[1])); json.dump({'pid': os.getppid(), "
             "'cpus': os.environ.get('MACE_CPUS'), 'omp': os.environ.get('OMP_NUM_THREADS'), "
             "'ctx': os.environ['MACE_CONTEXT_DIR']}, open('seen.json', 'w')); "
             "sys.exit(3 if sys.argv[2] == 'fail' and not os.path.exists(sys.argv[3]) else 0)")


def lane_plan(tmp_path: Path, name: str, n: int, pack: int, cpus: int, *, fail: set[int] = frozenset(),
              sleep: float = 1.0) -> tuple[Path, Path]:
    fix = tmp_path / f"{name}.fixed"
    elements = [{"id": f"e{i}", "steps": [{"name": "s", "command": [
        sys.executable, "-c", LANE_STEP, str(sleep), "fail" if i in fail else "ok", str(fix)]}]} for i in range(n)]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "isolation_mode": "isolated", "pack": pack,
                                "resources": {"cpus": cpus, "time": 5}, "elements": elements}))
    return path, fix


def test_lane_rules() -> None:
    from mace_hpc.records.pack import lane_cpus, lane_slots, lanes

    assert [lanes(10, c) for c in (1, 2, 4, 16)] == [1, 2, 4, 10] and lanes(1, 8) == 1  # unpacked: all its cpus
    assert [lane_slots(10, c) for c in (1, 2, 3, 16)] == [10, 5, 4, 1]
    assert [lane_cpus(10, c) for c in (1, 4, 16)] == [1, 1, 1] and lane_cpus(2, 8) == 4
    assert JobEnvironment({"MACE_PACK_LANES": "3"}).lanes() == 3 and JobEnvironment({}).lanes() == 1
    (req,) = packed_requests(10, 3)  # cpus 1: one after another, as before
    assert req.lanes == 1 and "MACE_PACK_LANES" not in req.env and req.scheduler["time"] == 30


def test_slurm_render_of_a_laned_pack() -> None:
    from mace_hpc.schedulers.slurm.backend import SlurmBackend
    from mace_hpc.submission.submit import chain_requests, element_scheduler

    class Limit:
        def max_array_size(self) -> int:
            return 1001

    (req,) = chain_requests("pk", [], [(list(range(10)), [])], max_parallel=2, command=["python"], env={},
                            work_dir=Path("/tmp/pk"), scheduler={"time": 10, "cpus": 2, "signal_margin": 30},
                            backend=Limit(), pack=4)  # type: ignore[arg-type]
    script, argv = SlurmBackend(max_array_size=1001).render(req)
    text = script + " ".join(argv)
    assert req.lanes == 2 and req.env["MACE_PACK_LANES"] == "2" and req.env["MACE_CPUS"] == "1"
    assert "--cpus-per-task=2" in text and ("--time=20" in text or "--time=0:20:00" in text)  # 2 lanes x 10 min
    assert element_scheduler(req)["time"] == 10 and req.env["MACE_PACK_TIME"] == str(600 - 30)


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]


def test_local_laned_pack_runs_two_at_once_each_element_apart(tmp_path: Path, mace_env: dict[str, Any],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """cpus 2, pack 4: two lanes. They overlap in time; each element keeps its own context, state
    and results; the failing one fails only itself and `resubmit --failed` reruns only it."""
    path, fix = lane_plan(tmp_path, "ln", 4, 4, 2, fail={1})
    assert run(["submit", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "packed: 4 elements per array task, 2 at once (its cpus) (task 0: elements 0,1,2,3);" in out  # no "..."
    assert "time limit is 2x an element's" in out
    assert "each task runs 4 elements 2 at once" in out and "time limit 10 min" in out
    assert run(["submit", str(path)]) == 1  # element 1 failed
    scratch = mace_env["scratch_root"]
    states = {i: state(scratch, f"ln-e{i}") for i in range(4)}
    assert [states[i]["run_state"] for i in range(4)] == ["COMPLETED", "FAILED", "COMPLETED", "COMPLETED"]
    assert all(states[i]["state"] == "MERGED" for i in (0, 2, 3)) and states[1]["attempts"] == 1
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4) if _overlap(states[i], states[j])]
    assert pairs, {i: (s["started_at"], s["finished_at"]) for i, s in states.items()}
    seen = {i: json.loads(next((scratch / f"ln-e{i}").rglob("seen.json")).read_text()) for i in (0, 2, 3)}
    assert len({v["ctx"] for v in seen.values()}) == 3 and len({s["pid"] for s in states.values()}) == 2
    assert all(v["cpus"] == "1" and v["omp"] == "1" for v in seen.values())  # 2 cpus, 2 lanes
    fix.write_text("ok")
    assert run(["resubmit", "ln", "--failed"]) == 0
    assert state(scratch, "ln-e1")["state"] == "MERGED" and state(scratch, "ln-e1")["attempts"] == 2
    assert all(state(scratch, f"ln-e{i}")["attempts"] == 1 for i in (0, 2, 3))


def test_time_limit_reaches_every_lane(tmp_path: Path, mace_env: dict[str, Any]) -> None:
    """Two lanes; SIGUSR2 to the runner only (as SLURM's `--signal=B:` sends it) while e1 and e2
    run: both record TIMEOUT at once, e0 finished, e3 was never started (PENDING)."""
    import signal
    import time

    from submit_fakes import signal_when_started

    from mace_hpc.submission.submit import submit_plan

    flag = tmp_path / "e2.started"
    slow = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
    steps = {1: [sys.executable, "-c", slow, str(tmp_path / "e1.started")], 2: [sys.executable, "-c", slow, str(flag)]}
    elements = [{"id": f"e{i}", "steps": [{"name": "s", "command": steps.get(i, ["true"])}]} for i in range(4)]
    path = tmp_path / "tl2.json"
    path.write_text(json.dumps({"name": "tl2", "isolation_mode": "isolated", "pack": 4, "elements": elements}))
    result = submit_plan(path, backend="local", prepare_only=True)
    scratch = result.submission.scratch_root
    env = {"MACE_PACK": "4", "MACE_PACK_INDICES": "0-3", "MACE_PACK_LANES": "2", "MACE_JOB_ID": "local-1"}
    t0 = time.monotonic()
    rc = signal_when_started([sys.executable, "-m", "mace_hpc.element", str(result.submission.manifest_path),
                              "--task", "0"], flag, signal.SIGUSR2, env)
    assert rc == 124 and time.monotonic() - t0 < 40  # not the slow steps' 60 s: every lane stopped
    assert state(scratch, "tl2-e0")["state"] == "MERGED"
    assert [state(scratch, f"tl2-e{i}")["run_state"] for i in (1, 2)] == ["TIMEOUT", "TIMEOUT"]
    assert all("stopped by the signal" in state(scratch, f"tl2-e{i}")["message"] for i in (1, 2))
    assert _overlap(state(scratch, "tl2-e1"), state(scratch, "tl2-e2"))
    e3 = state(scratch, "tl2-e3")
    assert e3.get("state", "PENDING") == "PENDING" and "started_at" not in e3


def test_each_element_is_charged_its_own_usage(tmp_path: Path, mace_env: dict[str, Any]) -> None:
    """One runner runs three elements in turn: e0 burns ~1 s of CPU and holds 300 MB, e1 and e2
    almost nothing. Each records its own figures, not the sum (CPU) or max (RSS) so far."""
    import subprocess

    from mace_hpc.submission.submit import submit_plan

    heavy = ("import time; b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]); t = time.process_time()\n"
             "while time.process_time() - t < 1: pass")
    steps = {0: [sys.executable, "-c", heavy]}
    elements = [{"id": f"e{i}", "steps": [{"name": "s", "command": steps.get(i, ["true"])}]} for i in range(3)]
    path = tmp_path / "us.json"
    path.write_text(json.dumps({"name": "us", "isolation_mode": "isolated", "pack": 3, "elements": elements}))
    result = submit_plan(path, backend="local", prepare_only=True)
    scratch = result.submission.scratch_root
    env = {**os.environ, "MACE_PACK": "3", "MACE_PACK_INDICES": "0-2", "MACE_JOB_ID": "local-1"}
    proc = subprocess.run([sys.executable, "-m", "mace_hpc.element", str(result.submission.manifest_path),
                           "--task", "0"], env=env, timeout=120)
    assert proc.returncode == 0
    e0, e1, e2 = (state(scratch, f"us-e{i}") for i in range(3))
    assert e0["cpu_seconds"] >= 0.9 and e1["cpu_seconds"] < 0.3 and e2["cpu_seconds"] < 0.3
    assert e0["peak_rss_bytes"] >= 300 << 20 and e1["peak_rss_bytes"] < 200 << 20 > e2["peak_rss_bytes"]
    step = e0["steps"][0]  # the step's own figures (os.wait4), kept with its outcome
    assert step["cpu_seconds"] >= 0.9 and step["peak_rss_bytes"] >= 300 << 20


def test_efficiency_of_a_packed_task_is_not_the_task_s_usage_for_each_element(
        tmp_path: Path, mace_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """sacct has one record for a packed task: it is marked shared (not each element's), the rows
    take each element's own figures, and the task's cpus and mem are shared by its lanes; the
    report's histograms do not show the task's elapsed time and MaxRSS as each element's."""
    from mace_hpc.records.causes import Usage
    from mace_hpc.records.layout import SubmissionPaths
    from mace_hpc.records.manifest import load_manifest
    from mace_hpc.schedulers.base import element_usage, get_backend
    from mace_hpc.status import report_data
    from mace_hpc.status.efficiency import efficiency_report

    path, _ = lane_plan(tmp_path, "ef", 4, 4, 2, sleep=0.2)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "resources": {**data["resources"], "mem": "2G"}}))
    assert run(["submit", str(path)]) == 0
    scratch = mace_env["scratch_root"]
    record = read_record(scratch / ".submissions" / "ef" / "record.json")
    (job,) = record.array_jobs()

    class Sacct:  # one record for task 0: 100 s, 150 CPU-s, 1.5 GB
        calls = 1

        def usage(self, job_ids: list[str], offsets: Any = None) -> dict[str, dict[int, Usage]]:
            return {job.job_id: {0: Usage(0, job.job_id, "COMPLETED", 0, None, 100.0, 600.0, 2 << 30, 3 << 29,
                                          150.0, 2)}}

    usage = element_usage(Sacct(), [job])
    assert sorted(usage[job.job_id]) == [0, 1, 2, 3] and {u.shared_by for u in usage[job.job_id].values()} == {4}
    report = efficiency_report(record, load_manifest(scratch / ".submissions" / "ef" / "manifest.json"), Sacct())
    for row in report["elements"]:
        s = state(scratch, f"ef-e{row['index']}")
        assert row["source"] == "runner (packed)" and row["state"] == "COMPLETED"
        assert row["elapsed_s"] == pytest.approx(s["finished_at"] - s["started_at"]) and row["elapsed_s"] < 100
        assert row["total_cpu_s"] == s["cpu_seconds"] and row["max_rss_bytes"] == s["peak_rss_bytes"]
        assert row["alloc_cpus"] == 1 and row["req_mem_bytes"] == 1 << 30 and row["time_limit_s"] == 300
    assert report["summary"]["recommended"]["mem"] is not None
    p95 = report["summary"]["percentiles"]["max_rss_bytes"]["p95"]
    assert report["summary"]["recommended"]["mem"] == f"{-(-int(p95 * 1.25 * 2) // (1 << 20))}M"  # 2 lanes' worth
    monkeypatch.setattr(report_data, "get_accounting", lambda *a: Sacct())
    paths = SubmissionPaths(scratch / ".submissions" / "ef")
    data = report_data.build_report_data(paths, record, load_manifest(paths.manifest), get_backend("local"))
    columns, rows = data["elements"]["columns"], data["elements"]["rows"]
    assert len(rows) == 4 and {(r[columns.index("sacct_elapsed_s")], r[columns.index("sacct_max_rss_bytes")])
                               for r in rows} == {(None, None)}


def test_staged_laned_pack_skips_only_the_failed_element_downstream(tmp_path: Path, mace_env: dict[str, Any]) -> None:
    """Two stages, pack 4, cpus 2: stage a's lanes overlap, e1 fails stage a (its b is SKIPPED),
    and the task still ends 0 so the others run stage b."""
    work = "import sys, time; time.sleep(1); sys.exit(3 if sys.argv[1] == 'fail' else 0)"
    elements = [{"id": f"e{i}", "steps": [
        {"name": "a", "stage": "a", "command": [sys.executable, "-c", work, "fail" if i == 1 else "ok"]},
        {"name": "b", "stage": "b", "command": ["true"]}]} for i in range(4)]
    path = tmp_path / "sl.json"
    path.write_text(json.dumps({"name": "sl", "isolation_mode": "isolated", "pack": 4, "resources": {"cpus": 2},
                                "stages": [{"name": "a"}, {"name": "b", "needs": ["a"]}], "elements": elements}))
    run(["submit", str(path)])
    scratch = mace_env["scratch_root"]
    states = {i: state(scratch, f"sl-e{i}") for i in range(4)}
    assert [states[i]["stages"]["a"]["state"] for i in range(4)] == ["COMPLETED", "FAILED", "COMPLETED", "COMPLETED"]
    assert [states[i]["stages"]["b"]["state"] for i in range(4)] == ["COMPLETED", "SKIPPED", "COMPLETED", "COMPLETED"]
    assert [states[i]["state"] for i in (0, 2, 3)] == ["MERGED"] * 3 and states[1]["run_state"] == "FAILED"
    a = [states[i]["stages"]["a"] for i in range(4)]
    assert any(_overlap(x, y) for k, x in enumerate(a) for y in a[k + 1:])


@pytest.mark.parametrize("runner", [["-m", "mace_hpc.element"], ["-m", "mace_hpc.cli.main", "run-element"]],
                         ids=["job-script-runner", "mace-run-element"])
def test_the_task_epilogue_marker_only_when_every_element_was_finalized(tmp_path: Path, mace_env: dict[str, Any],
                                                                        runner: list[str]) -> None:
    """A packed SLURM task's runner leaves `<submission>/ended/<job id>.<restarts>` (the TaskEpilog
    then starts no Python) only when each element ran its own epilogue; an element whose run
    raised may be left RUNNING, so then there is none and the TaskEpilog finalizes it. The same
    from `mace run-element` (a user's own array script, jobscripts/slurm-array.sh): one runner."""
    import subprocess

    from mace_hpc.submission.submit import submit_plan

    elements = [{"id": f"e{i}", "steps": [{"name": "s", "command": ["true"]}]} for i in range(4)]
    path = tmp_path / "mk.json"
    path.write_text(json.dumps({"name": "mk", "isolation_mode": "isolated", "pack": 2, "elements": elements}))
    result = submit_plan(path, backend="local", prepare_only=True)
    scratch, sub = result.submission.scratch_root, result.submission.directory
    (scratch / "mk-e3").rmdir()
    (scratch / "mk-e3").write_text("not a directory")  # element 3's run raises (InputError)
    for task, job in ((0, "77"), (1, "78")):
        env = {**os.environ, "MACE_PACK": "2", "MACE_PACK_INDICES": "0-3", "SLURM_JOB_ID": job,
               "SLURM_ARRAY_JOB_ID": "76", "SLURM_ARRAY_TASK_ID": str(task)}
        subprocess.run([sys.executable, *runner, str(result.submission.manifest_path)],
                       env=env, timeout=120, capture_output=True)
    assert state(scratch, "mk-e0")["state"] == state(scratch, "mk-e1")["state"] == "MERGED"
    assert sorted(p.name for p in (sub / "ended").iterdir()) == ["77.0"]  # task 1 left element 3 unfinished


def test_a_runner_started_by_a_big_process_reports_its_own_memory(tmp_path: Path, mace_env: dict[str, Any]) -> None:
    """Linux keeps a process's pre-exec peak in RUSAGE_SELF's ru_maxrss: a runner exec'd by a
    400 MB process (pytest after many tests, mace-submit with a big plan) must not report 400 MB
    for a 1 MB step. Its own peak comes from VmHWM."""
    import subprocess

    from mace_hpc.submission.submit import submit_plan

    path = tmp_path / "big.json"
    path.write_text(json.dumps({"name": "bigp", "isolation_mode": "isolated",
                                "elements": [{"id": "e0", "steps": [{"name": "s", "command": ["true"]}]}]}))
    result = submit_plan(path, backend="local", prepare_only=True)
    launcher = ("import os, sys; b = bytearray(400 << 20); b[::4096] = b'x' * len(b[::4096]); "
                "os.execv(sys.executable, [sys.executable, '-m', 'mace_hpc.element', *sys.argv[1:]])")
    proc = subprocess.run([sys.executable, "-c", launcher, str(result.submission.manifest_path), "--index", "0"],
                          timeout=120)
    assert proc.returncode == 0
    e0 = state(result.submission.scratch_root, "bigp-e0")
    assert e0["state"] == "MERGED" and 0 < e0["peak_rss_bytes"] < 200 << 20, e0["peak_rss_bytes"]


def test_efficiency_report_recommends_packing_short_unpacked_elements(
        tmp_path: Path, mace_env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Short elements run unpacked: `mace report --efficiency` says which `pack` would give tasks of
    about a minute without leaving the throttle's slots idle; a packed plan, or elements that run
    long enough, get no such advice."""
    from mace_hpc.status.efficiency import recommended_pack

    path, _ = pack_plan(tmp_path, "short", 6, 1, max_parallel=2)
    assert run(["submit", str(path)]) == 0
    capsys.readouterr()
    assert run(["report", "short", "--efficiency", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["completed"] == 6 and summary["percentiles"]["elapsed_s"]["p50"] < 30
    assert summary["recommended"]["pack"] == 3  # 6 elements, 2 at once: 3 per task keeps both slots busy
    assert run(["report", "short", "--efficiency"]) == 0
    assert '`"pack": 3` in the plan' in capsys.readouterr().out
    packed, _ = pack_plan(tmp_path, "packed", 6, 2, max_parallel=2)
    assert run(["submit", str(packed)]) == 0
    capsys.readouterr()
    assert run(["report", "packed", "--efficiency", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["recommended"]["pack"] is None
    assert recommended_pack(0.2, 100, 1, 8) == 12  # tasks of a minute would be 300 elements: the throttle caps it
    assert recommended_pack(5.0, 1000, 1, 8) == 12 and recommended_pack(45.0, 1000, 1, 8) is None
    assert recommended_pack(1.0, 3, 1, 2) is None and recommended_pack(None, 10, 1, 1) is None
