"""Archiving N small contexts to a local S3-API server (moto) vs to a local directory, same run.

Each context: context.json, state.json, a 40 KiB materials.db-sized file and a step output. Both
runs go through `archive_store.archive_to` (what the epilogue calls): for s3:// that is build the
tar.gz in a temp dir, HEAD the bucket, HEAD the key, PUT (SHA-256 checksum), HEAD to verify, then
GET + conditional PUT of the plan's manifest object. One upload of a `--big-mib` context (random,
incompressible, multipart) is timed too. moto's standalone server runs in a subprocess without IAM
checks. Prints contexts/second; no assertion.

Run: python benchmarks/bench_archive_s3.py [--contexts 1000] [--big-mib 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mace_hpc.context.archive_store import archive_to
from mace_hpc.context.objectstore import Settings


def make_contexts(root: Path, n: int, plan: str) -> list[Path]:
    out = []
    blob = os.urandom(20 << 10) * 2
    for i in range(n):
        d = root / f"{plan}-e{i}"
        (d / "calculations" / "s").mkdir(parents=True, mode=0o700)
        (d / "context.json").write_text(json.dumps({"workflow_id": d.name}))
        (d / "state.json").write_text('{"state": "COMPLETED"}')
        (d / "data.bin").write_bytes(blob)
        (d / "calculations" / "s" / "stdout.txt").write_text("output\n" * 100)
        out.append(d)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, default=1000)
    ap.add_argument("--big-mib", type=int, default=200)
    args = ap.parse_args()
    port = free_port()
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    server = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    settings = Settings(endpoint_url=url)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            contexts = make_contexts(root / "scratch", args.contexts, "p")
            t0 = time.perf_counter()
            for i, d in enumerate(contexts):
                archive_to(d, root / "archives", d.name, plan="p", index=i)
            local = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i, d in enumerate(contexts):
                archive_to(d, "s3://bench/runs", d.name, plan="p", index=i, settings=settings)
            remote = time.perf_counter() - t0
            n = args.contexts
            print(f"{n} small contexts: directory {local:.1f} s ({n / local:.0f}/s), "
                  f"s3 {remote:.1f} s ({n / remote:.0f}/s)")
            if args.big_mib:
                big = root / "scratch" / "big-e0"
                big.mkdir(mode=0o700)
                with open(big / "big.bin", "wb") as fh:
                    for _ in range(args.big_mib):
                        fh.write(os.urandom(1 << 20))
                t0 = time.perf_counter()
                archive_to(big, root / "archives", "big-e0")
                dl = time.perf_counter() - t0
                t0 = time.perf_counter()
                rec = archive_to(big, "s3://bench/runs", "big-e0", plan="p", settings=settings)
                dt = time.perf_counter() - t0
                print(f"one {args.big_mib} MiB context (archive {rec.size >> 20} MiB): directory {dl:.1f} s, "
                      f"s3 {dt:.1f} s in 64 MiB parts ({rec.size / dt / (1 << 20):.0f} MiB/s incl. tar+gzip)")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
