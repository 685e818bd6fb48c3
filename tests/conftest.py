"""Shared pytest fixtures. Each section belongs to one area; keep additions in their own section."""

# ---------------------------------------------------------------- slurm (real local cluster) ----
# `slurm_cluster`: session fixture, fails in CI / skips elsewhere when SLURM is not running.
# Tests that need it are marked `@pytest.mark.slurm` (marker registered in pyproject.toml).
# (a plugin module rather than an import, so this section needs no import ordering)
pytest_plugins = ["slurm_fixtures", "browser_fixtures", "s3_fixtures"]  # browser: tests/browser_fixtures.py; s3: a moto server
# ---------------------------------------------------------------- end slurm ---------------------

# ---------------------------------------------------------------- environment isolation ---------
# Every test gets its own scratch root, archive dir and shared database under tmp_path, and no
# MACE_* variable leaks in from the developer's shell, so tests never touch ~/.mace or the repo.
import os as _os  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = _Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def mace_env(tmp_path, tmp_path_factory, monkeypatch):
    """Isolated MACE_* environment; returns the paths it set."""
    for key in list(_os.environ):
        if key.startswith("MACE_"):
            monkeypatch.delenv(key, raising=False)
    paths = {
        "scratch_root": tmp_path / "scratch",
        "archive_dir": tmp_path / "archives",
        "shared_database": tmp_path / "shared" / "materials.db",
    }
    monkeypatch.setenv("MACE_SCRATCH_ROOT", str(paths["scratch_root"]))
    monkeypatch.setenv("MACE_ARCHIVE_DIR", str(paths["archive_dir"]))
    monkeypatch.setenv("MACE_SHARED_DATABASE", str(paths["shared_database"]))
    # an empty config, so no .mace_config.json in the cwd is read (MACE_CONFIG must name a file)
    empty_config = tmp_path_factory.getbasetemp() / "empty-mace-config.json"
    empty_config.write_text("{}")
    monkeypatch.setenv("MACE_CONFIG", str(empty_config))
    from mace_hpc.database import materials as _materials
    from mace_hpc.workflow.context import WorkflowContext as _WC

    yield paths
    _materials.set_default_path_resolver(None)
    _WC._stack.clear()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test with the current directory set to tmp_path (for relative paths in the spec)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
# ---------------------------------------------------------------- end environment isolation -----

# ---------------------------------------------------------------- submission fakes --------------


@pytest.fixture
def fake_backend(monkeypatch):
    """A scheduler that records requests instead of queueing them (tests/submit_fakes.py)."""
    from submit_fakes import install_fake_backend

    return install_fake_backend(monkeypatch)
# ---------------------------------------------------------------- end submission fakes ----------


# ---------------------------------------------------------------- a full disk -------------------
@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs owned by us, mode 0700 (root only); skipped visibly where mounting is not allowed."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
