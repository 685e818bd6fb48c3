"""Field-path validation for plans: every error is a PlanError whose message starts with the path.

The path is what the user has to find in their file (`elements[3].steps[0].command`), so each
validator takes the path of the value it checks and builds the paths of the values inside it.
A plan is untrusted input (invariant 5 of docs/architecture.md): commands must be argv lists, env names are
checked against a deny-list, and everything that later becomes a path or a job-script value is
restricted to a conservative character set.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any, NoReturn

from ..config import ISOLATION_MODES, ON_COMPLETE, ON_FAILURE
from ..errors import InputError, PlanError
from ..util.ids import WORKFLOW_ID_RE, validate_workflow_id
from .model import Element, Step

PLAN_KEYS = (
    "version",
    "name",
    "description",
    "isolation_mode",
    "on_complete",
    "on_failure",
    "shared_database",
    "resources",
    "max_parallel",
    "pack",
    "env",
    "elements",
    "sweep",
    "analysis",
    "stages",
    "retry",  # retry, app_errors, notify: validated in plan/policy.py
    "app_errors",
    "notify",
)
ELEMENT_KEYS = ("id", "materials", "env", "steps")
TEMPLATE_KEYS = ("materials", "env", "steps")
STEP_KEYS = ("name", "calc_type", "material_id", "command", "function", "kwargs", "timeout", "stage")
MATERIAL_KEYS = ("material_id", "formula", "space_group", "dimensionality", "metadata")
RESOURCE_KEYS = (
    "partition",
    "account",
    "qos",
    "time",
    "cpus",
    "mem",
    "gres",
    "setup",
    "signal_margin",
    "requeue",
)
RECORD_KEYS = ("index", "id", "workflow_id", "materials", "env", "steps", "params")

ENV_KEY_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# Why each is refused; checked as exact names first, then as prefixes.
ENV_DENIED_NAMES = {
    "BASH_ENV": "bash runs the file it names before every script",
    "ENV": "sh runs the file it names before every script",
    "PATH": (
        "it decides which programs run, mace-hpc's own included; load software in resources.setup "
        "(e.g. module load) or give an absolute path as command[0]"
    ),
    "IFS": "it changes how shells split every command",
    "SHELLOPTS": "it changes how bash runs every script",
    "BASHOPTS": "it changes how bash runs every script",
    "PS4": "bash expands it (running commands) while tracing",
    "GLIBC_TUNABLES": "it changes how every program is loaded",
}
ENV_DENIED_PREFIXES = {
    "LD_": "LD_* variables change how every program is loaded",
    "DYLD_": "DYLD_* variables change how every program is loaded",
    "BASH_FUNC_": "it defines shell functions in every bash",
    "PYTHON": "PYTHON* variables change how mace-hpc's own Python starts",
    "SLURM_": "SLURM_* variables belong to the scheduler",
    "SBATCH_": "SBATCH_* variables change job submission",
    "SALLOC_": "SALLOC_* variables change job submission",
    "PBS_": "PBS_* variables belong to the scheduler",
    "MACE_": "MACE_* variables are set by mace-hpc for each element",
}
STEP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FUNCTION_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
# Values that end up in a job script (#SBATCH / #PBS lines): conservative even though they are quoted.
SCHED_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._,:+=@/%-]{0,255}$")
MEM_RE = re.compile(r"^[0-9]+(?:[KMGTkmgt][Bb]?)?$")
_TIME_DHMS = re.compile(r"^(\d+)-(\d{1,2}):(\d{2}):(\d{2})$")
_TIME_HMS = re.compile(r"^(\d+):(\d{2}):(\d{2})$")
_TIME_MS = re.compile(r"^(\d+):(\d{2})$")


# ---------------------------------------------------------------------------------------- helpers
def fail(path: str, message: str) -> NoReturn:
    """Raise the one error type of this package, with the field path first."""
    raise PlanError(f"{path}: {message}")


def join(path: str, key: str | int | None) -> str:
    """`elements[0]` + `steps` -> `elements[0].steps`, + 2 -> `elements[0][2]`; top level: no prefix.

    Validators take (path, key) and join only when failing: building every path eagerly was most
    of the cost of validating a large sweep.
    """
    if key is None:
        return path
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def show(value: Any, limit: int = 60) -> str:
    """A short repr for messages: long values are cut so the line stays readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def type_name(value: Any) -> str:
    """JSON vocabulary, since that is what the user wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def suggest(word: str, choices: Iterable[str]) -> str:
    """`; did you mean 'steps'?` when a close match exists, else the allowed values."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; allowed: {', '.join(choices)}"


def as_mapping(value: Any, path: str, key: str | int | None = None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        fail(join(path, key), f"must be a mapping, not {type_name(value)}")
    return value


@functools.lru_cache(maxsize=64)
def _allowed_set(allowed: tuple[str, ...]) -> frozenset[str]:
    return frozenset(allowed)


def check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    """Refuse unknown keys (typos would otherwise be silently ignored)."""
    if data.keys() <= _allowed_set(allowed):
        return
    for key in data:
        if not isinstance(key, str):
            fail(path, f"key {show(key)} must be a string")
        if key not in allowed:
            fail(join(path, key), "unknown key" + suggest(key, allowed))


def required(data: Mapping[str, Any], key: str, path: str) -> Any:
    value = data.get(key)
    if value is None:
        fail(join(path, key), "is required")
    return value


def req_str(value: Any, path: str, key: str | int | None = None, *, single_line: bool = True) -> str:
    """A non-empty string (single-line unless told otherwise); no NUL, which no OS API accepts."""
    if not isinstance(value, str):
        fail(join(path, key), f"must be a string, not {type_name(value)}")
    if not value.strip():
        fail(join(path, key), "must not be empty")
    if "\0" in value:
        fail(join(path, key), "must not contain a NUL character")
    if single_line and ("\n" in value or "\r" in value):
        fail(join(path, key), "must be a single line")
    return value


def opt_str(value: Any, path: str, key: str | int | None = None) -> str | None:
    return None if value is None else req_str(value, path, key)


def choice(value: Any, allowed: Collection[str], path: str) -> str | None:
    """One of `allowed`, or None (meaning: take it from the configuration)."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        hint = suggest(value, allowed) if isinstance(value, str) else ""
        fail(path, f"must be one of {' | '.join(allowed)}, got {show(value)}{hint}")
    return value


def pos_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        fail(path, f"must be a positive integer, got {show(value)}")
    return value


def pos_number(value: Any, path: str, key: str | int | None = None) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        fail(join(path, key), f"must be a positive number, got {show(value)}")
    return float(value)


def scalar_to_str(value: Any) -> str:
    """How a number becomes text (env values, argv items, placeholders inside strings): JSON style."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    import json

    return json.dumps(value, sort_keys=True)


_JSON_SCALARS = (str, bool, int, type(None))


def check_json(value: Any, path: str, key: str | int | None = None) -> Any:
    """Values that must survive a JSON round trip (kwargs, metadata): no dates, sets, NaN."""
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            fail(join(path, key), f"must be a finite number, got {value}")
        return value
    if isinstance(value, list):
        at = join(path, key)
        return [check_json(v, at, i) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        at = join(path, key)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                fail(at, f"key {show(k)} must be a string")
            out[k] = check_json(v, at, k)
        return out
    fail(
        join(path, key),
        f"must be JSON data (string, number, boolean, null, list, mapping), not {type_name(value)}",
    )


# -------------------------------------------------------------------------------------------- env
_GOOD_ENV_KEYS: set[str] = set()  # names that passed (the rules are fixed, so the answer is too)


def validate_env_key(key: Any, path: str) -> str:
    """Env names are a deny-listed subset of the portable shell names.

    `PATH` is refused too: a plan's env is applied where mace-hpc itself runs (the element runner,
    its epilogue), and a replaced PATH would choose which `python`, `tar` or `srun` those run.
    Software is loaded with `resources.setup` lines or named by absolute path in `command`.
    """
    if key in _GOOD_ENV_KEYS:
        return key
    if not isinstance(key, str):
        fail(path, f"env name {show(key)} must be a string")
    at = join(path, key)
    if not ENV_KEY_RE.fullmatch(key):
        fail(at, "invalid env name; use upper-case letters, digits and '_', not starting with a digit")
    if key in ENV_DENIED_NAMES:
        fail(at, f"refused: {ENV_DENIED_NAMES[key]}")
    for prefix, why in ENV_DENIED_PREFIXES.items():
        if key.startswith(prefix):
            fail(at, f"refused: {why}")
    _GOOD_ENV_KEYS.add(key)
    return key


def validate_env(value: Any, path: str, key: str | None = None) -> dict[str, str]:
    """Env mapping -> {NAME: str}; numbers become strings, booleans must be quoted."""
    if value is None:
        return {}
    data = as_mapping(value, path, key)
    path = join(path, key)
    out: dict[str, str] = {}
    for name, v in data.items():
        validate_env_key(name, path)
        if type(v) is not str:
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                fail(join(path, name), f'must be a string or a number, not {type_name(v)} (quote it: "true")')
            if isinstance(v, float) and not math.isfinite(v):
                fail(join(path, name), f"must be a finite number, got {v}")
            v = scalar_to_str(v)
        if "\n" in v or "\r" in v:
            fail(join(path, name), "must not contain a newline")
        if "\0" in v:
            fail(join(path, name), "must not contain a NUL character")
        out[name] = v
    return out


# -------------------------------------------------------------------------------------- resources
def parse_time(value: Any, path: str) -> int:
    """Minutes from an int or a SLURM-style `MM:SS`, `HH:MM:SS`, `D-HH:MM:SS` (seconds round up)."""
    if isinstance(value, bool):
        fail(path, f"must be minutes or 'HH:MM:SS', got {show(value)}")
    if isinstance(value, int):
        return pos_int(value, path)
    if not isinstance(value, str):
        fail(
            path,
            f"must be minutes (an integer) or a string 'HH:MM:SS', 'MM:SS' or 'D-HH:MM:SS', got {show(value)}",
        )
    text = value.strip()
    days = hours = minutes = seconds = 0
    if text.isdigit():
        minutes = int(text)
    elif m := _TIME_DHMS.fullmatch(text):
        days, hours, minutes, seconds = map(int, m.groups())
        if hours >= 24:
            fail(path, f"hours must be below 24 in 'D-HH:MM:SS', got {show(value)}")
    elif m := _TIME_HMS.fullmatch(text):
        hours, minutes, seconds = map(int, m.groups())
    elif m := _TIME_MS.fullmatch(text):
        minutes, seconds = map(int, m.groups())
    else:
        fail(path, f"must be minutes or 'HH:MM:SS', 'MM:SS', 'D-HH:MM:SS', got {show(value)}")
    if seconds >= 60 or (minutes >= 60 and text.count(":") == 2):
        fail(path, f"minutes and seconds must be below 60, got {show(value)}")
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        fail(path, f"must be a positive duration, got {show(value)}")
    return math.ceil(total / 60)


def _sched_str(value: Any, path: str) -> str:
    text = req_str(value, path)
    if not SCHED_VALUE_RE.fullmatch(text):
        fail(
            path,
            f"{show(value)} has characters a scheduler value cannot have; use letters, digits and ._,:+=@/%-",
        )
    return text


def validate_resources(value: Any, path: str = "resources") -> dict[str, Any]:
    """Only the keys given, converted like `scheduler.*` config values so they can override them."""
    if value is None:
        return {}
    data = as_mapping(value, path)
    check_keys(data, RESOURCE_KEYS, path)
    out: dict[str, Any] = {}
    for key, v in data.items():
        if v is None:
            continue
        at = join(path, key)
        if key in ("partition", "account", "qos", "gres"):
            out[key] = _sched_str(v, at)
        elif key == "time":
            out[key] = parse_time(v, at)
        elif key in ("cpus", "signal_margin"):
            out[key] = pos_int(v, at)
        elif key == "mem":
            text = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
            if not isinstance(text, str) or not MEM_RE.fullmatch(text):
                fail(at, f"must be a size like '2G', '500M' or megabytes as an integer, got {show(v)}")
            out[key] = text
        elif key == "setup":
            lines = [v] if isinstance(v, str) else v
            if not isinstance(lines, list):
                fail(at, f"must be a list of shell lines, not {type_name(v)}")
            for i, line in enumerate(lines):
                req_str(line, f"{at}[{i}]")
            out[key] = list(lines)
        elif key == "requeue":
            if not isinstance(v, bool):
                fail(at, f"must be true or false, got {show(v)}")
            out[key] = v
    return out


# -------------------------------------------------------------------------------- elements, steps
def validate_materials(value: Any, path: str) -> list[dict[str, Any]]:
    """Materials as `MaterialDatabase.create_material` takes them; ids unique within the element."""
    if value is None:
        return []
    if not isinstance(value, list):
        fail(path, f"must be a list of materials, not {type_name(value)}")
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        data = as_mapping(item, path, i)
        at = join(path, i)
        check_keys(data, MATERIAL_KEYS, at)
        mid = req_str(required(data, "material_id", at), at, "material_id")
        if mid in seen:
            fail(join(at, "material_id"), f"{show(mid)} is already used by {path}[{seen[mid]}]")
        seen[mid] = i
        material: dict[str, Any] = {
            "material_id": mid,
            "formula": req_str(required(data, "formula", at), at, "formula"),
        }
        # the same types the materials database stores (space group number, dimensionality label)
        sg = data.get("space_group")
        if sg is not None:
            if isinstance(sg, bool) or not isinstance(sg, int) or not 1 <= sg <= 230:
                fail(join(at, "space_group"), f"must be the space group number 1-230, got {show(sg)}")
            material["space_group"] = sg
        dim = data.get("dimensionality")
        if dim is not None:
            material["dimensionality"] = req_str(dim, at, "dimensionality")
        meta = data.get("metadata")
        if meta is not None:
            material["metadata"] = check_json(as_mapping(meta, at, "metadata"), at, "metadata")
        out.append(material)
    return out


def _argv(value: list[Any], path: str) -> list[str]:
    """The argv items as strings; numbers are accepted (a "{a0}" placeholder keeps its float type)."""
    argv: list[str] = []
    for i, item in enumerate(value):
        if type(item) is not str:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                fail(join(path, i), f"must be a string, not {type_name(item)}")
            item = scalar_to_str(item)
        if "\0" in item:
            fail(join(path, i), "must not contain a NUL character")
        argv.append(item)
    if not argv[0].strip():
        fail(join(path, 0), "the program must not be empty")
    return argv


def validate_step(data: Any, path: str, material_ids: Collection[str] | None = None) -> Step:
    """One step: a name usable as a directory, and exactly one of `command` (argv) or `function`."""
    data = as_mapping(data, path)
    check_keys(data, STEP_KEYS, path)
    name = req_str(required(data, "name", path), path, "name")
    if not STEP_NAME_RE.fullmatch(name) or ".." in name:
        fail(
            join(path, "name"),
            f"{show(name)} is not usable as a directory name; use 1-64 letters, digits, '.', '_', '-'",
        )
    calc_type = data.get("calc_type")
    calc_type = name if calc_type is None else req_str(calc_type, path, "calc_type")
    material_id = opt_str(data.get("material_id"), path, "material_id")
    if material_id is not None and material_ids is not None and material_id not in material_ids:
        known = ", ".join(sorted(material_ids)) or "none"
        fail(
            join(path, "material_id"), f"{show(material_id)} is not one of the element's materials ({known})"
        )

    command_raw, function_raw = data.get("command"), data.get("function")
    if (command_raw is None) == (function_raw is None):
        fail(path, "needs exactly one of command (an argv list) or function ('module:callable')")
    command = function = None
    kwargs: dict[str, Any] = {}
    if command_raw is not None:
        if isinstance(command_raw, str):
            fail(join(path, "command"), "must be a list of strings (an argv), not a shell string")
        if not isinstance(command_raw, list) or not command_raw:
            shown = "an empty list" if command_raw == [] else type_name(command_raw)
            fail(join(path, "command"), f"must be a non-empty list of strings (an argv), not {shown}")
        command = _argv(command_raw, join(path, "command"))
        if data.get("kwargs"):
            fail(join(path, "kwargs"), "only allowed with function, not with command")
    else:
        function = req_str(function_raw, path, "function")
        if not FUNCTION_RE.fullmatch(function):
            fail(
                join(path, "function"),
                f"must be 'module:callable' (e.g. 'mypkg.calc:run'), got {show(function)}",
            )
        raw_kwargs = data.get("kwargs")
        if raw_kwargs is not None:
            kwargs = check_json(as_mapping(raw_kwargs, path, "kwargs"), path, "kwargs")
            for key in kwargs:
                if not key.isidentifier():
                    fail(
                        join(join(path, "kwargs"), key),
                        "must be a Python identifier (it is passed as a keyword argument)",
                    )
    timeout = data.get("timeout")
    if timeout is not None:
        timeout = pos_number(timeout, path, "timeout")
    stage = opt_str(data.get("stage"), path, "stage")  # checked against the plan's stages by plan.stages
    return Step(name, calc_type, material_id, command, function, kwargs, timeout, stage)


def validate_steps(value: Any, path: str, material_ids: Collection[str]) -> list[Step]:
    """At least one step; names unique, also case-insensitively (they become directory names)."""
    if value is None:
        fail(path, "is required: give at least one step")
    if not isinstance(value, list) or not value:
        shown = "an empty list" if value == [] else type_name(value)
        fail(path, f"must be a non-empty list of steps, not {shown}")
    steps: list[Step] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(value):
        step = validate_step(raw, f"{path}[{i}]", material_ids)
        folded = step.name.casefold()
        if folded in seen:
            fail(
                f"{path}[{i}].name",
                f"{show(step.name)} is already used by {path}[{seen[folded]}] (names are compared ignoring case)",
            )
        seen[folded] = i
        steps.append(step)
    return steps


def check_workflow_id(workflow_id: str, path: str) -> str:
    """The workflow id built from plan name and element id; PlanError (not InputError) naming `path`."""
    if len(workflow_id) > 128:
        fail(
            path,
            f"workflow id {show(workflow_id)} is {len(workflow_id)} characters; the limit is 128 "
            "(shorten the plan name or the element id)",
        )
    if WORKFLOW_ID_RE.fullmatch(workflow_id) and ".." not in workflow_id:
        return workflow_id
    try:
        return validate_workflow_id(workflow_id, path)
    except InputError as exc:
        raise PlanError(str(exc)) from None


def element_id(value: Any, path: str, plan_name: str) -> tuple[str, str]:
    """(id, workflow id) where the workflow id is `f"{plan_name}-{id}"`."""
    if isinstance(value, int) and not isinstance(value, bool):
        fail(path, f"must be a string, got the number {value} (quote it)")
    eid = req_str(value, path)
    return eid, check_workflow_id(f"{plan_name}-{eid}", path)


def validate_element_body(
    body: Mapping[str, Any],
    path: str,
    *,
    index: int,
    eid: str,
    workflow_id: str,
    base_env: Mapping[str, str],
    params: dict[str, Any] | None = None,
) -> Element:
    """Materials, env and steps of an element whose placeholders are already substituted;
    `params`: the sweep values that made it (metadata)."""
    materials = validate_materials(body.get("materials"), join(path, "materials"))
    env = validate_env(body.get("env"), path, "env")
    if base_env:
        env = {**base_env, **env}
    steps = validate_steps(body.get("steps"), join(path, "steps"), {m["material_id"] for m in materials})
    return Element(index, eid, workflow_id, materials, env, steps, params or {})


def validate_element_record(data: Any, path: str = "element") -> Element:
    """An `Element.to_dict()` record read back (e.g. `element.json`): every field re-checked."""
    data = as_mapping(data, path)
    check_keys(data, RECORD_KEYS, path)
    index = data.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        fail(join(path, "index"), f"must be a non-negative integer, got {show(index)}")
    eid = req_str(required(data, "id", path), join(path, "id"))
    workflow_id = check_workflow_id(
        req_str(required(data, "workflow_id", path), join(path, "workflow_id")), join(path, "workflow_id")
    )
    params = as_mapping(data.get("params") or {}, join(path, "params"))
    body = {k: v for k, v in data.items() if k != "params"}
    return validate_element_body(body, path, index=index, eid=eid, workflow_id=workflow_id, base_env={},
                                 params=dict(params))


def validate_plan_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level scalars and mappings (everything except `elements` and `sweep`)."""
    check_keys(data, PLAN_KEYS, "")
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or version != 1):
        fail("version", f"this mace-hpc reads plan format 1, got {show(version)}")
    name = required(data, "name", "")
    if not isinstance(name, str):
        fail("name", f"must be a string, not {type_name(name)}")
    try:
        validate_workflow_id(name, "name")
    except InputError as exc:
        raise PlanError(str(exc)) from None
    max_parallel = data.get("max_parallel")
    return {
        "name": name,
        "description": None
        if data.get("description") is None
        else req_str(data["description"], "description", single_line=False),
        "isolation_mode": choice(data.get("isolation_mode"), ISOLATION_MODES, "isolation_mode"),
        "on_complete": choice(data.get("on_complete"), ON_COMPLETE, "on_complete"),
        "on_failure": choice(data.get("on_failure"), ON_FAILURE, "on_failure"),
        "shared_database": opt_str(data.get("shared_database"), "shared_database"),
        "resources": validate_resources(data.get("resources")),
        "max_parallel": None if max_parallel is None else pos_int(max_parallel, "max_parallel"),
        "pack": None if data.get("pack") is None else pos_int(data["pack"], "pack"),
        "env": validate_env(data.get("env"), "env"),
        "analysis": _analysis(data.get("analysis")),
    }


def _analysis(value: Any) -> str | None:
    """`analysis`: a 'module:callable' (found beside the plan) that `mace report` calls with the merged
    results, e.g. the example's equation-of-state fit."""
    if value is None:
        return None
    if not isinstance(value, str) or not FUNCTION_RE.fullmatch(value):
        fail("analysis", f"must be 'module:callable' beside the plan (e.g. 'eos:fit'), got {show(value)}")
    return value
