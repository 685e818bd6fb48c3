"""`mace report` over a 10,000-element plan: build time and file size.

Prepares a 10,000-element sweep (`mace-submit --no-submit`: contexts, manifest, record; nothing
runs), writes a state file into every context as a finished run would (90% MERGED, some FAILED,
TIMEOUT, RUNNING, the rest never started; times, peak RSS, CPU) and fills the shared database with
the merged elements' materials (3 properties each), then times:
  - `build_report_data` + `render_html` in-process (the data, the page);
  - `mace report PLAN -o FILE` as a command (Python start-up and imports included), and with --json;
and reports the HTML and JSON sizes. No scheduler is involved (none is asked without --refresh).

    python benchmarks/bench_report.py [--elements 10000] [--repeat 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PLAN = "bench-report"


def plan_data(n: int) -> dict[str, Any]:
    return {
        "name": PLAN, "isolation_mode": "isolated", "max_parallel": 50,
        "sweep": {
            "parameters": {"a0": [round(3.5 + 1.0 * i / n, 6) for i in range(n)]},
            "id": "p{index}",
            "template": {
                "materials": [{"material_id": "m{index}", "formula": "Al", "space_group": 225}],
                "steps": [{"name": "calc", "function": "eos:energy_point", "kwargs": {"a0": "{a0}"}}],
            },
        },
    }


def synthetic_submission(root: Path, n: int) -> dict[str, str]:
    """A prepared `n`-element submission under `root` with state files and merged results as if it
    had run; returns the MACE_* environment that finds it."""
    from mace_hpc.config import load_config
    from mace_hpc.database.schema import ensure_schema
    from mace_hpc.records import write_state
    from mace_hpc.submission.submit import submit_plan

    (root / "empty-config.json").write_text("{}")  # MACE_CONFIG must name a file
    environ = {"MACE_SCRATCH_ROOT": str(root / "scratch"), "MACE_CONFIG": str(root / "empty-config.json"),
               "MACE_SHARED_DATABASE": str(root / "shared.db")}
    plan_path = root / "plan.json"
    plan_path.write_text(json.dumps(plan_data(n)))
    result = submit_plan(plan_path, config=load_config(environ=environ), backend="local", prepare_only=True)
    t0 = 1_800_000_000.0
    merged = []
    for e in result.submission.entries:
        i, k = e.index, e.index % 20
        if k == 19:
            continue  # never started
        state, run = {18: ("FAILED", "FAILED"), 17: ("TIMEOUT", "TIMEOUT"), 16: ("RUNNING", "RUNNING")}.get(
            k, ("MERGED", "COMPLETED"))
        started = t0 + i * 0.5
        write_state(Path(e.context_dir), fsync=False, state=state, run_state=run, attempts=1 + (k == 15), index=i,
                    workflow_id=e.workflow_id, queued_at=t0, started_at=started,
                    finished_at=None if state == "RUNNING" else started + 30 + (i % 37),
                    peak_rss_bytes=(80 + i % 50) * 2**20, cpu_seconds=25.0 + i % 13,
                    message="step calc: exit code 1" if state == "FAILED" else "")
        if state == "MERGED":
            merged.append(i)
    conn = sqlite3.connect(root / "shared.db")
    ensure_schema(conn)
    with conn:
        conn.executemany("INSERT INTO materials (material_id, formula, space_group, created_at, updated_at) "
                         "VALUES (?, 'Al', 225, 'now', 'now')", [(f"m{i}",) for i in merged])
        conn.executemany(
            "INSERT INTO properties (material_id, property_name, property_value, extracted_at) VALUES (?, ?, ?, 'now')",
            [(f"m{i}", name, value) for i in merged
             for name, value in (("energy_eV", (i / n - 0.5) ** 2), ("volume_A3", 15 + i / n), ("lattice_constant_A", 3.5 + i / n))])
    conn.close()
    return environ


def _child_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _browser_seconds(page: Path, root: Path) -> tuple[float, float]:
    """Wall time of headless chromium opening `page` with its self-test, and an empty page (start-up)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={root / 'chromium'}", "--dump-dom"]
    empty = root / "empty.html"
    empty.write_text("<html><body></body></html>")
    times = []
    for url in (f"{page.resolve().as_uri()}#selftest", empty.resolve().as_uri()):
        t0 = time.perf_counter()
        proc = subprocess.run(["chromium", *flags, url], capture_output=True, text=True, timeout=300)
        times.append(time.perf_counter() - t0)
        assert proc.returncode == 0 and ('"cells":' in proc.stdout or "empty" in url), proc.stderr[-500:]
    return times[0], times[1]


def machine() -> str:
    kb = int(next(ln for ln in open("/proc/meminfo") if ln.startswith("MemTotal")).split()[1])
    load = os.getloadavg()[0]
    return (f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {kb / 2**20:.0f} GB RAM, {platform.platform()}, "
            f"Python {platform.python_version()}, load {load:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", metavar="DIR", help="build under DIR and keep it (to open the report)")
    args = ap.parse_args()
    from mace_hpc.config import load_config
    from mace_hpc.records.layout import SubmissionPaths
    from mace_hpc.status.report import render_html
    from mace_hpc.status.report_data import build_report_data
    from mace_hpc.submission.control import find_submission

    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-report-", dir="/tmp") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        environ = synthetic_submission(root, args.elements)
        print(f"prepared {args.elements} elements in {time.perf_counter() - t0:.1f} s")
        directory, record, manifest = find_submission(PLAN, load_config(environ=environ))
        data_s, html_s, cpu = [], [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            data = build_report_data(SubmissionPaths(Path(directory)), record, manifest)
            t1 = time.perf_counter()
            page = render_html(data)
            data_s.append(t1 - t0)
            html_s.append(time.perf_counter() - t1)
            cpu.append(time.process_time() - c0)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("MACE_")}, **environ}
        cli: dict[str, list[float]] = {"html": [], "json": [], "html cpu": [], "json cpu": []}
        out = root / "report.html"
        for _ in range(args.repeat):
            for kind, extra in (("html", []), ("json", ["--json"])):
                t0, c0 = time.perf_counter(), _child_cpu()
                proc = subprocess.run([sys.executable, "-m", "mace_hpc.cli.main", "report", PLAN, "-o", str(out), *extra],
                                      env=env, capture_output=True, text=True)
                cli[kind].append(time.perf_counter() - t0)
                cli[f"{kind} cpu"].append(_child_cpu() - c0)
                assert proc.returncode == 0, proc.stderr
        json_size = len(proc.stdout.encode())
        browser = _browser_seconds(out, root) if shutil.which("chromium") else None
    print(f"{args.elements} elements ({ {str(k): v for k, v in data['summary'].items()} }), {len(data['results']['rows'])} materials, median of {args.repeat} (min-max):")
    for label, xs in (("build_report_data (state files, elements.json, shared DB)", data_s),
                      ("render_html (inline JSON + page + uPlot)", html_s),
                      ("  CPU time of both (user + system)", cpu),
                      ("`mace report PLAN -o FILE` (command, wall)", cli["html"]),
                      ("  its CPU time (user + system)", cli["html cpu"]),
                      ("`mace report PLAN -o FILE --json` (command, wall)", cli["json"]),
                      ("  its CPU time (user + system)", cli["json cpu"])):
        print(f"  {label:<58} {statistics.median(xs):6.3f} s ({min(xs):.3f}-{max(xs):.3f})")
    print(f"  HTML {len(page.encode()) / 2**20:.2f} MiB, JSON on stdout {json_size / 2**20:.2f} MiB")
    if browser:
        print(f"  headless chromium, start + load + draw + self-test (dump-dom): this page {browser[0]:.1f} s, "
              f"an empty page {browser[1]:.1f} s")


if __name__ == "__main__":
    main()
