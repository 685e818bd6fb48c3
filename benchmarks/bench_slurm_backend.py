"""SLURM backend cost for a 10,000-element plan: render + submit, then one query, then cancel.

Needs the real cluster (`bash .ci/slurm/start.sh`). The elements are held behind a dependency on a
held job so nothing runs: we measure the scheduler interface, not the work. With the default
MaxArraySize=1001 the plan becomes 10 arrays; start the cluster with
`LOCAL_SLURM_MAX_ARRAY_SIZE=10001` to measure one `sbatch --array=0-9999`.

Run: python benchmarks/bench_slurm_backend.py [--elements 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mace_hpc.records.states import PENDING
from mace_hpc.schedulers.base import ArrayRequest, chunk_indices
from mace_hpc.schedulers.slurm.backend import SlurmBackend


def one_round(backend: SlurmBackend, n: int, work: Path) -> dict[str, float]:
    blocker = (
        subprocess.run(
            ["sbatch", "--parsable", "--hold", "-o", "/dev/null", "-J", "bench-blocker", "--wrap", "true"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(";")[0]
    )
    chunks = chunk_indices(range(n), backend.max_array_size())
    reqs = [
        ArrayRequest(
            name="bench",
            indices=[off + t for t in tids],
            max_parallel=4,
            command=[sys.executable, "-m", "mace_hpc.element"],
            env={"MACE_MANIFEST": str(work / "m.json")},
            work_dir=work,
            scheduler={"time": 10},
            dependency=f"afterok:{blocker}",
            index_offset=off,
        )
        for off, tids in chunks
    ]
    t0 = time.perf_counter()
    for req in reqs:
        backend.render(req)
    t1 = time.perf_counter()
    job_ids = [backend.submit(req) for req in reqs]  # submit renders again: counted in "submit"
    t2 = time.perf_counter()
    states = backend.query(job_ids)
    t3 = time.perf_counter()
    sacct = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobID,State,JobName"],
        capture_output=True,
        text=True,
    )
    t4 = time.perf_counter()
    backend.cancel(job_ids + [blocker])
    t5 = time.perf_counter()
    assert len(states) == n and set(states.values()) == {PENDING}, (len(states), set(states.values()))
    assert sorted(states) == list(range(n))
    return {
        "arrays": len(chunks),
        "render_s": t1 - t0,
        "submit_s": t2 - t1,
        "query_s": t3 - t2,
        "sacct_s": t4 - t3,
        "sacct_lines": len(sacct.stdout.splitlines()),
        "cancel_s": t5 - t4,
    }


def _final_count(argv: list[str]) -> int:
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if "_" in line.split("|")[0] and "COMPLETED" in line)


def sacct_lag(work: Path, n: int = 4) -> float:
    """Seconds between squeue showing every element COMPLETED and sacct showing the same."""
    backend = SlurmBackend()
    req = ArrayRequest(
        name="bench-lag",
        indices=list(range(n)),
        max_parallel=n,
        command=["true"],
        work_dir=work,
        scheduler={"time": 1},
    )
    job = backend.submit(req)
    squeue = ["squeue", "-h", "-r", "--states=all", "-j", job, "-o", "%i|%T"]
    sacct = ["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State"]
    end = time.monotonic() + 120
    while _final_count(squeue) < n and time.monotonic() < end:
        time.sleep(0.02)
    t0 = time.perf_counter()
    while _final_count(sacct) < n and time.monotonic() < end:
        time.sleep(0.02)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    backend = SlurmBackend()
    print(f"MaxArraySize={backend.max_array_size()} elements={args.elements} repeat={args.repeat}")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmp:
        for _ in range(args.repeat):
            rounds.append(one_round(backend, args.elements, Path(tmp)))
            time.sleep(1)
        lags = [sacct_lag(Path(tmp)) for _ in range(3)]
    print("sacct lag after squeue shows COMPLETED: " + ", ".join(f"{v:.2f} s" for v in lags))
    for key in ("arrays", "render_s", "submit_s", "query_s", "sacct_s", "sacct_lines", "cancel_s"):
        vals = [r[key] for r in rounds]
        if key.endswith("_s"):
            print(
                f"{key:12s} median {statistics.median(vals) * 1000:8.1f} ms   all: "
                + ", ".join(f"{v * 1000:.1f}" for v in vals)
            )
        else:
            print(f"{key:12s} {vals[0]}")


if __name__ == "__main__":
    main()
