"""The layers of the package: no module imports a higher layer (function-level imports too).

Low to high: the base (the package root, ``_files``, ``_process``, ``_errors``, ``_cache``,
``_distributed``, ``runtime``, ``severity``, ``seeding``) < data < corruptions < models <
evaluation < adaptation < reporting < the entry points (demo, cli). A module may import its
own layer and any lower one; an import of a higher layer is an upward arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medrobust

PACKAGE = Path(medrobust.__file__).resolve().parent
LAYERS = (
    ("__init__", "_files", "_process", "_errors", "_cache", "_distributed", "runtime",
     "severity", "seeding"),
    ("data",),
    ("corruptions",),
    ("models",),
    ("evaluation",),
    ("adaptation",),
    ("reporting",),
    ("demo", "cli", "__main__"),
)
RANK = {top: rank for rank, tops in enumerate(LAYERS) for top in tops}
KNOWN: set[str] = set()


def module_name(path: Path, root: Path) -> str:
    """Dotted name of a module file below ``root`` (the folder that holds the package)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """The layer (top-level part) of a package module; the package root is the base."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_module(root: Path, name: str) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path, root: Path) -> set[tuple[int, str]]:
    """(line, module) of every import of the file's own package, relative ones resolved.

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module.
    """
    name = module_name(path, root)
    top = name.partition(".")[0]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".")
                target = ".".join(parts[: len(parts) - node.level + 1] + ([target] if target else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add((node.lineno, sub if _is_module(root, sub) else target))
    return {(line, m) for line, m in found if m == top or m.startswith(f"{top}.")}


def upward_arrows(package: Path) -> list[str]:
    """``file:line (layer) imports module (layer)`` for every import of a higher layer."""
    root = package.parent
    arrows = []
    for path in sorted(package.rglob("*.py")):
        own = layer(module_name(path, root))
        assert own in RANK, f"{path}: outside every layer; add it to LAYERS"
        for line, target in sorted(imported_modules(path, root)):
            if RANK[layer(target)] > RANK[own]:
                arrows.append(f"{path.relative_to(root).as_posix()}:{line} ({own}) imports "
                              f"{target} ({layer(target)})")
    return arrows


def test_no_module_imports_a_higher_layer() -> None:
    arrows = [a for a in upward_arrows(PACKAGE) if a.partition(":")[0] not in KNOWN]
    assert not arrows, "upward imports:\n" + "\n".join(arrows)


def test_known_exceptions_are_still_needed() -> None:
    """An exception whose file no longer imports upward (or is gone) must be removed."""
    files = {a.partition(":")[0] for a in upward_arrows(PACKAGE)}
    assert files >= KNOWN, f"remove from KNOWN: {sorted(KNOWN - files)}"


def test_the_walk_resolves_relative_and_function_level_imports() -> None:
    root = PACKAGE.parent
    runner = {m for _, m in imported_modules(PACKAGE / "evaluation" / "runner.py", root)}
    assert {"medrobust", "medrobust.models.zeroshot", "medrobust.evaluation.pipeline"} <= runner
    # reporting/__init__ imports the montage module inside a function
    reporting = {m for _, m in imported_modules(PACKAGE / "reporting" / "__init__.py", root)}
    assert "medrobust.reporting.montage" in reporting


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    package = tmp_path / "medrobust"
    for sub in ("data", "models", "reporting"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "reporting" / "tables.py").write_text("from ..models import x\n")
    (package / "data" / "load.py").write_text("def f():\n    from .. import models\n")
    (package / "models" / "head.py").write_text(
        "import medrobust.data\nfrom medrobust.reporting import tables\n")
    assert upward_arrows(package) == [
        "medrobust/data/load.py:2 (data) imports medrobust.models (models)",
        "medrobust/models/head.py:2 (models) imports medrobust.reporting.tables (reporting)",
    ]
