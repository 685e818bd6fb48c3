#!/usr/bin/env python3
"""Shared code of the fake qsub/qstat/qdel (see README.md): state, option parsing, the job daemon.

State lives in $FAKEPBS_STATE: `seq` (last job number), `lock`, `jobs/<seq>.json` (one record per
job, rewritten atomically under the lock). Each qsub starts one detached daemon
(`_fakepbs.py run <seq>`) that waits for dependencies, runs the subjobs as real processes within
the throttle, enforces walltime and records exit statuses.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

SERVER = "fakeserver"
PBSPRO_VERSION = "23.06.06"  # the real OpenPBS CI runs (.ci/pbs/start.sh)
TORQUE_VERSION = "6.1.3"
UNKQUE = 15018  # PBSE_UNKQUE: qsub exits with pbs_errno (& 0xff = 170)
UNKJOBID = 15001  # PBSE_UNKJOBID
MAXARRAY = 15107  # PBSE_MaxArraySize
PBSPRO_USAGE = (
    "usage: qsub [-a date_time] [-A account_string] [-c interval]\n"
    "\t[-C directive_prefix] [-e path] [-f ] [-h ] [-I [-X]] [-j oe|eo] [-J X-Y[:Z]]\n"
    "\t[-k keep] [-l resource_list] [-m mail_options] [-M user_list]\n"
    "\t[-N jobname] [-o path] [-p priority] [-P project] [-q queue] [-r y|n]\n"
    "\t[-R o|e|oe] [-S path] [-u user_list] [-W otherattributes=value...]\n"
    "\t[-v variable_list] [-V ] [-z] [script | -- command [arg1 ...]]\n"
)
TORQUE_USAGE = (
    "usage: qsub [-a date_time] [-A account_string] [-b secs]\n"
    "      [-c [ none | { enabled | periodic | shutdown |\n"
    "      depth=<int> | dir=<path> | interval=<minutes>}... ]\n"
    "      [-C directive_prefix] [-d path] [-D path]\n"
    "      [-e path] [-h] [-I] [-j oe|eo|n] [-k {oe}] [-K interval] [-l resource_list]\n"
    "      [-m n|{abe}] [-M user_list] [-N jobname] [-o path] [-p priority]\n"
    "      [-q queue] [-r y|n] [-S path] [-t number_to_submit] [-T type]  [-u user_list]\n"
    "      [-w] path [-W otherattributes=value...] [-v variable_list] [-V] [-x] [-X] [-z] [script]\n"
)


def flavor() -> str:
    value = os.environ.get("FAKEPBS_FLAVOR", "pbspro")
    if value not in ("pbspro", "torque"):
        sys.exit(f"fakepbs: FAKEPBS_FLAVOR must be pbspro or torque, not {value!r}")
    return value


def state_dir() -> Path:
    d = os.environ.get("FAKEPBS_STATE")
    if not d:
        sys.exit("fakepbs: set FAKEPBS_STATE to a directory")
    p = Path(d)
    (p / "jobs").mkdir(parents=True, exist_ok=True)
    return p


@contextmanager
def locked():
    with open(state_dir() / "lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load(seq: str) -> dict | None:
    try:
        return json.loads((state_dir() / "jobs" / f"{seq}.json").read_text())
    except (OSError, ValueError):
        return None


def save(job: dict) -> None:
    path = state_dir() / "jobs" / f"{job['seq']}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, path)


def next_seq() -> str:
    p = state_dir() / "seq"
    n = int(p.read_text()) + 1 if p.exists() else 100
    p.write_text(str(n))
    return str(n)


# ------------------------------------------------------------------------------------- parsing
def split_v_list(text: str) -> dict[str, str]:
    """`a=10,var2='A,B',c` (qsub.1B): commas inside quoted values do not split."""
    out: dict[str, str] = {}
    items, buf, quote = [], "", None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
            else:
                buf += ch
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            items.append(buf)
            buf = ""
        else:
            buf += ch
    items.append(buf)
    for item in items:
        if not item:
            continue
        key, sep, value = item.partition("=")
        out[key] = value if sep else os.environ.get(key, "")
    return out


def directive_args(script: str) -> list[str]:
    """`#PBS` lines up to the first command line (qsub stops reading directives there)."""
    args: list[str] = []
    for line in script.splitlines()[1:] if script.startswith("#!") else script.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#PBS"):
            args += shlex.split(s[4:])
        elif s.startswith("#"):
            continue
        else:
            break
    return args


def parse_range_pbspro(text: str) -> tuple[list[int], int | None] | None:
    m = re.match(r"^(\d+)-(\d+)(?::(\d+))?(?:%(\d+))?$", text)
    if not m:
        return None
    a, b, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
    if a >= b or step < 1:  # parse_subjob_index: "y must be greater than x ... z greater 0"
        return None
    return list(range(a, b + 1, step)), int(m.group(4)) if m.group(4) else None


def parse_range_torque(text: str) -> tuple[list[int], int | None] | None:
    body, _, slot = text.partition("%")
    ids: list[int] = []
    for part in body.split(","):
        m = re.match(r"^(\d+)(?:-(\d+))?$", part)
        if not m:
            return None
        ids += list(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    if slot and not slot.isdigit():
        return None
    return sorted(set(ids)), int(slot) if slot else None


def walltime_seconds(text: str) -> int:
    total = 0
    for part in text.split(":"):
        total = total * 60 + int(part)
    return total


def fail(msg: str, code: int, usage: bool = False) -> None:
    sys.stderr.write(msg if msg.endswith("\n") else msg + "\n")
    if usage:
        sys.stderr.write(PBSPRO_USAGE if flavor() == "pbspro" else TORQUE_USAGE)
    sys.exit(code & 0xFF)


# ------------------------------------------------------------------------------------- daemon
def spawn_daemon(seq: str) -> None:
    subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "run", seq],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True, env=dict(os.environ),
    )


def _dep_state(job: dict) -> str:
    """'wait' | 'ok' | 'never' for the job's afterany dependencies."""
    for dep in job.get("depend", []):
        other = load(dep)
        if other is None or other["state"] not in ("F", "C"):
            return "wait"
        if other.get("deleted_unrun") and flavor() == "pbspro":
            return "never"  # "will not run if a job in the arg list was deleted without ever having been run"
    return "ok"


def unrun_exit() -> int | None:
    """Exit status of a job deleted before it ran: OpenPBS records 1 (seen on a real 23.06)."""
    return 1 if flavor() == "pbspro" else None


def _exit_class(code: int | None) -> int:
    """OpenPBS array parent Exit_status: 0 ok, 1 exit > 0 (or killed by a signal), 2 negative."""
    return 0 if code == 0 else 2 if code is not None and code < 0 else 1


def _finish_parent(job: dict) -> None:
    subs = job["subjobs"]
    if all(s["state"] in ("X", "C", "F") for s in subs.values()):
        job["state"] = "F" if flavor() == "pbspro" else "C"
        # not an aggregate: the class of whichever subjob finished last (check every subjob)
        last = max(subs.values(), key=lambda s: s.get("end") or 0)
        job["exit"] = _exit_class(last.get("exit"))
        job["deleted_unrun"] = not any(s.get("start") for s in subs.values())
        job["end"] = time.time()
        if flavor() == "pbspro":  # X while the array runs, F once it has ended
            for sub in subs.values():
                sub["state"] = "F"


def run_daemon(seq: str) -> None:
    procs: dict[str, subprocess.Popen] = {}
    starts: dict[str, float] = {}
    scale = float(os.environ.get("FAKEPBS_TIME_SCALE", "1"))
    done_state = "X" if flavor() == "pbspro" else "C"
    while True:
        with locked():
            job = load(seq)
            if job is None:
                return
            subs = job["subjobs"]
            # reap
            for key, proc in list(procs.items()):
                rc = proc.poll()
                sub = subs[key]
                if rc is None:
                    limit = job["walltime"] * scale
                    if time.time() - starts[key] > limit and not sub.get("killed"):
                        sub["killed"] = "walltime"
                        _killpg(proc)
                    continue
                _killpg(proc)  # mom cleans up the session (watchdogs, strays)
                if sub.get("killed") == "walltime":
                    code = -29 if flavor() == "pbspro" else -11
                elif rc < 0:
                    code = 256 - rc  # 256 + signal number
                else:
                    code = rc
                sub.update(state=done_state, exit=code, end=time.time(),
                           used=int((time.time() - starts[key]) / scale))
                del procs[key]
            if job.get("deleted"):
                for sub in subs.values():
                    if sub["state"] in ("Q", "H"):
                        sub.update(state=done_state, exit=unrun_exit(), end=time.time())
            dep = "never" if job.get("rejected") else _dep_state(job)
            if job.get("rejected"):  # a dependency the server refused: the job is deleted, never runs
                job["state"] = "F" if flavor() == "pbspro" else "C"
                for sub in subs.values():
                    sub.update(state=done_state, exit=unrun_exit(), end=time.time())
            elif dep == "never":
                job["state"] = "H"
            elif dep == "wait":
                job["state"] = "H"
                for sub in subs.values():
                    if sub["state"] == "Q":
                        sub["state"] = "H"
            else:
                for sub in subs.values():  # released: waiting subjobs are queued again
                    if sub["state"] == "H":
                        sub["state"] = "Q"
                if job["state"] == "H":
                    job["state"] = "Q"
                running = sum(1 for s in subs.values() if s["state"] == "R")
                limit = job.get("throttle") or len(subs)
                for key in sorted(subs, key=int):
                    sub = subs[key]
                    if sub["state"] in ("Q", "H") and running < limit and not job.get("deleted"):
                        procs[key], starts[key] = _start(job, key), time.time()
                        sub.update(state="R", start=starts[key], pid=procs[key].pid)
                        running += 1
                if job["array"]:
                    if any(s["state"] == "R" for s in subs.values()):
                        job["state"] = "B" if flavor() == "pbspro" else "R"
                    _finish_parent(job)
                else:
                    only = subs["0"]
                    job["state"] = {"X": "F", "C": "C"}.get(only["state"], only["state"])
                    if only["state"] in ("X", "C"):
                        job["state"] = "F" if flavor() == "pbspro" else "C"
                        job["exit"] = only.get("exit")
                        job["deleted_unrun"] = not only.get("start")
                        job["used"] = only.get("used")
            save(job)
            finished = job["state"] in ("F", "C") and not procs
        if finished:
            return
        time.sleep(0.05)


def _killpg(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _start(job: dict, key: str) -> subprocess.Popen:
    fl = flavor()
    seq = job["seq"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKEPBS_", "PBS_"))}
    env.update(job["variables"])
    env.update(PBS_O_WORKDIR=job["workdir"], PBS_JOBNAME=job["name"], PBS_O_QUEUE=job["queue"],
               PBS_QUEUE=job["queue"], PBS_ENVIRONMENT="PBS_BATCH", PBS_O_HOST="localhost")
    if job["array"]:
        env["PBS_JOBID"] = f"{seq}[{key}].{SERVER}"
        if fl == "pbspro":
            env.update(PBS_ARRAY_INDEX=key, PBS_ARRAY_ID=f"{seq}[].{SERVER}")
        else:
            env["PBS_ARRAYID"] = key
    else:
        env["PBS_JOBID"] = f"{seq}.{SERVER}"
    out, err = _log_paths(job, key)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    stdout = open(out, "ab")
    stderr = stdout if job["join"] else open(err, "ab")
    # jobs start in $HOME (not the submit directory), as PBS does
    return subprocess.Popen(["/bin/bash", job["script_path"]], cwd=os.environ.get("HOME", "/"), env=env,
                            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True)


def _log_paths(job: dict, key: str) -> tuple[str, str]:
    def one(path: str | None, kind: str) -> str:
        seq, name = job["seq"], job["name"]
        default = f"{name}.{kind}{seq}" + (f"-{key}" if job["array"] and flavor() == "torque" else "")
        if job["array"] and flavor() == "pbspro":
            default = f"{name}.{kind}{seq}.{key}"
        if not path:
            return os.path.join(job["workdir"], default)
        path = path.replace("^array_index^", key)
        if path.endswith("/") or os.path.isdir(path):
            if flavor() == "pbspro":  # into a directory OpenPBS names the file after the job id
                jid = f"{seq}[{key}].{SERVER}" if job["array"] else f"{seq}.{SERVER}"
                return os.path.join(path, f"{jid}.{'OU' if kind == 'o' else 'ER'}")
            return os.path.join(path, default)
        return path

    return one(job.get("out"), "o"), one(job.get("err"), "e")


if __name__ == "__main__" and sys.argv[1:2] == ["run"]:
    run_daemon(sys.argv[2])
