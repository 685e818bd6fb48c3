"""Bad input: one clear line naming the problem, exit code 2, and nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MACE = str(Path(sys.executable).parent / "mace")


def run_mace(*argv: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([MACE, *argv], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


GOOD_STEP = {"name": "s", "command": ["true"]}


@pytest.mark.parametrize(
    "plan_text, needles",
    [
        ("{not json", ["malformed JSON", "line 1"]),
        (json.dumps({"name": "p", "elements": [{"id": "a", "steps": [GOOD_STEP]}], "colour": 1}), ["colour"]),
        (json.dumps({"name": "p", "elements": []}), ["elements"]),
        (json.dumps({"name": "p", "isolation_mode": "isolatd", "elements": [{"id": "a", "steps": [GOOD_STEP]}]}),
         ["isolation_mode", "isolated"]),
        (json.dumps({"name": "p", "elements": [{"id": "a", "steps": [{"name": "s", "command": "ls -l"}]}]}),
         ["elements[0].steps[0].command", "list of strings"]),
        (json.dumps({"name": "p", "elements": [{"id": "a", "steps": [{"name": "s", "command": ["no-such-prog-xyz"]}]}]}),
         ["elements[0].steps[0].command", "no-such-prog-xyz", "not found"]),
    ],
    ids=["malformed-json", "unknown-key", "no-elements", "bad-mode", "shell-string", "missing-program"],
)
def test_bad_plans(tmp_path, mace_env, plan_text, needles):
    plan = tmp_path / "plan.json"
    plan.write_text(plan_text)
    for argv in (["workflow", "--execute", str(plan)], ["submit", str(plan)]):
        proc = run_mace(*argv, cwd=tmp_path)
        assert_one_line_error(proc, *needles)
    assert tree(mace_env["scratch_root"]) == []
    assert not mace_env["shared_database"].exists()


def test_malformed_yaml(tmp_path, mace_env):
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: p\nelements: [unclosed\n")
    assert_one_line_error(run_mace("submit", str(plan), cwd=tmp_path), "plan.yaml", "YAML")


def test_missing_plan(tmp_path):
    assert_one_line_error(run_mace("workflow", "--execute", "nope.json", cwd=tmp_path), "nope.json", "no such file")


def test_unknown_isolation_mode_everywhere(tmp_path):
    assert_one_line_error(
        run_mace("config", "show", cwd=tmp_path, env={"MACE_ISOLATION_MODE": "isolatd"}),
        "MACE_ISOLATION_MODE", "shared | isolated",
    )
    proc = run_mace("workflow", "--isolation-mode", "isolatd", "--execute", "x.json", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / ".mace_config.json").write_text('{"isolation_mode": "isolatd"}')
    env = {"MACE_CONFIG": str(tmp_path / ".mace_config.json")}
    assert_one_line_error(run_mace("config", "show", cwd=tmp_path, env=env), ".mace_config.json", "isolation_mode")
    (tmp_path / ".mace_config.json").write_text('{"isolation_mode": ')
    assert_one_line_error(run_mace("config", "show", cwd=tmp_path, env=env), "malformed JSON")
    (tmp_path / ".mace_config.json").write_text('{"isolaton_mode": "shared"}')
    assert_one_line_error(run_mace("config", "show", cwd=tmp_path, env=env), "unknown key 'isolaton_mode'")


@pytest.mark.parametrize("bad_id", ["../x", "", "with space", "a" * 200, "/abs", ".hidden", "a/../../b"])
def test_invalid_workflow_ids_are_refused(bad_id, mace_env):
    from mace_hpc.errors import InputError
    from mace_hpc.workflow.context import WorkflowContext

    with pytest.raises(InputError, match="invalid workflow id"):
        WorkflowContext(bad_id, isolation_mode="isolated")
    assert tree(mace_env["scratch_root"]) == []


def test_invalid_workflow_id_from_environment(tmp_path, mace_env):
    code = "from mace_hpc.workflow.context import WorkflowContext as W; W()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "MACE_WORKFLOW_ID": "../../etc"})
    assert proc.returncode != 0 and "invalid workflow id '../../etc'" in proc.stderr


def test_config_show_explain_json(tmp_path):
    proc = run_mace("config", "show", "--explain", "--json", cwd=tmp_path, env={"MACE_ISOLATION_MODE": "isolated"})
    data = json.loads(proc.stdout)
    assert data["isolation_mode"] == {"value": "isolated", "source": "environment MACE_ISOLATION_MODE"}
    assert data["auto_cleanup"] == {"value": False, "source": "default"}


def test_help_everywhere(tmp_path):
    for argv in (["--help"], ["workflow", "--help"], ["submit", "--help"], ["contexts", "--help"],
                 ["contexts", "list", "--help"], ["config", "show", "--help"], ["run-element", "--help"]):
        proc = run_mace(*argv, cwd=tmp_path)
        assert proc.returncode == 0 and "usage:" in proc.stdout, argv


def test_contexts_cleanup_is_the_safe_cleanup(tmp_path, mace_env):
    """`mace contexts cleanup` keeps unmerged work and prunes dead processes' registry entries."""
    code = (
        "import os\nfrom mace_hpc.workflow.context import WorkflowContext\n"
        "ctx = WorkflowContext('unmerged', isolation_mode='isolated').activate()\n"
        "ctx.get_database().create_material(material_id='keepme', formula='Al')\nos._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    proc = run_mace("contexts", "cleanup", "--older-than", "0s", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pruned 1 stale registry entry" in proc.stdout
    assert (mace_env["scratch_root"] / "unmerged" / "materials.db").is_file()
    assert list((mace_env["scratch_root"] / ".registry").glob("*.json")) == []


def test_json_output_is_one_line_per_key_and_per_list_item(capsys):
    """`--json` pretty output: the same data as json.dumps, keys sorted, one line per top-level key
    and per item of a list under one (10,000 status rows stay greppable and C-encoded)."""
    from mace_hpc.cli.output import print_json

    data = {"summary": {"MERGED": 2, "FAILED": 1}, "elements": [{"index": 1, "state": "FAILED"}, {"index": 0}],
            "total": 3, "jobs": [], "path": Path("/p")}
    print_json(data)
    text = capsys.readouterr().out
    assert json.loads(text) == json.loads(json.dumps(data, default=str))
    assert text.splitlines() == [
        "{", '  "elements": [', '    {"index": 1, "state": "FAILED"},', '    {"index": 0}', "  ],",
        '  "jobs": [],', '  "path": "/p",', '  "summary": {"FAILED": 1, "MERGED": 2},', '  "total": 3', "}"]
    print_json(data, compact=True)
    assert capsys.readouterr().out.count("\n") == 1
