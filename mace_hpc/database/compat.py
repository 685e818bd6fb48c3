"""Upstream MACE's module functions next to `MaterialDatabase` (importable from
`mace_hpc.database.materials`, as upstream's queue manager, workflow engine, file manager and
planner import them from `mace.database.materials`).

`create_material_id_from_file` must give the ids upstream gave, since existing databases hold
them; the two others fix upstream behaviour that was plainly wrong (docs/migration.md).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

# Name parts that end a material's name in CRYSTAL file names (calculation types, structure and
# symmetry keywords, basis-set sizes, functionals), as upstream's naming convention has them.
_STOP_WORDS = frozenset(
    {
        "SP", "FREQ", "BAND", "DOSS", "BULK", "OPTGEOM", "CRYSTAL", "SLAB", "POLYMER", "MOLECULE",
        "SYMM", "TZ", "DZ", "SZ", "PBE", "B3LYP", "HSE06", "PBE0", "SCAN", "BLYP", "BP86",
    }
)  # fmt: skip
_CALC_STEP = re.compile(r"^(opt|sp|band|doss|freq)\d*$", re.IGNORECASE)
_STOP_FRAGMENTS = ("POB", "TZVP", "DZVP", "D3")


def _ends_name(part: str) -> bool:
    upper = part.upper()
    return bool(_CALC_STEP.match(part)) or upper in _STOP_WORDS or any(f in upper for f in _STOP_FRAGMENTS)


def create_material_id_from_file(file_path: str | os.PathLike[str]) -> str:
    """The material id of an input file: its name up to the first technical part.

    `test1_opt_BULK_OPTGEOM_symm_CRYSTAL_OPT_symm_PBE-D3_POB-TZVP-REV2.d12` -> `test1`,
    `test3-RCSR-ums_BULK_OPTGEOM_TZ_symm_...d12` -> `test3-RCSR-ums` (upstream's ids, unchanged).
    """
    parts = Path(file_path).stem.split("_")
    core: list[str] = []
    for part in parts:
        if _ends_name(part):
            break
        core.append(part)
    return "_".join(core) if core else parts[0]


def _base_name(material_id: str) -> str:
    for suffix in ("_symm", "_opt", "_sp"):
        material_id = material_id.replace(suffix, "")
    return material_id


def find_material_by_similarity(db: Any, potential_material_id: str) -> str | None:
    """An existing material id that names the same material as `potential_material_id`:
    itself, else one equal once `_symm`/`_opt`/`_sp` are removed, else one extending the other
    at a `_` or `-` boundary (`mat_symm2` ~ `mat`). None if there is none.

    Upstream also matched any string prefix (`Si` ~ `SiC`), merging different materials;
    here the prefix must end at a separator.
    """
    ids = [m["material_id"] for m in db.get_all_materials()]
    if potential_material_id in ids:
        return potential_material_id
    wanted = _base_name(potential_material_id)
    for existing in ids:
        if _base_name(existing) == wanted:
            return existing
    for existing in ids:
        have = _base_name(existing)
        short, long = sorted((have, wanted), key=len)
        if short and long.startswith(short) and long[len(short)] in "_-":
            return existing
    return None


_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm "
    "Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No "
    "Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()


def _atom_line(line: str) -> int | None:
    """The atomic number of a CRYSTAL atom line (`Z x y z`), else None. CRYSTAL encodes basis or
    pseudopotential choices in the hundreds (`Z + 100k`, ECPs from 200): the element is Z mod 100."""
    parts = line.split()
    if len(parts) < 4:
        return None
    try:
        z = int(parts[0])
        [float(p) for p in parts[1:4]]
    except ValueError:
        return None
    z = z % 100 if z > 100 else z
    return z if 1 <= z <= len(_SYMBOLS) else None


def extract_formula_from_d12(d12_file: str | os.PathLike[str]) -> str:
    """The formula of the atoms listed in a CRYSTAL .d12 geometry (the asymmetric unit, as the
    file lists it), elements in order of appearance: `Al2O3`; "Unknown" when there is none.

    The atom block is the first integer-only line N followed by N atom lines. (Upstream returned
    only digits, e.g. "23" for Al2O3, and counted basis-set lines as atoms.)
    """
    try:
        lines = Path(d12_file).read_text(errors="replace").splitlines()
    except OSError:
        return "Unknown"
    for i, line in enumerate(lines):
        text = line.strip()
        if not text.isdigit() or int(text) == 0:
            continue
        block = [_atom_line(x) for x in lines[i + 1 : i + 1 + int(text)]]
        if len(block) == int(text) and all(block):
            counts = Counter(_SYMBOLS[z - 1] for z in block if z)
            return "".join(f"{sym}{n if n > 1 else ''}" for sym, n in counts.items())
    return "Unknown"
