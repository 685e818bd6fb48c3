"""Placeholder substitution and sweep expansion.

A template is compiled once (every string parsed, every placeholder checked against the known
names, with the field path in the error) into small render functions; expanding N elements then
only calls them, so a 10,000-element sweep costs no per-element parsing, regex work or deep copy.

Placeholders: `{param}` for each sweep parameter, `{index}` (the element's array index),
`{workflow_id}`, `{plan_dir}` (absolute directory of the plan file). A string that is exactly
`{param}` keeps the value's type (`"{a0}"` -> 3.9, a float); inside a longer string values are
written JSON-style (`true`, `3.9`). `{{` and `}}` are literal braces. `{context_dir}` is left in
place: the step runner replaces that token (see `resolve_context_dir`) once the context exists.
Keys of mappings are never substituted, only values.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from ..errors import PlanError
from .context_dir import resolve_context_dir as resolve_context_dir  # re-exported
from .model import CONTEXT_DIR_TOKEN, Element, double_braces, literal_text, protect_literals
from .validate import (
    ELEMENT_KEYS,
    TEMPLATE_KEYS,
    as_mapping,
    check_json,
    check_keys,
    element_id,
    fail,
    join,
    scalar_to_str,
    show,
    suggest,
    type_name,
    validate_element_body,
)

RESERVED = ("index", "workflow_id", "plan_dir", "context_dir")
PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ELEMENTS = 1_000_000
# the expanded plan, estimated as JSON before it is built (in memory it takes about 7 times this)
MAX_EXPANDED_BYTES = 256 << 20
_TOKEN_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
# A compiled template: (typed values, their text forms) -> rendered value.
Render = Callable[[Mapping[str, Any], Mapping[str, str]], Any]


# ----------------------------------------------------------------------------------- compilation
def _const(value: Any) -> Render:
    return lambda values, texts: value


def _compile_str(text: str, path: str, names: Collection[str]) -> Render:
    """One string -> its render function; the result is in resolved form (see `plan.model`)."""
    if "{" not in text and "}" not in text:
        return _const(text)
    # parts: literal text as it reads, (name,) for a placeholder, None for the {context_dir} token
    parts: list[str | tuple[str] | None] = []
    pos = 0
    for m in _TOKEN_RE.finditer(text):
        parts.append(text[pos : m.start()])
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
        elif token in ("{", "}") or not PARAM_NAME_RE.fullmatch(m.group(1)):
            parts.append(token)  # not a placeholder (code such as `{k: v}` or a lone brace): kept literally
        elif m.group(1) == "context_dir":
            parts.append(None)
        elif m.group(1) in names:
            parts.append((m.group(1),))
        else:
            name, known = m.group(1), list(names)
            hint = suggest(name, known)
            if hint.startswith("; allowed"):
                hint = f"; known: {', '.join(known)}"
            fail(path, f"unknown placeholder {{{name}}} in {show(text)}{hint} (write '{{{{' for a literal brace)")
    parts.append(text[pos:])
    used = [p[0] for p in parts if isinstance(p, tuple)]
    if None in parts:
        # a real token: template form, every other brace doubled (substituted values included)
        pieces = [CONTEXT_DIR_TOKEN if p is None else p if isinstance(p, tuple) else double_braces(p) for p in parts]
        if not used:
            return _const("".join(pieces))  # type: ignore[arg-type]
        return lambda values, texts: "".join(
            double_braces(texts[p[0]]) if isinstance(p, tuple) else p for p in pieces
        )
    if not used:
        return _const(literal_text("".join(parts)))  # type: ignore[arg-type]
    if len(used) == 1 and text == "{" + used[0] + "}":
        name = used[0]
        return lambda values, texts: protect_literals(values[name])
    pattern = "".join("{" + p[0] + "}" if isinstance(p, tuple) else double_braces(p) for p in parts)  # type: ignore[operator]
    return lambda values, texts: literal_text(pattern.format_map(texts))


def compile_template(value: Any, path: str, names: Collection[str]) -> Render:
    """Parse every string in `value` once; raises PlanError (with the path) on a bad placeholder."""
    if isinstance(value, str):
        return _compile_str(value, path, names)
    if isinstance(value, list):
        items = [compile_template(v, f"{path}[{i}]", names) for i, v in enumerate(value)]
        return lambda values, texts: [f(values, texts) for f in items]
    if isinstance(value, Mapping):
        pairs = [(k, compile_template(v, join(path, str(k)), names)) for k, v in value.items()]
        return lambda values, texts: {k: f(values, texts) for k, f in pairs}
    return _const(value)


def substitute(value: Any, path: str, values: Mapping[str, Any]) -> Any:
    """One-off substitution of `values` into `value` (explicit elements: one walk, no compiling)."""
    texts = {k: scalar_to_str(v) for k, v in values.items()}
    return _substitute(value, path, None, [*values, "context_dir"], values, texts)


def _substitute(
    value: Any,
    path: str,
    key: str | int | None,
    names: list[str],
    values: Mapping[str, Any],
    texts: Mapping[str, str],
) -> Any:
    # The path is joined only for strings that have braces: most values need no work at all.
    if isinstance(value, str):
        if "{" not in value and "}" not in value:
            return value
        return _compile_str(value, join(path, key), names)(values, texts)
    if isinstance(value, list):
        at = join(path, key)
        return [_substitute(v, at, i, names, values, texts) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        at = join(path, key)
        return {k: _substitute(v, at, str(k), names, values, texts) for k, v in value.items()}
    return value


# -------------------------------------------------------------------------------------- elements
def _body(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in TEMPLATE_KEYS if k in data}


def explicit_element(
    raw: Any, path: str, *, index: int, plan_name: str, plan_dir: Path, base_env: Mapping[str, str]
) -> Element:
    """An `elements[i]` entry: `{index}`, `{workflow_id}`, `{plan_dir}` substituted, then validated."""
    data = as_mapping(raw, path)
    check_keys(data, ELEMENT_KEYS, path)
    if data.get("id") is None:
        fail(join(path, "id"), "is required")
    eid, workflow_id = element_id(data["id"], join(path, "id"), plan_name)
    values = {"index": index, "workflow_id": workflow_id, "plan_dir": str(plan_dir)}
    body = substitute(_body(data), path, values)
    return validate_element_body(body, path, index=index, eid=eid, workflow_id=workflow_id, base_env=base_env)


def _parameters(raw: Any, path: str) -> tuple[list[str], list[list[Any]]]:
    data = as_mapping(raw, path)
    if not data:
        fail(path, "must name at least one parameter with a list of values")
    names: list[str] = []
    columns: list[list[Any]] = []
    for name, vals in data.items():
        at = join(path, str(name))
        if not isinstance(name, str) or not PARAM_NAME_RE.fullmatch(name):
            fail(at, "parameter names must be identifiers (letters, digits, '_', not starting with a digit)")
        if name in RESERVED:
            fail(at, f"'{name}' is a built-in placeholder; choose another parameter name")
        if not isinstance(vals, list) or not vals:
            fail(
                at,
                "must be a non-empty list" + ("" if isinstance(vals, list) else f", not {type_name(vals)}"),
            )
        names.append(name)
        columns.append([check_json(v, f"{at}[{i}]") for i, v in enumerate(vals)])
    return names, columns


def _sweep_parameters(raw: Any) -> tuple[Mapping[str, Any], list[str], list[list[Any]], int]:
    """Check the sweep's keys and parameters: (sweep data, names, value lists, element count)."""
    data = as_mapping(raw, "sweep")
    check_keys(data, ("parameters", "id", "template"), "sweep")
    if data.get("parameters") is None:
        fail("sweep.parameters", "is required: a mapping of parameter names to lists of values")
    names, columns = _parameters(data["parameters"], "sweep.parameters")
    count = math.prod(len(c) for c in columns)
    if count > MAX_ELEMENTS:
        fail("sweep.parameters", f"expands to {count} elements; the limit is {MAX_ELEMENTS}")
    return data, names, columns, count


def expanded_bytes(raw: Any) -> int:
    """Estimated JSON size of the elements `sweep` expands to, from the template and the values.

    Each element is the template's text plus, for every use of `{param}`, that parameter's
    longest value: cheap to compute and an upper bound of the right order.
    """
    data, names, columns, count = _sweep_parameters(raw)
    text = json.dumps(data.get("template"), default=str, separators=(",", ":"))
    per_element = len(text) + len(json.dumps(data.get("id")))
    for name, col in zip(names, columns, strict=True):
        uses = text.count("{" + name + "}")
        if uses:
            per_element += uses * max(len(json.dumps(v, separators=(",", ":"))) for v in col)
    return count * per_element


def sweep_size(raw: Any) -> int:
    """How many elements `sweep` expands to (checking only its keys and parameters)."""
    return _sweep_parameters(raw)[3]


def expand_sweep(
    raw: Any,
    *,
    plan_name: str,
    plan_dir: Path,
    start_index: int = 0,
    id_width: int | None = None,
    base_env: Mapping[str, str] | None = None,
) -> list[Element]:
    """The cartesian product of `sweep.parameters` (first parameter varies slowest) as elements.

    Indices continue from `start_index` (explicit elements come first); the default id is
    `e{index}` zero-padded to `id_width` digits (default: the width of the element count).
    """
    data, names, columns, count = _sweep_parameters(raw)
    if data.get("template") is None:
        fail("sweep.template", "is required: the element body (materials, env, steps) with placeholders")
    template = as_mapping(data["template"], "sweep.template")
    if "id" in template:
        fail("sweep.template.id", 'not allowed in the template; set sweep.id (e.g. "a{a0}") instead')
    check_keys(template, TEMPLATE_KEYS, "sweep.template")

    id_raw = data.get("id")
    if id_raw is None:
        width = id_width or len(str(start_index + count))
        render_id: Render = lambda values, texts: f"e{values['index']:0{width}d}"  # noqa: E731
    else:
        if not isinstance(id_raw, str):
            fail("sweep.id", f'must be a string like "a{{a0}}", not {type_name(id_raw)}')
        render_id = _compile_str(id_raw, "sweep.id", [*names, "index"])
    render_body = compile_template(_body(template), "sweep.template", [*names, *RESERVED])

    base_env = base_env or {}
    plan_dir_text = str(plan_dir)
    param_texts = [[scalar_to_str(v) for v in col] for col in columns]
    index_ranges = [range(len(c)) for c in columns]
    elements: list[Element] = []
    index = start_index
    for combo in itertools.product(*index_ranges):
        values: dict[str, Any] = {"index": index, "plan_dir": plan_dir_text}
        texts: dict[str, str] = {"index": str(index), "plan_dir": plan_dir_text}
        for name, col, tcol, j in zip(names, columns, param_texts, combo, strict=True):
            values[name] = col[j]
            texts[name] = tcol[j]
        try:
            eid, workflow_id = element_id(render_id(values, texts), "sweep.id", plan_name)
            values["workflow_id"] = texts["workflow_id"] = workflow_id
            body = render_body(values, texts)
            element = validate_element_body(body, "sweep.template", index=index, eid=eid, workflow_id=workflow_id,
                                            base_env=base_env, params={n: values[n] for n in names})
        except PlanError as exc:
            where = ", ".join(f"{n}={show(values[n], 30)}" for n in names)
            raise PlanError(f"{exc} (sweep element {index}: {where})") from None
        elements.append(element)
        index += 1
    return elements
