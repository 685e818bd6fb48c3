"""Context archives: `.tar.gz` with a SHA-256 manifest, written atomically.

The archive is built in a temp file next to its destination and renamed into place only when
complete and fsynced, so a full disk or a kill leaves no partial archive and the context intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

MANIFEST_NAME = "MANIFEST.sha256.json"
_SKIP_SUFFIXES = (".tmp", "-journal", "-wal", "-shm")


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file() or name.endswith(_SKIP_SUFFIXES):
                continue
            out.append(p)
    return out


def archive_context(context_dir: Path, archive_dir: Path, workflow_id: str | None = None) -> Path:
    """Archive `context_dir` as `<archive_dir>/<workflow_id>.tar.gz`; returns the archive path.

    Members are stored under `<workflow_id>/…`; symlinks and special files are never archived.
    """
    context_dir = Path(context_dir)
    workflow_id = workflow_id or context_dir.name
    archive_dir = Path(archive_dir)
    archive_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = archive_dir / f"{workflow_id}.tar.gz"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=archive_dir)
    try:
        manifest: dict[str, str] = {}
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                for path in _files(context_dir):
                    rel = path.relative_to(context_dir).as_posix()
                    manifest[rel] = sha256_file(path)
                    tar.add(path, arcname=f"{workflow_id}/{rel}", recursive=False)
                data = json.dumps(
                    {"workflow_id": workflow_id, "created": time.time(), "sha256": manifest},
                    indent=1,
                    sort_keys=True,
                ).encode()
                info = tarfile.TarInfo(f"{workflow_id}/{MANIFEST_NAME}")
                info.size = len(data)
                info.mtime = int(time.time())
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
