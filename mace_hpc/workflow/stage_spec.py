"""The planner's `stages=` argument: a MACE calculation sequence -> a plan's `stages` and steps.

Users of upstream MACE think in sequences of calculation types (OPT -> SP -> BAND -> DOSS), each
with its own SLURM resources. The planner accepts exactly that: stage names in order, or one
mapping per stage with the plan format's stage fields (`needs`, `optional`, `resources`, `inputs`,
`outputs`) plus `steps` that every element runs in that stage; resources may also come separately
in `stage_resources`. What comes out is an ordinary plan (docs/plan-format.md, "Stages"), so the
same file runs under `mace submit` and the executor.

Steps reach their stage in one of three ways: listed under the stage; naming it (`"stage": "SP"`);
or, when they name none, by a `calc_type` (else a `name`) equal to a stage's name ignoring case,
as upstream's calculation types are. A step left without a stage is refused when the plan is
validated, naming the field. Every problem is one PlanError naming the field.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..plan.stages import STAGE_KEYS, validate_stages
from ..plan.validate import as_mapping, check_keys, fail, join, show, suggest, type_name

PLANNER_STAGE_KEYS = (*STAGE_KEYS, "steps")


@dataclass(frozen=True)
class StageSpec:
    """The plan-format `stages` list and, per stage name, the steps every element runs in it."""

    stages: list[dict[str, Any]]
    steps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s["name"] for s in self.stages]


def stage_spec(stages: Any, stage_resources: Any = None) -> StageSpec:
    """Validate the planner's stage arguments (shape, names, needs, cycles, resources, paths)."""
    if isinstance(stages, str) or not isinstance(stages, Sequence) or not stages:
        fail("stages", "must be a non-empty list of stage names or stage mappings, e.g. "
                       "['OPT', 'SP', 'BAND', 'DOSS'] or [{'name': 'OPT', 'resources': {'cpus': 16}}, ...], "
                       f"not {'an empty list' if stages == [] else type_name(stages)}")
    plan_stages: list[dict[str, Any]] = []
    listed: dict[int, Any] = {}
    for i, raw in enumerate(stages):
        path = f"stages[{i}]"
        data = dict(as_mapping({"name": raw} if isinstance(raw, str) else raw, path))
        check_keys(data, PLANNER_STAGE_KEYS, path)
        if "steps" in data:
            listed[i] = data.pop("steps")
        plan_stages.append(copy.deepcopy(data))
    _add_resources(plan_stages, stage_resources)
    validate_stages(plan_stages)  # names, needs, cycles, resources, inputs/outputs: field paths match
    steps = {plan_stages[i]["name"]: _stage_steps(v, plan_stages[i]["name"], f"stages[{i}].steps")
             for i, v in listed.items()}
    return StageSpec(plan_stages, steps)


def _stage_steps(value: Any, stage: str, path: str) -> list[dict[str, Any]]:
    """Steps listed under a stage: mappings that name no other stage; `stage` is set on each and
    `calc_type` defaults to the stage's name (MACE's calculation type)."""
    if not isinstance(value, list) or not value:
        fail(path, f"must be a non-empty list of steps, not {'an empty list' if value == [] else type_name(value)}")
    out = []
    for j, raw in enumerate(value):
        step = copy.deepcopy(dict(as_mapping(raw, path, j)))
        named = step.get("stage", stage)
        if named != stage:
            fail(join(join(path, j), "stage"), f"names stage {show(named)} but the step is listed under stage "
                                                f"{show(stage)}; remove the key")
        out.append({**step, "stage": stage, "calc_type": step.get("calc_type", stage)})
    return out


def _add_resources(plan_stages: list[dict[str, Any]], stage_resources: Any) -> None:
    """`stage_resources={name: resources}` into the stages; a stage gets its resources in one place."""
    if stage_resources is None:
        return
    data = as_mapping(stage_resources, "stage_resources")
    names = [str(s.get("name")) for s in plan_stages]
    for name, resources in data.items():
        if name not in names:
            fail(join("stage_resources", str(name)), f"{show(name)} is not a stage of this plan" + suggest(str(name), names))
        i = names.index(name)
        if plan_stages[i].get("resources") is not None:
            fail(join("stage_resources", name), f"stages[{i}] ({name!r}) has resources already; give them in one place")
        plan_stages[i]["resources"] = copy.deepcopy(resources)


def apply_stages(plan: dict[str, Any], spec: StageSpec) -> None:
    """Put `spec` into plan data: its `stages`, its steps into every element and the sweep template,
    and a stage on each step that names none but whose calc_type or name is a stage's name.

    The caller's element and sweep mappings are copied, never changed."""
    plan["stages"] = copy.deepcopy(spec.stages)
    extra = [s for name in spec.names for s in spec.steps.get(name, ())]
    by_key = {name.casefold(): name for name in spec.names}

    def with_steps(container: Any) -> Any:
        if not isinstance(container, Mapping):
            return container  # validation names it
        own = container.get("steps")
        if own is not None and not isinstance(own, list):
            return dict(container)
        steps = [_assigned(s, by_key) for s in own or []]
        return {**copy.deepcopy(dict(container)), "steps": steps + copy.deepcopy(extra)}

    if isinstance(plan.get("elements"), list):
        plan["elements"] = [with_steps(e) for e in plan["elements"]]
    sweep = plan.get("sweep")
    if isinstance(sweep, Mapping) and isinstance(sweep.get("template"), Mapping):
        plan["sweep"] = {**sweep, "template": with_steps(sweep["template"])}


def _assigned(step: Any, by_key: Mapping[str, str]) -> Any:
    """A step that names no stage, in the stage its calc_type (else its name) names, if any."""
    if not isinstance(step, Mapping) or step.get("stage") is not None:
        return copy.deepcopy(step)
    for key in ("calc_type", "name"):
        value = step.get(key)
        if isinstance(value, str) and value.casefold() in by_key:
            return {**copy.deepcopy(dict(step)), "stage": by_key[value.casefold()]}
    return copy.deepcopy(dict(step))

