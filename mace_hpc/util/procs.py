"""Is a recorded process still the one that wrote the record? One answer for locks, registries,
submission runners and element runners alike."""

from __future__ import annotations

import os

START_TOLERANCE_S = 1.0  # create_time() is rounded differently across psutil versions/platforms
_PROC = "/proc"


def hostname() -> str:
    """This machine's name as records store it: `socket.gethostname()` (glibc reads it from
    uname(2)) without importing `socket` (~3% of every element's start)."""
    return os.uname().nodename


def _linux_start_time(pid: int) -> float | None:
    """psutil's `create_time()` on Linux, by its own formula (start ticks from /proc/PID/stat over
    the clock rate, plus the boot time), without importing psutil: every element records its
    start this way, and importing psutil is ~8 ms of every element's start."""
    try:
        with open(f"{_PROC}/{int(pid)}/stat", "rb") as fh:
            stat = fh.read()
        ticks = float(stat[stat.rindex(b")") + 2 :].split()[19])
        with open(f"{_PROC}/stat", "rb") as fh:
            boot = next(float(line.split()[1]) for line in fh if line.startswith(b"btime"))
        return ticks / os.sysconf("SC_CLK_TCK") + boot
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def process_start_time(pid: int) -> float | None:
    """When `pid` started (seconds since the epoch, as psutil's `create_time()`); None if it is gone."""
    if os.path.exists(f"{_PROC}/self/stat"):
        return _linux_start_time(pid)
    import psutil  # lazy: elements start without it (Linux reads /proc above)

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError, ValueError):
        return None


def process_alive(pid: object, started: object = None, *, started_by: object = None, host: object = None,
                  tolerance: float = START_TOLERANCE_S) -> bool:
    """True when `pid` runs on this host, is not a zombie, and is the recorded process: it started
    at `started` (its recorded create time) or no later than `started_by` (a time the process
    itself wrote down after it started); a reused pid is not. A process on another host is not
    provably alive here: False (callers that must not break another host's hold check the host)."""
    if host is not None and host != hostname():
        return False
    import psutil  # lazy: only status and stale-lock checks ask; elements start without it

    try:
        pid = int(pid)  # type: ignore[call-overload]
        if pid <= 0:
            return False
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        created = proc.create_time()
        if isinstance(started, (int, float)) and not isinstance(started, bool):
            return abs(created - started) < tolerance
        if isinstance(started_by, (int, float)) and not isinstance(started_by, bool):
            return created <= started_by + tolerance
        return True
    except (psutil.Error, OSError, ValueError, TypeError):
        return False


def is_self(pid: object) -> bool:
    return str(pid) == str(os.getpid())
