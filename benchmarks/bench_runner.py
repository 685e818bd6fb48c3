"""Element-runner overhead per element, and `mace --help` start-up. No scheduler needed.

Overhead = (running an element through `python -m mace_hpc.element MANIFEST --index i`: context,
state files, the step as a subprocess, its calculation record, the epilogue) minus (running the
step's command directly). Elements run one after another so the figure is per element, not
hidden by parallelism. Prints a table; no assertion.

    python benchmarks/bench_runner.py [--elements 20]
    python benchmarks/bench_runner.py --baseline TREE [--elements 40]

`--baseline TREE` (a checkout of an older commit: `git worktree add /tmp/old ddd8200`) compares
that commit's runner with this one's instead, element by element in alternation (old, new, new,
old, ...), so a machine shared with other work slows both alike; each side prepares its plan with
its own code (isolated, on_complete=merge).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_submit import machine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

STEP = ["true"]


def timed(argv: list[str], env: dict[str, str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True)
        out.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{argv} failed: {proc.stderr.decode()[-500:]}")
    return out


def runner_start(tree: Path) -> list[str]:
    """How that commit's jobs start the runner: `python -S element/start.py` where the tree has
    it (records/runner.py), `python -m mace_hpc.element` before."""
    start = tree / "mace_hpc" / "element" / "start.py"
    return [sys.executable, "-S", str(start)] if start.exists() else [sys.executable, "-m", "mace_hpc.element"]


def run_elements(root: Path, mode: str, on_complete: str, n: int) -> list[float]:
    """Prepare a plan (no submission), then run each element by hand and time it."""
    from mace_hpc.config import load_config
    from mace_hpc.submission.submit import submit_plan

    name = f"runner-{mode}-{on_complete.replace('+', '-')}"
    (root / "none.json").write_text("{}")  # MACE_CONFIG must name a file: an empty config
    environ = {"MACE_SCRATCH_ROOT": str(root / "scratch"), "MACE_CONFIG": str(root / "none.json"),
               "MACE_SHARED_DATABASE": str(root / f"{name}.db"), "MACE_ARCHIVE_DIR": str(root / "archives")}
    plan = {"name": name, "isolation_mode": mode, "on_complete": on_complete,
            "elements": [{"id": f"e{i}", "steps": [{"name": "calc", "command": STEP}]} for i in range(n)]}
    result = submit_plan(plan, config=load_config(environ=environ), backend="local", prepare_only=True)
    env = {**os.environ, **environ}
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        proc = subprocess.run([*runner_start(REPO), str(result.submission.manifest_path), "--index", str(i)],
                              env=env, capture_output=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"element {i} failed: {proc.stderr.decode()[-800:]}")
    state = json.loads((root / "scratch" / f"{name}-e0" / "state.json").read_text())
    assert state["run_state"] == "COMPLETED", state
    return times


PREPARE = """
import json, sys
from pathlib import Path
from mace_hpc.config import load_config
from mace_hpc.submission.submit import submit_plan
root, n = Path(sys.argv[1]), int(sys.argv[2])
environ = json.loads(sys.argv[3])
plan = {"name": "ab", "isolation_mode": "isolated", "on_complete": "merge",
        "elements": [{"id": f"e{i}", "steps": [{"name": "calc", "command": ["true"]}]} for i in range(n)]}
print(submit_plan(plan, config=load_config(environ=environ), backend="local", prepare_only=True).submission.manifest_path)
"""


def compare(baseline: Path, n: int) -> None:
    """Old and new runners alternating element by element; medians and CPU time per element."""
    sides = []
    with tempfile.TemporaryDirectory(prefix="bench-runner-ab-", dir="/tmp") as tmp:
        for label, tree in (("baseline", baseline.resolve()), ("current", REPO)):
            root = Path(tmp) / label
            root.mkdir()
            (root / "none.json").write_text("{}")
            environ = {"MACE_SCRATCH_ROOT": str(root / "scratch"), "MACE_CONFIG": str(root / "none.json"),
                       "MACE_SHARED_DATABASE": str(root / "shared.db")}
            env = {**os.environ, **environ, "PYTHONPATH": str(tree)}
            # cwd: not a checkout, or `python -c`/`-m` would import its mace_hpc ahead of PYTHONPATH
            manifest = subprocess.run([sys.executable, "-c", PREPARE, str(root), str(n), json.dumps(environ)],
                                      env=env, capture_output=True, text=True, check=True, cwd=root).stdout.strip()
            sides.append((f"{label} ({tree.name})", manifest, env, [], [], root, runner_start(tree)))
        for i in range(n):
            for label, manifest, env, wall, cpu, root, start in sides if i % 2 == 0 else sides[::-1]:
                usage = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                proc = subprocess.run([*start, manifest, "--index", str(i)],
                                      env=env, capture_output=True, cwd=root)
                wall.append(time.perf_counter() - t0)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu.append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
                if proc.returncode != 0:
                    raise SystemExit(f"{label}: element {i} failed: {proc.stderr.decode()[-800:]}")
    print(f"{n} elements each, alternating (one `true` step, isolated, on_complete=merge), median (min-max):")
    for label, _, _, wall, cpu, _, _ in sides:
        print(f"  {label:<24} wall {statistics.median(wall) * 1000:6.1f} ms ({min(wall) * 1000:.0f}-{max(wall) * 1000:.0f}); "
              f"CPU {statistics.median(cpu) * 1000:6.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=20)
    ap.add_argument("--baseline", type=Path, help="an older commit's checkout to compare with, interleaved")
    args = ap.parse_args()
    print(machine())
    if args.baseline:
        compare(args.baseline, args.elements)
        return
    env = dict(os.environ)
    n = args.elements
    direct = timed(STEP, env, n)
    python = timed([sys.executable, "-c", "pass"], env, n)
    help_ = timed(["mace", "--help"], env, 10)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-runner-", dir="/tmp") as tmp:
        for mode, policy in (("isolated", "merge"), ("isolated", "keep"), ("shared", "merge")):
            rows[f"{mode}, on_complete={policy}"] = run_elements(Path(tmp), mode, policy, n)
    med_direct = statistics.median(direct)
    print(f"{n} elements run one after another (one `true` step each); median (min-max):")
    print(f"  step command directly                        {med_direct * 1000:7.1f} ms")
    print(f"  python -c pass (interpreter floor)           {statistics.median(python) * 1000:7.1f} ms")
    for label, xs in rows.items():
        med = statistics.median(xs)
        print(f"  element runner, {label:<28} {med * 1000:7.1f} ms ({min(xs) * 1000:.0f}-{max(xs) * 1000:.0f}); "
              f"overhead {(med - med_direct) * 1000:.0f} ms")
    print(f"  mace --help                                  {statistics.median(help_) * 1000:7.1f} ms "
          f"({min(help_) * 1000:.0f}-{max(help_) * 1000:.0f})")


if __name__ == "__main__":
    main()
