"""SQLite connections that are safe on the filesystems HPC sites actually have.

WAL needs shared memory between readers and writers, which network filesystems (NFS, Lustre,
GPFS…) do not provide coherently: WAL there corrupts databases. So a database on a network
filesystem uses the rollback journal (DELETE), a local one WAL. Every connection is in autocommit
mode and writes go through `write_transaction` (`BEGIN IMMEDIATE`), which takes the write lock up
front: a writer waits on the busy timeout instead of failing half-way with "database is locked".
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from ..errors import ConfigError
from ..util.paths import absolute, usable_directory

BUSY_TIMEOUT_S = 60.0
SQLITE_HEADER = b"SQLite format 3\x00"
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


def _unescape_mount(field: str) -> str:
    """A /proc/self/mounts field: the kernel writes space, tab, newline and backslash as `\\ooo`."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


def _mount_table() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount: /proc/self/mounts on Linux (the table
    psutil reads too, without importing psutil on every database open), else psutil's."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        import psutil  # lazy: platforms without /proc only

        return [(p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True)]
    fields = (line.split(" ") for line in lines)
    return [(_unescape_mount(f[1]), f[2]) for f in fields if len(f) >= 3]


def is_network_filesystem(path: str | os.PathLike[str]) -> bool:
    """True if `path` lives on a filesystem shared between hosts (nfs, lustre, gpfs, cifs…).

    Uses the mount with the longest mountpoint prefix of the resolved path, so a local mount
    nested inside an NFS one (or the reverse) is classified by the innermost mount.
    """
    target = _existing_ancestor(Path(path))
    try:
        device: int | None = os.stat(target).st_dev
    except OSError:
        device = None
    if device in _NETWORK_BY_DEVICE:
        return _NETWORK_BY_DEVICE[device]  # type: ignore[index]
    best: tuple[int, str] = (-1, "")
    try:
        mounts = _mount_table()
    except (OSError, RuntimeError):
        return False
    for mountpoint, fstype in mounts:
        mount = Path(mountpoint)
        if target == mount or mount in target.parents:
            depth = len(mount.parts)
            if depth > best[0]:
                best = (depth, fstype)
    network = _fstype_is_network(best[1]) if best[0] >= 0 else False
    if device is not None:
        _NETWORK_BY_DEVICE[device] = network
    return network


#: Answers of `is_network_filesystem` by device id, for this process: every mount has its own
#: device, and an element opens its context database and the shared one (~1 ms each to classify).
_NETWORK_BY_DEVICE: dict[int, bool] = {}


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


def file_uri(path: str | os.PathLike[str], mode: str = "rwc") -> str:
    """The `file:` URI of `path` for `sqlite3.connect(..., uri=True)`.

    Always a URI, because this SQLite is built with SQLITE_USE_URI (a plain name starting with
    `file:` would be parsed as one anyway). The path is made absolute, a leading `//` collapsed
    (`file://x/s` would name the host `x`), and percent-encoded, so `#`, `?` and `%` in a
    directory or file name stay part of the name instead of starting a fragment or a query.
    """
    return f"file:{quote(str(absolute(path)))}?mode={mode}"


def check_database_file(path: str | os.PathLike[str], setting: str) -> Path:
    """`path` if it is absent, empty or an SQLite database file; else ConfigError naming `setting`.

    Checked before any work depends on it: a directory or a text file in its place would only
    fail after every element ran, at the merge or when the results table is read.
    """
    path = absolute(path)
    fix = f"set {setting} to an SQLite database file (or a new file name)"
    if os.path.lexists(path):
        if not os.path.isfile(path):
            raise ConfigError(f"{setting}: {path} is a directory or special file, not a database; {fix}")
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise ConfigError(f"{setting}: {path} cannot be read ({exc.strerror}); {fix}") from None
        if head and head != SQLITE_HEADER:
            raise ConfigError(f"{setting}: {path} is not an SQLite database; {fix}")
    return usable_directory(path.parent, setting) / path.name


def connect_readonly(path: str | os.PathLike[str], timeout: float = BUSY_TIMEOUT_S, **kw: object) -> sqlite3.Connection:
    """A read-only connection (`mode=ro`: never creates or writes the file)."""
    return sqlite3.connect(file_uri(path, "ro"), uri=True, timeout=timeout, **kw)  # type: ignore[arg-type]


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (creating if needed) a database with our settings: autocommit, 60 s busy timeout,
    foreign keys on, and the journal mode that is safe for the filesystem it lives on."""
    mode = journal_mode_for(path)
    _create_private(path)
    conn = sqlite3.connect(
        file_uri(path), uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        set_journal_mode(conn, mode)
    except BaseException:
        conn.close()
        raise
    return conn


def set_journal_mode(conn: sqlite3.Connection, mode: str, timeout: float = BUSY_TIMEOUT_S) -> None:
    """Switch `conn`'s database to `mode`, waiting for other connections like a write would.

    SQLite answers "database is locked" at once, without its busy handler, when the switch meets
    another connection (seen: 8 elements opening a new shared database together). So retry with
    a short jittered pause until the mode is set, by us or by whoever got there first.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == mode:
                return
            conn.execute(f"PRAGMA journal_mode = {mode}").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            import random  # lazy: only a locked database waits; elements start without it

            time.sleep(0.01 + random.random() * 0.04)


def sync_at_checkpoint(conn: sqlite3.Connection) -> None:
    """For an element's own context database: in WAL mode, commits are not fsynced one by one
    (`synchronous = NORMAL`); the WAL is synced before each checkpoint and the database file after
    it, and closing the last connection checkpoints. The runner closes the context before it writes
    the element's final state, so what that state reports is on disk; an OS crash mid-element can
    lose only the element's last commits, which its next attempt redoes. Saves one fsync per
    commit (~6 per short element). A rollback-journal database (network filesystems) is left as is.
    """
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        conn.execute("PRAGMA synchronous = NORMAL")


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
