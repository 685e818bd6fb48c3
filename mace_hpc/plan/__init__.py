"""Plan format v1: load (JSON/YAML), validate (errors name the field), expand sweeps.

`load_plan("plan.json")` -> `Plan` whose `elements` are ready for submission; see docs/plan-format.md.

The names below load on first use (PEP 562): the element runner imports `plan.model` alone, and
importing this package must not pull in the loader, the validator and YAML with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..util.lazy import lazy_attributes

if TYPE_CHECKING:
    from .load import load_plan, load_plan_data, plan_from_any
    from .model import Element, Plan, Step

__all__ = ["load_plan", "load_plan_data", "plan_from_any", "Plan", "Element", "Step"]

_HOMES = {"load_plan": "load", "load_plan_data": "load", "plan_from_any": "load",
          "Plan": "model", "Element": "model", "Step": "model"}


__getattr__ = lazy_attributes(__name__, _HOMES, globals())
