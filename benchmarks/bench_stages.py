"""Multi-stage makespan on the real SLURM cluster: element-wise chaining vs whole arrays vs ideal.

One plan, N elements x 3 stages (`first` -> `second` -> `third`), each stage one step `sleep D`.
First-stage durations are skewed and deterministic (every `--long-every`-th element, starting at
`--long-at`, sleeps `--long` s, the rest `--short` s); stages 2 and 3 sleep `--short` s each. Every
stage array is throttled to `--slots` (`%8`) and the node has 8 CPUs (1 CPU per task), so at most
8 tasks run at once across the three arrays.

Two ways of chaining the same plan, alternating which goes first, each submitted with
`submit_plan` exactly as `mace-submit` does it:
  element  - the product: stage k's array `--dependency=aftercorr:<stage k-1 ids>`, task i waits
             only for task i upstream;
  array    - benchmark only: the same requests rendered with `afterok:<ids>` (the whole upstream
             array must finish first), by wrapping `SlurmBackend.render` for this submission.
Makespan = first array's `submitted_at` (submission record) to the last stage `finished_at`
(element state files). From each run's recorded stage durations (started_at -> finished_at):
  lower bound  LB = max(W / P, C): W total stage time, P slots, C the longest element chain;
               no schedule on P slots with element-wise dependencies can finish sooner;
  FIFO ideal   a zero-latency list schedule of the same tasks on P slots with element-wise
               dependencies (task (i, k) ready when (i, k-1) ends), a free slot taking the earliest
               stage, then the lowest index (the order SLURM starts pending tasks in: job id, then
               task id): aftercorr with zero latency and zero start-up;
  ideal        the shorter of the FIFO one and a critical-path-first list schedule (a ready task
               with the longest remaining chain takes the first free slot); any list schedule is
               <= W / P + (1 - 1 / P) C (Graham), and the optimum lies in [LB, ideal];
  array ideal  zero latency with a barrier between stages, each stage's tasks started in index
               order as SLURM starts an array's tasks: what `afterok` gives at best (sum over stages
               of a FIFO list schedule of that stage alone).
Every job queued is cancelled by id at the end of its run. Prints a table; no assertion.

    python benchmarks/bench_stages.py [--elements 40] [--slots 8] [--repeat 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_submit import machine, scancel  # noqa: E402

STAGES = ("first", "second", "third")
WAIT_S = 300


def durations(args: argparse.Namespace) -> list[list[float]]:
    """Planned sleep per element and stage: a few long first stages, everything else short."""
    def first(i: int) -> float:
        return args.long if i >= args.long_at and (i - args.long_at) % args.long_every == 0 else args.short
    return [[first(i), args.short, args.short] for i in range(args.elements)]


def plan_data(name: str, planned: list[list[float]], slots: int) -> dict[str, Any]:
    return {
        "name": name, "isolation_mode": "isolated", "max_parallel": slots, "resources": {"time": 5, "cpus": 1},
        "stages": [{"name": s} for s in STAGES],
        "elements": [{"id": f"e{i}", "steps": [{"name": s, "stage": s, "command": ["sleep", f"{d:g}"]}
                                               for s, d in zip(STAGES, row, strict=True)]}
                     for i, row in enumerate(planned)],
    }


# ----------------------------------------------------------------------------- ideal schedules
def list_schedule(chains: Sequence[Sequence[float]], slots: int, fifo: bool = False) -> float:
    """Makespan of a zero-latency list schedule: task (i, k) ready when (i, k-1) ends; a free slot
    takes the ready task with the longest remaining chain (critical path first), or with `fifo`
    the earliest stage, then the lowest element index (SLURM's order: job id, then task id)."""
    remaining = [[float(k) if fifo else -sum(c[k:]) for k in range(len(c))] for c in chains]
    ready = [(remaining[i][0], i, 0) for i, c in enumerate(chains) if c]
    heapq.heapify(ready)
    running: list[tuple[float, int, int]] = []
    now, free = 0.0, slots
    while ready or running:
        while free and ready:
            _, i, k = heapq.heappop(ready)
            heapq.heappush(running, (now + chains[i][k], i, k))
            free -= 1
        now, i, k = heapq.heappop(running)
        free += 1
        if k + 1 < len(chains[i]):
            heapq.heappush(ready, (remaining[i][k + 1], i, k + 1))
    return now


def ideals(chains: Sequence[Sequence[float]], slots: int) -> dict[str, float]:
    work = sum(map(sum, chains))
    return {
        "lb": max(work / slots, max(map(sum, chains))),
        "fifo_ideal": (fifo := list_schedule(chains, slots, fifo=True)),
        "ideal": min(list_schedule(chains, slots), fifo),  # neither order is optimal everywhere
        "array_ideal": sum(list_schedule([[c[k]] for c in chains], slots, fifo=True) for k in range(len(chains[0]))),
    }


# ----------------------------------------------------------------------------- one run
@contextmanager
def whole_array_chaining() -> Iterator[None]:
    """Benchmark only: stage arrays wait for the whole upstream array (`afterok:<ids>`)."""
    from mace_hpc.schedulers.slurm.backend import SlurmBackend

    real = SlurmBackend.render

    def render(self: Any, req: Any) -> tuple[str, list[str]]:
        if req.dependency is None and req.after_ids:
            req = dataclasses.replace(req, dependency="afterok:" + ":".join(req.after_ids))
        return real(self, req)

    SlurmBackend.render = render  # type: ignore[method-assign]
    try:
        yield
    finally:
        SlurmBackend.render = real  # type: ignore[method-assign]


def wait_done(contexts: list[Path]) -> list[dict[str, Any]]:
    """Every element's stage records once each stage of each element is final (or fail loudly)."""
    from mace_hpc.records.element_state import read_state
    from mace_hpc.records.stages import STAGE_FINAL, stage_state

    end = time.monotonic() + WAIT_S
    while True:
        stages = [read_state(c).stages for c in contexts]
        if all(stage_state(s, n) in STAGE_FINAL for s in stages for n in STAGES):
            return stages
        if time.monotonic() > end:
            sys.exit(f"bench_stages: not done after {WAIT_S} s; see `squeue` and {contexts[0].parent}")
        time.sleep(0.5)


def one_run(mode: str, run: int, root: Path, planned: list[list[float]], args: argparse.Namespace) -> dict[str, Any]:
    from mace_hpc.config import load_config
    from mace_hpc.submission.submit import submit_plan

    name = f"bench-stages-{mode}{run}"
    scratch = root / "scratch"
    environ = {"MACE_SCRATCH_ROOT": str(scratch), "MACE_CONFIG": str(root / "none.json"),
               "MACE_SHARED_DATABASE": str(root / "shared.db"), "MACE_ARCHIVE_DIR": str(root / "archives")}
    cfg = load_config(site="ci-slurm", environ=environ, cli={"scheduler.partition": args.partition})
    path = root / f"{name}.json"
    path.write_text(json.dumps(plan_data(name, planned, args.slots)))
    chaining = whole_array_chaining() if mode == "array" else nullcontext()
    with chaining:
        result = submit_plan(path, config=cfg, backend="slurm")
    assert result.record is not None
    ids = [j.job_id for j in result.record.jobs]
    try:
        from mace_hpc.schedulers.slurm.backend import SlurmBackend

        scripts = [SlurmBackend().script_path(req).read_text() for req in result.requests]
        deps = [line for text in scripts for line in text.splitlines() if "--dependency" in line]
        want = "afterok:" if mode == "array" else "aftercorr:"
        if not deps or not all(want in line for line in deps if "afterany" not in line):
            sys.exit(f"bench_stages: {mode} run rendered {deps}, expected {want}")
        contexts = [scratch / f"{name}-e{i}" for i in range(len(planned))]
        stages = wait_done(contexts)
    finally:
        time.sleep(1)  # the backstop merge job (afterany on all arrays) usually ends by now
        scancel(ids)
    t0 = min(j.submitted_at for j in result.record.jobs if j.kind == "array" and j.submitted_at)
    bad = [(i, n, s[n]["state"]) for i, s in enumerate(stages) for n in STAGES if s[n]["state"] != "COMPLETED"]
    if bad:
        sys.exit(f"bench_stages: stages did not complete: {bad[:5]}")
    chains = [[s[n]["finished_at"] - s[n]["started_at"] for n in STAGES] for s in stages]
    end = max(s[n]["finished_at"] for s in stages for n in STAGES)
    # dependency latency: an element's stage k starts this long after its stage k-1 ended
    gaps = [s[b]["started_at"] - s[a]["finished_at"] for s in stages for a, b in zip(STAGES, STAGES[1:], strict=False)]
    first_start = min(s[STAGES[0]]["started_at"] for s in stages)
    split = latency_split(result.record, stages, args.slots)
    return {"mode": mode, "run": run, "makespan": end - t0, "to_first_start": first_start - t0,
            "gap_median": statistics.median(gaps), "gap_max": max(gaps), **ideals(chains, args.slots),
            "work": sum(map(sum, chains)), **split}


def sacct_spans(job_ids: list[str], expected: int) -> dict[tuple[str, int], tuple[float, float]]:
    """(array job id, task id) -> (Start, End) from sacct (whole seconds), once every task has ended."""
    for _ in range(20):
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobID,Start,End"],
                             capture_output=True, text=True).stdout
        spans = {}
        for line in out.splitlines():
            jid, start, end = line.split("|")
            if "_" in jid and start[:1].isdigit() and end[:1].isdigit():
                job, task = jid.split("_")
                spans[(job, int(task))] = tuple(time.mktime(time.strptime(v, "%Y-%m-%dT%H:%M:%S")) for v in (start, end))
        if len(spans) >= expected:
            return spans  # type: ignore[return-value]
        time.sleep(1)
    return {}


def latency_split(record: Any, stages: list[dict[str, Any]], slots: int) -> dict[str, float]:
    """Medians of where an element's time between stages goes: the runner's start-up inside the
    job (sacct Start -> stage started_at), its tail (stage finished_at -> sacct End) and the wait in
    SLURM (sacct End of task i upstream -> sacct Start of task i downstream: dependency latency plus
    waiting for a free slot); 1 s resolution. Also `slot_ideal`: the critical-path-first list
    schedule of the tasks' whole time in a slot (sacct End - Start, runner start-up included)."""
    arrays = {j.stage: j for j in record.jobs if j.kind == "array"}
    time.sleep(3)  # sacct lags squeue by a few seconds
    spans = sacct_spans([j.job_id for j in arrays.values()], len(stages) * len(STAGES))
    if not spans:
        return {}
    up, tail, slurm = [], [], []
    slot_chains = [[spans[(arrays[n].job_id, i)][1] - spans[(arrays[n].job_id, i)][0] for n in STAGES]
                   for i in range(len(stages))]  # one chunk: task id == element index
    for i, s in enumerate(stages):
        for k, name in enumerate(STAGES):
            start, end = spans[(arrays[name].job_id, i)]
            up.append(s[name]["started_at"] - start)
            tail.append(end - s[name]["finished_at"])
            if k:
                slurm.append(start - spans[(arrays[STAGES[k - 1]].job_id, i)][1])
    return {"startup": statistics.median(up), "tail": statistics.median(tail), "slurm_gap": statistics.median(slurm),
            "slot_ideal": list_schedule(slot_chains, slots)}


def node_cpus(partition: str) -> str:
    out = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%N %c %C"], capture_output=True, text=True)
    return out.stdout.strip()


def foreign_jobs() -> int:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%j"], capture_output=True, text=True)
    return sum(1 for line in out.stdout.splitlines() if not line.startswith("bench-stages-"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=40)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--short", type=float, default=2.0)
    ap.add_argument("--long", type=float, default=20.0)
    ap.add_argument("--long-at", type=int, default=7, help="first element with a long first stage")
    ap.add_argument("--long-every", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--quiet-wait", type=float, default=90, help="seconds to wait for other jobs to leave the queue")
    ap.add_argument("--plan-only", action="store_true", help="print the ideals of the planned durations, submit nothing")
    args = ap.parse_args()
    planned = durations(args)
    longs = [i for i, row in enumerate(planned) if row[0] == args.long]
    print(f"{args.elements} elements x {len(STAGES)} stages, {args.slots} slots; first stage {args.long:g} s for "
          f"elements {longs}, else {args.short:g} s; stages 2-3 {args.short:g} s")
    print("planned: " + ", ".join(f"{k} {v:.1f} s" for k, v in ideals(planned, args.slots).items()))
    if args.plan_only:
        return
    if shutil.which("sbatch") is None:
        sys.exit("bench_stages: needs SLURM (bash .ci/slurm/start.sh)")
    print(machine())
    print(f"node (name, cpus, alloc/idle/other/total): {node_cpus(args.partition)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-stages-", dir="/tmp") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        (root / "none.json").write_text("{}")
        for r in range(args.repeat):
            for mode in (("element", "array") if r % 2 == 0 else ("array", "element")):
                quiet = time.monotonic() + args.quiet_wait
                while foreign_jobs() and time.monotonic() < quiet:  # other users' jobs take slots
                    time.sleep(2)
                others, load = foreign_jobs(), os.getloadavg()[0]
                t = time.monotonic()
                row = one_run(mode, r, root, planned, args)
                row["others"] = max(others, foreign_jobs())
                row["load"] = max(load, os.getloadavg()[0])
                rows.append(row)
                print(f"  run {r + 1} {mode:7s}: makespan {row['makespan']:5.1f} s (ideal {row['ideal']:.1f}, FIFO {row['fifo_ideal']:.1f}, "
                      f"LB {row['lb']:.1f}, array ideal {row['array_ideal']:.1f}, slot-time ideal {row.get('slot_ideal', float('nan')):.1f}; work {row['work']:.0f} s; "
                      f"submit->first start {row['to_first_start']:.1f} s; stage gap median {row['gap_median']:.1f} "
                      f"max {row['gap_max']:.1f} s (runner start-up {row.get('startup', -1):.1f}, tail {row.get('tail', -1):.1f}, "
                      f"in SLURM, end -> start {row.get('slurm_gap', -1):.1f}); other jobs in queue {row['others']}, load {row['load']:.1f}; wall {time.monotonic() - t:.0f} s)",
                      flush=True)
    print("| run | chaining | makespan | lower bound | ideal (best list schedule) | FIFO ideal | whole-array FIFO ideal "
          "| ideal of slot times (sacct) | makespan / ideal | other jobs, load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['run'] + 1} | {row['mode']} | {row['makespan']:.1f} s | {row['lb']:.1f} s | {row['ideal']:.1f} s "
              f"| {row['fifo_ideal']:.1f} s | {row['array_ideal']:.1f} s | {row.get('slot_ideal', float('nan')):.1f} s "
              f"| {row['makespan'] / row['ideal']:.2f} "
              f"| {row['others']}, {row['load']:.1f} |")


if __name__ == "__main__":
    main()
