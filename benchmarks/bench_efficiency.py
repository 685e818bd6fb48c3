"""`mace report PLAN --efficiency` over a 10,000-element plan (10 arrays), with a fake `sacct`.

Prepares a real submission (`mace-submit --no-submit`: contexts, manifest, record), records 10
arrays of 1,001 tasks (offsets 0, 1001, ...) as if SLURM had run them, writes a finished state
file into every context, and puts a fake `sacct` first on PATH that logs each call and prints
realistic `--parsable2` output for the ids it is asked about: per element the allocation row plus
`.batch` and `.extern` steps (30,000 rows), a mix of COMPLETED / FAILED / TIMEOUT /
OUT_OF_MEMORY, MaxRSS on the steps only. Then times the command (wall, `--json`) and
`efficiency_report()` in-process, and counts sacct calls. No SLURM needed. Prints a table.

    python benchmarks/bench_efficiency.py [--elements 10000] [--repeat 5] [--short-jobs]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_submit import machine, plan_data  # noqa: E402

ARRAY = 1001
FIRST_JOB = 500000

FAKE_SACCT = r'''#!{python}
import sys
with open({log!r}, "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\n")
ids = sys.argv[sys.argv.index("-j") + 1].split(",")
rows = {rows!r}
out = []
for job in ids:
    out.extend(rows.get(job, []))
sys.stdout.write("\n".join(out) + "\n")
'''


def sacct_rows(n: int, seed: int = 1, short: bool = False) -> dict[str, list[str]]:
    """Realistic sacct --parsable2 rows (FIELDS order) per array job id."""
    rnd = random.Random(seed)
    rows: dict[str, list[str]] = {}
    for k, offset in enumerate(range(0, n, ARRAY)):
        job = str(FIRST_JOB + k)
        name = "bench-submit" if offset == 0 else f"bench-submit@{offset}"
        lines = rows.setdefault(job, [])
        for task in range(min(ARRAY, n - offset)):
            r = rnd.random()
            state, code = ("COMPLETED", "0:0") if r < 0.9 else ("FAILED", "2:0") if r < 0.95 else \
                ("TIMEOUT", "0:15") if r < 0.98 else ("OUT_OF_MEMORY", "0:125")
            elapsed = rnd.randint(30, 280)
            cpu = elapsed * rnd.uniform(0.3, 0.99)
            rss = rnd.randint(200_000, 900_000)
            tid = f"{job}_{task}"
            total = f"{int(cpu // 60):02d}:{cpu % 60:06.3f}"
            lines.append(f"{tid}|{name}|{state}|{code}|0:0|{elapsed}|5|1G||{total}|1|debug|vm")
            step_rss = "" if short else f"{rss}K"  # jobs shorter than JobAcctGatherFrequency: no MaxRSS
            lines.append(f"{tid}.batch|batch|{state}|{code}||{elapsed}|||{step_rss}|{total}|1||vm")
            lines.append(f"{tid}.extern|extern|COMPLETED|0:0||{elapsed}|||{'' if short else '1000K'}|00:00:00|1||vm")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--short-jobs", action="store_true",
                    help="sacct without MaxRSS (jobs under the sampling interval): every state file is read too")
    args = ap.parse_args()
    from mace_hpc import records as st
    from mace_hpc.config import load_config
    from mace_hpc.records.submission import JobEntry, write_record
    from mace_hpc.schedulers.base import get_accounting
    from mace_hpc.status.efficiency import efficiency_report
    from mace_hpc.submission.submit import submit_plan

    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-eff-", dir="/tmp") as tmp:
        root = Path(tmp)
        (root / "none.json").write_text("{}")
        environ = {"MACE_SCRATCH_ROOT": str(root / "scratch"), "MACE_CONFIG": str(root / "none.json"),
                   "MACE_SHARED_DATABASE": str(root / "shared.db")}
        plan_path = root / "plan.json"
        plan_path.write_text(json.dumps(plan_data(args.elements)))
        result = submit_plan(plan_path, config=load_config(environ=environ), backend="slurm", prepare_only=True)
        n = len(result.submission.entries)
        jobs = [JobEntry(str(FIRST_JOB + k), attempt=1, offset=off, array=f"0-{min(ARRAY, n - off) - 1}",
                         indices=tuple(range(off, min(off + ARRAY, n))), submitted_at=time.time())
                for k, off in enumerate(range(0, n, ARRAY))]
        write_record(result.submission.directory, result.record.with_jobs(jobs))
        now = time.time()
        for e in result.submission.entries:
            st.write_state(Path(e.context_dir), fsync=False, state="MERGED", run_state="COMPLETED", attempts=1,
                           index=e.index, workflow_id=e.workflow_id, started_at=now - 100, finished_at=now,
                           peak_rss_bytes=50 << 20, cpu_seconds=60.0)
        bindir = root / "bin"
        bindir.mkdir()
        log = root / "sacct.log"
        fake = bindir / "sacct"
        fake.write_text(FAKE_SACCT.format(python=sys.executable, log=str(log), rows=sacct_rows(n, short=args.short_jobs)))
        fake.chmod(0o755)
        env = {**os.environ, **environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
        wall: list[float] = []
        calls: list[int] = []
        for _ in range(args.repeat):
            log.unlink(missing_ok=True)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "mace_hpc.cli.main", "report", "bench-submit", "--efficiency",
                                   "--json"], env=env, capture_output=True, text=True)
            wall.append(time.perf_counter() - t0)
            assert proc.returncode == 0, proc.stderr
            calls.append(len(log.read_text().splitlines()))
        data = json.loads(proc.stdout)
        assert len(data["elements"]) == n and all(r["source"].startswith("sacct") for r in data["elements"])
        # in-process, with the fake sacct first on PATH; the fake's own start-up timed apart
        os.environ["PATH"] = env["PATH"]
        paths, record = st.find_record(root / "scratch", "bench-submit")
        manifest = st.load_manifest(paths.manifest)
        inproc, sacct_only = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            efficiency_report(record, manifest, get_accounting("slurm"))
            inproc.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run([str(fake), "-j", ",".join(j.job_id for j in jobs)], capture_output=True)
            sacct_only.append(time.perf_counter() - t0)
    kind = "sacct without MaxRSS: + 10,000 state files" if args.short_jobs else "sacct has every figure"
    print(f"{n} elements in {len(jobs)} arrays ({kind}), {args.repeat} runs, median (min-max):")
    for label, xs in (("`mace report PLAN --efficiency --json` (wall)", wall),
                      ("efficiency_report() in-process", inproc),
                      ("  of which the fake sacct alone", sacct_only)):
        print(f"  {label:<48} {statistics.median(xs):6.3f} s ({min(xs):.3f}-{max(xs):.3f})")
    print(f"  sacct calls per report: {sorted(set(calls))} for {len(jobs)} arrays")
    s = data["summary"]
    print(f"  summary: {s['completed']} completed, recommended {s['recommended']}, "
          f"core-hours {s['core_hours']} used / {s['core_hours_wasted']} wasted")


if __name__ == "__main__":
    main()
