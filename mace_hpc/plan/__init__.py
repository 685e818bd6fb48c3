"""Plan format v1: load (JSON/YAML), validate (errors name the field), expand sweeps.

`load_plan("plan.json")` -> `Plan` whose `elements` are ready for submission; see docs/plan-format.md.
"""

from .load import load_plan, load_plan_data, plan_from_any
from .model import Element, Plan, Step

__all__ = ["load_plan", "load_plan_data", "plan_from_any", "Plan", "Element", "Step"]
