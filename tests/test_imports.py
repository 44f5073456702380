"""An import rule import-linter's contracts do not state: no module imports a package that imports it.

A package's `__init__` that imports its modules (flows/deploy/__init__.py imports one per target) and a module that
imports the package back (`from flows.deploy import gguf` in flows/deploy/llamacpp.py) make a circle that works
or fails by import order; a module imports its sibling by its full name instead (`from flows.deploy.gguf import`).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "stages", "serving")


def package_of(module: Path, root: Path) -> str:
    return ".".join(module.parent.relative_to(root).parts)


def imports_its_modules(init: Path, root: Path = REPO) -> bool:
    """Whether a package's __init__ imports modules of its own (then none of them may import the package)."""
    package = package_of(init, root)
    return any(
        isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith(package + "."))
        for node in ast.walk(ast.parse(init.read_text(encoding="utf-8")))
    )


def package_imports(module: Path, root: Path = REPO) -> list[str]:
    """A module's imports of its own package (`from P import x`, `from . import x`, `import P`)."""
    package = package_of(module, root)
    found = []
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (
            (node.level == 0 and node.module == package) or (node.level == 1 and node.module is None)
        ):
            found.append(f"line {node.lineno}: from {package} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name == package]
    return found


def test_no_module_imports_a_package_that_imports_it(tmp_path):
    inits = [i for top in PACKAGES for i in (REPO / top).rglob("__init__.py") if imports_its_modules(i)]
    assert REPO / "flows" / "deploy" / "__init__.py" in inits, "one package at least imports its modules"
    modules = [m for i in inits for m in i.parent.glob("*.py") if m.name != "__init__.py"]
    problems = [f"{m.relative_to(REPO)} {p}" for m in modules for p in package_imports(m)]
    assert not problems, "import the sibling module by its full name instead:\n" + "\n".join(problems)
    # The rule finds what it is for: the circle flows.deploy.llamacpp once had.
    circle = tmp_path / "flows" / "deploy" / "llamacpp.py"
    circle.parent.mkdir(parents=True)
    circle.write_text("from flows.deploy import gguf\n")
    assert package_imports(circle, tmp_path) == ["line 1: from flows.deploy import gguf"]
