"""A plan's failure policy: `retry` (what is rerun, with how much more), `app_errors` (named
application errors found in a step's output files) and `notify` (who hears about milestones).

Validated here with the same one-line, field-first errors as the rest of the plan
(`retry.time_factor: must be a number >= 1, got 0.5`); the backstop job reads them back from the
submission's saved plan. See docs/plan-format.md ("Retries, named errors, notifications").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..records.causes import APP_ERROR, DEFAULT_RETRIED, check_cause_word
from .validate import SCHED_VALUE_RE, as_mapping, check_keys, fail, join, pos_int, req_str, show, type_name

RETRY_KEYS = ("max_attempts", "causes", "time_factor", "mem_factor", "next_partition")
APP_ERROR_KEYS = ("name", "pattern", "files", "retryable")
NOTIFY_KEYS = ("command", "url", "on", "failure_rate", "timeout")
MILESTONES = ("finished", "retries_exhausted", "failure_rate")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FILE_GLOB_RE = re.compile(r"^[A-Za-z0-9_.*?\[\]-][A-Za-z0-9_.*?\[\]/-]{0,255}$")
DEFAULT_FILES = ("stdout.txt", "stderr.txt")
MAX_PATTERN = 1000


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1  # 1: no automatic retry (the default when a plan has no `retry`)
    causes: tuple[str, ...] = DEFAULT_RETRIED
    time_factor: float = 2.0
    mem_factor: float = 1.5
    next_partition: str | None = None
    enabled: bool = False  # the plan has a `retry` key (without one, nothing is retried automatically)


@dataclass(frozen=True)
class AppError:
    name: str
    pattern: str
    files: tuple[str, ...] = DEFAULT_FILES
    retryable: bool = False

    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.MULTILINE)


@dataclass(frozen=True)
class Notify:
    command: tuple[str, ...] = ()
    url: str | None = None
    on: tuple[str, ...] = MILESTONES
    failure_rate: float = 0.5
    timeout: float = 10.0


@dataclass(frozen=True)
class FailurePolicy:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    app_errors: tuple[AppError, ...] = ()
    notify: Notify | None = None


def _number(value: Any, path: str, lo: float, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        fail(path, f"must be a number {bound}, got {show(value)}")
    return float(value)


def validate_retry(value: Any, path: str = "retry", error_names: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """`retry` as plan data (normalized), or None when absent."""
    if value is None:
        return None
    data = as_mapping(value, path)
    check_keys(data, RETRY_KEYS, path)
    out: dict[str, Any] = {}
    if data.get("max_attempts") is not None:
        out["max_attempts"] = pos_int(data["max_attempts"], join(path, "max_attempts"))
    if data.get("causes") is not None:
        causes = data["causes"]
        if not isinstance(causes, list):
            fail(join(path, "causes"), f"must be a list like [TIMEOUT, OUT_OF_MEMORY], not {type_name(causes)}")
        for i, word in enumerate(causes):
            try:
                check_cause_word(str(word))
            except ValueError:
                fail(join(join(path, "causes"), i), f"{show(word)} is not a cause; use TIMEOUT, OUT_OF_MEMORY, "
                     "NODE_FAIL, PREEMPTED, FAILED, APP_ERROR or APP_ERROR:<name>")
            if str(word) in ("CANCELLED", "COMPLETED"):
                fail(join(join(path, "causes"), i), f"{word} is never retried (a cancel is a person's decision)")
            if str(word).startswith(f"{APP_ERROR}:") and str(word).split(":", 1)[1] not in error_names:
                fail(join(join(path, "causes"), i), f"{show(word)} names no error of app_errors "
                     f"(declared: {', '.join(error_names) or 'none'})")
        out["causes"] = [str(w) for w in causes]
    for key in ("time_factor", "mem_factor"):
        if data.get(key) is not None:
            out[key] = _number(data[key], join(path, key), 1.0, 100.0)
    if data.get("next_partition") is not None:
        text = req_str(data["next_partition"], join(path, "next_partition"))
        if not SCHED_VALUE_RE.fullmatch(text):
            fail(join(path, "next_partition"), f"{show(text)} is not a partition name")
        out["next_partition"] = text
    return out


def validate_app_errors(value: Any, path: str = "app_errors") -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        fail(path, f"must be a list of {{name, pattern, retryable}}, not {type_name(value)}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        at = join(path, i)
        data = as_mapping(item, path, i)
        check_keys(data, APP_ERROR_KEYS, at)
        name = req_str(data.get("name"), join(at, "name"))
        if not NAME_RE.fullmatch(name):
            fail(join(at, "name"), f"{show(name)} must be letters, digits, '.', '_', '-' (max 64)")
        if name in seen:
            fail(join(at, "name"), f"{show(name)} is declared twice")
        seen.add(name)
        pattern = req_str(data.get("pattern"), join(at, "pattern"))
        if len(pattern) > MAX_PATTERN:
            fail(join(at, "pattern"), f"is longer than {MAX_PATTERN} characters")
        try:
            re.compile(pattern)
        except re.error as exc:
            fail(join(at, "pattern"), f"is not a regular expression ({exc})")
        files = data.get("files", list(DEFAULT_FILES))
        if isinstance(files, str):
            files = [files]
        if not isinstance(files, list) or not files:
            fail(join(at, "files"), "must be a list of file names or globs in the step's directory")
        for k, f in enumerate(files):
            if not isinstance(f, str) or not FILE_GLOB_RE.fullmatch(f) or ".." in f.split("/"):
                fail(join(join(at, "files"), k), f"{show(f)} must be a relative name or glob inside the step's "
                     "directory (no '..', no absolute path)")
        retryable = data.get("retryable", False)
        if not isinstance(retryable, bool):
            fail(join(at, "retryable"), f"must be true or false, got {show(retryable)}")
        out.append({"name": name, "pattern": pattern, "files": list(files), "retryable": retryable})
    return out


def validate_notify(value: Any, path: str = "notify") -> dict[str, Any] | None:
    if value is None:
        return None
    data = as_mapping(value, path)
    check_keys(data, NOTIFY_KEYS, path)
    out: dict[str, Any] = {}
    command = data.get("command")
    if command is not None:
        if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
            fail(join(path, "command"), "must be an argv list like ['/path/notify.sh', '--to', 'me'] (never a shell string)")
        for k, arg in enumerate(command):
            req_str(arg, join(join(path, "command"), k))
        out["command"] = list(command)
    url = data.get("url")
    if url is not None:
        text = req_str(url, join(path, "url"))
        if not re.fullmatch(r"https?://[^\s]+", text):
            fail(join(path, "url"), f"must be an http:// or https:// URL, got {show(text)}")
        out["url"] = text
    if not out:
        fail(path, "give a command (argv list) or a url to notify")
    on = data.get("on")
    if on is not None:
        if not isinstance(on, list) or not all(w in MILESTONES for w in on):
            fail(join(path, "on"), f"must be a list of {', '.join(MILESTONES)}, got {show(on)}")
        out["on"] = list(on)
    if data.get("failure_rate") is not None:
        out["failure_rate"] = _number(data["failure_rate"], join(path, "failure_rate"), 0.0, 1.0)
    if data.get("timeout") is not None:
        out["timeout"] = _number(data["timeout"], join(path, "timeout"), 0.1, 300.0)
    return out


def validate_policy_fields(data: Any) -> dict[str, Any]:
    """The three plan keys, validated together (retry.causes may name an app error)."""
    errors = validate_app_errors(data.get("app_errors"))
    names = tuple(e["name"] for e in errors or ())
    return {"retry": validate_retry(data.get("retry"), error_names=names), "app_errors": errors,
            "notify": validate_notify(data.get("notify"))}


def failure_policy(fields: Any) -> FailurePolicy:
    """The typed policy from validated plan fields (a Plan's, or `submitted_plan_fields`)."""
    get = fields.get if isinstance(fields, dict) else lambda k: getattr(fields, k, None)
    retry = get("retry")
    errors = get("app_errors") or ()
    notify = get("notify")
    policy = RetryPolicy()
    if retry is not None:
        policy = RetryPolicy(
            max_attempts=int(retry.get("max_attempts", 3)),
            causes=tuple(retry.get("causes") or DEFAULT_RETRIED),
            time_factor=float(retry.get("time_factor", 2.0)), mem_factor=float(retry.get("mem_factor", 1.5)),
            next_partition=retry.get("next_partition"), enabled=True,
        )
    return FailurePolicy(
        retry=policy,
        app_errors=tuple(AppError(e["name"], e["pattern"], tuple(e.get("files") or DEFAULT_FILES),
                                  bool(e.get("retryable"))) for e in errors),
        notify=None if not notify else Notify(
            command=tuple(notify.get("command") or ()), url=notify.get("url"),
            on=tuple(notify.get("on") or MILESTONES), failure_rate=float(notify.get("failure_rate", 0.5)),
            timeout=float(notify.get("timeout", 10.0)),
        ),
    )
