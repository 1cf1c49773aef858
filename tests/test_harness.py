"""The template's GPU harness (harness/) runs against a default bake: every name it imports
from the bake's package or its benchmarks/throughput.py is defined there.

The harness needs a GPU to run, so this is what a CPU can check: an edit to the generated
project that renames or moves something the harness uses fails here, not on the next GPU run.
"""

import ast
from pathlib import Path

from conftest import TEMPLATE_ROOT, bake

HARNESS = TEMPLATE_ROOT / "harness"
PACKAGE = "mamba_project"  # the default answers' package, the one the harness imports


def top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level (what `from module import` finds)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def module_file(project: Path, module: str) -> Path:
    """The file of `throughput` (benchmarks/) or of a module of the package (src/)."""
    if module == "throughput":
        return project / "benchmarks" / "throughput.py"
    path = project / "src" / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports_from_the_bake(source: Path) -> list[tuple[str, str]]:
    """(module, name) of each `from throughput import` and `from mamba_project... import`."""
    found = []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "throughput" or node.module.split(".")[0] == PACKAGE:
                found += [(node.module, alias.name) for alias in node.names]
    return found


def test_harness_imports_only_what_a_default_bake_defines(cookies_session, template):
    project = bake(cookies_session, template)
    imported = [
        (source.relative_to(TEMPLATE_ROOT).as_posix(), module, name)
        for source in sorted(HARNESS.rglob("*.py"))
        for module, name in imports_from_the_bake(source)
    ]
    assert {module for _, module, _ in imported} >= {"throughput", f"{PACKAGE}.backbone"}
    missing = []
    for source, module, name in imported:
        path = module_file(project, module)
        sub = module_file(project, f"{module}.{name}")  # `from package import module`
        if not (path.is_file() and (name in top_level_names(path) or sub.is_file())):
            missing.append(f"{source}: from {module} import {name}")
    assert missing == []
