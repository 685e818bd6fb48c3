"""NfsLock: mutual exclusion across processes, stale-lock breaking, timeouts, safe release."""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

import psutil
import pytest

from mace_hpc.errors import MaceError
from mace_hpc.util import nfslock
from mace_hpc.util.nfslock import LockTimeout, NfsLock

FORK = multiprocessing.get_context("fork")


def write_lock(path: Path, **fields) -> dict:
    info = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start_time": psutil.Process().create_time(),
        "acquired_at": time.time(),
        "lifetime": 600.0,
        "token": uuid.uuid4().hex,
    }
    info.update(fields)
    path.write_text(json.dumps(info))
    return info


def dead_pid() -> tuple[int, float]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, start


# renameat2 syscall number and seccomp audit arch, per machine
_RENAMEAT2 = {"x86_64": (316, 0xC000003E), "aarch64": (276, 0xC00000B7)}


def refuse_rename_flags() -> None:
    """Make renameat2() with any flag fail with EINVAL in this process and its children, as on NFS.

    Linux's NFS client (nfs_rename) rejects every renameat2 flag, RENAME_EXCHANGE included; there is
    no NFS mount here, so a seccomp filter gives the same answer from the real kernel path. Plain
    rename/link/O_EXCL, which NfsLock uses, are untouched. Irreversible: call it in a forked child.
    """
    nr, arch = _RENAMEAT2[platform.machine()]
    ins = [
        (0x20, 0, 0, 4),  # A = seccomp_data.arch
        (0x15, 0, 5, arch),  # other arch: allow
        (0x20, 0, 0, 0),  # A = syscall number
        (0x15, 0, 3, nr),  # not renameat2: allow
        (0x20, 0, 0, 48),  # A = args[4] (flags), low word
        (0x15, 1, 0, 0),  # no flags: allow
        (0x06, 0, 0, 0x00050000 | 22),  # SECCOMP_RET_ERRNO | EINVAL
        (0x06, 0, 0, 0x7FFF0000),  # SECCOMP_RET_ALLOW
    ]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in ins))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(ins), ctypes.addressof(code))
    libc = ctypes.CDLL(None, use_errno=True)
    for args in ((38, 1, 0, 0, 0), (22, 2, ctypes.byref(prog), 0, 0)):  # NO_NEW_PRIVS; SECCOMP_MODE_FILTER
        if libc.prctl(*args) != 0:
            raise OSError(ctypes.get_errno(), "prctl failed while installing the NFS rename filter")


def needs_nfs_simulation() -> None:
    if sys.platform != "linux" or platform.machine() not in _RENAMEAT2:
        pytest.skip(f"the NFS rename simulation knows Linux on {sorted(_RENAMEAT2)} only")


def in_child(fn, *args):
    """Run fn(*args) in a forked child; its return value (picklable) comes back to the test."""
    queue = FORK.SimpleQueue()
    proc = FORK.Process(target=lambda: queue.put(fn(*args)))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    return queue.get()


def test_acquire_writes_holder_info_and_release_removes(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with NfsLock(path, lifetime=30) as lock:
        info = json.loads(path.read_text())
        assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()
        assert info["start_time"] == pytest.approx(psutil.Process().create_time())
        assert info["lifetime"] == 30 and info["token"] == lock.token and lock.held
        with pytest.raises(RuntimeError, match="reentrant"):
            lock.acquire()
    assert not path.exists() and not lock.held
    assert issubclass(LockTimeout, MaceError)


def _counter_worker(lock_path: str, counter: str, log: str, rounds: int, nfs: bool) -> None:
    if nfs:
        refuse_rename_flags()
    for _ in range(rounds):
        with NfsLock(lock_path, timeout=60, poll=0.002):
            with open(log, "a") as fh:
                fh.write(f"in {os.getpid()}\n")
            value = int(Path(counter).read_text())
            time.sleep(0.001)
            Path(counter).write_text(str(value + 1))
            with open(log, "a") as fh:
                fh.write(f"out {os.getpid()}\n")


@pytest.mark.parametrize("nfs", [False, True], ids=["local", "nfs-renames"])
def test_mutual_exclusion_across_processes_starting_on_a_stale_lock(tmp_path: Path, nfs: bool) -> None:
    if nfs:
        needs_nfs_simulation()
    lock_path, counter, log = tmp_path / "m.lock", tmp_path / "counter", tmp_path / "log"
    counter.write_text("0")
    pid, start = dead_pid()
    write_lock(lock_path, pid=pid, start_time=start)  # every worker finds a dead holder at once
    procs = [
        FORK.Process(target=_counter_worker, args=(str(lock_path), str(counter), str(log), 15, nfs))
        for _ in range(6)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert int(counter.read_text()) == 6 * 15
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 2 * 6 * 15
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):  # strictly nested: in A, out A, in B, ...
        assert enter.startswith("in ") and leave == "out " + enter[3:]
    assert not lock_path.exists()
    assert not list(tmp_path.glob("m.lock.*"))  # no graves or guards left behind


def test_stale_lock_of_dead_pid_is_broken(tmp_path: Path) -> None:
    path = tmp_path / "d.lock"
    pid, start = dead_pid()
    write_lock(path, pid=pid, start_time=start)
    with NfsLock(path, timeout=5) as lock:
        assert json.loads(path.read_text())["token"] == lock.token


def test_reused_pid_is_detected_by_start_time(tmp_path: Path) -> None:
    path = tmp_path / "r.lock"
    write_lock(path, start_time=psutil.Process().create_time() - 1000)  # our pid, someone else's start
    with NfsLock(path, timeout=5) as lock:
        assert json.loads(path.read_text())["token"] == lock.token


def test_zombie_holder_counts_as_dead(tmp_path: Path) -> None:
    path = tmp_path / "z.lock"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        zombie = psutil.Process(proc.pid)
        start = zombie.create_time()
        for _ in range(500):  # at most ~5 s for the child to exit (it is not reaped: a zombie)
            if zombie.status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.01)
        assert zombie.status() == psutil.STATUS_ZOMBIE
        write_lock(path, pid=proc.pid, start_time=start)
        with NfsLock(path, timeout=5) as lock:
            assert json.loads(path.read_text())["token"] == lock.token
    finally:
        proc.wait()


def test_expired_lifetime_is_broken_on_any_host(tmp_path: Path) -> None:
    path = tmp_path / "e.lock"
    write_lock(path, host="another-node", pid=1, acquired_at=time.time() - 100, lifetime=10)
    with NfsLock(path, timeout=5) as lock:
        assert json.loads(path.read_text())["token"] == lock.token


def test_live_holder_on_another_host_times_out_with_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "h.lock"
    info = write_lock(path, host="node042", pid=4242)
    with pytest.raises(LockTimeout) as err:
        NfsLock(path, timeout=0.2, poll=0.01).acquire()
    message = str(err.value)
    assert "node042" in message and "pid 4242" in message and str(path) in message
    assert json.loads(path.read_text())["token"] == info["token"]  # untouched


def _hold(path: str, held, go, released_marker: str) -> None:
    with NfsLock(path):
        held.set()
        go.wait(60)
        Path(released_marker).write_text("yes")


def test_live_holder_is_waited_for_then_times_out_or_acquires(tmp_path: Path) -> None:
    path, marker = tmp_path / "w.lock", tmp_path / "released"
    held, go = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(str(path), held, go, str(marker)))
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(LockTimeout, match=rf"pid {holder.pid} on host {socket.gethostname()}"):
            NfsLock(path, timeout=0.2, poll=0.01).acquire()
        assert path.exists()
        go.set()
        with NfsLock(path, timeout=60, poll=0.01) as lock:
            assert marker.read_text() == "yes"  # we got in only after the holder left
            assert json.loads(path.read_text())["token"] == lock.token
    finally:
        go.set()
        holder.join(30)
    assert holder.exitcode == 0


def test_release_does_not_delete_someone_elses_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.lock"
    lock = NfsLock(path).acquire()
    # Our lock was broken (say we overran the lifetime) and someone else acquired it.
    path.unlink()
    theirs = write_lock(path, host="node7", pid=77)
    lock.release()
    assert json.loads(path.read_text())["token"] == theirs["token"]
    assert not lock.held
    assert [p.name for p in tmp_path.iterdir()] == ["s.lock"]


def test_breaker_never_removes_a_lock_acquired_after_it_looked(tmp_path: Path) -> None:
    path = tmp_path / "b.lock"
    pid, start = dead_pid()
    write_lock(path, pid=pid, start_time=start)
    seen = nfslock._read(path)
    assert nfslock.stale_reason(seen) == "holder process is dead"
    # Before the breaker acts, the stale lock is released/broken and a live process takes the lock.
    path.unlink()
    fresh = write_lock(path)
    assert NfsLock(path)._try_break(seen) is False
    assert json.loads(path.read_text())["token"] == fresh["token"]
    # The lower-level rename-and-check puts a mismatching file back instead of deleting it.
    assert nfslock._remove_if(path, seen) is False
    assert json.loads(path.read_text())["token"] == fresh["token"]
    assert [p.name for p in tmp_path.iterdir()] == ["b.lock"]


def test_empty_lock_file_is_respected_while_young_and_broken_when_old(tmp_path: Path) -> None:
    path = tmp_path / "empty.lock"
    path.write_bytes(b"")
    with pytest.raises(LockTimeout, match="empty or unreadable"):
        NfsLock(path, timeout=0.1, poll=0.01).acquire()
    old = time.time() - 60
    os.utime(path, (old, old))
    with NfsLock(path, timeout=5) as lock:
        assert json.loads(path.read_text())["token"] == lock.token
    path.write_bytes(b'{"host": "x", "pi')  # truncated mid-write, long ago
    os.utime(path, (old, old))
    with NfsLock(path, timeout=5):
        pass


def test_orphaned_break_guard_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "g.lock"
    pid, start = dead_pid()
    write_lock(path, pid=pid, start_time=start)
    guard = tmp_path / "g.lock.break"
    guard.write_text("")
    old = time.time() - 3600
    os.utime(guard, (old, old))  # a breaker died mid-break an hour ago
    with NfsLock(path, timeout=10, poll=0.01) as lock:
        assert json.loads(path.read_text())["token"] == lock.token
    assert not guard.exists()


def test_break_guard_of_a_dead_breaker_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "k.lock"
    pid, start = dead_pid()
    write_lock(path, pid=pid, start_time=start)
    write_lock(tmp_path / "k.lock.break", pid=pid, start_time=start, lifetime=30)  # killed mid-break
    with NfsLock(path, timeout=10, poll=0.01) as lock:
        assert json.loads(path.read_text())["token"] == lock.token
    assert [p.name for p in tmp_path.iterdir()] == []


def test_refresh_extends_lifetime_and_detects_a_broken_lock(tmp_path: Path) -> None:
    path = tmp_path / "f.lock"
    lock = NfsLock(path, lifetime=60).acquire()
    first = json.loads(path.read_text())
    os.utime(path, (0, 0))
    lock.refresh()
    second = json.loads(path.read_text())
    assert second["token"] == first["token"] and second["acquired_at"] >= first["acquired_at"]
    path.unlink()
    write_lock(path, host="other")
    with pytest.raises(LockTimeout, match="broken while held"):
        lock.refresh()
    lock.release()
    assert json.loads(path.read_text())["host"] == "other"


# ---------------------------------------------------------------- why not filelock ---------------
# filelock 4.x ships soft (O_EXCL marker) locks with owner records: SoftFileLock, MarkerSoftFileLock,
# SoftFileLease, StrictSoftFileLock. Each test below holds NfsLock to a guarantee our fault tests
# rely on and shows that filelock does not keep it, so a swap would fail here first.


def _gets(lock, timeout: float) -> bool:
    """Whether `lock` (NfsLock or a filelock lock) is acquired within `timeout`; released again."""
    import filelock

    try:
        lock.acquire(timeout=timeout)
    except (LockTimeout, filelock.Timeout):
        return False
    lock.release()
    return True


def _killed_filelock_holder(path: Path, kind: str) -> bytes:
    """The marker a filelock holder leaves behind when it is killed -9 holding `path`."""
    code = (
        f"import filelock, os, signal; held = filelock.{kind}({str(path)!r}); held.acquire();"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -signal.SIGKILL
    return path.read_bytes()


def _stale_locks_broken(tmp: Path, dead_marker: bytes, nfs: bool) -> dict[str, bool]:
    import filelock

    if nfs:
        refuse_rename_flags()
    pid, start = dead_pid()
    long_ago = time.time() - 7200
    results = {}
    write_lock(tmp / "ours-dead.lock", pid=pid, start_time=start)
    results["ours: dead holder"] = _gets(NfsLock(tmp / "ours-dead.lock"), 2)
    write_lock(tmp / "ours-expired.lock", host="node042", pid=4242, acquired_at=long_ago, lifetime=3600)
    results["ours: expired on another host"] = _gets(NfsLock(tmp / "ours-expired.lock"), 2)
    (tmp / "fl-dead.lock").write_bytes(dead_marker)
    results["filelock: dead holder"] = _gets(filelock.MarkerSoftFileLock(tmp / "fl-dead.lock"), 0.5)
    (tmp / "fl-expired.lock").write_text("4242\nnode042\n")  # SoftFileLock's own record: pid, host
    os.utime(tmp / "fl-expired.lock", (long_ago, long_ago))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", filelock.SoftFileLockLifetimeWarning)
        expiring = filelock.SoftFileLock(tmp / "fl-expired.lock", lifetime=3600)
    results["filelock: expired on another host"] = _gets(expiring, 0.5)
    return results


def test_filelock_gap_nfs_never_breaks_a_stale_lock(tmp_path: Path) -> None:
    """filelock takes a stale marker over only with renameat2(RENAME_EXCHANGE), which NFS refuses
    (EINVAL): there a killed or expired holder's lock is never broken and every waiter times out."""
    needs_nfs_simulation()
    dead_marker = _killed_filelock_holder(tmp_path / "killed.lock", "MarkerSoftFileLock")
    (tmp_path / "local").mkdir()
    (tmp_path / "nfs").mkdir()
    local = in_child(_stale_locks_broken, tmp_path / "local", dead_marker, False)
    nfs = in_child(_stale_locks_broken, tmp_path / "nfs", dead_marker, True)
    assert all(local.values()), local  # on a local disk both break dead and expired holders
    assert nfs == {
        "ours: dead holder": True,
        "ours: expired on another host": True,
        "filelock: dead holder": False,
        "filelock: expired on another host": False,
    }


def _fork_allowed_while_held(tmp: Path) -> dict[str, object]:
    import filelock

    from mace_hpc.epilogue.hook import _can_fork

    with NfsLock(tmp / "ours.lock", lifetime=60) as lock:
        lock.refresh()
        ours = _can_fork()
    with filelock.SoftFileLease(tmp / "lease.lock", lease_duration=60):
        lease = _can_fork()
        names = sorted(t.name.split("-")[1] for t in threading.enumerate() if t.name.startswith("filelock-"))
    return {"ours": ours, "lease": lease, "lease threads": names}


def test_filelock_gap_lease_heartbeat_thread_stops_the_epilogue_forking(tmp_path: Path) -> None:
    """SoftFileLease refreshes only from a heartbeat thread it always starts (no public refresh(), and
    the interval must lie in (0, lease_duration)); while it runs, the epilogue cannot fork its child
    and falls back to a thread it cannot stop at the deadline. NfsLock refreshes explicitly, no thread."""
    import filelock

    seen = in_child(_fork_allowed_while_held, tmp_path)
    assert seen == {"ours": True, "lease": False, "lease threads": ["lease"]}
    assert not hasattr(filelock.SoftFileLease, "refresh")
    for interval in (0, 60, float("inf")):
        with pytest.raises(ValueError, match="heartbeat_interval"):
            filelock.SoftFileLease(tmp_path / "x.lock", lease_duration=60, heartbeat_interval=interval)


def test_filelock_gap_short_waiter_never_breaks_an_expired_lease(tmp_path: Path) -> None:
    """A lease expires only after the waiter itself watched it unchanged for the whole lease, so the
    cleanup (2 s) and the epilogue's dead-lock sweep (0.3 s) never break an hour's lease that ran
    out long ago. NfsLock compares the recorded acquisition time plus lifetime with the clock."""
    import filelock

    long_ago = time.time() - 7200
    write_lock(tmp_path / "ours.lock", host="node042", pid=4242, acquired_at=long_ago, lifetime=3600)
    assert _gets(NfsLock(tmp_path / "ours.lock", timeout=2), 0.5)
    lease = tmp_path / "lease.lock"
    record = f"filelock/2\npid=4242\nhost=node042\nmode=lease\ntoken={uuid.uuid4().hex}\nduration=3600.0\n"
    lease.write_text(record)
    os.utime(lease, (long_ago, long_ago))
    assert filelock.SoftFileLease(lease, lease_duration=3600).owner.hostname == "node042"  # well-formed
    assert not _gets(filelock.SoftFileLease(lease, lease_duration=3600), 1.0)


def test_filelock_gap_waiters_must_agree_on_the_lease(tmp_path: Path) -> None:
    """finalize/cleanup hold a context lock for 3600 s and the epilogue's sweep waits on it with the
    default lifetime: NfsLock waiters need not agree with the holder, filelock leases must."""
    import filelock

    write_lock(tmp_path / "ours.lock", lifetime=3600)
    with pytest.raises(LockTimeout, match="lifetime 3600"):
        NfsLock(tmp_path / "ours.lock", timeout=0.2, poll=0.01).acquire()
    with filelock.SoftFileLease(tmp_path / "lease.lock", lease_duration=3600):
        with pytest.raises(filelock.LeaseSettingsMismatch, match="agree on lease_duration"):
            filelock.SoftFileLease(tmp_path / "lease.lock", lease_duration=600).acquire(timeout=0.5)


def test_filelock_gap_zombie_holder(tmp_path: Path) -> None:
    """A holder that exited but is not reaped yet still owns its pid: filelock's liveness probe
    (kill(pid, 0)) calls it alive, NfsLock reads its state and breaks the lock."""
    import filelock

    code = (
        "import os, sys; from mace_hpc.util.nfslock import NfsLock; import filelock;"
        "NfsLock(sys.argv[1]).acquire(); held = filelock.MarkerSoftFileLock(sys.argv[2]); held.acquire();"
        "os._exit(0)"
    )
    ours, theirs = tmp_path / "ours.lock", tmp_path / "theirs.lock"
    proc = subprocess.Popen([sys.executable, "-c", code, str(ours), str(theirs)])
    try:
        zombie = psutil.Process(proc.pid)
        deadline = time.monotonic() + 30
        while zombie.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert zombie.status() == psutil.STATUS_ZOMBIE and ours.exists() and theirs.exists()
        assert not _gets(filelock.MarkerSoftFileLock(theirs), 0.5)
        assert _gets(NfsLock(ours), 2)
    finally:
        proc.wait()


def test_filelock_gap_empty_marker_of_a_creator_killed_before_writing(tmp_path: Path) -> None:
    """A marker left empty (creator died between O_EXCL create and write) is broken by NfsLock after
    a few seconds; filelock treats an empty marker as a pre-3.22 holder's and keeps it for ever, or
    with lifetime= until that lifetime has passed (an hour for a context lock)."""
    import filelock

    old = time.time() - 60
    for name in ("ours", "soft", "marker", "soft-lifetime"):
        (tmp_path / f"{name}.lock").write_bytes(b"")
        os.utime(tmp_path / f"{name}.lock", (old, old))
    assert _gets(NfsLock(tmp_path / "ours.lock"), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", filelock.SoftFileLockLifetimeWarning)
        theirs = [
            filelock.SoftFileLock(tmp_path / "soft.lock"),
            filelock.MarkerSoftFileLock(tmp_path / "marker.lock"),
            filelock.SoftFileLock(tmp_path / "soft-lifetime.lock", lifetime=3600),
        ]
    assert [_gets(lock, 0.3) for lock in theirs] == [False, False, False]


def test_filelock_gap_strict_lock_never_breaks_a_killed_holder(tmp_path: Path) -> None:
    """StrictSoftFileLock never overlaps holders because it never breaks a claim, not even a killed
    holder's: a node crash would block the context for ever, where NfsLock breaks it at once."""
    import filelock

    _killed_filelock_holder(tmp_path / "strict.lock", "StrictSoftFileLock")
    assert not _gets(filelock.StrictSoftFileLock(tmp_path / "strict.lock"), 0.5)
    pid, start = dead_pid()
    write_lock(tmp_path / "ours.lock", pid=pid, start_time=start)
    assert _gets(NfsLock(tmp_path / "ours.lock"), 2)
