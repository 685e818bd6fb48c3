"""Validating a plan's `stages` and the `stage` of every step (docs/plan-format.md, "Stages").

A plan without `stages` is one implicit stage and its steps may not name one. With stages, every
step names a declared stage, `needs` form no cycle, and a stage's `inputs`/`outputs` stay inside
the element's context; every problem is one PlanError naming the field.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from ..records.stages import Stage
from .model import Element
from .validate import (
    STEP_NAME_RE,
    as_mapping,
    check_keys,
    fail,
    join,
    pos_int,
    req_str,
    show,
    suggest,
    type_name,
    validate_resources,
)

STAGE_KEYS = ("name", "needs", "optional", "resources", "inputs", "outputs", "pack")


def validate_stages(value: Any) -> tuple[Stage, ...]:
    """`stages`: a non-empty list; names unique; `needs` default to the previous stage, no cycles."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        fail("stages", f"must be a non-empty list of stages, not {'an empty list' if value == [] else type_name(value)}")
    raw = [as_mapping(s, "stages", i) for i, s in enumerate(value)]
    names: list[str] = []
    for i, data in enumerate(raw):
        path = f"stages[{i}]"
        check_keys(data, STAGE_KEYS, path)
        name = req_str(data.get("name"), path, "name")
        if not STEP_NAME_RE.fullmatch(name):
            fail(join(path, "name"), f"{show(name)} is not a usable stage name; use 1-64 letters, digits, '.', '_', '-'")
        if name.casefold() in (n.casefold() for n in names):
            fail(join(path, "name"), f"{show(name)} is already a stage (names are compared ignoring case)")
        names.append(name)
    stages = [
        Stage(
            name=names[i], needs=_needs(data, i, names), optional=_flag(data.get("optional"), f"stages[{i}].optional"),
            resources=validate_resources(data.get("resources"), f"stages[{i}].resources"),
            inputs=_paths(data.get("inputs"), f"stages[{i}].inputs"),
            outputs=_paths(data.get("outputs"), f"stages[{i}].outputs"),
            pack=None if data.get("pack") is None else pos_int(data["pack"], f"stages[{i}].pack"),
        )
        for i, data in enumerate(raw)
    ]
    _check_acyclic(stages)
    return tuple(stages)


def plan_pack(stages: Sequence[Stage], pack: int | None) -> int | None:
    """The one pack factor of a plan: stages chain task i to task i (`aftercorr`), so every stage
    must pack alike; a stage without `pack` takes the plan's. Refuses differing packs."""
    packs = {s.name: s.pack or pack or 1 for s in stages}
    if len(set(packs.values())) > 1:
        i, s = next((i, s) for i, s in enumerate(stages) if packs[s.name] != packs[stages[0].name])
        fail(f"stages[{i}].pack", f"stage {s.name} packs {packs[s.name]} elements per task but stage "
             f"{stages[0].name} packs {packs[stages[0].name]}; stages chain task by task, so give every stage "
             f"the same pack (or set `pack` once at the top of the plan)")
    if stages and pack is None and stages[0].pack is not None:
        return stages[0].pack
    return pack


def check_step_stages(elements: Sequence[Element], stages: Sequence[Stage], step_path: Any) -> None:
    """Every step names a declared stage (or none, when the plan has no stages); every stage has
    a step in some element. `step_path(element, j)` is the field path of step j of an element."""
    known = [s.name for s in stages]
    used: set[str] = set()
    for e in elements:
        for j, step in enumerate(e.steps):
            path = f"{step_path(e, j)}.stage"
            if not stages:
                if step.stage is not None:
                    fail(path, f"names stage {show(step.stage)} but the plan declares no stages; add a top-level "
                               "`stages` list or remove the key")
                continue
            if step.stage is None:
                fail(path, f"is required when the plan declares stages; one of {', '.join(known)}")
            if step.stage not in known:
                fail(path, f"{show(step.stage)} is not a declared stage" + suggest(step.stage, known))
            used.add(step.stage)
    for i, s in enumerate(stages):
        if s.name not in used:
            fail(f"stages[{i}]", f"stage {s.name!r} has no steps: give some step \"stage\": {s.name!r}, or remove it")


def _needs(data: Mapping[str, Any], i: int, names: list[str]) -> tuple[str, ...]:
    path = f"stages[{i}].needs"
    raw = data.get("needs")
    if raw is None:
        return (names[i - 1],) if i else ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        fail(path, f"must be a list of stage names, not {type_name(raw)}")
    out: list[str] = []
    for j, need in enumerate(raw):
        need = req_str(need, path, j)
        if need not in names:
            fail(join(path, j), f"{show(need)} is not a stage of this plan" + suggest(need, names))
        if need == names[i]:
            fail(join(path, j), f"stage {need!r} cannot need itself")
        if need not in out:
            out.append(need)
    return tuple(out)


def _flag(value: Any, path: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        fail(path, f"must be true or false, not {show(value)}")
    return value


def _paths(value: Any, path: str) -> tuple[str, ...]:
    """File paths relative to the element's context; one that is absolute or climbs out is refused."""
    if value is None:
        return ()
    if not isinstance(value, list):
        fail(path, f"must be a list of file paths relative to the element's context, not {type_name(value)}")
    out = []
    for j, raw in enumerate(value):
        text = req_str(raw, path, j)
        norm = posixpath.normpath(text)
        if text.startswith(("/", "~")) or norm == ".." or norm.startswith("../") or norm in (".", ""):
            fail(join(path, j), f"{show(text)} escapes the element's context; give a file path relative to it "
                                "(e.g. 'fort.9' or 'opt/fort.9')")
        out.append(norm)
    return tuple(out)


def _check_acyclic(stages: Sequence[Stage]) -> None:
    """`needs` may point forward, but never round: name the cycle."""
    graph = {s.name: s.needs for s in stages}
    index = {s.name: i for i, s in enumerate(stages)}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in done:
            return
        if name in trail:
            cycle = [*trail[trail.index(name):], name]
            fail(f"stages[{index[cycle[0]]}].needs", f"the stages form a cycle: {' -> '.join(cycle)}")
        for need in graph[name]:
            visit(need, [*trail, name])
        done.add(name)

    for s in stages:
        visit(s.name, [])
