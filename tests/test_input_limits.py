"""Hostile or odd input (issue 13, items 9-14): bounded, refused in one line with exit 2, never a traceback."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_cli import assert_one_line_error, run_mace

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
    from mace_hpc.schedulers.base import check_env, check_job_name
    from mace_hpc.schedulers.pbs.dialect import parse_job_id

    with pytest.raises(InputError, match="job name"):
        check_job_name("job\n")
    with pytest.raises(InputError, match="variable name"):
        check_env({"FOO\n": "1"})
    with pytest.raises(InputError, match="not a PBS job id"):
        parse_job_id("123.server\n\n x")


# ------------------------------------------------------------------ CLI helpers
def _write_plan(directory: Path, name: str = "p", **kw: Any) -> Path:
    data = {
        "name": name,
        "elements": [{"id": "a", "materials": [{"material_id": "m1", "formula": "Al"}],
                      "steps": [{"name": "s", "command": ["true"], "material_id": "m1"}]}],
        **kw,
    }
    path = directory / "plan.json"
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------ item 11: URIs built from paths
@pytest.mark.parametrize("odd", ["we#ird", "what?mode=rw", "pct%41", "all#?%"])
def test_paths_with_uri_characters_merge_export_and_report(tmp_path: Path, odd: str) -> None:
    """`#`, `?`, `%` in the scratch root and the shared database name are part of the name."""
    root = tmp_path / f"scratch-{odd}"
    shared = tmp_path / f"shared-{odd}.db"
    plan = _write_plan(tmp_path, shared_database=str(shared), isolation_mode="isolated")
    env = {"MACE_SCRATCH_ROOT": str(root)}
    before = set(os.listdir(tmp_path))
    proc = run_mace("submit", str(plan), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "1 MERGED" in proc.stdout
    conn = sqlite3.connect(shared)
    assert conn.execute("SELECT material_id FROM materials").fetchall() == [("m1",)]
    conn.close()
    out = tmp_path / "export.json"
    proc = run_mace("contexts", "export", "p-a", "--to", str(out), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [m["material_id"] for m in json.loads(out.read_text())["materials"]] == ["m1"]
    # nothing written under a truncated name (`scratch-we` for `scratch-we#ird`, ...)
    new = set(os.listdir(tmp_path)) - before
    assert new <= {root.name, shared.name, shared.name + ".lock", "export.json", "archives"}, new


def test_scratch_root_with_a_leading_double_slash_is_not_a_uri_host(tmp_path: Path) -> None:
    root = "/" + str(tmp_path / "scratch")  # //tmp/...: `file://tmp/...` would name the host "tmp"
    plan = _write_plan(tmp_path, isolation_mode="isolated", shared_database=str(tmp_path / "s.db"))
    proc = run_mace("submit", str(plan), cwd=tmp_path, env={"MACE_SCRATCH_ROOT": root})
    assert proc.returncode == 0, proc.stderr
    assert "1 MERGED" in proc.stdout and "QUARANTINED" not in proc.stdout
    assert not (tmp_path / "scratch" / ".quarantine").exists()


def test_sqlite_uri_quotes_and_normalises() -> None:
    from mace_hpc.database.journal import file_uri

    assert file_uri("//x/a#b?c%d.db", "ro") == "file:/x/a%23b%3Fc%25d.db?mode=ro"


# ------------------------------------------------------------------ item 10: unusable scratch roots, databases
def _scratch_roots(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return {
        "file": str(tmp_path / "a-file"),
        "under-a-file": str(tmp_path / "a-file" / "sub"),
        "dangling-symlink": str(tmp_path / "dangling"),
        "dev-null": "/dev/null",
        "proc": "/proc/1",
    }


@pytest.mark.parametrize("case", ["file", "under-a-file", "dangling-symlink", "dev-null", "proc"])
def test_unusable_scratch_root_is_one_line_everywhere(tmp_path: Path, case: str) -> None:
    root = _scratch_roots(tmp_path)[case]
    plan = _write_plan(tmp_path)
    env = {"MACE_SCRATCH_ROOT": root}
    for argv in (["submit", str(plan)], ["merge", "--all"], ["contexts", "list"], ["cleanup"], ["status"]):
        assert_one_line_error(run_mace(*argv, cwd=tmp_path, env=env), "scratch_root", "MACE_SCRATCH_ROOT")
    assert_one_line_error(run_mace("contexts", "--scratch-root", root, "list", cwd=tmp_path), "--scratch-root")


@pytest.mark.parametrize("case", ["directory", "text-file"])
def test_shared_database_that_is_not_a_database(tmp_path: Path, case: str) -> None:
    from mace_hpc.errors import ConfigError
    from mace_hpc.status.results import results_table

    db = tmp_path / "shared.db"
    if case == "directory":
        db.mkdir()
    else:
        db.write_text("these are my notes\n")
    plan = _write_plan(tmp_path)
    assert_one_line_error(run_mace("submit", str(plan), cwd=tmp_path, env={"MACE_SHARED_DATABASE": str(db)}), "shared_database")
    assert not (tmp_path / "scratch").exists()  # refused before anything ran
    with pytest.raises(ConfigError, match="shared_database"):
        results_table(db, ["m1"])


# ------------------------------------------------------------------ item 9: unbounded input
def _laughs_yaml(levels: int = 9) -> str:
    """~700 bytes of YAML whose aliases expand to 9**10 strings inside kwargs."""
    anchors = ["          x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    anchors += [f"          x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return ("name: p\nelements:\n  - id: a\n    steps:\n      - name: s\n        function: m:f\n        kwargs:\n"
            + "\n".join(anchors) + "\n")


def test_yaml_aliases_are_bounded_before_anything_is_built(tmp_path: Path) -> None:
    from mace_hpc.plan import load_plan

    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs_yaml())
    assert path.stat().st_size < 800
    with pytest.raises(PlanError, match=r"laughs\.yaml: aliases expand to [\d,]+ more values; the limit is 1,000,000"):
        load_plan(path)
    path.write_text(_laughs_yaml(levels=2))  # a few aliases (729 values) are fine: anchors are a YAML feature
    assert len(load_plan(path).elements[0].steps[0].kwargs["x2"]) == 9


def test_recursive_yaml_alias_is_refused(tmp_path: Path) -> None:
    from mace_hpc.plan import load_plan

    path = tmp_path / "cycle.yaml"
    path.write_text("name: p\nelements: &e\n  - id: a\n    steps: *e\n")
    with pytest.raises(PlanError, match="cycle.yaml: an alias refers to a value that contains it"):
        load_plan(path)


def test_a_sweep_too_large_to_build_is_refused_from_its_estimate() -> None:
    """1000 x 1000 elements with a 200-item templated list: ~3.7 GB, refused before expanding."""
    import time

    command = ["echo", *[f"{{a}}-{{b}}-{i}" for i in range(200)]]
    sweep = {"parameters": {"a": list(range(1000)), "b": list(range(1000))},
             "template": {"steps": [{"name": "s", "command": command}]}}
    t0 = time.perf_counter()
    with pytest.raises(PlanError, match=r"^sweep: expands to about [\d,]+ MiB of elements \(1,000,000 elements\); the limit is 256 MiB"):
        load_plan_data({"name": "p", "sweep": sweep})
    assert time.perf_counter() - t0 < 2.0  # nothing was built
    sweep["parameters"] = {"a": list(range(10)), "b": list(range(10))}
    assert len(load_plan_data({"name": "p", "sweep": sweep})) == 100


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "too-big"])
def test_plan_files_must_be_bounded_regular_files(tmp_path: Path, kind: str) -> None:
    from mace_hpc.util import inputs

    if kind == "fifo":
        path = tmp_path / "plan.json"
        os.mkfifo(path)  # opening it for reading would wait for a writer forever
        needle = "is a FIFO, not a regular file"
    elif kind == "dev-zero":
        path = Path("/dev/zero")  # would be read until memory runs out
        needle = "is a device, not a regular file"
    else:
        path = tmp_path / "plan.json"
        with open(path, "wb") as fh:
            fh.truncate(inputs.MAX_FILE_BYTES + 1)  # sparse: costs no disk
        needle = "bytes; the limit is 16 MiB"
    for argv in (["submit", str(path)], ["workflow", "--execute", str(path)]):
        assert_one_line_error(run_mace(*argv, cwd=tmp_path), str(path), needle)


# ------------------------------------------------------------------ item 10: deep nesting
def test_deeply_nested_plans_and_configs_are_one_line(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {}
    inner = kwargs
    for _ in range(500):
        inner["a"] = {}
        inner = inner["a"]
    data = _plan(elements=[{"id": "a", "steps": [{"name": "s", "function": "m:f", "kwargs": kwargs}]}])
    with pytest.raises(PlanError, match=r"^elements\[0\]\.steps\[0\]\.kwargs\.a…: nested deeper than 100 levels$"):
        load_plan_data(data)
    (tmp_path / "deep.json").write_text(json.dumps(data))
    assert_one_line_error(run_mace("submit", "deep.json", cwd=tmp_path), "nested deeper than 100 levels")
    (tmp_path / "deeper.json").write_text('{"name": "p", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert_one_line_error(run_mace("submit", "deeper.json", cwd=tmp_path), "deeper.json: nested deeper than 100 levels")
    (tmp_path / "deep.yaml").write_text("name: p\nx: " + "[" * 500 + "]" * 500 + "\n")
    assert_one_line_error(run_mace("submit", "deep.yaml", cwd=tmp_path), "deep.yaml: nested deeper than 100 levels at line 2")
    config = tmp_path / "config.json"
    config.write_text('{"scheduler": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert_one_line_error(run_mace("config", "show", cwd=tmp_path, env={"MACE_CONFIG": str(config)}), "config.json", "nested deeper")
    site = tmp_path / "deep-site.yaml"
    site.write_text("scheduler: " + "[" * 500 + "]" * 500 + "\n")
    assert_one_line_error(run_mace("config", "show", "--site", str(site), cwd=tmp_path), "deep-site.yaml", "nested deeper")


# ------------------------------------------------------------------ item 14: config and YAML keys
def test_mace_config_naming_no_file_is_an_error_not_ignored(tmp_path: Path) -> None:
    for named, what in ((str(tmp_path / "nonexistent.json"), "does not exist"), (str(tmp_path), "is not a file")):
        assert_one_line_error(run_mace("config", "show", cwd=tmp_path, env={"MACE_CONFIG": named}), "MACE_CONFIG", what)
    assert_one_line_error(run_mace("submit", str(_write_plan(tmp_path)), cwd=tmp_path,
                          env={"MACE_CONFIG": "/nonexistent"}), "MACE_CONFIG", "does not exist")
    assert not (tmp_path / "scratch").exists()


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("plan.yaml", "name: p\nelements: []\nname: q\n", "plan.yaml: malformed YAML: duplicate key 'name' at line 3"),
        ("plan.yaml", "name: p\nelements:\n  - id: a\n    steps: []\n    steps: [{name: s, command: [x]}]\n",
         "duplicate key 'steps' at line 5"),
        ("site.yaml", "scheduler:\n  partition: a\n  partition: b\n", "duplicate key 'partition'"),
        ("config.json", '{"max_parallel": 2, "max_parallel": 3}', "duplicate key 'max_parallel'"),
    ],
    ids=["plan-top", "plan-nested", "site-config", "json-config"],
)
def test_duplicate_keys_are_refused_in_yaml_and_json(tmp_path: Path, name: str, text: str, needle: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    if name.startswith("plan"):
        argv, env = ["submit", str(path)], {}
    elif name.startswith("site"):
        argv, env = ["config", "show", "--site", str(path)], {}
    else:
        argv, env = ["config", "show"], {"MACE_CONFIG": str(path)}
    assert_one_line_error(run_mace(*argv, cwd=tmp_path, env=env), needle)


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    from mace_hpc.plan import load_plan

    path = tmp_path / "plan.yaml"
    path.write_text("name: p\nelements:\n  - id: a\n    steps:\n      - &d {name: s, command: [echo, a]}\n"
                    "  - id: b\n    steps:\n      - <<: *d\n        command: [echo, b]\n")
    plan = load_plan(path)
    assert [e.steps[0].command for e in plan.elements] == [["echo", "a"], ["echo", "b"]]


# ------------------------------------------------------------------ item 14: resources.setup on the local backend
def test_local_backend_runs_resources_setup_like_a_job_script(tmp_path: Path) -> None:
    """`module load` / PATH changes in setup reach the steps locally, as they do on a cluster."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "only-after-setup"
    tool.write_text('#!/bin/sh\necho "$SETUP_MARK" > "$1"\n')
    tool.chmod(0o755)
    setup = [f'export PATH="{bin_dir}:$PATH"', "export SETUP_MARK=from-setup"]
    plan = _write_plan(
        tmp_path, isolation_mode="isolated", resources={"setup": setup},
        elements=[{"id": "a", "steps": [{"name": "s", "command": ["only-after-setup", "{context_dir}/mark"]}]}],
    )
    dry = run_mace("submit", "--dry-run", str(plan), cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    script = dry.stdout.splitlines()
    assert "# setup: bash runs these before each element, as a cluster job script does" in script
    assert setup[0] in script and setup[1] in script
    proc = run_mace("submit", str(plan), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    context = Path(os.environ["MACE_SCRATCH_ROOT"]) / "p-a"
    assert (context / "mark").read_text() == "from-setup\n"
