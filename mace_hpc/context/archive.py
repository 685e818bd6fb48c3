"""Context archives: `.tar.gz` with a SHA-256 manifest, written atomically; and safe restore.

Writing: the context's SQLite database is settled first (a hot rollback journal replayed, a WAL
checkpointed), because journals are not archived and would otherwise carry the last rows. The
archive and its sidecar `<archive>.sha256` (sha256sum format) are built as temp files next to
their destination and renamed into place only when both are complete and fsynced, so a full disk
or a kill leaves no partial archive and the context intact (the caller keeps it).

Restoring (`restore_archive`) treats the archive as untrusted input (invariant 5 of docs/architecture.md): only regular
files and directories under one `<workflow_id>/` are accepted (no links, devices, FIFOs, absolute
paths, `..`, duplicates), on top of tarfile's own `data` filter where this Python has one
(3.11.4+, 3.12+; the allow-list alone is the guard before that); every file must match the
SHA-256 manifest inside the archive (and the archive its sidecar, when present). Files are written
by us (never `tar.extract`) into a temp dir under the scratch root, then renamed into place, and
an existing context is never overwritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from ..errors import InputError
from ..records.element_state import read_state, write_state
from ..records.layout import EPILOGUE_LOCK, TOMBSTONE_FILES
from ..util.ids import path_inside, validate_workflow_id
from ..util.private import ensure_private_dir

MANIFEST_NAME = "MANIFEST.sha256.json"
SIDECAR_SUFFIX = ".sha256"
# SQLite journals are settled into their database first; our own lock and temp files are not results
_JOURNAL_SUFFIXES = ("-journal", "-wal", "-shm")
_SKIP_PREFIXES = (".epilogue.lock",)
_DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_CHUNK = 1 << 20
# tarfile.data_filter / FilterError exist from 3.11.4 and 3.12 on; `requires-python` says >=3.10
_DATA_FILTER = getattr(tarfile, "data_filter", None)
_FILTER_ERROR: type[Exception] = getattr(tarfile, "FilterError", tarfile.TarError)


def sha256_file(path: Path, bufsize: int = _CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def archive_path(archive_dir: str | os.PathLike[str], workflow_id: str) -> Path:
    return Path(archive_dir) / f"{validate_workflow_id(workflow_id)}.tar.gz"


def settle_database(path: Path) -> None:
    """Replay a hot journal / checkpoint a WAL so the .db file alone holds every committed row.

    Best effort: a corrupt database is archived as it is (the archive is evidence, not a merge).
    """
    try:
        conn = sqlite3.connect(str(path), timeout=5.0)
    except sqlite3.Error:
        return
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # rolls back a hot journal
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() == "wal":
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error:
        pass
    finally:
        conn.close()


def _files(root: Path) -> list[Path]:
    """Regular files under `root` in a stable order, never through a symlink."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(_SKIP_PREFIXES) or (name.startswith(".") and name.endswith(".tmp")):
                continue
            if name.endswith(_JOURNAL_SUFFIXES) and os.path.isfile(os.path.join(dirpath, name.rsplit("-", 1)[0])):
                continue
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append(p)
    return out


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes what passes through (the archive's own SHA-256, in one pass)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.raw.write(view)
        self.hash.update(view)
        return len(view)


def _mkstemp(directory: Path, name: str) -> tuple[int, Path]:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    return fd, Path(tmp)


def archive_context(context_dir: Path, archive_dir: Path, workflow_id: str | None = None) -> Path:
    """Archive `context_dir` as `<archive_dir>/<workflow_id>.tar.gz` (+ `.sha256`); returns the path.

    Members are `<workflow_id>/…` plus `<workflow_id>/MANIFEST.sha256.json`; symlinks and special
    files are never archived. Replaces an older archive of the same id only once the new one is
    complete. Raises OSError (e.g. ENOSPC) with nothing left behind in `archive_dir`.
    """
    context_dir = Path(context_dir)
    workflow_id = validate_workflow_id(workflow_id or context_dir.name)
    archive_dir = Path(archive_dir)
    ensure_private_dir(archive_dir, "archive_dir", parents=True)
    target = archive_path(archive_dir, workflow_id)
    sidecar = target.with_name(target.name + SIDECAR_SUFFIX)
    for name in os.listdir(context_dir):
        if name.endswith(_DB_SUFFIXES) and (context_dir / name).is_file():
            settle_database(context_dir / name)
    tmp_files: list[Path] = []
    try:
        fd, tmp = _mkstemp(archive_dir, target.name)
        tmp_files.append(tmp)
        manifest: dict[str, str] = {}
        with os.fdopen(fd, "wb") as raw:
            hashing = _HashingWriter(raw)
            with tarfile.open(fileobj=hashing, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
                for path in _files(context_dir):
                    rel = path.relative_to(context_dir).as_posix()
                    with open(path, "rb") as fh:
                        st = os.fstat(fh.fileno())
                        digest = hashlib.sha256()
                        info = tarfile.TarInfo(f"{workflow_id}/{rel}")
                        info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o600
                        tar.addfile(info, _DigestReader(fh, digest, st.st_size))
                    manifest[rel] = digest.hexdigest()
                data = json.dumps(
                    {"workflow_id": workflow_id, "created": time.time(), "sha256": manifest},
                    indent=1, sort_keys=True,
                ).encode()
                info = tarfile.TarInfo(f"{workflow_id}/{MANIFEST_NAME}")
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
                tar.addfile(info, io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        fd2, tmp2 = _mkstemp(archive_dir, sidecar.name)
        tmp_files.append(tmp2)
        with os.fdopen(fd2, "wb") as fh:
            fh.write(f"{hashing.hash.hexdigest()}  {target.name}\n".encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.chmod(tmp2, 0o600)
        os.replace(tmp, target)
        tmp_files.remove(tmp)
        os.replace(tmp2, sidecar)
        tmp_files.remove(tmp2)
        _fsync_dir(archive_dir)
    except BaseException:
        for p in tmp_files:
            p.unlink(missing_ok=True)
        raise
    return target


class _DigestReader:
    """File wrapper that hashes what tarfile reads and stops at the size taken at open time.

    A file still growing while archived is cut at that size (tarfile would raise otherwise);
    the manifest hashes exactly the archived bytes.
    """

    def __init__(self, fh: BinaryIO, digest: Any, size: int) -> None:
        self.fh, self.digest, self.left = fh, digest, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.fh.read(n)
        if len(data) < n:  # shrank while archived: pad so the tar stays well-formed
            data += b"\0" * (n - len(data))
        self.left -= len(data)
        self.digest.update(data)
        return data


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_sidecar(archive: Path) -> str | None:
    """The SHA-256 `<archive>.sha256` records, or None when there is none (or it is unreadable)."""
    sidecar = archive.with_name(archive.name + SIDECAR_SUFFIX)
    try:
        return sidecar.read_text(encoding="utf-8").split()[0].lower()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def verify_sidecar(archive: Path) -> bool | None:
    """True/False if `<archive>.sha256` exists and matches/doesn't; None when there is none."""
    expected = read_sidecar(archive)
    return None if expected is None else sha256_file(archive) == expected


# ---------------------------------------------------------------------------- restore
def _member_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    """The member's path components, or InputError if the name is not a plain relative path."""
    name = member.name
    if not name or "\\" in name or "\0" in name or name.startswith("/") or PurePosixPath(name).is_absolute():
        raise InputError(f"archive member {name!r}: absolute or malformed path refused")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts or any(p == ".." for p in parts):
        raise InputError(f"archive member {name!r}: '..' or empty path refused")
    return parts


def _check_members(tar: tarfile.TarFile, scratch_root: Path) -> tuple[str, list[tuple[tarfile.TarInfo, tuple[str, ...]]]]:
    """Allow-list every member; returns the workflow id and (member, relative parts) pairs."""
    workflow_id: str | None = None
    seen: set[tuple[str, ...]] = set()
    members: list[tuple[tarfile.TarInfo, tuple[str, ...]]] = []
    for member in tar.getmembers():
        kind = "directory" if member.isdir() else "file" if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else None
        if kind is None:
            what = ("symlink" if member.issym() else "hard link" if member.islnk() else
                    "FIFO (special file)" if member.isfifo() else "device" if member.isdev() else "special file")
            raise InputError(f"archive member {member.name!r}: {what} refused (only files and directories)")
        parts = _member_parts(member)
        _second_opinion(member, scratch_root)
        top = parts[0]
        if workflow_id is None:
            workflow_id = validate_workflow_id(top, "archive top-level directory")
        elif top != workflow_id:
            raise InputError(f"archive member {member.name!r}: outside {workflow_id}/ (one context per archive)")
        if kind == "file" and len(parts) < 2:
            raise InputError(f"archive member {member.name!r}: a file where the context directory should be")
        if parts in seen:
            raise InputError(f"archive member {member.name!r} appears twice")
        seen.add(parts)
        members.append((member, parts[1:]))
    if workflow_id is None:
        raise InputError("archive is empty")
    return workflow_id, members


def _second_opinion(member: tarfile.TarInfo, scratch_root: Path) -> None:
    """tarfile's own `data` policy (absolute, outside, setuid bits, links), where it exists."""
    if _DATA_FILTER is None:
        return
    try:
        _DATA_FILTER(member, str(scratch_root))
    except _FILTER_ERROR as exc:
        raise InputError(f"archive member {member.name!r}: refused by tarfile's data filter: {exc}") from None


def is_tombstone(context_dir: Path) -> bool:
    """A merged or archived context whose data was removed: only its state and identity are left."""
    if context_dir.is_symlink() or not context_dir.is_dir():
        return False
    names = [n for n in os.listdir(context_dir) if not n.startswith(EPILOGUE_LOCK)]
    return set(names) <= set(TOMBSTONE_FILES) and read_state(context_dir).removed


def restore_archive(archive: Path, scratch_root: Path, *, source: str | None = None) -> Path:
    """Restore a context archive into `<scratch_root>/<workflow_id>`; returns that directory.

    Raises InputError (nothing written) for an unsafe or corrupt archive, a checksum mismatch, or
    when the context already exists. A tombstone (the context was cleaned up after archiving) is
    replaced: its state file is kept, since it says how the element ended (ARCHIVED, MERGED), with
    `removed` cleared and `restored_from` set. `source` names the archive in messages and the state
    (an object-store URL when `archive` is its downloaded copy).
    """
    archive = Path(archive)
    scratch_root = Path(scratch_root).absolute()
    if not archive.is_file():
        raise InputError(f"archive {archive}: no such file")
    if verify_sidecar(archive) is False:
        raise InputError(f"archive {archive}: SHA-256 does not match {archive.name}{SIDECAR_SUFFIX} (corrupt copy?)")
    try:
        scratch_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _not_restored(archive, scratch_root, exc) from None
    try:
        tar = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"archive {archive}: not a readable tar archive ({exc})") from None
    with tar:
        try:
            workflow_id, members = _check_members(tar, scratch_root)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InputError(f"archive {archive}: truncated or corrupt ({exc})") from None
        target = path_inside(scratch_root, workflow_id)
        if os.path.lexists(target) and not is_tombstone(target):
            raise InputError(f"context {target} already exists; remove or move it before restoring {archive.name}")
        manifest_member = next((m for m, rel in members if rel == (MANIFEST_NAME,) and m.isfile()), None)
        if manifest_member is None:
            raise InputError(f"archive {archive}: no {MANIFEST_NAME} (not written by mace-hpc)")
        try:
            manifest = json.loads(tar.extractfile(manifest_member).read(1 << 24))  # type: ignore[union-attr]
            expected: dict[str, str] = dict(manifest["sha256"])
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, tarfile.TarError, OSError, EOFError):
            raise InputError(f"archive {archive}: unreadable {MANIFEST_NAME}") from None
        if manifest.get("workflow_id") != workflow_id:
            raise InputError(f"archive {archive}: manifest names {manifest.get('workflow_id')!r}, members {workflow_id!r}")
        files = {"/".join(rel): m for m, rel in members if m.isfile() and rel != (MANIFEST_NAME,)}
        if set(files) != set(expected):
            missing = sorted(set(expected) - set(files))[:3]
            extra = sorted(set(files) - set(expected))[:3]
            raise InputError(f"archive {archive}: members do not match the manifest (missing {missing}, unlisted {extra})")

        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".restore-{workflow_id}.", dir=scratch_root))
        except OSError as exc:
            raise _not_restored(archive, scratch_root, exc) from None
        try:
            root = tmp / workflow_id
            os.mkdir(root, 0o700)
            for member, rel in members:
                if member.isdir() and rel:
                    _mkdirs(root, rel)
            for rel_name, member in files.items():
                rel = tuple(rel_name.split("/"))
                parent = _mkdirs(root, rel[:-1])
                digest = _write_member(tar, member, parent / rel[-1])
                if digest != expected[rel_name]:
                    raise InputError(f"archive {archive}: {rel_name} does not match its SHA-256 in the manifest")
            tombstone = os.path.lexists(target) and is_tombstone(target)
            if os.path.lexists(target) and not tombstone:
                raise InputError(f"context {target} already exists; remove or move it before restoring {archive.name}")
            if tombstone:
                for name in TOMBSTONE_FILES:  # how the element ended outranks the archive's earlier copy
                    if (target / name).is_file():
                        os.replace(target / name, root / name)
                os.rename(target, tmp / ".tombstone")
            os.rename(root, target)
            if tombstone:
                write_state(target, removed=False, removed_at=None, removed_by=None,
                            restored_from=source or str(archive), restored_at=time.time())
        except (tarfile.TarError, EOFError) as exc:
            raise InputError(f"archive {archive}: truncated or corrupt ({exc})") from None
        except OSError as exc:  # ENOSPC, EDQUOT, EIO while writing: the temp dir goes, nothing is restored
            raise _not_restored(archive, scratch_root, exc) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(scratch_root)
    return target


def _not_restored(archive: Path, scratch_root: Path, exc: OSError) -> InputError:
    """One line for a restore the filesystem refused (full, quota, not a directory)."""
    why = exc.strerror or str(exc)
    return InputError(
        f"restoring {archive.name} into {scratch_root} failed: {why}; nothing was restored "
        "(free space there or restore with --scratch-root elsewhere)"
    )


def _mkdirs(root: Path, rel: tuple[str, ...]) -> Path:
    path = root
    for part in rel:
        path = path / part
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if os.path.islink(path) or not os.path.isdir(path):
                raise InputError(f"archive: {'/'.join(rel)} is both a file and a directory") from None
    return path


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> str:
    """Copy one regular member to a new file (O_EXCL, no symlink follow); its SHA-256."""
    src = tar.extractfile(member)
    if src is None:
        raise InputError(f"archive member {member.name!r} has no data")
    digest = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.utime(dest, (member.mtime, member.mtime))
    return digest.hexdigest()
