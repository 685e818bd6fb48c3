"""One point of fcc aluminium's equation of state with ASE's EMT calculator (real physics, ~0.1 s)."""

from __future__ import annotations


def energy_point(a0: float) -> dict[str, float]:
    """Total energy and volume of the fcc Al primitive cell at lattice constant `a0` (Å)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Al", "fcc", a=float(a0))
    atoms.calc = EMT()
    return {
        "lattice_constant_A": float(a0),
        "volume_A3": float(atoms.get_volume()),
        "energy_eV": float(atoms.get_potential_energy()),
    }


def fit(results: list[dict]) -> dict:
    """Birch-Murnaghan fit of the merged E(V) points (ase.eos): the equilibrium lattice constant,
    volume, energy and bulk modulus, and the curve `mace report` draws over the points."""
    import numpy as np
    from ase.eos import EquationOfState
    from ase.units import GPa

    points = sorted((r["volume_A3"], r["energy_eV"]) for r in results
                    if r.get("volume_A3") is not None and r.get("energy_eV") is not None)
    if len(points) < 5:
        raise ValueError(f"the fit needs at least 5 merged E(V) points, got {len(points)}")
    volumes, energies = (np.array(x) for x in zip(*points, strict=True))
    eos = EquationOfState(volumes, energies, eos="birchmurnaghan")
    v0, e0, b = eos.fit()
    dense = np.linspace(volumes.min(), volumes.max(), 120)
    curve = eos.func(dense, *eos.eos_parameters)
    return {
        "summary": {"a0": float((4 * v0) ** (1 / 3)), "V0": float(v0), "E0": float(e0), "B": float(b / GPa)},
        "units": {"a0": "Å", "V0": "Å³", "E0": "eV", "B": "GPa"},
        "plots": [{
            "title": "E(V) of fcc Al with the Birch-Murnaghan fit",
            "x_label": "volume per atom (Å³)", "y_label": "energy (eV)",
            "points": [[float(v), float(e)] for v, e in points],
            "curve": [[float(v), float(e)] for v, e in zip(dense, curve, strict=True)],
        }],
    }
