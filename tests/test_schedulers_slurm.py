"""SLURM backend: array helpers and job-script rendering (unit), then real submissions (marked `slurm`).

The real tests submit every array up front in one module fixture so they run concurrently on the
local cluster (8 declared CPUs), then each test polls for its own results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from mace_hpc.errors import InputError, SchedulerError, SchedulerUnavailable
from mace_hpc.records.states import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, TIMEOUT
from mace_hpc.records.states import FINAL_RUN_STATES as FINAL_STATES
from mace_hpc.schedulers.base import (
    ArrayRequest,
    Backend,
    array_spec,
    check_env,
    chunk_indices,
    expand_array_ids,
    get_backend,
    shell_quote,
)
from mace_hpc.schedulers.slurm import backend as slurm_mod
from mace_hpc.schedulers.slurm.backend import SlurmBackend, job_env
from mace_hpc.schedulers.slurm.states import normalize_slurm_state

# ---------------------------------------------------------------------------- array helpers


@pytest.mark.parametrize(
    ("ids", "throttle", "expected"),
    [
        (range(100), 4, "0-99%4"),
        ([3, 7, 12], 2, "3,7,12%2"),
        ([0, 1, 2, 3, 4, 6, 8, 9], 3, "0-4,6,8-9%3"),
        ([9, 8, 0, 0, 1], 5, "0-1,8-9%5"),
        ([5], 1, "5%1"),
        ([1, 2], None, "1-2"),
    ],
)
def test_array_spec_compresses_ranges(ids: Any, throttle: int | None, expected: str) -> None:
    assert array_spec(ids, throttle) == expected


@pytest.mark.parametrize(("ids", "throttle"), [([], 2), ([-1, 0], 2), ([0, 1], 0)])
def test_array_spec_rejects_bad_input(ids: list[int], throttle: int) -> None:
    with pytest.raises(InputError):
        array_spec(ids, throttle)


def test_expand_array_ids_reads_scheduler_notation() -> None:
    assert expand_array_ids("[4-9%2]") == [4, 5, 6, 7, 8, 9]
    assert expand_array_ids("3,7,12-13") == [3, 7, 12, 13]
    assert expand_array_ids("0-6:3") == [0, 3, 6]
    assert expand_array_ids("5") == [5]


def test_chunk_indices_10000_over_1001() -> None:
    chunks = chunk_indices(range(10_000), 1001)
    assert len(chunks) == 10
    assert [off for off, _ in chunks] == [i * 1001 for i in range(10)]
    assert all(0 <= t < 1001 for _, tids in chunks for t in tids)
    assert sorted(off + t for off, tids in chunks for t in tids) == list(range(10_000))
    assert chunks[-1] == (9009, list(range(991)))


def test_chunk_indices_small_and_sparse() -> None:
    assert chunk_indices([12, 3, 7, 3], 1001) == [(0, [3, 7, 12])]  # fits: task id == index
    assert chunk_indices([5, 2000, 2001, 5000], 1001) == [(5, [0]), (2000, [0, 1]), (5000, [0])]
    assert chunk_indices([1000, 1001, 2000], 1001) == [(1000, [0, 1, 1000])]
    assert chunk_indices([], 1001) == []
    with pytest.raises(InputError):
        chunk_indices([-1], 10)


def test_normalized_states() -> None:
    assert normalize_slurm_state("CANCELLED by 0") == CANCELLED
    assert normalize_slurm_state("OUT_OF_MEMORY") == FAILED
    assert normalize_slurm_state("NODE_FAIL") == FAILED
    assert normalize_slurm_state("BOOT_FAIL") == FAILED
    assert normalize_slurm_state("DEADLINE") == TIMEOUT
    assert normalize_slurm_state("PREEMPTED") == CANCELLED
    assert normalize_slurm_state("REQUEUED") == PENDING
    assert normalize_slurm_state("COMPLETING") == RUNNING
    assert normalize_slurm_state("COMPLETED") == COMPLETED
    assert normalize_slurm_state("") == PENDING


def test_get_backend() -> None:
    backend = get_backend("slurm", max_array_size=77)
    assert isinstance(backend, SlurmBackend) and isinstance(backend, Backend)
    assert backend.max_array_size() == 77
    with pytest.raises(InputError, match="nope"):
        get_backend("nope")


def test_value_checks() -> None:
    assert shell_quote("$(id)", "x") == "'$(id)'"
    for bad in ("a\nb", "a\rb", "a\0b"):
        with pytest.raises(InputError):
            shell_quote(bad, "x")
    for key in ("LD_PRELOAD", "BASH_ENV", "SLURM_ARRAY_TASK_ID", "1X", "A-B"):
        with pytest.raises(InputError):
            check_env({key: "v"})


# ---------------------------------------------------------------------------- rendering


def _req(tmp_path: Path, **kw: Any) -> ArrayRequest:
    base: dict[str, Any] = dict(
        name="plan-a",
        indices=list(range(6)),
        max_parallel=2,
        command=["/usr/bin/python3", "-m", "mace_hpc.element", "--manifest", "/s/m.json"],
        env={"MACE_MANIFEST": "/s/m.json", "MACE_ISOLATION_MODE": "isolated"},
        work_dir=tmp_path,
        scheduler={"time": 30, "cpus": 2, "signal_margin": 50, "requeue": False, "setup": []},
    )
    base.update(kw)
    return ArrayRequest(**base)


def _directives(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("#SBATCH ")]


def test_render_directives(tmp_path: Path) -> None:
    sched = {
        "time": 30,
        "cpus": 2,
        "partition": "debug",
        "account": "proj1",
        "qos": "normal",
        "mem": "2G",
        "gres": "gpu:1",
        "signal_margin": 50,
        "requeue": True,
        "setup": ["module load python/3.11", "source /opt/venv/bin/activate"],
    }
    req = _req(
        tmp_path, scheduler=sched, indices=list(range(1001, 1007)), index_offset=1001, dependency="afterok:42"
    )
    text, argv = SlurmBackend().render(req)
    d = _directives(text)
    for expected in [
        "#SBATCH --array=0-5%2",
        "#SBATCH --job-name=plan-a@1001",
        "#SBATCH --partition=debug",
        "#SBATCH --account=proj1",
        "#SBATCH --qos=normal",
        "#SBATCH --time=30",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=2G",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --signal=B:USR2@50",
        "#SBATCH --requeue",
        "#SBATCH --dependency=afterok:42",
        f"#SBATCH --output={tmp_path.resolve()}/plan-a@1001_%A_%a.out",
        f"#SBATCH --error={tmp_path.resolve()}/plan-a@1001_%A_%a.err",
        "#SBATCH --export=ALL",
    ]:
        assert expected in d, f"{expected} missing from {d}"
    assert not any("wckey" in ln or "srun" in ln for ln in text.splitlines())
    body = text.splitlines()
    exec_line = "exec /usr/bin/python3 -m mace_hpc.element --manifest /s/m.json"
    assert exec_line in body
    assert body.index("module load python/3.11") < body.index(exec_line)
    assert body.index("export MACE_MANIFEST=/s/m.json") < body.index(exec_line)
    assert argv == ["sbatch", "--parsable", "--export=ALL", str(tmp_path / "plan-a@1001.sbatch")]
    # sbatch gets them in its environment (a `--export=ALL,K=V` list would start a login shell per task)
    assert job_env(req) == {"MACE_INDEX_OFFSET": "1001", "MACE_MANIFEST": "/s/m.json", "MACE_ISOLATION_MODE": "isolated"}


def test_render_plain_job_and_defaults(tmp_path: Path) -> None:
    req = _req(tmp_path, indices=None, name="plan-a-merge", dependency="afterany:123")
    text, _ = SlurmBackend().render(req)
    d = _directives(text)
    assert not any(ln.startswith("#SBATCH --array") for ln in d)
    assert f"#SBATCH --output={tmp_path.resolve()}/plan-a-merge_%j.out" in d
    assert "#SBATCH --dependency=afterany:123" in d
    assert "#SBATCH --no-requeue" in d
    assert not any("MACE_INDEX_OFFSET" in ln for ln in d)


def test_signal_margin_never_exceeds_limit(tmp_path: Path) -> None:
    from mace_hpc.config import effective_signal_margin

    assert effective_signal_margin({"time": 1, "signal_margin": 50}) == 50
    assert effective_signal_margin({"time": 1, "signal_margin": 120}) == 30 == effective_signal_margin({"time": 1})
    assert effective_signal_margin({"time": 60, "signal_margin": 120}) == 120
    assert effective_signal_margin({"time": 2, "signal_margin": 120}) == 60
    req = _req(tmp_path, scheduler={"time": 1, "signal_margin": 120})
    assert "#SBATCH --signal=B:USR2@30" in _directives(SlurmBackend().render(req)[0])


def test_unsafe_env_values_stay_data(tmp_path: Path) -> None:
    """`$(…)`, quotes and commas stay data: sbatch's environment carries them verbatim, and the
    script's own export lines (for a hand-resubmitted copy) give bash the same value."""
    marker = tmp_path / "pwned"
    tricky = f"$(touch {marker}),`touch {marker}`;'\"\\ x"
    out = tmp_path / "out.txt"
    req = _req(
        tmp_path, env={"MACE_TRICKY": tricky, "MACE_PLAIN": "a b"}, command=["printenv", "MACE_TRICKY"]
    )
    text, _ = SlurmBackend().render(req)
    assert "#SBATCH --export=ALL" in _directives(text)
    assert job_env(req)["MACE_TRICKY"] == tricky and job_env(req)["MACE_PLAIN"] == "a b"
    script = tmp_path / "job.sh"
    script.write_text(text)
    with open(out, "w") as fh:
        subprocess.run(["bash", str(script)], stdout=fh, check=True, cwd=tmp_path)
    assert out.read_text() == tricky + "\n"
    assert not marker.exists()


@pytest.mark.parametrize(
    "change",
    [
        {"env": {"MACE_X": "a\nb"}},
        {"env": {"LD_PRELOAD": "/x.so"}},
        {"env": {"MACE_INDEX_OFFSET": "5"}},
        {"command": ["echo", "a\nb"]},
        {"command": []},
        {"name": "bad name"},
        {"name": "x\n#SBATCH --uid=0"},
        {"dependency": "afterany:1\n#SBATCH --x"},
        {"dependency": "afterany:$(id)"},
        {"scheduler": {"partition": "debug --uid=0"}},
        {"scheduler": {"setup": ["ok", "bad\nline"]}},
        {"work_dir": Path("/tmp/a\nb")},
    ],
)
def test_render_rejects_injection(tmp_path: Path, change: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        SlurmBackend().render(_req(tmp_path, **change))


# ---------------------------------------------------------------------------- query parsing (fake commands)


class _FakeRun:
    """Stands in for the backend's subprocess runner; records every call."""

    def __init__(self, outputs: dict[str, tuple[int, str, str]]) -> None:
        self.outputs = outputs
        self.calls: list[list[str]] = []
        self.envs: list[Mapping[str, str] | None] = []

    def __call__(
        self, argv: list[str], cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        self.envs.append(env)
        rc, out, err = self.outputs[argv[0]]
        return subprocess.CompletedProcess(argv, rc, out, err)


def test_query_two_calls_expands_and_shifts(monkeypatch: pytest.MonkeyPatch) -> None:
    squeue = "100_0|RUNNING|p\n100_[1-3%2]|PENDING|p\n200_4|COMPLETED|p@1001\n300|PENDING|p-merge\n"
    sacct = "100_0|COMPLETED|p\n100_9|FAILED|p\n200_4|COMPLETED|p@1001\n200_5|CANCELLED by 0|p@1001\n"
    fake = _FakeRun({"squeue": (0, squeue, ""), "sacct": (0, sacct, "")})
    backend = SlurmBackend()
    monkeypatch.setattr(backend, "_run", fake)
    states = backend.query(["100", "200", "300"])
    assert states == {
        0: RUNNING,
        1: PENDING,
        2: PENDING,
        3: PENDING,
        9: FAILED,
        1005: COMPLETED,
        1006: CANCELLED,
    }
    assert [c[0] for c in fake.calls] == ["squeue", "sacct"]
    assert "100,200,300" in fake.calls[0] and "100,200,300" in fake.calls[1]
    only_200 = _FakeRun(
        {"squeue": (0, "200_4|COMPLETED|p@1001\n", ""), "sacct": (0, "200_5|CANCELLED|p@1001\n", "")}
    )
    monkeypatch.setattr(backend, "_run", only_200)
    assert backend.query(["200"], offsets={"200": 7}) == {11: COMPLETED, 12: CANCELLED}


def test_query_skips_sacct_when_all_pending_and_tolerates_purged_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeRun({"squeue": (0, "100_[0-9%2]|PENDING|p\n", ""), "sacct": (0, "", "")})
    backend = SlurmBackend()
    monkeypatch.setattr(backend, "_run", fake)
    assert backend.query(["100"]) == {i: PENDING for i in range(10)}
    assert len(fake.calls) == 1
    gone = _FakeRun(
        {"squeue": (1, "", "slurm_load_jobs error: Invalid job id specified\n"), "sacct": (0, "", "")}
    )
    monkeypatch.setattr(backend, "_run", gone)
    assert backend.query(["999"]) == {}
    with pytest.raises(InputError):
        backend.query(["1; rm -rf /"])


def test_submit_refusal_quotes_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    err = "sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job submission failed\n"
    backend = SlurmBackend()
    monkeypatch.setattr(backend, "_run", _FakeRun({"sbatch": (1, "", err)}))
    with pytest.raises(SchedulerError, match="sbatch: error: invalid partition specified: nope"):
        backend.submit(_req(tmp_path))
    down = (
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n"
    )
    monkeypatch.setattr(backend, "_run", _FakeRun({"sbatch": (1, "", down)}))
    with pytest.raises(SchedulerUnavailable, match="Unable to contact slurm controller"):
        backend.submit(_req(tmp_path))
    ok = _FakeRun({"sbatch": (0, "4242;cluster\n", "")})
    monkeypatch.setattr(backend, "_run", ok)
    assert backend.submit(_req(tmp_path)) == "4242"
    assert (tmp_path / "plan-a.sbatch").is_file()
    assert ok.envs == [job_env(_req(tmp_path))]  # the variables ride in sbatch's environment


def test_max_array_size_from_scontrol(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeRun({"scontrol": (0, "MaxArraySize            = 501\nMaxJobCount = 10\n", "")})
    backend = SlurmBackend()
    monkeypatch.setattr(backend, "_run", fake)
    assert backend.max_array_size() == 501 and backend.max_array_size() == 501
    assert len(fake.calls) == 1
    down = SlurmBackend()
    monkeypatch.setattr(down, "_run", _FakeRun({"scontrol": (1, "", "error")}))
    assert down.max_array_size() == slurm_mod.DEFAULT_MAX_ARRAY_SIZE


# ---------------------------------------------------------------------------- real SLURM

ELEMENT = r"""
import json, os, signal, sys, time
out, mode, arg = sys.argv[1], sys.argv[2], float(sys.argv[3])
task = int(os.environ["SLURM_ARRAY_TASK_ID"])
offset = int(os.environ["MACE_INDEX_OFFSET"])
with open(f"/proc/{os.getppid()}/comm") as fh:
    parent = fh.read().strip()
rec = {"task": task, "offset": offset, "index": task + offset, "start": time.time(), "parent": parent,
       "value": os.environ.get("MACE_TEST_VALUE"), "tricky": os.environ.get("MACE_TEST_TRICKY"),
       "array_job": os.environ.get("SLURM_ARRAY_JOB_ID"), "pid": os.getpid()}

def write(name):
    rec["end"] = time.time()
    tmp = os.path.join(out, f".{name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(rec, fh)
    os.replace(tmp, os.path.join(out, name))

if mode == "signal":
    def on_usr2(signum, frame):
        rec["signal"] = signum
        write(f"signal-{task + offset}.json")
        sys.exit(0)
    signal.signal(signal.SIGUSR2, on_usr2)
    deadline = time.time() + arg
    while time.time() < deadline:
        time.sleep(0.2)
    sys.exit(4)
time.sleep(arg if mode in ("sleep", "ok") else 0)
write(f"{task + offset}.json")
if mode == "fail" and task + offset == int(arg):
    sys.exit(3)
"""

TRICKY = "$(touch /tmp/mace-slurm-pwned),`id`;'q'"
POLL_S = 150


def _records(d: Path, prefix: str = "") -> dict[int, dict[str, Any]]:
    out = {}
    for p in d.glob(f"{prefix}*.json"):
        if prefix or p.name[0].isdigit():
            rec = json.loads(p.read_text())
            out[rec["index"]] = rec
    return out


def _wait_final(
    backend: SlurmBackend, job_id: str, indices: set[int], timeout: float = POLL_S
) -> dict[int, str]:
    """Poll query until every index has a final state (squeue first, sacct catches up)."""
    end = time.monotonic() + timeout
    states: dict[int, str] = {}
    while time.monotonic() < end:
        states = backend.query([job_id])
        if indices <= set(states) and all(states[i] in FINAL_STATES for i in indices):
            return states
        time.sleep(0.5)
    pytest.fail(f"job {job_id}: not final after {timeout}s: {states}")


@pytest.fixture(scope="module")
def submitted(slurm_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Submit every real-SLURM scenario at once so they run concurrently."""
    root = tmp_path_factory.mktemp("slurm")
    os.chmod(root, 0o755)
    element = root / "element.py"
    element.write_text(ELEMENT)
    backend = SlurmBackend()
    sched = {"partition": slurm_cluster.partition, "time": 5, "signal_margin": 10, "cpus": 1}
    jobs: dict[str, Any] = {"backend": backend, "root": root, "cluster": slurm_cluster}

    def submit(key: str, indices: list[int], mode: str, arg: float, **kw: Any) -> None:
        d = root / key
        d.mkdir()
        env = {"MACE_TEST_VALUE": f"{key} value", "MACE_TEST_TRICKY": TRICKY}
        req = ArrayRequest(
            name=f"t-{key}",
            indices=indices,
            max_parallel=kw.pop("max_parallel", 4),
            command=[sys.executable, str(element), str(d), mode, str(arg)],
            env=env,
            work_dir=d,
            scheduler={**sched, **kw.pop("scheduler", {})},
            **kw,
        )
        jobs[key] = (backend.submit(req), d, req)

    # longest first: the signal element waits for USR2. slurmctld checks warn signals every 30 s
    # and sends one once `now >= end - margin - 30`: with a 1-minute limit that can be before
    # slurmd has even launched the batch step, and the signal is lost. 2 minutes, margin 50:
    # eligible 40 s in, sent by 70 s.
    submit("signal", [0], "signal", 150, scheduler={"time": 2, "signal_margin": 50})
    submit("throttle", list(range(6)), "sleep", 3, max_parallel=2)
    submit("basic", [0, 1, 2, 3], "fail", 3)
    submit("sparse", [3, 7, 12], "ok", 0)
    size = slurm_cluster.max_array_size
    [(offset, task_ids)] = chunk_indices([size, size + 1], size)
    submit("offset", [offset + t for t in task_ids], "ok", 0, index_offset=offset)
    submit("cancel", [0, 1, 2], "sleep", 300, max_parallel=1)
    yield jobs
    # whatever tests were selected, leave nothing queued or running behind
    backend.cancel([v[0] for v in jobs.values() if isinstance(v, tuple)])


@pytest.mark.slurm
def test_elements_run_with_env_and_states(submitted: dict[str, Any]) -> None:
    backend, (job, d, _) = submitted["backend"], submitted["basic"]
    states = _wait_final(backend, job, {0, 1, 2, 3})
    assert states == {0: COMPLETED, 1: COMPLETED, 2: COMPLETED, 3: FAILED}
    recs = _records(d)
    assert sorted(recs) == [0, 1, 2, 3]
    for i, rec in recs.items():
        assert rec["task"] == i and rec["offset"] == 0
        assert rec["value"] == "basic value"  # --export'ed, with a space
        assert rec["tricky"] == TRICKY  # quoted export line: arrives literally, never run
        assert rec["array_job"] == job
        assert rec["parent"] == "slurmstepd"  # exec: the runner is the batch shell itself
    assert not Path("/tmp/mace-slurm-pwned").exists()
    assert sorted(d.glob(f"t-basic_{job}_*.out")), "per-element %A_%a logs in work_dir"


@pytest.mark.slurm
def test_sparse_array(submitted: dict[str, Any]) -> None:
    backend, (job, d, _) = submitted["backend"], submitted["sparse"]
    assert _wait_final(backend, job, {3, 7, 12}) == {3: COMPLETED, 7: COMPLETED, 12: COMPLETED}
    assert sorted(_records(d)) == [3, 7, 12]


@pytest.mark.slurm
def test_chunk_offset_maps_back_to_indices(submitted: dict[str, Any]) -> None:
    backend, (job, d, req) = submitted["backend"], submitted["offset"]
    size = submitted["cluster"].max_array_size
    assert req.index_offset == size and req.task_ids() == [0, 1]
    assert _wait_final(backend, job, {size, size + 1}) == {size: COMPLETED, size + 1: COMPLETED}
    recs = _records(d)
    assert sorted(recs) == [size, size + 1]
    assert {r["task"] for r in recs.values()} == {0, 1}
    assert all(r["offset"] == size for r in recs.values())


@pytest.mark.slurm
def test_throttle_limits_concurrency(submitted: dict[str, Any]) -> None:
    backend, (job, d, _) = submitted["backend"], submitted["throttle"]
    assert set(_wait_final(backend, job, set(range(6))).values()) == {COMPLETED}
    recs = _records(d)
    assert sorted(recs) == list(range(6))
    events = sorted([(r["start"], 1) for r in recs.values()] + [(r["end"], -1) for r in recs.values()])
    running = peak = 0
    for _, step in events:  # ends sort before starts at equal times
        running += step
        peak = max(peak, running)
    assert peak <= 2, f"{peak} elements overlapped with max_parallel=2"


@pytest.mark.slurm
def test_cancel(submitted: dict[str, Any]) -> None:
    backend, (job, _, _) = submitted["backend"], submitted["cancel"]
    backend.cancel([job])
    assert _wait_final(backend, job, {0, 1, 2}, timeout=60) == {0: CANCELLED, 1: CANCELLED, 2: CANCELLED}
    backend.cancel([job])  # cancelling again is not an error


@pytest.mark.slurm
def test_signal_reaches_execd_runner(submitted: dict[str, Any]) -> None:
    """--signal=B:USR2@50 with a 2-minute limit: the exec'd runner itself gets USR2 and handles it."""
    backend, (job, d, _) = submitted["backend"], submitted["signal"]
    marker = d / "signal-0.json"
    end = time.monotonic() + POLL_S
    while not marker.exists() and time.monotonic() < end:
        time.sleep(0.5)
    assert marker.exists(), f"no USR2 marker; job state {backend.query([job])}"
    rec = json.loads(marker.read_text())
    assert rec["signal"] == signal.SIGUSR2
    assert rec["parent"] == "slurmstepd"
    assert _wait_final(backend, job, {0}) == {0: COMPLETED}  # the handler exited 0 before the limit


@pytest.mark.slurm
def test_bad_partition_is_scheduler_error(slurm_cluster: Any, tmp_path: Path) -> None:
    req = _req(tmp_path, scheduler={"partition": "nope", "time": 1}, command=["true"])
    with pytest.raises(SchedulerError, match=r"sbatch: error: invalid partition specified: nope") as info:
        SlurmBackend().submit(req)
    assert not isinstance(info.value, SchedulerUnavailable)  # a refusal: fix the request, do not retry


@pytest.mark.slurm
def test_max_array_size_matches_cluster(slurm_cluster: Any) -> None:
    assert SlurmBackend().max_array_size() == slurm_cluster.max_array_size


def test_missing_commands_are_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SchedulerUnavailable, match="sbatch not found"):
        SlurmBackend().submit(_req(tmp_path))
    assert SlurmBackend().max_array_size() == slurm_mod.DEFAULT_MAX_ARRAY_SIZE
