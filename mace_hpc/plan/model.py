"""The validated, expanded plan: plain frozen dataclasses that every later stage reads.

A `Plan` only ever exists after validation (`mace_hpc.plan.load`), so consumers can trust its
fields: workflow ids are valid and unique, commands are argv lists, env keys are safe. The
containers inside (lists, dicts) are not deep-frozen; treat them as read-only.

`Element.to_dict()` is what goes into a context's `element.json` (fully resolved, except the
`{context_dir}` token that the step runner fills in); `Plan.to_dict()` is a plan file again: loading
it with `load_plan_data` gives an equal plan (braces are re-escaped so nothing is substituted twice).

Resolved form of a string (in an Element, `element.json`): if it contains `{context_dir}` it is in
*template form*: that is the token, `{{`/`}}` are literal braces, and the step runner resolves it
(`plan.sweep.resolve_context_dir`). Any other string is literal, as it is. So literal text that
reads `{context_dir}` (written `{{context_dir}}`, or a sweep value) is stored with its braces
doubled and reaches the program literally, like every other substituted value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records.stages import Stage
from .context_dir import CONTEXT_DIR_TOKEN as CONTEXT_DIR_TOKEN  # defined there: the runner imports only that

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Step:
    """One calculation of an element: an argv (`command`) or a Python callable (`function`)."""

    name: str
    calc_type: str
    material_id: str | None = None
    command: list[str] | None = None
    function: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    stage: str | None = None  # the stage it runs in (plans with `stages`)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; absent optional fields are omitted so the output is a valid plan step."""
        out: dict[str, Any] = {"name": self.name, "calc_type": self.calc_type}
        if self.material_id is not None:
            out["material_id"] = self.material_id
        if self.command is not None:
            out["command"] = list(self.command)
        if self.function is not None:
            out["function"] = self.function
            if self.kwargs:
                out["kwargs"] = dict(self.kwargs)
        if self.timeout is not None:
            out["timeout"] = self.timeout
        if self.stage is not None:
            out["stage"] = self.stage
        return out


@dataclass(frozen=True)
class Element:
    """One array element: its index in the array, its ids, and its resolved spec.

    `env` is the effective environment: the plan's `env` overlaid with the element's own.
    """

    index: int
    id: str
    workflow_id: str
    materials: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    # the sweep values that made it, for `mace report`; metadata, not identity: equal plans may differ here
    params: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able resolved spec (what `element.json` holds); `params` only for a sweep's elements."""
        out = {
            "index": self.index,
            "id": self.id,
            "workflow_id": self.workflow_id,
            "materials": [dict(m) for m in self.materials],
            "env": dict(self.env),
            "steps": [s.to_dict() for s in self.steps],
        }
        return {**out, "params": dict(self.params)} if self.params else out


@dataclass(frozen=True)
class Plan:
    """A validated plan with its sweep expanded into `elements` (explicit elements first).

    `isolation_mode`, `on_complete`, `on_failure`, `max_parallel` are None when the plan leaves them
    to the configuration; `resources` holds only the `scheduler.*` keys the plan overrides.
    `shared_database` is an absolute path string (relative paths were resolved against `plan_dir`).
    """

    name: str
    description: str | None = None
    isolation_mode: str | None = None
    on_complete: str | None = None
    on_failure: str | None = None
    shared_database: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    max_parallel: int | None = None
    pack: int | None = None  # elements per array task (records/pack.py); every stage packs alike
    env: dict[str, str] = field(default_factory=dict)
    analysis: str | None = None  # 'module:callable' over the merged results (`mace report`)
    # the failure policy as validated plan data (plan/policy.py: failure_policy() types it)
    retry: dict[str, Any] | None = None
    app_errors: list[dict[str, Any]] | None = None
    notify: dict[str, Any] | None = None
    elements: list[Element] = field(default_factory=list)
    stages: tuple[Stage, ...] = ()  # empty: one implicit stage (every step in one array task)
    source: Path | None = None
    plan_dir: Path = field(default_factory=Path.cwd)

    def __len__(self) -> int:
        return len(self.elements)

    def workflow_ids(self) -> list[str]:
        """Workflow ids in element-index order (index i is array task i)."""
        return [e.workflow_id for e in self.elements]

    def element_by_workflow_id(self, workflow_id: str) -> Element:
        """The element with this workflow id; KeyError if the plan has none."""
        for e in self.elements:
            if e.workflow_id == workflow_id:
                return e
        raise KeyError(workflow_id)

    def to_dict(self) -> dict[str, Any]:
        """A plan file again (no sweep: every element explicit); `load_plan_data` reproduces it."""
        out: dict[str, Any] = {"version": PLAN_FORMAT_VERSION, "name": self.name}
        for key in ("description", "isolation_mode", "on_complete", "on_failure", "shared_database", "analysis",
                    "retry", "app_errors", "notify"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.resources:
            out["resources"] = dict(self.resources)
        if self.max_parallel is not None:
            out["max_parallel"] = self.max_parallel
        if self.pack is not None:
            out["pack"] = self.pack
        if self.env:
            out["env"] = escape_braces(dict(self.env))
        if self.stages:
            out["stages"] = [s.to_dict() for s in self.stages]
        out["elements"] = [
            {
                "id": e.id,
                "materials": escape_braces([dict(m) for m in e.materials]),
                "env": escape_braces(dict(e.env)),
                "steps": [escape_braces(s.to_dict()) for s in e.steps],
            }
            for e in self.elements
        ]
        return out


def double_braces(text: str) -> str:
    """Every `{` and `}` doubled: how a literal brace is written in a plan."""
    if "{" not in text and "}" not in text:
        return text
    return text.replace("{", "{{").replace("}", "}}")


def literal_text(text: str) -> str:
    """A literal string (no token) in resolved form: as it is, unless it reads like the token.

    A string whose text contains `{context_dir}` (from `{{context_dir}}` in the plan, or from a
    sweep value) is stored in template form, braces doubled, so the step runner leaves it literal.
    """
    return double_braces(text) if CONTEXT_DIR_TOKEN in text else text


def protect_literals(value: Any) -> Any:
    """`literal_text` on every string of a substituted value (a sweep value may be a list or mapping)."""
    if isinstance(value, str):
        return literal_text(value)
    if isinstance(value, list):
        return [protect_literals(v) for v in value]
    if isinstance(value, dict):
        return {k: protect_literals(v) for k, v in value.items()}
    return value


def escape_braces(value: Any) -> Any:
    """A resolved value written back as plan text, so a re-load gives the same value.

    Strings in template form (with the `{context_dir}` token) are plan text already; every other
    string has its braces doubled.
    """
    if isinstance(value, str):
        return value if CONTEXT_DIR_TOKEN in value else double_braces(value)
    if isinstance(value, list):
        return [escape_braces(v) for v in value]
    if isinstance(value, dict):
        return {k: escape_braces(v) for k, v in value.items()}
    return value
