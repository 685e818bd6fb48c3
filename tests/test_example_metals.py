"""examples/metals_chain (issue 9, item 7): its three stage functions run in order in one context
directory, as the stages framework runs them, for two metals; the values are physically sensible;
the analysis table; and the plan file names stages, functions and keyword arguments that exist.

Runs without the stages framework (ASE only, ~2 s)."""

from __future__ import annotations

import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from ase.data import atomic_numbers, reference_states
from ase.io import read

from examples.metals_chain import metals
from mace_hpc.status.report_data import analysis_lines

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "metals_chain"
STEPS = ("relax", "eos", "vacancy")


def _run_chain(metal: str, context: Path) -> dict[str, Any]:
    """The three steps of one element, each with cwd = <context>/calculations/<step> and the
    context passed as `{context_dir}`: the merged properties, as the database would hold them."""
    kwargs = {"relax": {"metal": metal}, "eos": {}, "vacancy": {}}
    merged: dict[str, Any] = {"material_id": f"{metal}_fcc", "metal": metal}
    cwd = Path.cwd()
    try:
        for step in STEPS:
            work = context / "calculations" / step
            work.mkdir(parents=True)
            os.chdir(work)
            out = getattr(metals, step)(context_dir=str(context), **kwargs[step])
            assert all(isinstance(v, (int, float, str)) for v in out.values()), out
            assert not any(work.iterdir()), f"{step} wrote into its work directory"
            merged.update(out)
    finally:
        os.chdir(cwd)
    return merged


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    out = {}
    for metal in ("Cu", "Al"):
        context = tmp_path_factory.mktemp(metal)
        out[metal] = (context, _run_chain(metal, context))
    return out


@pytest.mark.parametrize("metal", ["Cu", "Al"])
def test_stages_give_physically_sensible_values(chains: dict, metal: str) -> None:
    context, r = chains[metal]
    reference = reference_states[atomic_numbers[metal]]
    assert reference["symmetry"] == "fcc"
    assert abs(r["a0_relaxed_A"] - reference["a"]) / reference["a"] < 0.02, r
    # the equation of state, fitted around the relaxed volume, agrees with the relaxation
    assert r["a0_eos_A"] == pytest.approx(r["a0_relaxed_A"], rel=1e-3)
    assert r["V0_A3"] == pytest.approx(r["a0_relaxed_A"] ** 3 / 4, rel=3e-3)
    assert 30 < r["B_GPa"] < 300, r
    assert 0.3 < r["vacancy_formation_eV"] < 2.5, r
    # the hand-off file: the relaxed conventional cell, readable by the next stages
    relaxed = read(context / metals.RELAXED)
    assert len(relaxed) == 4 and relaxed.get_chemical_symbols() == [metal] * 4
    assert relaxed.cell.lengths() == pytest.approx([r["a0_relaxed_A"]] * 3)
    assert relaxed.cell.angles() == pytest.approx([90.0] * 3)
    assert sorted(p.name for p in context.iterdir()) == ["calculations", "relaxed.json"]


def test_emt_copper_matches_the_known_emt_values(chains: dict) -> None:
    """ASE's EMT copper: a0 3.590 Å, B 134 GPa (the figures the README quotes)."""
    r = chains["Cu"][1]
    assert r["a0_relaxed_A"] == pytest.approx(3.590, abs=0.001)
    assert r["B_GPa"] == pytest.approx(134.4, abs=1.0)
    assert r["vacancy_formation_eV"] == pytest.approx(1.224, abs=0.01)


def test_relax_refuses_a_metal_emt_does_not_know(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="EMT knows the fcc metals Al, Cu, Ag, Au, Ni, Pd, Pt, not 'Fe'"):
        metals.relax("Fe", str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_analysis_table_per_metal_in_plan_order(chains: dict) -> None:
    """Metals in METALS order, a0/B/E_vac each with its unit; a metal whose optional vacancy stage
    failed has no E_vac line; the lines `mace report` prints."""
    cu, al = chains["Cu"][1], chains["Al"][1]
    al_without_vacancy = {k: v for k, v in al.items() if k != "vacancy_formation_eV"}
    out = metals.table([cu, al_without_vacancy, {"material_id": "other", "energy_eV": 1.0}])
    assert list(out["summary"]) == ["Al a0", "Al B", "Cu a0", "Cu B", "Cu E_vac"]
    assert out["units"] == {"Al a0": "Å", "Al B": "GPa", "Cu a0": "Å", "Cu B": "GPa", "Cu E_vac": "eV"}
    assert out["summary"]["Cu a0"] == round(cu["a0_relaxed_A"], 4)
    assert out["summary"]["Cu B"] == round(cu["B_GPa"], 1)
    lines = analysis_lines({"function": "metals:table", **out})
    assert lines[0] == f"Al a0 = {round(al['a0_relaxed_A'], 4)} Å"
    assert lines[-1] == f"Cu E_vac = {round(cu['vacancy_formation_eV'], 3)} eV"
    first, second = out["plots"]
    assert (first["x_label"], first["y_label"]) == ("a0 (Å)", "B (GPa)")
    assert first["points"] == [[cu["a0_relaxed_A"], cu["B_GPa"]], [al["a0_relaxed_A"], al["B_GPa"]]]  # sorted by x
    assert second["points"] == [[cu["B_GPa"], cu["vacancy_formation_eV"]]]  # Al has no E_vac
    with pytest.raises(ValueError, match="no merged results carry a 'metal'"):
        metals.table([{"material_id": "other"}])


def test_plan_names_existing_stages_functions_and_arguments() -> None:
    """The plan file, read as data (the stages framework validates it once it lands): every step
    names a declared stage and a function of metals.py its kwargs bind to; the stage chain is the
    one the README describes."""
    plan = json.loads((EXAMPLE / "plan.json").read_text(encoding="utf-8"))
    stages = {s["name"]: s for s in plan["stages"]}
    assert list(stages) == ["relax", "eos", "vacancy"]
    assert stages["relax"]["outputs"] == [metals.RELAXED]
    for name in ("eos", "vacancy"):
        assert stages[name]["needs"] == ["relax"] and stages[name]["inputs"] == [metals.RELAXED]
    assert stages["vacancy"]["optional"] is True and stages["vacancy"]["resources"]["cpus"] == 2
    assert plan["sweep"]["parameters"]["metal"] == list(metals.METALS)
    steps = plan["sweep"]["template"]["steps"]
    assert [s["stage"] for s in steps] == list(stages)
    for step in steps:
        module, _, name = step["function"].partition(":")
        assert module == "metals"
        inspect.signature(getattr(metals, name)).bind(**step["kwargs"])
        assert step["kwargs"]["context_dir"] == "{context_dir}"
    module, _, name = plan["analysis"].partition(":")
    assert module == "metals" and callable(getattr(metals, name))


def test_plan_format_doc_shows_the_example_plan_as_it_is() -> None:
    """docs/plan-format.md's complete example of stages is this plan file, unabridged."""
    doc = (REPO / "docs" / "plan-format.md").read_text(encoding="utf-8")
    section = doc.split("### A complete example: seven metals in three stages", 1)[1]
    block = re.search(r"```json\n(.*?)\n```", section, re.S)
    assert block is not None
    assert json.loads(block.group(1)) == json.loads((EXAMPLE / "plan.json").read_text(encoding="utf-8"))
