"""Notifications of a plan's milestones, from the backstop job: never per element.

Milestones: `finished` (every element settled, nothing retried any more), `retries_exhausted`
(an element used its last attempt), `failure_rate` (more than `notify.failure_rate` of the
elements ended failed and will not be retried). Each is sent at most once per submission: the
record says which went out, and is written before sending.

A notifier never fails or delays an element: it runs only in the backstop, a command is started
detached (its own session, no stdin, output to a log) and waited for at most `notify.timeout`
seconds, then left alone; a webhook is one HTTP(S) POST with that timeout. Their failures are
logged, never raised. The command gets the payload as a JSON file (`MACE_NOTIFY_FILE`) and
`MACE_NOTIFY_MILESTONE` / `MACE_NOTIFY_PLAN`; it is an argv list, never a shell string.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..plan.policy import Notify
from ..records.states import SUCCESS
from ..records.submission import GIVE_UP, RETRY, RetryDecision, SubmissionRecord
from ..status.reconcile import Report
from ..util.atomic import atomic_write_json

EXHAUSTED = "retries exhausted"


@dataclass
class Milestones:
    names: list[str] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)


def milestones_after(record: SubmissionRecord, report: Report, decisions: Sequence[RetryDecision],
                     notify: Notify | None) -> Milestones:
    """The milestones reached now and not sent before (none without a `notify` section)."""
    if notify is None:
        return Milestones()
    retrying = {d.index for d in decisions if d.action == RETRY}
    given_up = {int(d["index"]) for d in record.retries if d.get("action") == GIVE_UP}
    failed = [r for r in report.rows if r["settled"] and r["index"] not in retrying
              and (r["state"] not in SUCCESS or r["run_state"] not in SUCCESS)]
    reached = []
    if any(d.action == GIVE_UP and d.reason.startswith(EXHAUSTED) for d in decisions):
        reached.append("retries_exhausted")
    if report.total and len(failed) / report.total > notify.failure_rate:
        reached.append("failure_rate")
    if not retrying and report.all_settled():
        reached.append("finished")
    names = [m for m in reached if m in notify.on and m not in record.notified]
    payload = {
        "plan": record.plan, "milestones": names, "at": time.time(), "total": report.total,
        "summary": report.counts, "failed": len(failed), "given_up": sorted(given_up),
        "decisions": [d.to_dict() for d in decisions],
    }
    return Milestones(names, payload)


def send_milestones(due: Milestones, notify: Notify | None, plan: str, log_dir: Path) -> list[str]:
    """Send each due milestone once; returns what was attempted (`finished: command exit 0`)."""
    out: list[str] = []
    if notify is None:
        return out
    for name in due.names:
        payload = {**due.payload, "milestone": name}
        if notify.command:
            out.append(f"{name}: {run_command(notify, payload, plan, log_dir)}")
        if notify.url:
            out.append(f"{name}: {post(notify.url, payload, notify.timeout)}")
    return out


def run_command(notify: Notify, payload: dict[str, Any], plan: str, log_dir: Path) -> str:
    """Start the command detached; wait at most notify.timeout s; never raise."""
    try:
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = log_dir / f"notify-{payload['milestone']}.json"
        atomic_write_json(data, payload)
        env = {**os.environ, "MACE_NOTIFY_FILE": str(data), "MACE_NOTIFY_MILESTONE": payload["milestone"],
               "MACE_NOTIFY_PLAN": plan}
        with open(log_dir / "notify.log", "ab") as log:
            proc = subprocess.Popen(list(notify.command), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, start_new_session=True, close_fds=True)
        try:
            return f"command exit {proc.wait(timeout=notify.timeout)}"
        except subprocess.TimeoutExpired:
            return f"command still running after {notify.timeout:g}s (left detached, pid {proc.pid})"
    except Exception as exc:  # noqa: BLE001 - a notifier never fails the backstop
        return f"command failed: {type(exc).__name__}: {exc}"


def post(url: str, payload: dict[str, Any], timeout: float) -> str:
    """One JSON POST, in a daemon thread joined for `timeout` s (DNS alone may ignore a socket timeout)."""
    outcome: list[str] = []

    def send() -> None:
        try:
            req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "mace-hpc"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) only (validated)
                outcome.append(f"webhook HTTP {resp.status}")
        except Exception as exc:  # noqa: BLE001
            outcome.append(f"webhook failed: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return outcome[0] if outcome else f"webhook gave no answer within {timeout:g}s"
