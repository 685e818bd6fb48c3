"""NfsLock: mutual exclusion across processes, stale-lock breaking, timeouts, safe release."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import uuid
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


def _counter_worker(lock_path: str, counter: str, log: str, rounds: int) -> None:
    for _ in range(rounds):
        with NfsLock(lock_path, timeout=60, poll=0.002):
            with open(log, "a") as fh:
                fh.write(f"in {os.getpid()}\n")
            value = int(Path(counter).read_text())
            time.sleep(0.001)
            Path(counter).write_text(str(value + 1))
            with open(log, "a") as fh:
                fh.write(f"out {os.getpid()}\n")


def test_mutual_exclusion_across_processes_starting_on_a_stale_lock(tmp_path: Path) -> None:
    lock_path, counter, log = tmp_path / "m.lock", tmp_path / "counter", tmp_path / "log"
    counter.write_text("0")
    pid, start = dead_pid()
    write_lock(lock_path, pid=pid, start_time=start)  # every worker finds a dead holder at once
    procs = [
        FORK.Process(target=_counter_worker, args=(str(lock_path), str(counter), str(log), 15))
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
