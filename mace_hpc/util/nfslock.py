"""An inter-host lock that works on NFS, where fcntl/flock locks are unreliable or absent.

The lock is a file created with O_EXCL (atomic on NFSv3+ and every local filesystem) holding
JSON: host, pid, the pid's start time, acquisition time, lifetime and a random token. A waiter
breaks the lock only when it is provably stale: the holder is on this host and dead (pid gone,
a zombie, or the pid now belongs to a process started at another time: pid reuse), or the
lifetime has expired (any host; the holder may `refresh()` to extend it), or the file has been
empty/unparsable for longer than a grace period (its creator died between create and write).

Breaking is serialised through a short-lived `<lock>.break` guard (itself a lock file with holder
info and a 30 s lifetime, so a breaker killed mid-break is detected like any dead holder) and done
by renaming the lock
to a unique name, then re-reading the token: if the renamed file is not the one judged stale
(someone released and another process re-acquired in between) it is put back with link(), which
cannot clobber a newer lock. `release()` uses the same rename-and-check, so a holder whose lock
was broken never deletes its successor's lock.

Why not filelock's soft locks (4.3): on NFS they never break a stale lock (takeover needs
renameat2 RENAME_EXCHANGE, which NFS refuses), leases refresh only from a heartbeat thread (the
epilogue then cannot fork) and expire only after each waiter watched them for a whole lease;
tests/test_util_lock.py's test_filelock_gap_* show each gap.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import MaceError
from .ids import random_uid
from .procs import hostname, process_start_time

EMPTY_GRACE_S = 5.0  # an empty/unparsable lock file younger than this is being written
BREAK_LOCK_STALE_S = 30.0  # lifetime of the `.break` guard: breaking takes milliseconds
START_TIME_TOLERANCE_S = 0.05


class LockTimeout(MaceError):
    """The lock could not be acquired in time; the message says who holds it."""


@dataclass(repr=False, eq=False)  # private, read field by field: no generated repr/eq to build at start
class _Seen:
    """What a waiter observed at the lock path: parsed content (or None) and file identity."""

    info: dict[str, Any] | None
    ino: int
    mtime: float




def _read(path: Path) -> _Seen | None:
    """The lock file's content and identity; None if there is no lock file."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            raw = fh.read(65536)
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw.decode("utf-8"))
        if not isinstance(info, dict) or not isinstance(info.get("token"), str):
            info = None
    except (UnicodeDecodeError, ValueError):
        info = None
    return _Seen(info, st.st_ino, st.st_mtime)


def _holder_is_dead(info: dict[str, Any]) -> bool:
    """True only if the holder is on this host and certainly not running any more."""
    if info.get("host") != hostname():
        return False
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    import psutil  # lazy: only a contended lock asks; taking a free one must not import it

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, OSError):
        return False  # e.g. access denied: it exists, assume alive
    recorded = info.get("start_time")
    if isinstance(recorded, (int, float)) and abs(started - recorded) > START_TIME_TOLERANCE_S:
        return True  # the pid was reused by another process
    return False


def stale_reason(seen: _Seen, now: float | None = None) -> str | None:
    """Why the observed lock is stale, or None if it must be respected."""
    now = time.time() if now is None else now
    info = seen.info
    if info is None:
        return "empty or unreadable lock file" if now - seen.mtime > EMPTY_GRACE_S else None
    try:
        expires = float(info["acquired_at"]) + float(info["lifetime"])
    except (KeyError, TypeError, ValueError):
        expires = seen.mtime + EMPTY_GRACE_S
    if now > expires:
        return "lifetime expired"
    if _holder_is_dead(info):
        return "holder process is dead"
    return None


def describe_holder(seen: _Seen | None) -> str:
    if seen is None:
        return "nobody (the lock was just released)"
    info = seen.info
    if info is None:
        return "an unknown process (the lock file is empty or unreadable)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("acquired_at", 0))))
    return (
        f"pid {info.get('pid')} on host {info.get('host')} since {since} (lifetime {info.get('lifetime')} s)"
    )


def _unique_sibling(path: Path, tag: str) -> Path:
    return path.with_name(f"{path.name}.{tag}.{hostname()}.{os.getpid()}.{random_uid()[:12]}")


def _remove_if(path: Path, accept: _Seen | str) -> bool:
    """Remove the lock file only if it is the one we expect (same token, or same inode when the
    expected file had no readable content). Returns True if that file is gone now."""
    grave = _unique_sibling(path, "gone")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return True
    moved = _read(grave)
    if isinstance(accept, str):
        ours = moved is not None and moved.info is not None and moved.info.get("token") == accept
    else:
        ours = moved is not None and (
            (
                accept.info is not None
                and moved.info is not None
                and moved.info.get("token") == accept.info.get("token")
            )
            or (accept.info is None and moved.ino == accept.ino)
        )
    if not ours:
        try:
            os.link(grave, path)  # put the newer lock back; never clobbers a lock created meanwhile
        except FileExistsError:
            pass
    try:
        os.unlink(grave)
    except FileNotFoundError:
        pass
    return ours


def _holder_content(token: str, lifetime: float) -> bytes:
    """The lock file's JSON. Never fsynced: a crash of the writer's host kills every holder there
    (its file, even if emptied, is then broken as stale), and NFS close() already flushes to the
    server; an fsync only doubled the cost of taking a lock."""
    pid = os.getpid()
    return json.dumps(
        {
            "host": hostname(),
            "pid": pid,
            "start_time": process_start_time(pid),
            "acquired_at": time.time(),
            "lifetime": lifetime,
            "token": token,
        }
    ).encode("utf-8")


def _create(path: Path, content: bytes) -> bool:
    """Create `path` exclusively (O_EXCL) with `content`; False if it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, content)  # no fsync: see _holder_content
    except BaseException:
        st = os.fstat(fd)
        os.close(fd)
        _remove_if(path, _Seen(None, st.st_ino, st.st_mtime))  # ours, half-written
        raise
    os.close(fd)
    return True


class NfsLock:
    """Inter-host mutual exclusion through an O_EXCL lock file; see the module docstring.

    `with NfsLock(path, timeout=60): ...`; raises LockTimeout naming the holder. Not reentrant.
    """

    def __init__(
        self, path: str | os.PathLike[str], lifetime: float = 600.0, timeout: float = 60.0, poll: float = 0.05
    ) -> None:
        self.path = Path(path)
        self.lifetime = float(lifetime)
        self.timeout = float(timeout)
        self.poll = float(poll)
        self.token: str | None = None

    @property
    def held(self) -> bool:
        return self.token is not None

    def _try_break(self, seen: _Seen) -> bool:
        """Remove `seen` if it is still the lock file; serialised with other breakers."""
        guard = self.path.with_name(self.path.name + ".break")
        guard_token = random_uid()
        if not _create(guard, _holder_content(guard_token, BREAK_LOCK_STALE_S)):
            guard_seen = _read(guard)
            if guard_seen is not None and stale_reason(guard_seen) is not None:
                _remove_if(guard, guard_seen)  # a breaker died mid-break
            return False
        try:
            again = _read(self.path)
            if again is None:
                return True
            same = again.ino == seen.ino and again.info == seen.info
            if not same or stale_reason(again) is None:
                return False
            return _remove_if(self.path, again)
        finally:
            _remove_if(guard, guard_token)

    def acquire(self, timeout: float | None = None) -> NfsLock:
        """Wait up to `timeout` seconds (default: the constructor's) for the lock."""
        if self.token is not None:
            raise RuntimeError(f"lock {self.path} is already held by this NfsLock (not reentrant)")
        timeout = self.timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        token = random_uid()
        while True:
            if _create(self.path, _holder_content(token, self.lifetime)):
                self.token = token
                return self
            seen = _read(self.path)
            if seen is not None and stale_reason(seen) is not None and self._try_break(seen):
                continue
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"could not acquire lock {self.path} within {timeout:g} s: held by "
                    f"{describe_holder(_read(self.path))}; if that process is gone, delete the lock file"
                )
            import random  # lazy: only a contended lock waits; taking a free one must not import it

            time.sleep(self.poll * random.uniform(0.5, 1.5))

    def refresh(self) -> None:
        """Restart the lifetime clock (long merges call this between batches)."""
        if self.token is None:
            raise RuntimeError(f"lock {self.path} is not held")
        seen = _read(self.path)
        if seen is None or seen.info is None or seen.info.get("token") != self.token:
            raise LockTimeout(
                f"lock {self.path} was broken while held (lifetime {self.lifetime:g} s exceeded)"
            )
        tmp = _unique_sibling(self.path, "refresh")
        with open(tmp, "wb") as fh:
            fh.write(_holder_content(self.token, self.lifetime))
        os.replace(tmp, self.path)

    def release(self) -> None:
        """Give the lock up; the file is removed only if it still carries our token."""
        token, self.token = self.token, None
        if token is not None:
            _remove_if(self.path, token)

    def __enter__(self) -> NfsLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"NfsLock({str(self.path)!r}, held={self.held})"
