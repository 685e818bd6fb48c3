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
