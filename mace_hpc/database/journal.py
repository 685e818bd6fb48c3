"""SQLite connections that are safe on the filesystems HPC sites actually have.

WAL needs shared memory between readers and writers, which network filesystems (NFS, Lustre,
GPFS…) do not provide coherently: WAL there corrupts databases. So a database on a network
filesystem uses the rollback journal (DELETE), a local one WAL. Every connection is in autocommit
mode and writes go through `write_transaction` (`BEGIN IMMEDIATE`), which takes the write lock up
front: a writer waits on the busy timeout instead of failing half-way with "database is locked".
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from ..errors import ConfigError

BUSY_TIMEOUT_S = 60.0
JOURNAL_ENV = "MACE_SQLITE_JOURNAL"

#: Filesystem types (as in /proc/mounts) that are shared between hosts.
NETWORK_FSTYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "nfsd",
        "lustre",
        "gpfs",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "beegfs",
        "ceph",
        "cephfs",
        "9p",
        "afs",
        "glusterfs",
        "panfs",
        "pvfs2",
        "orangefs",
        "ocfs2",
        "gfs2",
        "wekafs",
        "davfs",
        "ncpfs",
        "coda",
    }
)
#: Prefixes (FUSE and kernel variants) that mean the same.
NETWORK_FSTYPE_PREFIXES = (
    "nfs",
    "smb",
    "fuse.sshfs",
    "fuse.ceph",
    "fuse.glusterfs",
    "fuse.beegfs",
    "fuse.s3fs",
    "fuse.gcsfuse",
    "fuse.rclone",
)


def _fstype_is_network(fstype: str) -> bool:
    fstype = fstype.lower()
    return fstype in NETWORK_FSTYPES or fstype.startswith(NETWORK_FSTYPE_PREFIXES)


def _existing_ancestor(path: Path) -> Path:
    """The path itself or its nearest existing parent, symlinks resolved (the db may not exist yet)."""
    path = Path(os.path.abspath(os.path.expanduser(path)))
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.resolve()
    return Path("/")


def is_network_filesystem(path: str | os.PathLike[str]) -> bool:
    """True if `path` lives on a filesystem shared between hosts (nfs, lustre, gpfs, cifs…).

    Uses the mount with the longest mountpoint prefix of the resolved path, so a local mount
    nested inside an NFS one (or the reverse) is classified by the innermost mount.
    """
    target = _existing_ancestor(Path(path))
    best: tuple[int, str] = (-1, "")
    try:
        partitions = psutil.disk_partitions(all=True)
    except (OSError, RuntimeError):
        return False
    for part in partitions:
        mount = Path(part.mountpoint)
        if target == mount or mount in target.parents:
            depth = len(mount.parts)
            if depth > best[0]:
                best = (depth, part.fstype)
    return _fstype_is_network(best[1]) if best[0] >= 0 else False


def journal_mode_for(path: str | os.PathLike[str]) -> str:
    """`wal` on a local filesystem, `delete` on a network one; `MACE_SQLITE_JOURNAL` overrides."""
    forced = os.environ.get(JOURNAL_ENV, "").strip().lower()
    if forced:
        if forced not in ("wal", "delete"):
            raise ConfigError(f"environment {JOURNAL_ENV}={forced!r} is invalid; allowed: wal | delete")
        return forced
    return "delete" if is_network_filesystem(path) else "wal"


def _create_private(path: str | os.PathLike[str]) -> None:
    """A new database file is made 0600 by us (SQLite gives its journals the same mode), never
    through a symlink planted where it goes (invariant 6 of docs/architecture.md)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        pass


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (creating if needed) a database with our settings: autocommit, 60 s busy timeout,
    foreign keys on, and the journal mode that is safe for the filesystem it lives on."""
    mode = journal_mode_for(path)
    _create_private(path)
    conn = sqlite3.connect(
        os.fspath(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        current = conn.execute("PRAGMA journal_mode").fetchone()[0].lower()
        if current != mode:
            conn.execute(f"PRAGMA journal_mode = {mode}").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` … `COMMIT`, or `ROLLBACK` on any exception: all of it or none of it.

    IMMEDIATE takes the write lock at the start, so concurrent writers queue on the busy timeout
    instead of deadlocking when a read transaction tries to upgrade.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
