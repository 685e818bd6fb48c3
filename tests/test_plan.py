"""Plan format v1: loading, validation (errors name the field path), sweep expansion, round trips."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mace_hpc.errors import EXIT_INPUT, PlanError
from mace_hpc.plan import Plan, Step, load_plan, load_plan_data, plan_from_any
from mace_hpc.plan.sweep import resolve_context_dir
from mace_hpc.plan.validate import validate_element_record, validate_step

PLAN_DIR = Path("/data/plans/al")


def step(**kw: Any) -> dict[str, Any]:
    return {"name": "run", "command": ["echo", "hi"], **kw}


def element(eid: str = "a", **kw: Any) -> dict[str, Any]:
    return {"id": eid, "steps": [step()], **kw}


def plan(**kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "p"}
    if "sweep" not in kw and "elements" not in kw:
        data["elements"] = [element()]
    data.update(kw)
    return data


EOS_SWEEP = {
    "parameters": {"a0": [3.9, 4.0, 4.1, 4.2]},
    "id": "a{a0}",
    "template": {
        "materials": [{"material_id": "Al-fcc", "formula": "Al", "space_group": 225}],
        "env": {"OMP_NUM_THREADS": 1, "A0": "{a0}"},
        "steps": [
            {
                "name": "energy",
                "function": "examples.al_eos.eos:energy_point",
                "kwargs": {"a0": "{a0}", "label": "a0={a0} in {workflow_id}", "index": "{index}"},
                "material_id": "Al-fcc",
                "timeout": 600,
            }
        ],
    },
}


def load(data: dict[str, Any]) -> Plan:
    return load_plan_data(data, plan_dir=PLAN_DIR)


# ------------------------------------------------------------------------------------- valid plans
def test_explicit_elements_are_validated_and_numbered() -> None:
    p = load(
        {
            "name": "crystal-run",
            "description": "two materials\nsecond line",
            "isolation_mode": "isolated",
            "on_complete": "merge+archive",
            "on_failure": "archive",
            "shared_database": "db/materials.db",
            "max_parallel": 8,
            "env": {"OMP_NUM_THREADS": 4, "SCRATCH_HINT": "fast"},
            "resources": {
                "partition": "short",
                "time": "01:30:00",
                "cpus": 4,
                "mem": "8G",
                "setup": ["module load crystal"],
            },
            "elements": [
                {
                    "id": "MgO",
                    "materials": [
                        {"material_id": "mgo", "formula": "MgO", "space_group": 225, "dimensionality": "CRYSTAL"}
                    ],
                    "env": {"OMP_NUM_THREADS": "2"},
                    "steps": [
                        {
                            "name": "opt",
                            "command": ["crystal", "{plan_dir}/mgo.d12", "{context_dir}/out"],
                            "material_id": "mgo",
                        },
                        {
                            "name": "sp",
                            "calc_type": "SP",
                            "function": "pkg.mod:run",
                            "kwargs": {"n": 2, "i": "{index}"},
                        },
                    ],
                },
                {"id": "Al2O3", "steps": [{"name": "opt", "command": ["crystal", "{workflow_id}"]}]},
            ],
        }
    )
    assert p.name == "crystal-run"
    assert p.description == "two materials\nsecond line"
    assert (p.isolation_mode, p.on_complete, p.on_failure, p.max_parallel) == (
        "isolated",
        "merge+archive",
        "archive",
        8,
    )
    assert p.shared_database == "/data/plans/al/db/materials.db"
    assert p.resources == {
        "partition": "short",
        "time": 90,
        "cpus": 4,
        "mem": "8G",
        "setup": ["module load crystal"],
    }
    assert p.env == {"OMP_NUM_THREADS": "4", "SCRATCH_HINT": "fast"}
    assert p.plan_dir == PLAN_DIR and p.source is None
    assert p.workflow_ids() == ["crystal-run-MgO", "crystal-run-Al2O3"]
    mgo, al = p.elements
    assert (mgo.index, mgo.id, al.index) == (0, "MgO", 1)
    assert mgo.env == {"OMP_NUM_THREADS": "2", "SCRATCH_HINT": "fast"}  # element overrides plan
    assert al.env == {"OMP_NUM_THREADS": "4", "SCRATCH_HINT": "fast"}
    assert mgo.materials == [
        {"material_id": "mgo", "formula": "MgO", "space_group": 225, "dimensionality": "CRYSTAL"}
    ]
    opt, sp = mgo.steps
    assert opt == Step(
        "opt", "opt", "mgo", ["crystal", "/data/plans/al/mgo.d12", "{context_dir}/out"], None, {}, None
    )
    assert sp == Step("sp", "SP", None, None, "pkg.mod:run", {"n": 2, "i": 0}, None)
    assert al.steps[0].command == ["crystal", "crystal-run-Al2O3"]
    assert p.element_by_workflow_id("crystal-run-Al2O3") is al
    assert len(p) == 2


def test_unset_options_are_none_so_config_decides() -> None:
    p = load(plan())
    assert (p.isolation_mode, p.on_complete, p.on_failure, p.max_parallel, p.shared_database) == (None,) * 5
    assert p.resources == {} and p.env == {} and p.description is None


def test_explicit_null_means_unset() -> None:
    p = load(
        plan(
            isolation_mode=None,
            max_parallel=None,
            elements=[element(steps=[step(function=None, timeout=None)])],
        )
    )
    assert p.isolation_mode is None and p.elements[0].steps[0].timeout is None


def test_absolute_and_home_shared_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/alice")
    assert load(plan(shared_database="/abs/m.db")).shared_database == "/abs/m.db"
    assert load(plan(shared_database="~/m.db")).shared_database == "/home/alice/m.db"


def test_sweep_expands_in_parameter_order_with_typed_placeholders() -> None:
    p = load(
        {
            "name": "al-eos",
            "sweep": {
                "parameters": {"a0": [3.9, 4.0], "x": [1, 2, 3]},
                "id": "a{a0}-x{x}",
                "template": {
                    "env": {"A0": "{a0}", "X": "{x}"},
                    "steps": [
                        {
                            "name": "e",
                            "function": "m:f",
                            "kwargs": {
                                "a0": "{a0}",
                                "x": "{x}",
                                "text": "a0={a0}, x={x}",
                                "index": "{index}",
                                "wid": "{workflow_id}",
                                "dir": "{plan_dir}",
                                "later": "{context_dir}/r.json",
                                "braces": "{{a0}} {{",
                                "nested": [{"v": "{a0}"}, "{x}"],
                            },
                        },
                        {"name": "c", "command": ["prog", "--a0", "{a0}", "--x={x}"]},
                    ],
                },
            },
        }
    )
    assert [e.id for e in p.elements] == ["a3.9-x1", "a3.9-x2", "a3.9-x3", "a4.0-x1", "a4.0-x2", "a4.0-x3"]
    assert [e.index for e in p.elements] == list(range(6))
    e = p.elements[4]
    assert e.workflow_id == "al-eos-a4.0-x2"
    assert e.env == {"A0": "4.0", "X": "2"}
    kwargs = e.steps[0].kwargs
    assert kwargs["a0"] == 4.0 and isinstance(kwargs["a0"], float)
    assert kwargs["x"] == 2 and isinstance(kwargs["x"], int)
    assert kwargs["text"] == "a0=4.0, x=2"
    assert kwargs["index"] == 4
    assert kwargs["wid"] == "al-eos-a4.0-x2"
    assert kwargs["dir"] == "/data/plans/al"
    assert kwargs["later"] == "{context_dir}/r.json"
    assert kwargs["braces"] == "{a0} {"
    assert kwargs["nested"] == [{"v": 4.0}, 2]
    assert e.steps[1].command == ["prog", "--a0", "4.0", "--x=2"]  # numbers in an argv become text


def test_template_containers_are_not_shared_between_elements() -> None:
    p = load(
        plan(
            elements=None,
            sweep={"parameters": {"k": [1, 2]}, "template": {"steps": [step(command=["a", "b"])]}},
        )
    )
    first, second = p.elements
    assert first.steps[0].command == second.steps[0].command
    assert first.steps[0].command is not second.steps[0].command


def test_default_sweep_ids_are_zero_padded_to_the_count() -> None:
    p = load(
        plan(elements=None, sweep={"parameters": {"k": list(range(10))}, "template": {"steps": [step()]}})
    )
    assert [e.id for e in p.elements][:3] == ["e00", "e01", "e02"]
    assert p.elements[-1].id == "e09"
    p = load(plan(elements=None, sweep={"parameters": {"k": [1, 2, 3]}, "template": {"steps": [step()]}}))
    assert [e.id for e in p.elements] == ["e0", "e1", "e2"]


def test_elements_and_sweep_together_share_one_index_space() -> None:
    p = load(
        {
            "name": "mix",
            "env": {"BASE": "1"},
            "elements": [element("ref")],
            "sweep": {
                "parameters": {"k": ["x", "y"]},
                "id": "k{k}-{index}",
                "template": {"steps": [step(command=["run", "{index}", "{k}"])]},
            },
        }
    )
    assert [(e.index, e.id) for e in p.elements] == [(0, "ref"), (1, "kx-1"), (2, "ky-2")]
    assert p.elements[2].steps[0].command == ["run", "2", "y"]
    assert all(e.env == {"BASE": "1"} for e in p.elements)


def test_eos_example_sweep() -> None:
    p = load({"name": "al-eos", "sweep": EOS_SWEEP})
    assert p.workflow_ids() == ["al-eos-a3.9", "al-eos-a4.0", "al-eos-a4.1", "al-eos-a4.2"]
    s = p.elements[2].steps[0]
    assert (s.function, s.material_id, s.timeout) == ("examples.al_eos.eos:energy_point", "Al-fcc", 600.0)
    assert s.kwargs == {"a0": 4.1, "label": "a0=4.1 in al-eos-a4.1", "index": 2}


@pytest.mark.parametrize(
    ("value", "minutes"),
    [
        (90, 90),
        ("90", 90),
        ("01:30:00", 90),
        ("30:00", 30),
        ("0:30", 1),
        ("1-02:00:00", 1560),
        ("00:01:01", 2),
    ],
)
def test_resource_time_in_minutes(value: Any, minutes: int) -> None:
    assert load(plan(resources={"time": value})).resources["time"] == minutes


def test_resources_are_converted_like_scheduler_config() -> None:
    r = load(
        plan(
            resources={
                "mem": 2000,
                "setup": "module load x",
                "requeue": True,
                "signal_margin": 60,
                "gres": "gpu:a100:1",
                "qos": None,
            }
        )
    ).resources
    assert r == {
        "mem": "2000",
        "setup": ["module load x"],
        "requeue": True,
        "signal_margin": 60,
        "gres": "gpu:a100:1",
    }


# -------------------------------------------------------------------------------------- files
def test_load_json_file(tmp_path: Path) -> None:
    f = tmp_path / "plan.json"
    f.write_text(
        json.dumps(
            {
                "name": "j",
                "shared_database": "m.db",
                "elements": [element(steps=[step(command=["x", "{plan_dir}"])])],
            }
        )
    )
    p = load_plan(f)
    assert p.source == f.resolve() and p.plan_dir == tmp_path.resolve()
    assert p.shared_database == str(tmp_path.resolve() / "m.db")
    assert p.elements[0].steps[0].command == ["x", str(tmp_path.resolve())]


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_load_yaml_file(tmp_path: Path, suffix: str) -> None:
    f = tmp_path / f"plan{suffix}"
    f.write_text(
        "name: y\n"
        "max_parallel: 2\n"
        "sweep:\n"
        "  parameters:\n"
        "    a0: [3.9, 4.0]\n"
        "  id: a{a0}\n"
        "  template:\n"
        "    steps:\n"
        "      - name: e\n"
        "        function: m:f\n"
        "        kwargs: {a0: '{a0}'}\n"
    )
    p = load_plan(str(f))
    assert p.max_parallel == 2
    assert [e.steps[0].kwargs["a0"] for e in p.elements] == [3.9, 4.0]


def test_plan_from_any(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps(plan()))
    p = plan_from_any(f)
    assert plan_from_any(p) is p
    assert plan_from_any(str(f)).workflow_ids() == ["p-a"]
    assert plan_from_any(plan()).workflow_ids() == ["p-a"]
    with pytest.raises(TypeError):
        plan_from_any(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- round trips
def test_plan_to_dict_round_trips_through_load_plan_data() -> None:
    data = {
        "name": "rt",
        "description": "d",
        "isolation_mode": "shared",
        "on_complete": "keep",
        "on_failure": "keep",
        "shared_database": "/x/m.db",
        "resources": {"time": "2:00:00", "account": "chem"},
        "max_parallel": 3,
        "env": {"A": "1"},
        "elements": [
            element("ref", materials=[{"material_id": "m", "formula": "Al", "metadata": {"src": "x{{y}}"}}])
        ],
        "sweep": {
            "parameters": {"a0": [3.9, 4.0]},
            "id": "a{a0}",
            "template": {
                "steps": [
                    {"name": "e", "function": "m:f", "kwargs": {"a0": "{a0}", "s": "{{lit}} {context_dir}"}}
                ]
            },
        },
    }
    p = load(data)
    out = p.to_dict()
    assert json.loads(json.dumps(out)) == out
    assert "sweep" not in out and out["version"] == 1
    again = load(copy.deepcopy(out))
    assert again == p
    kwargs = again.elements[2].steps[0].kwargs
    assert kwargs["s"] == "{{lit}} {context_dir}"  # template form: it holds the token
    assert resolve_context_dir(kwargs, "/c")["s"] == "{lit} /c"
    assert again.elements[0].materials[0]["metadata"] == {"src": "x{y}"}


def test_element_and_step_round_trip() -> None:
    e = load({"name": "al-eos", "sweep": EOS_SWEEP}).elements[1]
    d = e.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["workflow_id"] == "al-eos-a4.0" and d["index"] == 1
    assert validate_element_record(d) == e
    s = e.steps[0]
    assert validate_step(s.to_dict(), "step") == s
    cmd = Step("c", "c", None, ["a", "b"], None, {}, 5.0)
    assert cmd.to_dict() == {"name": "c", "calc_type": "c", "command": ["a", "b"], "timeout": 5.0}
    assert validate_step(cmd.to_dict(), "step") == cmd


def test_element_from_dict_revalidates() -> None:
    d = load(plan()).elements[0].to_dict()
    d["env"] = {"LD_PRELOAD": "/evil.so"}
    with pytest.raises(PlanError, match=r"^element\.env\.LD_PRELOAD: refused"):
        validate_element_record(d)
    d = load(plan()).elements[0].to_dict()
    d["workflow_id"] = "../escape"
    with pytest.raises(PlanError, match=r"^element\.workflow_id: "):
        validate_element_record(d)


def test_resolve_context_dir() -> None:
    step_dict = (
        load(plan(elements=[element(steps=[step(command=["x", "{context_dir}/in", "-o={context_dir}"])])]))
        .elements[0]
        .steps[0]
        .to_dict()
    )
    assert resolve_context_dir(step_dict, "/scratch/p-a")["command"] == [
        "x",
        "/scratch/p-a/in",
        "-o=/scratch/p-a",
    ]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab{}x_ ."), max_size=12))
def test_literal_strings_survive_to_dict_round_trip(text: str) -> None:
    escaped = text.replace("{", "{{").replace("}", "}}")
    p = load(
        plan(
            elements=[
                element(steps=[step(function="m:f", command=None, kwargs={"s": escaped})], env={"V": escaped})
            ]
        )
    )
    assert p.elements[0].steps[0].kwargs["s"] == text
    assert p.elements[0].env["V"] == text
    assert load(p.to_dict()) == p


# --------------------------------------------------------------------------------------- errors
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("no elements", {"name": "p"}, "elements: the plan has no elements"),
    ("empty elements", plan(elements=[]), "elements: the plan has no elements"),
    ("name missing", {"elements": [element()]}, "name: is required"),
    ("bad name", plan(name="my plan"), "name: invalid workflow id 'my plan'"),
    (
        "duplicate ids",
        plan(elements=[element("x"), element("y"), element("x")]),
        "elements[2].id: duplicate element id 'x' in elements[2] and elements[0]",
    ),
    (
        "case collision",
        plan(elements=[element("Al"), element("aL")]),
        "elements[1].id: element id 'aL' in elements[1] collides with 'Al' in elements[0] on a case-insensitive filesystem",
    ),
    (
        "sweep vs element id",
        plan(elements=[element("e1")], sweep={"parameters": {"k": [1, 2]}, "template": {"steps": [step()]}}),
        "sweep.id: duplicate element id 'e1' in sweep element 1 and elements[0]",
    ),
    (
        "sweep id collision",
        plan(
            elements=None,
            sweep={"parameters": {"a": [1, 2], "b": [3]}, "id": "b{b}", "template": {"steps": [step()]}},
        ),
        "sweep.id: duplicate element id 'b3' in sweep element 1 and sweep element 0; put every parameter in sweep.id",
    ),
    ("zero max_parallel", plan(max_parallel=0), "max_parallel: must be a positive integer, got 0"),
    ("negative max_parallel", plan(max_parallel=-3), "max_parallel: must be a positive integer, got -3"),
    ("float max_parallel", plan(max_parallel=2.5), "max_parallel: must be a positive integer"),
    ("bool max_parallel", plan(max_parallel=True), "max_parallel: must be a positive integer"),
    (
        "command string",
        plan(elements=[element(), element("b", steps=[step(), step(name="s2", command="ls -l")])]),
        "elements[1].steps[1].command: must be a list of strings (an argv), not a shell string",
    ),
    (
        "command empty",
        plan(elements=[element(steps=[step(command=[])])]),
        "elements[0].steps[0].command: must be a non-empty list of strings",
    ),
    (
        "command item",
        plan(elements=[element(steps=[step(command=["a", None])])]),
        "elements[0].steps[0].command[1]: must be a string",
    ),
    (
        "command and function",
        plan(elements=[element(steps=[step(function="m:f")])]),
        "elements[0].steps[0]: needs exactly one of command",
    ),
    (
        "neither",
        plan(elements=[element(steps=[{"name": "s"}])]),
        "elements[0].steps[0]: needs exactly one of command",
    ),
    (
        "bad function",
        plan(elements=[element(steps=[{"name": "s", "function": "os.system"}])]),
        "elements[0].steps[0].function: must be 'module:callable'",
    ),
    (
        "kwargs with command",
        plan(elements=[element(steps=[step(kwargs={"a": 1})])]),
        "elements[0].steps[0].kwargs: only allowed with function",
    ),
    (
        "bad kwarg name",
        plan(elements=[element(steps=[{"name": "s", "function": "m:f", "kwargs": {"not valid": 1}}])]),
        "elements[0].steps[0].kwargs.not valid: must be a Python identifier",
    ),
    (
        "timeout",
        plan(elements=[element(steps=[step(timeout=0)])]),
        "elements[0].steps[0].timeout: must be a positive number",
    ),
    (
        "timeout string",
        plan(elements=[element(steps=[step(timeout="1h")])]),
        "elements[0].steps[0].timeout: must be a positive number",
    ),
    ("no steps", plan(elements=[{"id": "a"}]), "elements[0].steps: is required"),
    (
        "empty steps",
        plan(elements=[element(steps=[])]),
        "elements[0].steps: must be a non-empty list of steps",
    ),
    (
        "duplicate step",
        plan(elements=[element(steps=[step(), step(name="RUN")])]),
        "elements[0].steps[1].name: 'RUN' is already used by elements[0].steps[0]",
    ),
    (
        "step name path",
        plan(elements=[element(steps=[step(name="../x")])]),
        "elements[0].steps[0].name: '../x' is not usable as a directory name",
    ),
    (
        "unknown material",
        plan(elements=[element(steps=[step(material_id="zz")])]),
        "elements[0].steps[0].material_id: 'zz' is not one of the element's materials",
    ),
    (
        "material no formula",
        plan(elements=[element(materials=[{"material_id": "m"}])]),
        "elements[0].materials[0].formula: is required",
    ),
    (
        "space group range",
        plan(elements=[element(materials=[{"material_id": "m", "formula": "Al", "space_group": 231}])]),
        "elements[0].materials[0].space_group: must be the space group number 1-230",
    ),
    ("unknown top key", plan(max_paralel=2), "max_paralel: unknown key; did you mean 'max_parallel'?"),
    (
        "unknown element key",
        plan(elements=[{"id": "a", "stesp": []}]),
        "elements[0].stesp: unknown key; did you mean 'steps'?",
    ),
    (
        "unknown step key",
        plan(elements=[element(steps=[step(comand=["x"])])]),
        "elements[0].steps[0].comand: unknown key; did you mean 'command'?",
    ),
    (
        "unknown key no match",
        plan(elements=[element(steps=[step(zzz=1)])]),
        "elements[0].steps[0].zzz: unknown key; allowed: name, calc_type",
    ),
    (
        "unknown resource",
        plan(resources={"partiton": "x"}),
        "resources.partiton: unknown key; did you mean 'partition'?",
    ),
    ("env LD_PRELOAD", plan(env={"LD_PRELOAD": "/x.so"}), "env.LD_PRELOAD: refused: LD_* variables"),
    ("env lower", plan(env={"lower": "x"}), "env.lower: invalid env name"),
    (
        "env SLURM_X",
        plan(elements=[element(env={"SLURM_X": "1"})]),
        "elements[0].env.SLURM_X: refused: SLURM_* variables",
    ),
    (
        "env MACE_X",
        plan(env={"MACE_WORKFLOW_ID": "x"}),
        "env.MACE_WORKFLOW_ID: refused: MACE_* variables are set by mace-hpc",
    ),
    ("env PYTHONPATH", plan(env={"PYTHONPATH": "/x"}), "env.PYTHONPATH: refused: PYTHON*"),
    ("env BASH_ENV", plan(env={"BASH_ENV": "/x"}), "env.BASH_ENV: refused"),
    ("env PATH", plan(env={"PATH": "/x"}), "env.PATH: refused"),
    ("env newline", plan(env={"A": "x\ny"}), "env.A: must not contain a newline"),
    ("env NUL", plan(env={"A": "x\0y"}), "env.A: must not contain a NUL character"),
    ("env bool", plan(env={"A": True}), "env.A: must be a string or a number"),
    ("env not mapping", plan(env=["A=1"]), "env: must be a mapping"),
    (
        "workflow id too long",
        plan(name="p" * 100, elements=[element("e" * 28)]),
        "elements[0].id: workflow id 'ppp",
    ),
    ("bad element id", plan(elements=[element("a/b")]), "elements[0].id: invalid workflow id 'p-a/b'"),
    ("numeric element id", plan(elements=[element(7)]), "elements[0].id: must be a string, got the number 7"),
    (
        "bad isolation",
        plan(isolation_mode="isolate"),
        "isolation_mode: must be one of shared | isolated, got 'isolate'; did you mean 'isolated'?",
    ),
    (
        "bad on_complete",
        plan(on_complete="delete"),
        "on_complete: must be one of merge | archive | merge+archive | keep",
    ),
    ("bad on_failure", plan(on_failure="merge"), "on_failure: must be one of keep | archive"),
    ("bad time", plan(resources={"time": "1:2:3:4"}), "resources.time: must be minutes or 'HH:MM:SS'"),
    (
        "bad time minutes",
        plan(resources={"time": "1:75:00"}),
        "resources.time: minutes and seconds must be below 60",
    ),
    ("zero time", plan(resources={"time": 0}), "resources.time: must be a positive integer"),
    (
        "partition injection",
        plan(resources={"partition": "x\n#SBATCH --uid=0"}),
        "resources.partition: must be a single line",
    ),
    ("partition chars", plan(resources={"partition": "a b"}), "resources.partition: 'a b' has characters"),
    ("bad mem", plan(resources={"mem": "lots"}), "resources.mem: must be a size"),
    ("bad requeue", plan(resources={"requeue": "yes"}), "resources.requeue: must be true or false"),
    ("setup newline", plan(resources={"setup": ["a", "b\nc"]}), "resources.setup[1]: must be a single line"),
    ("version", plan(version=2), "version: this mace-hpc reads plan format 1"),
    ("elements not list", plan(elements={"a": 1}), "elements: must be a list of elements"),
    ("element not mapping", plan(elements=["a"]), "elements[0]: must be a mapping"),
    (
        "sweep empty values",
        plan(elements=None, sweep={"parameters": {"a0": []}, "template": {"steps": [step()]}}),
        "sweep.parameters.a0: must be a non-empty list",
    ),
    (
        "sweep scalar values",
        plan(elements=None, sweep={"parameters": {"a0": 3.9}, "template": {"steps": [step()]}}),
        "sweep.parameters.a0: must be a non-empty list, not a number",
    ),
    (
        "sweep no parameters",
        plan(elements=None, sweep={"template": {"steps": [step()]}}),
        "sweep.parameters: is required",
    ),
    (
        "sweep reserved param",
        plan(elements=None, sweep={"parameters": {"index": [1]}, "template": {"steps": [step()]}}),
        "sweep.parameters.index: 'index' is a built-in placeholder",
    ),
    (
        "sweep bad param name",
        plan(elements=None, sweep={"parameters": {"a-0": [1]}, "template": {"steps": [step()]}}),
        "sweep.parameters.a-0: parameter names must be identifiers",
    ),
    (
        "sweep no template",
        plan(elements=None, sweep={"parameters": {"a": [1]}}),
        "sweep.template: is required",
    ),
    (
        "sweep template id",
        plan(elements=None, sweep={"parameters": {"a": [1]}, "template": {"id": "x", "steps": [step()]}}),
        "sweep.template.id: not allowed in the template; set sweep.id",
    ),
    (
        "sweep unknown key",
        plan(elements=None, sweep={"parameter": {"a": [1]}, "template": {"steps": [step()]}}),
        "sweep.parameter: unknown key; did you mean 'parameters'?",
    ),
    (
        "unknown placeholder",
        plan(
            elements=None,
            sweep={"parameters": {"a0": [1]}, "template": {"steps": [step(command=["x", "--a={a00}"])]}},
        ),
        "sweep.template.steps[0].command[1]: unknown placeholder {a00}",
    ),
    (
        "unknown placeholder in kwargs",
        plan(
            elements=None,
            sweep={
                "parameters": {"a0": [1]},
                "template": {"steps": [{"name": "s", "function": "m:f", "kwargs": {"k": "{nope}"}}]},
            },
        ),
        "sweep.template.steps[0].kwargs.k: unknown placeholder {nope}",
    ),
    (
        "sweep param in explicit element",
        plan(elements=[element(env={"A": "{a0}"})]),
        "elements[0].env.A: unknown placeholder {a0}",
    ),
    (
        "unbalanced brace",
        plan(elements=[element(steps=[step(command=["awk", "{print}"])])]),
        "elements[0].steps[0].command[1]: unknown placeholder {print}",
    ),
    (
        "sweep id placeholder",
        plan(
            elements=None,
            sweep={"parameters": {"a0": [1]}, "id": "{workflow_id}", "template": {"steps": [step()]}},
        ),
        "sweep.id: unknown placeholder {workflow_id}",
    ),
    (
        "sweep rendered id invalid",
        plan(
            elements=None,
            sweep={"parameters": {"a0": ["x y"]}, "id": "a{a0}", "template": {"steps": [step()]}},
        ),
        "sweep.id: invalid workflow id 'p-ax y'",
    ),
    (
        "sweep value breaks element",
        plan(
            elements=None, sweep={"parameters": {"t": [5, -1]}, "template": {"steps": [step(timeout="{t}")]}}
        ),
        "sweep.template.steps[0].timeout: must be a positive number, got -1 (sweep element 1: t=-1)",
    ),
    ("top level not mapping", [element()], "plan: must be a mapping"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("data", "message"), [(d, m) for _, d, m in BAD], ids=[i for i, _, _ in BAD])
def test_bad_plans_name_the_field(data: Any, message: str) -> None:
    with pytest.raises(PlanError) as info:
        load(data)
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text
    assert info.value.exit_code == EXIT_INPUT


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PlanError, match=r"^plan\.json: no such file$"):
        load_plan("plan.json")


def test_directory_is_not_a_plan(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="is a directory"):
        load_plan(tmp_path)


def test_malformed_json_names_line_and_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("plan.json").write_text('{\n  "name": "p",\n    "elements": [,]\n}\n')
    with pytest.raises(PlanError, match=r"^plan\.json: malformed JSON at line 3 column 18: Expecting value$"):
        load_plan("plan.json")


def test_duplicate_json_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("plan.json").write_text('{"name": "p", "name": "q"}')
    with pytest.raises(PlanError, match=r"^plan\.json: malformed JSON: duplicate key 'name'$"):
        load_plan("plan.json")


def test_malformed_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("plan.yaml").write_text("name: p\nelements: [\n  - id: a\n")
    with pytest.raises(PlanError, match=r"^plan\.yaml: malformed YAML: .+ at line \d+ column \d+$"):
        load_plan("plan.yaml")


def test_yaml_is_safe_loaded(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(PlanError, match=r"malformed YAML"):
        load_plan(f)


def test_file_that_is_not_a_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("plan.json").write_text("[1, 2]")
    with pytest.raises(PlanError, match=r"^plan\.json: must be a mapping"):
        load_plan("plan.json")


def test_unknown_key_in_a_yaml_file_names_the_path(tmp_path: Path) -> None:
    f = tmp_path / "p.yml"
    f.write_text("name: p\nelements:\n  - id: a\n    steps:\n      - name: s\n        command: x --y\n")
    with pytest.raises(
        PlanError,
        match=r"^elements\[0\]\.steps\[0\]\.command: must be a list of strings \(an argv\), not a shell string$",
    ):
        load_plan(f)


def test_braces_that_are_not_placeholders_stay_literal() -> None:
    """Code in a command (`{k: v}`, `a}`, awk's `{ print }`) is not a placeholder."""
    cmd = ["python", "-c", "print({k: 1 for k in 'ab'})", "a}", "{ print $1 }", "{{index}}", "{index}"]
    p = load_plan_data(plan(elements=[element(steps=[step(command=cmd)])]))
    assert p.elements[0].steps[0].command == [
        "python", "-c", "print({k: 1 for k in 'ab'})", "a}", "{ print $1 }", "{index}", "0",
    ]


@pytest.mark.parametrize(
    ("material", "message"),
    [
        ({"space_group": "Fm-3m"}, "space_group: must be the space group number 1-230"),
        ({"space_group": True}, "space_group: must be the space group number 1-230"),
        ({"dimensionality": 3}, "dimensionality:"),
    ],
)
def test_material_fields_match_what_the_database_stores(material: dict, message: str) -> None:
    """A plan the database would refuse at run time is refused when it is loaded."""
    data = plan(elements=[element(materials=[{"material_id": "m", "formula": "Al", **material}])])
    with pytest.raises(PlanError, match=message):
        load(data)


# ------------------------------------------------------------------ placeholders: one rule everywhere
def _run_time(p: Plan, index: int = 0, context_dir: str = "/scratch/ctx") -> dict[str, Any]:
    """The element as the step runner sees it (after `{context_dir}` is filled in)."""
    return resolve_context_dir(p.elements[index].to_dict(), context_dir)


def test_escaped_context_dir_is_literal_at_run_time() -> None:
    """`{{context_dir}}` is the literal text `{context_dir}`, like `{{index}}` is `{index}`."""
    cmd = ["echo", "lit={{context_dir}}", "{{index}}", "real={context_dir}", "both {{x}} {context_dir}", "{{{{context_dir}}}}"]
    p = load(plan(elements=[element(steps=[step(command=cmd)])]))
    assert _run_time(p)["steps"][0]["command"] == [
        "echo", "lit={context_dir}", "{index}", "real=/scratch/ctx", "both {x} /scratch/ctx", "{{context_dir}}",
    ]


def test_substituted_values_are_never_substituted_again() -> None:
    """A sweep value `"{context_dir}"` stays literal, as a value `"{index}"` always did."""
    sweep = {
        "parameters": {"v": ["{context_dir}", "{index}", ["{context_dir}"], "a}{b"]},
        "template": {"steps": [{"name": "s", "function": "m:f",
                                "kwargs": {"whole": "{v}", "inside": "v={v}", "mixed": "{v} in {context_dir}"}}]},
    }
    p = load(plan(elements=None, sweep=sweep))
    seen = [_run_time(p, i)["steps"][0]["kwargs"] for i in range(4)]
    assert seen[0] == {"whole": "{context_dir}", "inside": "v={context_dir}", "mixed": "{context_dir} in /scratch/ctx"}
    assert seen[1] == {"whole": "{index}", "inside": "v={index}", "mixed": "{index} in /scratch/ctx"}
    assert seen[2]["whole"] == ["{context_dir}"]
    assert seen[3] == {"whole": "a}{b", "inside": "v=a}{b", "mixed": "a}{b in /scratch/ctx"}
    assert load(copy.deepcopy(p.to_dict())) == p  # the resolved plan round-trips with the same meaning


def test_plan_env_follows_the_element_rules() -> None:
    p = load(plan(env={"A": "{plan_dir}/x", "B": "{{context_dir}}", "C": "{context_dir}/y", "D": "{k: v}"}))
    env = _run_time(p)["env"]
    assert env == {"A": f"{PLAN_DIR}/x", "B": "{context_dir}", "C": "/scratch/ctx/y", "D": "{k: v}"}
    with pytest.raises(PlanError, match=r"^env\.A: unknown placeholder \{index\}"):
        load(plan(env={"A": "{index}"}))  # per-element values belong in the element's env
    assert load(copy.deepcopy(p.to_dict())) == p
