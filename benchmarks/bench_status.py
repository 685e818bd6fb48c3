"""`mace status` over a 10,000-element submission on the real SLURM cluster.

Submits a 10,000-element plan (10 arrays on MaxArraySize 1001), holds the arrays at once
(`scontrol hold`, one call) so nothing runs, writes a state file into every context (90% MERGED,
some FAILED/RUNNING, the rest never started), then times:
  - `mace status PLAN --json` as a command (Python start-up, imports, 10,000 state files, the
    scheduler query, JSON out), and the plain table;
  - the same in-process (`collect`), counting the scheduler subprocesses it starts.
Everything is cancelled afterwards (by job id). Prints a table; no assertion.

    python benchmarks/bench_status.py [--elements 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_submit import machine, plan_data, scancel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if shutil.which("sbatch") is None:
        sys.exit("bench_status: needs SLURM (bash .ci/slurm/start.sh)")
    from mace_hpc import records as st
    from mace_hpc.config import load_config
    from mace_hpc.schedulers.base import get_backend
    from mace_hpc.schedulers.slurm import backend as slurm
    from mace_hpc.status.reconcile import collect
    from mace_hpc.submission.submit import submit_plan

    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-status-", dir="/tmp") as tmp:
        root = Path(tmp)
        (root / "none.json").write_text("{}")  # MACE_CONFIG must name a file: an empty config
        environ = {"MACE_SCRATCH_ROOT": str(root / "scratch"), "MACE_CONFIG": str(root / "none.json"),
                   "MACE_SHARED_DATABASE": str(root / "shared.db")}
        plan_path = root / "plan.json"
        plan_path.write_text(json.dumps(plan_data(args.elements)))
        result = submit_plan(plan_path, config=load_config(environ=environ), backend="slurm")
        ids = [j.job_id for j in result.record.jobs]
        subprocess.run(["scontrol", "hold", ",".join(ids)], capture_output=True)
        try:
            for e in result.submission.entries:
                i = e.index
                if i % 10 == 9:
                    continue  # never started
                state = "MERGED" if i % 10 < 8 else ("FAILED" if i % 20 == 8 else "RUNNING")
                st.write_state(Path(e.context_dir), state=state, run_state=state if state != "MERGED" else "COMPLETED",
                               attempts=1, index=i, workflow_id=e.workflow_id)
            env = {**os.environ, **environ}
            cli: dict[str, list[float]] = {"json": [], "table": []}
            for _ in range(args.repeat):
                for kind, extra in (("json", ["--json"]), ("table", [])):
                    t0 = time.perf_counter()
                    proc = subprocess.run(["mace", "status", "bench-submit", *extra], env=env, capture_output=True, text=True)
                    cli[kind].append(time.perf_counter() - t0)
                    assert proc.returncode == 0, proc.stderr
            summary = json.loads(proc_json(env))["summary"]

            calls: list[str] = []
            real_run = slurm.SlurmBackend._run

            def counting(self: Any, argv: list[str], cwd: Path | None = None) -> Any:
                calls.append(argv[0])
                return real_run(self, argv, cwd)

            slurm.SlurmBackend._run = counting  # type: ignore[method-assign]
            paths, record = st.find_record(root / "scratch", "bench-submit")
            manifest = st.load_manifest(paths.manifest)
            inproc = []
            for _ in range(args.repeat):
                calls.clear()
                t0 = time.perf_counter()
                report = collect(record, manifest, get_backend("slurm"))
                inproc.append(time.perf_counter() - t0)
            slurm.SlurmBackend._run = real_run  # type: ignore[method-assign]
        finally:
            scancel(ids)
    arrays = len(result.job_ids)
    print(f"{args.elements} elements in {arrays} arrays (held), {args.repeat} runs, median (min-max):")
    for label, xs in (("`mace status PLAN --json` (command, wall)", cli["json"]),
                      ("`mace status PLAN` table (command, wall)", cli["table"]),
                      ("collect() in-process", inproc)):
        print(f"  {label:<44} {statistics.median(xs):6.3f} s ({min(xs):.3f}-{max(xs):.3f})")
    print(f"  scheduler: {report.scheduler_queries} query for {arrays} arrays -> subprocesses {calls}")
    print(f"  states: {summary}")


def proc_json(env: dict[str, str]) -> str:
    return subprocess.run(["mace", "status", "bench-submit", "--json"], env=env, capture_output=True, text=True).stdout


if __name__ == "__main__":
    main()
