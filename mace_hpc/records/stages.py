"""The stage graph of a multi-stage plan, and what each stage of one element has done so far.

A plan without `stages` is one implicit stage: every function here accepts an empty graph and
then says "one stage, nothing to chain". With stages, every element runs each stage as its own
array task (own resources), in dependency order; all stages share the element's context.

Per element the state file keeps `stages: {name: {state, started_at, finished_at, message,
attempts, outputs}}` (see `element_state.ElementState.stages`); the element's own `state` stays
PENDING between stages and becomes final only when its chain ends (invariant 10 of
docs/architecture.md: an element is merged once, when its chain ends).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .states import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, SKIPPED, TIMEOUT, State

# how a stage of one element can end
STAGE_FINAL = frozenset({COMPLETED, FAILED, TIMEOUT, CANCELLED, SKIPPED})
STAGE_BAD = frozenset({FAILED, TIMEOUT, CANCELLED, SKIPPED})


@dataclass(frozen=True)
class Stage:
    """One stage of a plan: its steps run as one array task per element, with its own resources."""

    name: str
    needs: tuple[str, ...] = ()
    optional: bool = False
    resources: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    pack: int | None = None  # elements per array task; must agree with the plan's and every stage's

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Stage:
        return cls(
            name=str(d["name"]), needs=tuple(str(n) for n in d.get("needs") or ()),
            optional=bool(d.get("optional")), resources=dict(d.get("resources") or {}),
            inputs=tuple(str(p) for p in d.get("inputs") or ()), outputs=tuple(str(p) for p in d.get("outputs") or ()),
            pack=int(d["pack"]) if d.get("pack") is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; what a plan file says (absent optional fields omitted)."""
        out: dict[str, Any] = {"name": self.name, "needs": list(self.needs)}
        if self.optional:
            out["optional"] = True
        if self.resources:
            out["resources"] = dict(self.resources)
        if self.inputs:
            out["inputs"] = list(self.inputs)
        if self.outputs:
            out["outputs"] = list(self.outputs)
        if self.pack is not None:
            out["pack"] = self.pack
        return out


def stages_from(data: Iterable[Mapping[str, Any]] | None) -> tuple[Stage, ...]:
    return tuple(Stage.from_dict(d) for d in data or ())


def by_name(stages: Sequence[Stage]) -> dict[str, Stage]:
    return {s.name: s for s in stages}


def descendants(stages: Sequence[Stage], name: str) -> list[str]:
    """Every stage that (transitively) needs `name`, in plan order: what a failure of it stops."""
    out: set[str] = set()
    frontier = {name}
    while frontier:
        frontier = {s.name for s in stages if s.name not in out and frontier & set(s.needs)}
        out |= frontier
    return [s.name for s in stages if s.name in out]


def chain_from(stages: Sequence[Stage], name: str) -> list[str]:
    """`name` and every stage downstream of it, in plan order: what a rerun from `name` runs again."""
    down = set(descendants(stages, name))
    return [s.name for s in stages if s.name == name or s.name in down]


def stage_state(stages_done: Mapping[str, Any], name: str) -> State:
    """The state of stage `name` of one element (from its state file's `stages` map); PENDING if absent."""
    info = stages_done.get(name)
    raw = info.get("state") if isinstance(info, Mapping) else None
    return State.parse(raw, PENDING) or PENDING


def blocked_by(stages: Sequence[Stage], stages_done: Mapping[str, Any], name: str) -> str | None:
    """Why stage `name` of this element must not run: the first need that did not complete and is
    not optional (an optional stage's failure lets the chain go on); None when it may run."""
    graph = by_name(stages)
    for need in graph[name].needs:
        state = stage_state(stages_done, need)
        if state == COMPLETED or (graph[need].optional and state in STAGE_FINAL):
            continue
        return need
    return None


def chain_outcome(stages: Sequence[Stage], stages_done: Mapping[str, Any]) -> tuple[bool, State, str]:
    """(ended, element run state, message) of one element's chain from its stages' states.

    The chain has ended when every stage is final. It succeeded (COMPLETED) when every required
    stage completed; else the element ends as its first failed required stage did.
    """
    states = {s.name: stage_state(stages_done, s.name) for s in stages}
    if any(state not in STAGE_FINAL for state in states.values()):
        return False, RUNNING, ""
    for s in stages:
        state = states[s.name]
        if not s.optional and state != COMPLETED:
            info = stages_done.get(s.name) or {}
            why = info.get("message") if isinstance(info, Mapping) else ""
            run_state = FAILED if state == SKIPPED else state
            return True, run_state, f"stage {s.name}: {why}" if why else f"stage {s.name} {state}"
    failed_optional = [s.name for s in stages if states[s.name] != COMPLETED]
    note = f"optional stage(s) {', '.join(failed_optional)} did not complete" if failed_optional else ""
    return True, COMPLETED, note


def deciding_stage(stages: Sequence[Stage], stages_done: Mapping[str, Any]) -> str | None:
    """The stage an ended chain is judged by: its first failed required stage, else the last stage
    that ran (what status, classification and retries look at once the element is not moving)."""
    ran = [s for s in stages if stage_state(stages_done, s.name) not in (PENDING, SKIPPED)]
    failed = [s for s in ran if not s.optional and stage_state(stages_done, s.name) != COMPLETED]
    chosen = failed[0] if failed else (ran[-1] if ran else None)
    return chosen.name if chosen else None


def current_stage(stages: Sequence[Stage], stages_done: Mapping[str, Any]) -> str | None:
    """The stage an element is in: the first running one, else the first not yet final."""
    states = {s.name: stage_state(stages_done, s.name) for s in stages}
    for s in stages:
        if states[s.name] == RUNNING:
            return s.name
    return next((s.name for s in stages if states[s.name] not in STAGE_FINAL), None)


def rerun_stages(stages: Sequence[Stage], stages_done: Mapping[str, Any]) -> list[str]:
    """The stages a rerun of this element runs again, in plan order: every stage that did not
    complete, except an optional stage whose own failure was accepted (its skipped downstream
    stages are rerun: they never ran). Empty: nothing to rerun."""
    out = []
    for s in stages:
        state = stage_state(stages_done, s.name)
        if state == COMPLETED or (s.optional and state in STAGE_BAD and state != SKIPPED):
            continue
        out.append(s.name)
    return out


STAGE_RESULT_KEYS = ("message", "started_at", "finished_at", "attempts", "outputs")


def stage_results(stages: Sequence[Stage], stages_done: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Stage name -> what that stage of one element did (state, message, times, attempts, the
    outputs recorded with size and SHA-256), in plan order; a stage that never ran is PENDING."""
    out = {}
    for s in stages:
        info = stages_done.get(s.name)
        info = info if isinstance(info, Mapping) else {}
        out[s.name] = {"state": str(stage_state(stages_done, s.name)), **{k: info.get(k) for k in STAGE_RESULT_KEYS}}
    return out


def ordered(stages: Sequence[Stage]) -> tuple[Stage, ...]:
    """The stages in an order where every stage comes after the stages it needs (plan order kept
    where it already is one): the order arrays are submitted in."""
    out: list[Stage] = []
    placed: set[str] = set()
    pending = list(stages)
    while pending:
        for s in pending:
            if set(s.needs) <= placed:
                out.append(s)
                placed.add(s.name)
                pending.remove(s)
                break
    return tuple(out)
