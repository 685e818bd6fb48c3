"""Loading a plan: file -> data -> validated `Plan` with its sweep expanded.

Loading problems are PlanErrors that start with the file name (`plan.json: no such file`,
`plan.json: malformed JSON at line 3 column 5: ...`); validation problems start with the field path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import expand_path
from ..errors import PlanError
from ..util.inputs import InputProblem, check_depth, loads_json, loads_yaml, read_input_text
from .model import Element, Plan
from .policy import validate_policy_fields
from .stages import check_step_stages, plan_pack, validate_stages
from .sweep import (
    MAX_ELEMENTS,
    MAX_EXPANDED_BYTES,
    expand_sweep,
    expanded_bytes,
    explicit_element,
    substitute,
    sweep_size,
)
from .validate import fail, type_name, validate_plan_fields

YAML_SUFFIXES = (".yaml", ".yml")


def parse_plan_text(text: str, shown: str, yaml_format: bool = False) -> Any:
    """JSON (or YAML, safe and bounded) text -> data; errors name the file and the position.

    Duplicate keys are refused in both; YAML nesting and aliases are bounded (`util.inputs`).
    """
    if yaml_format:
        import yaml

        try:
            return loads_yaml(text)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            raise PlanError(f"{shown}: malformed YAML: {problem}{where}") from None
        except InputProblem as exc:
            raise PlanError(f"{shown}: {exc}") from None
    try:
        return loads_json(text)
    except json.JSONDecodeError as exc:
        raise PlanError(
            f"{shown}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except InputProblem as exc:
        raise PlanError(f"{shown}: {exc}") from None
    except ValueError as exc:
        raise PlanError(f"{shown}: malformed JSON: {exc}") from None


def load_plan(path: str | Path) -> Plan:
    """Read, validate and expand a plan file (`.yaml`/`.yml` as YAML, anything else as JSON)."""
    shown = str(path)
    p = Path(path).expanduser()
    data = parse_plan_text(read_input_text(p, shown, PlanError, "plan file"), shown, p.suffix.lower() in YAML_SUFFIXES)
    if not isinstance(data, Mapping):
        fail(shown, f"must be a mapping with name and elements or sweep, not {type_name(data)}")
    resolved = p.resolve()
    return load_plan_data(data, plan_dir=resolved.parent, source=resolved)


def load_plan_data(data: Mapping[str, Any], plan_dir: Path | None = None, source: Path | None = None) -> Plan:
    """Validate plan data and expand its sweep; `plan_dir` (default: cwd) anchors relative paths."""
    if not isinstance(data, Mapping):
        fail("plan", f"must be a mapping with name and elements or sweep, not {type_name(data)}")
    try:  # the validators recurse: bound the depth first
        check_depth(data)
    except InputProblem as exc:
        raise PlanError(str(exc)) from None
    plan_dir = Path(plan_dir).resolve() if plan_dir is not None else Path.cwd().resolve()
    fields = {**validate_plan_fields(data), **validate_policy_fields(data)}
    name = fields["name"]
    if fields["shared_database"] is not None:
        db = expand_path(fields["shared_database"])
        fields["shared_database"] = str(db if db.is_absolute() else plan_dir / db)

    raw_elements = data.get("elements")
    if raw_elements is None:
        raw_elements = []
    elif not isinstance(raw_elements, list):
        fail("elements", f"must be a list of elements, not {type_name(raw_elements)}")
    sweep = data.get("sweep")
    n_sweep = sweep_size(sweep) if sweep is not None else 0
    total = len(raw_elements) + n_sweep
    if total == 0:
        fail("elements", "the plan has no elements; give a non-empty elements list or a sweep")
    if total > MAX_ELEMENTS:
        fail("sweep.parameters" if n_sweep else "elements", f"{total} elements; the limit is {MAX_ELEMENTS}")
    if n_sweep and (size := expanded_bytes(sweep)) > MAX_EXPANDED_BYTES:
        fail(
            "sweep",
            f"expands to about {size >> 20:,} MiB of elements ({n_sweep:,} elements); the limit is "
            f"{MAX_EXPANDED_BYTES >> 20} MiB: use fewer parameter values or a smaller template "
            "(large inputs belong in files under {plan_dir})",
        )

    # the plan's env follows the element rules too, with the placeholders known at plan level
    base_env = fields["env"] = substitute(fields["env"], "env", {"plan_dir": str(plan_dir)})
    elements: list[Element] = [
        explicit_element(raw, f"elements[{i}]", index=i, plan_name=name, plan_dir=plan_dir, base_env=base_env)
        for i, raw in enumerate(raw_elements)
    ]
    if sweep is not None:
        elements += expand_sweep(
            sweep,
            plan_name=name,
            plan_dir=plan_dir,
            start_index=len(elements),
            id_width=len(str(total)),
            base_env=base_env,
        )
    _check_unique_ids(elements, len(raw_elements))
    stages = validate_stages(data.get("stages"))
    fields["pack"] = plan_pack(stages, fields["pack"])
    n_explicit = len(raw_elements)
    check_step_stages(elements, stages, lambda e, j: f"elements[{e.index}].steps[{j}]" if e.index < n_explicit
                      else f"sweep.template.steps[{j}]")
    return Plan(elements=elements, stages=stages, source=source, plan_dir=plan_dir, **fields)


def _describe(element: Element, n_explicit: int) -> tuple[str, str]:
    """(field path, how to name it in a sentence) of an element's id."""
    if element.index < n_explicit:
        return f"elements[{element.index}].id", f"elements[{element.index}]"
    return "sweep.id", f"sweep element {element.index}"


def _check_unique_ids(elements: list[Element], n_explicit: int) -> None:
    """Ids must differ, also ignoring case: on a case-insensitive filesystem they would share a dir."""
    seen: dict[str, Element] = {}
    for e in elements:
        key = e.id.casefold()
        first = seen.get(key)
        if first is None:
            seen[key] = e
            continue
        path, here = _describe(e, n_explicit)
        there = _describe(first, n_explicit)[1]
        if first.id == e.id:
            hint = "; put every parameter in sweep.id" if first.index >= n_explicit else ""
            raise PlanError(f"{path}: duplicate element id {e.id!r} in {here} and {there}{hint}")
        raise PlanError(
            f"{path}: element id {e.id!r} in {here} collides with {first.id!r} in {there} "
            "on a case-insensitive filesystem"
        )


def plan_from_any(x: str | Path | Mapping[str, Any] | Plan) -> Plan:
    """A Plan from whatever a caller has: a Plan, plan data, or the path of a plan file."""
    if isinstance(x, Plan):
        return x
    if isinstance(x, Mapping):
        return load_plan_data(x)
    if isinstance(x, (str, Path)):
        return load_plan(x)
    raise TypeError(f"expected a plan file path, plan data or a Plan, not {type(x).__name__}")


def submitted_plan_fields(path: str | Path) -> dict[str, Any]:
    """The top-level fields (description, analysis, ...) of a submission's saved `plan.json`,
    without expanding its elements again; {} when the file is missing or not a valid plan."""
    try:
        data = parse_plan_text(read_input_text(Path(path), str(path), PlanError, "plan"), str(path))
        return {**validate_plan_fields(data), **validate_policy_fields(data)} if isinstance(data, dict) else {}
    except PlanError:
        return {}
