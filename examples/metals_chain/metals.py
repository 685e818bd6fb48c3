"""Three stages of a study of the fcc metals ASE's EMT calculator knows (Al, Cu, Ag, Au, Ni, Pd, Pt).

`relax` relaxes the conventional cubic cell and hands the structure on in `relaxed.json`; `eos`
(equation of state around the relaxed volume) and `vacancy` (vacancy formation energy in a
supercell) both start from that file. Each runs in well under a second with EMT. `table` is the
plan's `analysis`: a0, B and E_vac per metal from the merged results.

The stage functions take the element's context directory (`"{context_dir}"` in the plan) because
all stages of an element share it; the process's working directory is the step's own
`calculations/<step>/`, which they leave empty.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
RELAXED = "relaxed.json"  # the file stage `relax` hands on, relative to the context directory


def relax(metal: str, context_dir: str, fmax: float = 1e-5) -> dict[str, float]:
    """Relax the 4-atom conventional fcc cell of `metal` (cell and positions, FrechetCellFilter +
    BFGS), starting from ASE's reference lattice constant; write it to `<context_dir>/relaxed.json`."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter
    from ase.io import write
    from ase.optimize import BFGS

    if metal not in METALS:
        raise ValueError(f"metal: EMT knows the fcc metals {', '.join(METALS)}, not {metal!r}")
    atoms = bulk(metal, "fcc", cubic=True)
    atoms.calc = EMT()
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    if not opt.run(fmax=fmax, steps=200):
        raise RuntimeError(f"{metal}: the cell relaxation did not converge to fmax={fmax} in 200 steps")
    out = Path(context_dir) / RELAXED
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    write(tmp, atoms, format="json")
    os.replace(tmp, out)  # the next stages never see a half-written structure
    return {"a0_relaxed_A": float(atoms.cell.lengths()[0])}


def eos(context_dir: str, points: int = 7, strain: float = 0.04) -> dict[str, float]:
    """Birch-Murnaghan equation of state (ase.eos) from `points` volumes within ±`strain` of the
    relaxed volume: V0 and E0 per atom, the bulk modulus in GPa and the a0 it implies."""
    import numpy as np
    from ase.calculators.emt import EMT
    from ase.eos import EquationOfState
    from ase.units import GPa

    relaxed = _read_relaxed(context_dir)
    n = len(relaxed)
    volumes, energies = [], []
    for x in np.linspace(-strain, strain, points):
        atoms = relaxed.copy()
        atoms.set_cell(relaxed.cell * (1 + x) ** (1 / 3), scale_atoms=True)
        atoms.calc = EMT()
        volumes.append(atoms.get_volume() / n)
        energies.append(atoms.get_potential_energy() / n)
    v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    return {
        "V0_A3": float(v0),
        "E0_eV": float(e0),
        "B_GPa": float(b / GPa),
        "a0_eos_A": float((4 * v0) ** (1 / 3)),  # 4 atoms per conventional cell
    }


def vacancy(context_dir: str, repeat: int = 3, fmax: float = 0.01) -> dict[str, float]:
    """Vacancy formation energy E(N-1) - (N-1)/N E(N) in a `repeat`³ supercell of the relaxed
    conventional cell (108 atoms for 3), the neighbours of the vacancy relaxed (BFGS)."""
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    perfect = _read_relaxed(context_dir).repeat(repeat)
    perfect.calc = EMT()
    n = len(perfect)
    e_perfect = float(perfect.get_potential_energy())
    defect = perfect.copy()
    del defect[0]
    defect.calc = EMT()
    opt = BFGS(defect, logfile=None)
    if not opt.run(fmax=fmax, steps=300):
        raise RuntimeError(f"the vacancy relaxation did not converge to fmax={fmax} in 300 steps")
    e_defect = float(defect.get_potential_energy())
    return {"vacancy_formation_eV": e_defect - (n - 1) / n * e_perfect}


def table(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan's analysis: per metal (in the order of METALS) its relaxed a0, bulk modulus and
    vacancy formation energy (left out where that stage failed or has not run), and two plots."""
    rows = sorted((r for r in results if r.get("metal") in METALS), key=lambda r: METALS.index(r["metal"]))
    if not rows:
        raise ValueError("no merged results carry a 'metal' sweep parameter")
    # (label, merged property, unit, decimals worth printing)
    columns = (("a0", "a0_relaxed_A", "Å", 4), ("B", "B_GPa", "GPa", 1), ("E_vac", "vacancy_formation_eV", "eV", 3))
    summary: dict[str, float] = {}
    units: dict[str, str] = {}
    for r in rows:
        for label, prop, unit, decimals in columns:
            if isinstance(r.get(prop), (int, float)):
                summary[f"{r['metal']} {label}"] = round(float(r[prop]), decimals)
                units[f"{r['metal']} {label}"] = unit
    return {
        "summary": summary,
        "units": units,
        "plots": [
            _plot(rows, "Bulk modulus against lattice constant (EMT)", "a0_relaxed_A", "a0 (Å)", "B_GPa", "B (GPa)"),
            _plot(rows, "Vacancy formation energy against bulk modulus (EMT)", "B_GPa", "B (GPa)",
                  "vacancy_formation_eV", "E_vac (eV)"),
        ],
    }


def _plot(rows: list[dict[str, Any]], title: str, x: str, x_label: str, y: str, y_label: str) -> dict[str, Any]:
    """One scatter of the metals that have both values."""
    points = [[float(r[x]), float(r[y])] for r in rows
              if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]
    return {"title": title, "x_label": x_label, "y_label": y_label, "points": sorted(points)}


def _read_relaxed(context_dir: str) -> Any:
    """The structure stage `relax` wrote (the plan declares it as the stage's input)."""
    from ase.io import read

    return read(Path(context_dir) / RELAXED, format="json")
