"""The `slurm_cluster` fixture: the real local SLURM cluster, or a clear skip/fail saying how to get one.

In CI (`CI=true`) a missing cluster is a failure, because `.ci/run` starts one first; on a laptop it
is a skip with the command to run, so `pytest -ra` shows why the SLURM tests did not run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from real_cluster import require

CI_MESSAGE = "SLURM not running: .ci/run should have started it (bash .ci/slurm/start.sh)"
LOCAL_MESSAGE = "no SLURM here: start one with `bash .ci/slurm/start.sh` (root)"


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests need to know about the running cluster."""

    partition: str
    max_array_size: int


def _probe() -> SlurmCluster | str:
    """The cluster, or why it is not usable (sinfo must show an up node, sacct must answer)."""
    for cmd in ("sinfo", "sacct", "sbatch", "squeue", "scontrol"):
        if shutil.which(cmd) is None:
            return f"{cmd} not on PATH"
    try:
        info = subprocess.run(["sinfo", "-h", "-o", "%P|%t"], capture_output=True, text=True, timeout=15)
        acct = subprocess.run(
            ["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, text=True, timeout=15
        )
        conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"SLURM did not answer: {exc}"
    if info.returncode != 0:
        return f"sinfo failed: {(info.stderr or '').strip()[:200]}"
    if acct.returncode != 0:
        return f"sacct failed: {(acct.stderr or '').strip()[:200]}"
    rows = [line.split("|") for line in info.stdout.split() if "|" in line]
    usable = [p for p, state in rows if state.rstrip("*~#") in {"idle", "mix", "alloc", "comp"}]
    if not usable:
        return f"no usable node: sinfo says {info.stdout.strip()!r}"
    partition = next((p.rstrip("*") for p in usable if p.endswith("*")), usable[0].rstrip("*"))
    size = 1001
    for line in conf.stdout.splitlines():
        if line.startswith("MaxArraySize"):
            size = int(line.split("=", 1)[1])
    return SlurmCluster(partition=partition, max_array_size=size)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The real local SLURM cluster; fail in CI, skip elsewhere when it is not running."""
    return require(_probe(), CI_MESSAGE, LOCAL_MESSAGE)


def job_root(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[Path, dict[str, str]]:
    """A directory jobs may read (0755) and the MACE_* settings that put a test's scratch root,
    shared database and archives in it (MACE_CONFIG names an empty file: nothing else is read)."""
    root = tmp_path_factory.mktemp(name)
    os.chmod(root, 0o755)
    (root / "none.json").write_text("{}")  # MACE_CONFIG must name a file
    return root, {
        "MACE_SCRATCH_ROOT": str(root / "scratch"), "MACE_SHARED_DATABASE": str(root / "shared.db"),
        "MACE_ARCHIVE_DIR": str(root / "archives"), "MACE_CONFIG": str(root / "none.json"),
    }

