"""Submitting a 10,000-element plan: mace-submit vs a bare loop (the floor) vs submitit's map_array.

All three in the same run, on the real SLURM cluster (needs `.ci/slurm/start.sh`). Every job this
script queues is cancelled right after it is measured (by job id). Prints a table; no assertion.

    python benchmarks/bench_submit.py [--elements 10000] [--repeat 3] [--no-submitit]

mace-submit: load + validate the plan file, one context dir per element (0700), elements.json,
plan.json, manifest.json, record.json, one `sbatch --array` per MaxArraySize chunk, the backstop
merge job. Floor: the same directories and the same three JSON files from a plain loop, no
validation, no scheduler. submitit: `AutoExecutor(cluster="slurm").map_array` of N calls (it
pickles every call into its own folder, then one sbatch); MaxArraySize refuses one array of N, so
it is also measured as N / 1000 calls of 1,000. Every run writes into fresh directories and all are
deleted at the end: deleting 10,000 directories on this disk (ext4 with `discard`) slows whatever
runs next, which made later runs look 3-6x slower when each phase cleaned up after itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def plan_data(n: int) -> dict[str, Any]:
    return {
        "name": "bench-submit",
        "isolation_mode": "isolated",
        "max_parallel": 1,
        "resources": {"time": 5},
        "sweep": {
            "parameters": {"i": list(range(n))},
            "id": "p{i}",
            "template": {
                "materials": [{"material_id": "m{i}", "formula": "Al", "space_group": 225}],
                "env": {"POINT": "{i}"},
                "steps": [{"name": "calc", "command": ["true", "{context_dir}", "{i}"]}],
            },
        },
    }


def scancel(ids: list[str]) -> None:
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=120)


def bench_mace(plan_path: Path, root: Path, partition: str | None, run: int = 0) -> dict[str, float]:
    from mace_hpc.config import load_config
    from mace_hpc.schedulers.slurm import backend as slurm
    from mace_hpc.submission.submit import submit_plan

    scratch = root / f"scratch{run}"
    (root / "none.json").write_text("{}")  # MACE_CONFIG must name a file: an empty config
    environ = {"MACE_SCRATCH_ROOT": str(scratch), "MACE_CONFIG": str(root / "none.json"),
               "MACE_SHARED_DATABASE": str(root / "shared.db"), "MACE_ARCHIVE_DIR": str(root / "archives")}
    cli = {"scheduler.partition": partition} if partition else {}
    sbatch_s = [0.0]
    real_submit = slurm.SlurmBackend.submit

    def timed_submit(self: Any, req: Any) -> str:
        t = time.perf_counter()
        try:
            return real_submit(self, req)
        finally:
            sbatch_s[0] += time.perf_counter() - t

    slurm.SlurmBackend.submit = timed_submit  # type: ignore[method-assign]
    try:
        cfg = load_config(environ=environ, cli=cli)
        t0 = time.perf_counter()
        result = submit_plan(plan_path, config=cfg, backend="slurm")
        total = time.perf_counter() - t0
    finally:
        slurm.SlurmBackend.submit = real_submit  # type: ignore[method-assign]
    ids = [j.job_id for j in result.record.jobs]
    t1 = time.perf_counter()
    scancel(ids)
    cancel_s = time.perf_counter() - t1
    arrays = len(result.job_ids)
    return {"total": total, "sbatch": sbatch_s[0], "arrays": arrays, "cancel": cancel_s}


def bench_floor(n: int, root: Path, run: int = 0) -> float:
    """The same dirs and files, nothing else: mkdir 0700 per element, three JSON files."""
    scratch = root / f"floor{run}"
    t0 = time.perf_counter()
    subdir = scratch / ".submissions" / "bench-submit"
    subdir.mkdir(parents=True)
    entries, elements = [], []
    for i in range(n):
        wid = f"bench-submit-p{i}"
        d = f"{scratch}/{wid}"
        os.mkdir(d, 0o700)
        entries.append({"index": i, "workflow_id": wid, "context_dir": d})
        elements.append({"index": i, "id": f"p{i}", "workflow_id": wid, "env": {"POINT": str(i)},
                         "materials": [{"material_id": f"m{i}", "formula": "Al", "space_group": 225}],
                         "steps": [{"name": "calc", "calc_type": "calc", "command": ["true", "{context_dir}", str(i)]}]})
    for name, obj in (("elements.json", elements), ("plan.json", {"elements": elements}),
                      ("manifest.json", {"elements": entries})):
        (subdir / name).write_text(json.dumps(obj))
    return time.perf_counter() - t0


def _noop(i: int) -> int:
    return i


def bench_submitit(n: int, root: Path, partition: str | None, chunk: int | None, run: int = 0) -> tuple[float | None, str]:
    """submitit map_array of n calls (in calls of `chunk` when given); (seconds, note)."""
    import submitit

    folder = root / f"submitit{run}-{chunk}"
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params: dict[str, Any] = {"slurm_array_parallelism": 1, "timeout_min": 5}
    if partition:
        params["slurm_partition"] = partition
    ex.update_parameters(**params)
    jobs: list[Any] = []
    t0 = time.perf_counter()
    try:
        step = chunk or n
        for start in range(0, n, step):
            jobs += ex.map_array(_noop, range(start, min(n, start + step)))
    except Exception as exc:  # sbatch refuses an array above MaxArraySize
        took = time.perf_counter() - t0
        scancel(sorted({j.job_id.split("_")[0] for j in jobs}))
        return None, f"failed after {took:.2f} s: {str(exc).strip().splitlines()[-1][:120]}"
    took = time.perf_counter() - t0
    scancel(sorted({j.job_id.split("_")[0] for j in jobs}))
    return took, f"{len({j.job_id.split('_')[0] for j in jobs})} array(s)"


def machine() -> str:
    mem = ""
    try:
        kb = int(next(ln for ln in open("/proc/meminfo") if ln.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    slurm_v = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores{mem}, {platform.platform()}, {slurm_v}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--partition", default=None)
    ap.add_argument("--no-submitit", action="store_true")
    args = ap.parse_args()
    if shutil.which("sbatch") is None:
        sys.exit("bench_submit: needs SLURM (bash .ci/slurm/start.sh)")
    print(machine())
    rows: dict[str, list[float]] = {"mace": [], "sbatch": [], "floor": [], "load": [], "submitit": []}
    arrays = 0
    notes = []
    with tempfile.TemporaryDirectory(prefix="bench-submit-", dir="/tmp") as tmp:
        root = Path(tmp)
        plan_path = root / "plan.json"
        plan_path.write_text(json.dumps(plan_data(args.elements)))
        from mace_hpc.plan import load_plan

        for r in range(args.repeat):
            t0 = time.perf_counter()
            load_plan(plan_path)
            rows["load"].append(time.perf_counter() - t0)
            os.sync()  # each phase starts without the previous one's writeback in flight
            rows["floor"].append(bench_floor(args.elements, root, r))
            os.sync()
            m = bench_mace(plan_path, root, args.partition, r)
            rows["mace"].append(m["total"])
            rows["sbatch"].append(m["sbatch"])
            arrays = int(m["arrays"])
            os.sync()
            if not args.no_submitit:
                if r == 0:
                    took, note = bench_submitit(args.elements, root, args.partition, None, r)
                    notes.append(f"submitit map_array of {args.elements} in one call: {note}")
                took, note = bench_submitit(args.elements, root, args.partition, 1000, r)
                if took is not None:
                    rows["submitit"].append(took)
                else:
                    notes.append(f"submitit in calls of 1000: {note}")
            print(f"  run {r + 1}: floor {rows['floor'][-1]:.2f} s, mace-submit {rows['mace'][-1]:.2f} s"
                  + (f", submitit {rows['submitit'][-1]:.2f} s" if len(rows["submitit"]) > r else ""), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    print(f"{args.elements} elements, {args.repeat} runs (median, min-max):")
    labels = {
        "mace": f"mace-submit (contexts + manifest + {arrays} sbatch arrays + backstop)",
        "load": "  of which: load + validate + expand the plan file",
        "sbatch": f"  of which: render + write + sbatch, {arrays} arrays + backstop",
        "floor": "floor: bare loop, same dirs + JSON files",
        "submitit": "submitit map_array, 10 calls of 1000",
    }
    for key, label in labels.items():
        if key in med:
            print(f"  {label:<66} {med[key]:6.2f} s  ({min(rows[key]):.2f}-{max(rows[key]):.2f})")
    for note in notes:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
