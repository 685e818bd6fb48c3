"""The one-way import graph of docs/architecture.md, enforced: no package imports one above it.

Every `import` in `mace_hpc/` (at module level or inside a function) is checked against the
layer table below; an import inside a function outside `cli/` must say why on its line
(`# lazy: <reason>`), since lazy imports are how upward dependencies used to hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mace_hpc"

# lowest first; a package may import its own layer and any layer below it
LAYERS: list[set[str]] = [
    {"errors", "util", "config", "__init__"},
    {"records"},
    {"plan", "database", "schedulers"},
    {"context"},
    {"epilogue"},
    {"element"},
    {"status"},
    {"submission"},
    {"workflow"},
    {"cli"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported mace_hpc module, inside a function) for every import in `path`."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    package = module if rel.name == "__init__" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(n) for n in ast.walk(node) if n is not node}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out += [(node.lineno, t, id(node) in inside) for t in targets if t.split(".")[0] == "mace_hpc"]
    return out


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_has_a_layer() -> None:
    packages = {_top(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)) for p in _modules()}
    assert packages <= set(LAYER_OF), f"add {sorted(packages - set(LAYER_OF))} to LAYERS"


def test_no_import_runs_upward() -> None:
    upward = []
    for path in _modules():
        src = _top(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for line, target, _ in _imports(path):
            dst = _top(target)
            if LAYER_OF[dst] > LAYER_OF[src]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {src} imports {target} ({dst} is above)")
    assert not upward, "\n".join(upward)


def test_lazy_imports_say_why() -> None:
    unlabelled = []
    for path in _modules():
        if "cli" in path.relative_to(PACKAGE).parts[:1]:
            continue  # the CLI imports handlers lazily on purpose: `mace --help` stays fast
        lines = path.read_text().splitlines()
        for line, target, lazy in _imports(path):
            if lazy and "# lazy:" not in lines[line - 1]:
                unlabelled.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target}")
    assert not unlabelled, "label with `# lazy: <reason>`:\n" + "\n".join(unlabelled)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule itself: database importing the context layer would be reported."""
    assert LAYER_OF["database"] < LAYER_OF["context"] < LAYER_OF["element"] < LAYER_OF["cli"]
    probe = PACKAGE / "database" / "materials_contextual.py"
    found = {t for _, t, _ in _imports(probe)}
    assert not any(_top(t) in ("context", "workflow") for t in found)
