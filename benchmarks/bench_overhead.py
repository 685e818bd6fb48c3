"""Per-element overhead end to end: 100 trivial elements through mace-hpc vs the bare command.

Every element's one step is the same short Python command (write `results.json`, ~30 ms), so
what differs is only what mace-hpc adds: the runner, state files, context database, epilogue merge.

- local: `mace-submit --backend local --max-parallel 2` (returns when every element is merged)
  vs `xargs -P 2` of the bare command;
- SLURM (real cluster, `.ci/slurm/start.sh`): `mace-submit --backend slurm --max-parallel 8`
  until every state file says MERGED vs a raw `sbatch --array=0-99%8` of the bare command until
  `squeue` no longer lists it.

`--baseline TREE` (a checkout of an older commit, e.g. `git worktree add /tmp/old ddd8200`) also
runs the mace-hpc side with `PYTHONPATH=TREE`; rounds interleave baseline / current / bare so a
machine shared with other work loads each alike. Prints medians (min-max); no assertion. CPU: local,
what the run's own processes used; SLURM, the whole machine's busy time during the run (the
daemons work for the jobs outside our processes), so SLURM CPU needs an otherwise idle machine.

On SLURM also the current tree with `pack: 10` (10 elements per array task, `--pack 0` skips it),
and with `--floor` the raw array's command under FLOOR: the least any per-element Python runner
does (its entry, three fsynced state writes, one row merged into SQLite under a lock), the
figure no per-element runner of ours can go below.

    python benchmarks/bench_overhead.py [--elements 100] [--repeat 3] [--no-slurm] [--baseline TREE] [--pack K] [--floor]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_submit import machine, scancel  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CODE = ("import json, os, sys; d = sys.argv[1]; os.makedirs(d, exist_ok=True); "
        "json.dump({'energy': -1.0}, open(os.path.join(d, 'results.json'), 'w'))")
STEP = [sys.executable, "-c", CODE]  # the interpreter itself: a pyenv-style shim would add ~100 ms to both sides


def plan(n: int, name: str, throttle: int, pack: int = 1) -> dict[str, Any]:
    return {
        **({"pack": pack} if pack > 1 else {}),
        "name": name,
        "isolation_mode": "isolated",
        "on_complete": "merge",
        "max_parallel": throttle,
        "resources": {"time": 5},
        "sweep": {
            "parameters": {"i": list(range(n))},
            "id": "p{i}",
            "template": {"steps": [{"name": "calc", "command": [*STEP, "{context_dir}"]}]},
        },
    }


def mace_env(root: Path, tree: Path) -> dict[str, str]:
    (root / "none.json").write_text("{}")  # MACE_CONFIG must name a file: an empty config
    return {**os.environ, "PYTHONPATH": str(tree), "MACE_SCRATCH_ROOT": str(root / "scratch"),
            "MACE_CONFIG": str(root / "none.json"), "MACE_SHARED_DATABASE": str(root / "shared.db")}


def submit_argv(plan_path: Path, backend: str, throttle: int) -> list[str]:
    return [sys.executable, "-c", "import sys; from mace_hpc.cli.main import submit_main; sys.exit(submit_main())",
            str(plan_path), "--backend", backend, "--max-parallel", str(throttle)]


def children_cpu() -> float:
    """User + system CPU seconds of every finished descendant so far (steadier than wall time
    on a machine shared with other work)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


CPU: dict[str, list[float]] = {}


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat: user to softirq). On SLURM the
    daemons (slurmd, slurmstepd, slurmctld) work for the jobs, outside any process we wait for, so
    only the machine's total shows a run's whole cost; meaningful on an otherwise idle machine."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def merged(root: Path) -> int:
    """Elements whose state file says MERGED (read directly: works for every commit's format)."""
    count = 0
    for state in (root / "scratch").glob("*/state.json"):
        try:
            count += json.loads(state.read_text()).get("state") == "MERGED"
        except (OSError, ValueError):
            pass
    return count


def run_mace(root: Path, tree: Path, n: int, backend: str, throttle: int, timeout: float, pack: int = 1) -> float:
    root.mkdir(parents=True)
    env = mace_env(root, tree)
    plan_path = root / "plan.json"
    plan_path.write_text(json.dumps(plan(n, f"ovh-{root.name}", throttle, pack)))
    t0, cpu0, busy0 = time.perf_counter(), children_cpu(), machine_cpu()
    # cwd: not this checkout, or `python -c`/`-m` would import its mace_hpc ahead of PYTHONPATH
    proc = subprocess.run(submit_argv(plan_path, backend, throttle), env=env, capture_output=True, text=True, cwd=root)
    if backend == "local":
        CPU.setdefault(f"local: {tree}", []).append(children_cpu() - cpu0)
    if proc.returncode != 0:
        raise SystemExit(f"mace-submit ({tree}) failed: {proc.stderr[-800:]}")
    while merged(root) < n:
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"{tree}: only {merged(root)}/{n} MERGED after {timeout:.0f} s")
        time.sleep(0.1)
    if backend == "slurm":
        CPU.setdefault(f"slurm: {tree} pack {pack}", []).append(machine_cpu() - busy0)
    return time.perf_counter() - t0


def run_xargs(root: Path, n: int, workers: int) -> float:
    root.mkdir(parents=True)
    t0, cpu0 = time.perf_counter(), children_cpu()
    subprocess.run(["xargs", "-P", str(workers), "-I{}", *STEP, str(root / "{}")],
                   input="\n".join(map(str, range(n))), text=True, check=True)
    elapsed = time.perf_counter() - t0
    CPU.setdefault("local: xargs", []).append(children_cpu() - cpu0)
    assert len(list(root.glob("*/results.json"))) == n
    return elapsed


FLOOR = """# the least a per-element Python runner does, without mace-hpc: read its entry, state RUNNING
# (atomic, fsynced), run the step, state COMPLETED, one row merged into a shared SQLite database
# under a lock, state MERGED
import fcntl, json, os, sqlite3, sys, time
root, i = sys.argv[1], os.environ["SLURM_ARRAY_TASK_ID"]
d = os.path.join(root, i)
argv = json.load(open(os.path.join(root, "manifest.json")))["elements"][int(i)]
os.makedirs(d, exist_ok=True)
def state(s):
    tmp = os.path.join(d, ".state.tmp")
    with open(tmp, "w") as fh:
        json.dump({"state": s, "at": time.time()}, fh); fh.flush(); os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(d, "state.json"))
state("RUNNING")
_, status = os.waitpid(os.posix_spawn(argv[0], argv + [d], os.environ), 0)
state("COMPLETED" if status == 0 else "FAILED")
with open(os.path.join(root, "shared.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    db = sqlite3.connect(os.path.join(root, "shared.db"), isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO results VALUES (?, ?)", (i, open(os.path.join(d, "results.json")).read()))
    db.execute("COMMIT")
state("MERGED")
"""


def run_sbatch(root: Path, n: int, throttle: int, timeout: float, floor: bool = False) -> float:
    """The raw array of the bare command, or (`floor`) of the bare command under FLOOR."""
    root.mkdir(parents=True)
    if floor:
        (root / "floor.py").write_text(FLOOR)
        (root / "manifest.json").write_text(json.dumps({"elements": [STEP] * n}))
        with sqlite3.connect(root / "shared.db") as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE results (element, results)")
        wrap = f"exec {sys.executable} -S {root}/floor.py {root}"
    else:
        wrap = " ".join([*STEP[:2], f"\"{CODE}\"", f"{root}/$SLURM_ARRAY_TASK_ID"])
    t0 = time.perf_counter()
    job = subprocess.run(["sbatch", "--parsable", f"--array=0-{n - 1}%{throttle}", "-o", "/dev/null", "-J", "ovh-raw",
                          "--time=5", "--wrap", wrap], capture_output=True, text=True, check=True).stdout.strip()
    job = job.split(";")[0]
    busy0 = machine_cpu()
    try:
        while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"raw array {job} still queued after {timeout:.0f} s")
            time.sleep(0.1)
    finally:
        scancel([job])
    elapsed = time.perf_counter() - t0
    CPU.setdefault("slurm: floor" if floor else "slurm: raw", []).append(machine_cpu() - busy0)
    done = len(list(root.glob("*/results.json")))
    assert done == n, f"raw array: {done}/{n} results"
    if floor:
        with sqlite3.connect(root / "shared.db") as db:
            merged = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        assert merged == n, f"floor runner: {merged}/{n} merged"
    return elapsed


def show(label: str, xs: list[float], ref: list[float] | None, cpu: list[float] | None = None,
         cpu_ref: list[float] | None = None) -> None:
    med = statistics.median(xs)
    ratio = f"  {med / statistics.median(ref):.2f}x the bare command" if ref else ""
    if cpu:
        ratio += f"; CPU {statistics.median(cpu):.2f} s"
        ratio += f" ({statistics.median(cpu) / statistics.median(cpu_ref):.2f}x)" if cpu_ref else ""
    print(f"  {label:<50} {med:7.2f} s ({min(xs):.2f}-{max(xs):.2f}){ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2, help="local: elements at once (and xargs -P)")
    ap.add_argument("--throttle", type=int, default=8, help="SLURM: the array's %%N")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-slurm", action="store_true")
    ap.add_argument("--no-local", action="store_true")
    ap.add_argument("--baseline", type=Path, help="a checkout of an older commit, run the same way")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--pack", type=int, default=10, help="SLURM: also the current tree with `pack: K` (0: skip)")
    ap.add_argument("--floor", action="store_true", help="SLURM: also the bare command under FLOOR, the least "
                    "a per-element Python runner does (no mace-hpc)")
    args = ap.parse_args()
    trees = ([("baseline", args.baseline.resolve())] if args.baseline else []) + [("current", REPO)]
    slurm = not args.no_slurm and shutil.which("sbatch") is not None
    if not args.no_slurm and not slurm:
        sys.exit("bench_overhead: no sbatch here; start SLURM (bash .ci/slurm/start.sh) or pass --no-slurm")
    print(machine())
    n = args.elements
    times: dict[str, list[float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-", dir="/tmp"))
    try:
        for r in range(args.repeat):
            if not args.no_local:
                times.setdefault("local: xargs", []).append(run_xargs(tmp / f"xargs{r}", n, args.workers))
                for label, tree in trees:
                    times.setdefault(f"local: {label}", []).append(
                        run_mace(tmp / f"local-{label}{r}", tree, n, "local", args.workers, args.timeout))
            if slurm:
                times.setdefault("slurm: raw", []).append(run_sbatch(tmp / f"raw{r}", n, args.throttle, args.timeout))
                for label, tree in trees:
                    times.setdefault(f"slurm: {label}", []).append(
                        run_mace(tmp / f"slurm-{label}{r}", tree, n, "slurm", args.throttle, args.timeout))
                if args.floor:
                    times.setdefault("slurm: floor", []).append(
                        run_sbatch(tmp / f"floor{r}", n, args.throttle, args.timeout, floor=True))
                if args.pack > 1:
                    times.setdefault("slurm: packed", []).append(
                        run_mace(tmp / f"slurm-pack{r}", REPO, n, "slurm", args.throttle, args.timeout, args.pack))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{n} trivial elements (one `python3 -c` step each), {args.repeat} rounds, median (min-max):")
    if not args.no_local:
        show(f"local: xargs -P {args.workers} of the bare command", times["local: xargs"], None, CPU["local: xargs"])
        for label, tree in trees:
            show(f"local: mace-submit ({label}: {tree.name}) to MERGED", times[f"local: {label}"], times["local: xargs"],
                 CPU[f"local: {tree}"], CPU["local: xargs"])
    if slurm:
        print("  (SLURM CPU: the whole machine's busy seconds during each run, daemons included)")
        raw_cpu = CPU["slurm: raw"]
        show(f"slurm: raw sbatch --array=0-{n - 1}%{args.throttle} to empty queue", times["slurm: raw"], None, raw_cpu)
        if args.floor:
            show("slurm: the same array, each under a floor runner", times["slurm: floor"], times["slurm: raw"],
                 CPU["slurm: floor"], raw_cpu)
        for label, tree in trees:
            show(f"slurm: mace-submit ({label}: {tree.name}) to MERGED", times[f"slurm: {label}"], times["slurm: raw"],
                 CPU[f"slurm: {tree} pack 1"], raw_cpu)
        if args.pack > 1:
            show(f"slurm: mace-submit pack {args.pack} (current) to MERGED", times["slurm: packed"], times["slurm: raw"],
                 CPU[f"slurm: {REPO} pack {args.pack}"], raw_cpu)


if __name__ == "__main__":
    main()
