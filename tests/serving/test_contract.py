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

from tests.conftest import REPO

SERVING = sorted((REPO / "serving").glob("*.py"))


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
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
    from stages.common.registry import RETRIEVAL_PACKAGES, SERVING_PACKAGES, TRACING_PACKAGES
    from stages.package import SHARED

    carried = {f.stem for f in SHARED}
    carried_from_stages = {f"stages.common.{f.stem}" for f in SHARED if f.parent.name == "common"}
    installed = installed_with(("bentoml", *SERVING_PACKAGES, *TRACING_PACKAGES, *RETRIEVAL_PACKAGES))
    providers = packages_distributions()
    problems = []
    for path in SERVING:
        for name in sorted(imports(path)):
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
            elif not {re.sub(r"[-_.]+", "-", d.lower()) for d in providers.get(top, [])} & installed:
                problems.append(f"{path.name} imports {top}, which no package the bento installs provides")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("bad", ["from stages.common.params import Serve", "import dvc"])
def test_the_contract_catches_an_import_the_bento_lacks(tmp_path, monkeypatch, bad):
    import tests.serving.test_contract as contract

    probe = tmp_path / "probe.py"
    probe.write_text(bad + "\n")
    monkeypatch.setattr(contract, "SERVING", [probe])
    with pytest.raises(AssertionError, match="probe.py imports"):
        contract.test_serving_imports_only_what_the_bento_carries()
