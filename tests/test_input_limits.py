"""Hostile or odd input (issue 13, items 9-14): bounded, refused in one line with exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mace_hpc.errors import InputError, PlanError
from mace_hpc.plan import load_plan_data


def _plan(**kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "p", "elements": [{"id": "a", "steps": [{"name": "s", "command": ["true"]}]}]}
    data.update(kw)
    return data


# ------------------------------------------------------------------ item 12: trailing newlines
@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_plan(name="p\n"), "name"),
        (_plan(env={"FOO\n": "1"}), "env"),
        (_plan(elements=[{"id": "a", "steps": [{"name": "s\n", "command": ["true"]}]}]), "steps[0].name"),
        (_plan(elements=[{"id": "a", "steps": [{"name": "s", "function": "m:f\n"}]}]), "function"),
        (_plan(resources={"partition": "short\n"}), "resources.partition"),
        (_plan(resources={"mem": "2G\n"}), "resources.mem"),
        (
            _plan(elements=None, sweep={"parameters": {"a\n": [1]}, "template": {"steps": [{"name": "s", "command": ["x"]}]}}),
            "sweep.parameters",
        ),
    ],
    ids=["name", "env-name", "step-name", "function", "partition", "mem", "sweep-parameter"],
)
def test_a_trailing_newline_is_refused_not_accepted(data: dict[str, Any], field: str) -> None:
    """`re.match(r"^...$")` accepts "abc\\n": every validator must use full-match semantics."""
    with pytest.raises(PlanError) as err:
        load_plan_data(data, plan_dir=Path("/data"))
    assert field in str(err.value)


def test_workflow_context_refuses_an_id_with_a_newline(tmp_path: Path) -> None:
    from mace_hpc.util.ids import validate_workflow_id
    from mace_hpc.workflow.context import WorkflowContext

    with pytest.raises(InputError, match="invalid workflow id"):
        validate_workflow_id("abc\n")
    with pytest.raises(InputError, match="invalid workflow id"):
        WorkflowContext("abc\n", scratch_root=tmp_path / "scratch")
    assert not (tmp_path / "scratch").exists()


def test_scheduler_ids_with_a_newline_are_refused() -> None:
    from mace_hpc.submission.backend import check_env, check_job_name
    from mace_hpc.submission.pbs.dialect import parse_job_id

    with pytest.raises(InputError, match="job name"):
        check_job_name("job\n")
    with pytest.raises(InputError, match="variable name"):
        check_env({"FOO\n": "1"})
    with pytest.raises(InputError, match="not a PBS job id"):
        parse_job_id("123.server\n\n x")
