"""Merge throughput: `merge_many` vs a naive row-by-row merge (one transaction per row).

Builds N context databases (10 materials, 10 calculations, 20 properties each), merges them into
a fresh shared database with `merge_many` (then again: everything already merged), and merges the
same contexts the naive way into another fresh database (`--naive-contexts` limits it to the first
K if that is too slow, e.g. on NFS; the rate printed is then for those K, not extrapolated).
`--journal delete` forces the rollback journal used on network filesystems (default: what the
shared database's filesystem gets). Prints contexts/second for each; no assertion.

Run: python benchmarks/bench_merge.py [--contexts 2000] [--naive-contexts K] [--journal wal|delete]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from mace_hpc.database.journal import connect, journal_mode_for, write_transaction
from mace_hpc.database.merge import merge_many
from mace_hpc.database.schema import COLUMNS, DATA_TABLES, context_template, ensure_schema, utc_now

MATERIALS, CALCS, PROPS = 10, 10, 20


def insert(conn: sqlite3.Connection, table: str, **values: object) -> None:
    conn.execute(
        f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})", tuple(values.values())
    )


def build_contexts(root: Path, n: int) -> list[tuple[str, Path]]:
    """n context databases as elements create them (a copy of the context schema's template)."""
    template = root / "template.db"
    template.write_bytes(context_template())
    now = utc_now()
    out = []
    for i in range(n):
        wid = f"bench-{i:05d}"
        path = root / wid / "materials.db"
        path.parent.mkdir()
        shutil.copyfile(template, path)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        for m in range(MATERIALS):
            mid = f"{wid}-m{m}"
            insert(conn, "materials", material_id=mid, formula=f"Al{m + 1}O{i % 7}", space_group=225,
                   dimensionality="CRYSTAL", source_type="cif", source_file=f"{mid}.cif", metadata_json="{}",
                   created_at=now, updated_at=now)
            # upstream-style calc ids repeat across contexts (they are local); uids do not
            cid = f"m{m}_SP_20260101_000000000"
            uid = f"{i:05d}{m:03d}".ljust(32, "0")
            insert(conn, "calculations", calc_id=cid, material_id=mid, calc_type="SP", status="completed",
                   workflow_id=wid, input_file="in.d12", output_file="out", work_dir=f"/s/{wid}", settings_json="{}",
                   extra_json="{}", exit_code=0, runtime_seconds=12.5, created_at=now, started_at=now,
                   completed_at=now, uid=uid, updated_at=now)
            for p in range(PROPS // MATERIALS):
                value = -100.0 - i - m / 10 if p == 0 else "Fm-3m"
                text = value if isinstance(value, str) else None
                insert(conn, "properties", material_id=mid, calc_id=cid, property_category="energy",
                       property_name=f"p{p}", property_value=None if text else value, property_value_text=text,
                       property_unit="eV", extracted_at=now, uid=f"{uid[:-1]}{p}", updated_at=now)
        conn.execute("COMMIT")
        conn.close()
        out.append((wid, path))
    return out


def naive_merge(shared: Path, sources: list[tuple[str, Path]]) -> None:
    """What scripts did before: read a context, insert row by row, one transaction per row."""
    conn = connect(shared)
    ensure_schema(conn)
    for _, path in sources:
        src = sqlite3.connect(path)
        for table, pk in DATA_TABLES.items():
            cols = COLUMNS[table]
            sql = f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            for row in src.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {pk}"):
                with write_transaction(conn):
                    conn.execute(sql, row)
        src.close()
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=2000)
    parser.add_argument("--naive-contexts", type=int, default=None, help="default: all of them")
    parser.add_argument("--journal", choices=["wal", "delete"], default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--dir", type=Path, default=None, help="work directory (default: a temp dir, removed)"
    )
    args = parser.parse_args()

    if args.journal:
        os.environ["MACE_SQLITE_JOURNAL"] = args.journal
    root = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=args.dir))
    try:
        t = time.perf_counter()
        sources = (
            build_contexts(root / "contexts", args.contexts) if (root / "contexts").mkdir() is None else []
        )
        print(
            f"built {len(sources)} contexts in {time.perf_counter() - t:.2f} s "
            f"({MATERIALS} materials, {CALCS} calculations, {PROPS} properties each)"
        )
        shared = root / "shared.db"
        print(f"shared database journal mode: {journal_mode_for(shared)}; cores: {os.cpu_count()}")

        t = time.perf_counter()
        reports = merge_many(shared, sources, batch_size=args.batch_size)
        ours = time.perf_counter() - t
        assert all(r.status == "merged" for r in reports)
        print(f"merge_many: {len(sources)} contexts in {ours:.2f} s = {len(sources) / ours:,.0f} contexts/s")

        t = time.perf_counter()
        reports = merge_many(shared, sources, batch_size=args.batch_size)
        again = time.perf_counter() - t
        assert all(r.status == "already_merged" for r in reports)
        print(
            f"merge_many again (all already merged): {again:.2f} s = {len(sources) / again:,.0f} contexts/s"
        )

        subset = sources[: args.naive_contexts]
        t = time.perf_counter()
        naive_merge(root / "naive.db", subset)
        naive = time.perf_counter() - t
        rows = len(subset) * (MATERIALS + CALCS + PROPS)
        print(
            f"naive (row by row, one transaction per row): {len(subset)} contexts ({rows} rows) in {naive:.2f} s "
            f"= {len(subset) / naive:,.1f} contexts/s"
        )
        print(f"speed-up: {(len(sources) / ours) / (len(subset) / naive):,.0f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
