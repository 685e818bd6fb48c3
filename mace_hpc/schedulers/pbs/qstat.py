"""`qstat` output (PBS Pro JSON, Torque text) -> per-element states, one call per array."""

from __future__ import annotations

import json
import re
import typing as tp

from ...errors import InputError
from ...records.states import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, TIMEOUT
from ..base import is_listed
from .dialect import PBSPRO_WALLTIME_EXIT, TORQUE_WALLTIME_EXIT, parse_job_id


# ---------------------------------------------------------------------------- qstat parsing
def parse_qstat_json(text: str) -> dict[str, dict[str, tp.Any]]:
    """`qstat -f -F json` -> {job id: attributes}; nested objects as qstat prints them."""
    data = json.loads(text)
    jobs = data.get("Jobs") or {}
    return {str(k): dict(v) for k, v in jobs.items() if isinstance(v, dict)}


def parse_qstat_text(text: str) -> dict[str, dict[str, tp.Any]]:
    """`qstat -f` text (PBS Pro and Torque) -> {job id: attributes}.

    Attribute lines are `    name = value` (4 spaces); long values wrap onto continuation lines
    that start with a tab. `Resource_List.walltime` style keys become nested dicts like the JSON
    format; Variable_List becomes a dict (commas inside values are escaped `\\,`).
    """
    jobs: dict[str, dict[str, tp.Any]] = {}
    current: dict[str, tp.Any] | None = None
    last_key: str | None = None
    for raw in text.splitlines():
        if raw.startswith("Job Id:"):
            current = {}
            jobs[raw.split(":", 1)[1].strip()] = current
            last_key = None
            continue
        if current is None or not raw.strip():
            continue
        m = re.match(r"^ {4}(\S+) = ?(.*)$", raw)
        if m and not raw.startswith("\t"):
            last_key = m.group(1)
            current[last_key] = m.group(2)
        elif last_key is not None:  # continuation of a wrapped value
            current[last_key] += raw.strip()
    for attrs in jobs.values():
        for key in [k for k in attrs if "." in k]:
            top, _, sub = key.partition(".")
            attrs.setdefault(top, {})[sub] = attrs.pop(key)
        if isinstance(attrs.get("Variable_List"), str):
            attrs["Variable_List"] = _split_variable_list(attrs["Variable_List"])
    return jobs


def _split_variable_list(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in re.split(r"(?<!\\),", text):
        key, _, value = item.partition("=")
        if key:
            out[key.strip()] = value.replace("\\,", ",")
    return out


def _seconds(value: object) -> int | None:
    if value is None:
        return None
    parts = str(value).strip().split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        return None
    total = 0
    for n in nums:
        total = total * 60 + n
    return total


def normalize_pbs_state(attrs: dict[str, tp.Any], flavor: str) -> str:
    """One qstat job record -> PENDING | RUNNING | COMPLETED | FAILED | TIMEOUT | CANCELLED.

    Q/H/W/T/M: not started. R/E/B/S/U: started, not final (E is "exiting", B an array with a running
    subjob, S suspended). F (PBS Pro finished), X (PBS Pro subjob finished while its array runs)
    and C (Torque completed) are final; then, as a real OpenPBS 23.06 records them:
    - never started (PBS Pro: no `exec_host`; qdel of a queued subjob gives Exit_status 1) or no
      exit status at all -> CANCELLED;
    - 0 -> COMPLETED; the dialect's walltime code (PBS Pro -29, Torque -11) -> TIMEOUT;
    - 256 + signal (271: the job's shell died of qdel's SIGTERM) -> CANCELLED, except on Torque when
      the job used its whole walltime (Torque documents 271 for both);
    - anything else -> FAILED (a killed element runner shows 128 + signal: the login shell that
      runs the job script reports its child's death).
    """
    state = str(attrs.get("job_state", "")).strip().upper()[:1]
    if state in ("R", "E", "B", "S", "U"):
        return RUNNING
    if state not in ("F", "X", "C"):
        return PENDING
    raw = attrs.get("Exit_status", attrs.get("exit_status"))
    if raw is None or str(raw).strip() == "" or (flavor == "pbspro" and not attrs.get("exec_host")):
        return CANCELLED
    try:
        code = int(str(raw).strip())
    except ValueError:
        return FAILED
    if code == 0:
        return COMPLETED
    if code == (PBSPRO_WALLTIME_EXIT if flavor == "pbspro" else TORQUE_WALLTIME_EXIT):
        return TIMEOUT
    if code > 256:
        if flavor == "torque":
            used = _seconds((attrs.get("resources_used") or {}).get("walltime"))
            limit = _seconds((attrs.get("Resource_List") or {}).get("walltime"))
            if used is not None and limit is not None and used >= limit:
                return TIMEOUT
        return CANCELLED
    return FAILED


def _variables(attrs: dict[str, tp.Any]) -> dict[str, str]:
    value = attrs.get("Variable_List") or {}
    if isinstance(value, str):
        value = _split_variable_list(value)
    return {str(k): str(v) for k, v in value.items()}


def _subjob_index(job_id: str, attrs: dict[str, tp.Any]) -> int | None:
    for key in ("array_index", "job_array_id"):  # PBS Pro / Torque attribute names
        if attrs.get(key) not in (None, ""):
            return int(str(attrs[key]))
    try:
        return parse_job_id(job_id).index
    except InputError:
        return None


def element_states(records: dict[str, dict[str, tp.Any]], flavor: str,
                   offsets: dict[str, int] | None = None) -> dict[int, str]:
    """Subjob records -> {element index: state}: index = array index + MACE_INDEX_OFFSET.

    The offset and (PBS Pro sparse submissions) the listed task ids come from the job's own
    Variable_List, so any process can map a qstat answer back to elements without a side file.
    """
    out: dict[int, str] = {}
    for job_id, attrs in records.items():
        try:
            jid = parse_job_id(job_id)
        except InputError:
            continue
        if jid.index is None:
            continue  # the array parent or a plain job
        index = _subjob_index(job_id, attrs)
        if index is None:
            continue
        variables = _variables(attrs)
        if not is_listed(index, variables.get("MACE_ARRAY_INDICES")):
            continue  # a covering-range filler, never an element
        offset = (offsets or {}).get(jid.seq)
        if offset is None:
            offset = int(variables.get("MACE_INDEX_OFFSET", "0") or 0)
        out[index + offset] = normalize_pbs_state(attrs, flavor)
    return out


def qstat_argv(flavor: str, job_ids: list[str]) -> list[str]:
    """One qstat call for these ids: PBS Pro JSON with subjobs and finished jobs, Torque text."""
    if flavor == "pbspro":
        return ["qstat", "-t", "-x", "-f", "-F", "json", *job_ids]
    return ["qstat", "-t", "-f", *job_ids]  # Torque: -x would mean XML


def parse_qstat(flavor: str, text: str) -> dict[str, dict[str, tp.Any]]:
    if flavor == "pbspro":
        try:
            return parse_qstat_json(text)
        except ValueError:
            pass  # an old PBS Pro without -F json: same text format as Torque
    return parse_qstat_text(text)


