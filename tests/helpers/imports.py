"""The project's own import graph, read from the source (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.project import PROJECT_ROOT

# config.py validates data.layout and train.loss against the registries filled where the layouts
# and losses are defined, importing those modules inside its validators only. They decide which
# params are accepted, never what a stage writes: no stage depends on them through config.
VALIDATES_WITH = {"pipeline/core/config.py": {"pipeline/split/layouts.py", "pipeline/model/losses.py"}}


def validation_only(path: Path) -> set[Path]:
    """The files ``path`` imports only to validate params (with their packages' __init__.py)."""
    files = {PROJECT_ROOT / name for name in VALIDATES_WITH.get(path.relative_to(PROJECT_ROOT).as_posix(), ())}
    return files | {file.parent / "__init__.py" for file in files}


def _module_file(dotted: str) -> Path | None:
    base = PROJECT_ROOT / dotted.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> list[str]:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return parts[:-1]  # a module and an __init__.py alike: the folder they sit in


def direct_imports(path: Path) -> set[Path]:
    """The ``pipeline`` files that ``path`` imports itself (absolute or relative imports)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(path)
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for dotted in targets:
            if dotted.split(".")[0] != "pipeline":
                continue
            # Importing pipeline.a.b runs pipeline/__init__.py and pipeline/a/__init__.py too.
            parts = dotted.split(".")
            for depth in range(1, len(parts) + 1):
                file = _module_file(".".join(parts[:depth]))
                if file is not None:
                    found.add(file)
    return found - {path}


def imported_files(path: Path) -> set[Path]:
    """Every ``pipeline`` file that running ``path`` imports, directly or through others, except
    what config imports only to validate params."""
    seen: set[Path] = set()
    pending = [path]
    while pending:
        current = pending.pop()
        for file in direct_imports(current) - validation_only(current):
            if file not in seen:
                seen.add(file)
                pending.append(file)
    return seen


def code_unit(file: Path) -> str:
    """What dvc.yaml lists for a file: its subpackage folder, or the file itself at the top level."""
    parts = file.relative_to(PROJECT_ROOT).parts
    return "/".join(parts[:2]) if len(parts) > 2 else "/".join(parts)
