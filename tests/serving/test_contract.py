"""The serving layer's contract: `serving/` imports only what the bento carries (the layer rule that the
import-linter contracts in pyproject.toml do not state: this test checks it). The bento holds the files the
package stage copies (stages/package.py `SHARED`) and installs the packages it pins; a module
imported from anywhere else would work in the repository and fail in the container."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest

from stages.package import SHARED

# What the bento carries: serving/*.py and the modules of stages/common the package stage copies beside them.
SERVING = SHARED


def imports(path: Path) -> dict[str, bool]:
    """The modules `path` imports, each with whether loading the module imports it (a statement outside any
    function) or only a call does (inside a function)."""
    out: dict[str, bool] = {}

    def visit(node, in_function: bool) -> None:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for name in names:
            out[name] = out.get(name, False) or not in_function
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return out


def installed_with(names) -> set[str]:
    """The distributions the bento installs: the pinned ones and everything they require, transitively."""
    seen, todo = set(), [n.lower() for n in names]
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop().lower())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        todo += [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in requires if "extra ==" not in r]
    return seen


def test_serving_imports_only_what_the_bento_carries():
    """At start-up, only what the smallest bento installs (the OpenVINO engine, no torch); in a function, what
    some bento installs for it (the transformers engine's torch, a quantizer, a cross-encoder)."""
    from stages.common.precision import LIBRARY
    from stages.common.registry import bento_packages

    carried = {f.stem for f in SHARED}
    carried_from_stages = {f"stages.common.{f.stem}" for f in SHARED if f.parent.name == "common"}
    smallest = installed_with(("bentoml", *bento_packages(True, None, retrieves=True, reranks=False)))
    every = installed_with(
        (
            "bentoml",
            *bento_packages(True, None, True, True),
            *(p for q in LIBRARY.values() for p in bento_packages(False, q, True, True)),
        )
    )
    providers = packages_distributions()
    problems = []
    for path in SERVING:
        for name, at_start_up in sorted(imports(path).items()):
            top = name.split(".")[0]
            if top == "serving":
                if name.count(".") == 1 and name.split(".")[1] not in carried:
                    problems.append(f"{path.name} imports {name}, which the bento does not carry")
            elif top in ("stages", "flows"):
                if name.count(".") >= 2 and ".".join(name.split(".")[:3]) not in carried_from_stages:
                    problems.append(f"{path.name} imports {name}: the bento carries only {sorted(carried)}")
                elif top == "flows":
                    problems.append(f"{path.name} imports {name}: flows are never in the bento")
            elif top in carried or top in sys.stdlib_module_names or top == "__future__":
                continue
            else:
                provided = {re.sub(r"[-_.]+", "-", d.lower()) for d in providers.get(top, [])}
                if not provided & every:
                    problems.append(f"{path.name} imports {top}, which no package the bento installs provides")
                elif at_start_up and not provided & smallest:
                    problems.append(f"{path.name} imports {top} at start-up: a bento on OpenVINO does not install it")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "bad", ["from stages.common.params import Serve", "import dvc", "import torch", "def f():\n    import dvc"]
)
def test_the_contract_catches_an_import_the_bento_lacks(tmp_path, monkeypatch, bad):
    import tests.serving.test_contract as contract

    probe = tmp_path / "probe.py"
    probe.write_text(bad + "\n")
    monkeypatch.setattr(contract, "SERVING", [probe])
    with pytest.raises(AssertionError, match="probe.py imports"):
        contract.test_serving_imports_only_what_the_bento_carries()
