"""dvc.yaml against the code: what each stage reads is derived from the code and checked, never hand-kept.

DVC re-runs a stage only when one of its declared deps changed. A project module a stage imports but does not
declare would let a workspace report results computed by code that is no longer there, so the code deps of every
stage are computed here (the modules its `python -m` module imports, transitively, function-level imports
included, and the files beside them that they open by name) and compared with `deps:`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PROJECT_PACKAGES = ("stages", "flows", "serving")
# Modules every stage runs through that decide whether it runs and where its records go, never what it writes
# into its outputs: an edit to them re-runs nothing, and what they import is not followed. (The rules are not
# plumbing: scope reports them and select filters candidates with them.)
PLUMBING = {
    "stages/common/cli.py": "the `python -m stages.<name>` entry: argv, params loading, exit statuses",
    "stages/common/loader.py": "reads params.yaml; the values a stage uses are tracked as `params:`",
    "stages/common/errors.py": "exit statuses and error messages",
    "stages/common/launch.py": "starts a stage under `accelerate launch` (orchestration.launch, a tracked param)",
    "stages/common/tracking.py": "MLflow records of the run, not its DVC outputs",
}


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages, a `foreach` expanded into `name@item` with `${item}` substituted."""
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    out = {}
    for name, stage in raw.items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        section, key = re.fullmatch(r"\$\{(\w+)\.(\w+)\}", stage["foreach"]).groups()
        for item in params[section][key]:
            text = yaml.safe_dump(stage["do"]).replace("${item}", str(item))
            out[f"{name}@{item}"] = yaml.safe_load(text)
    return out


def module_file(module: str) -> Path | None:
    path = REPO / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """The project's modules (and package __init__ files on the way) one module imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] in PROJECT_PACKAGES:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    found = module_file(".".join(parts[:i]))
                    if found:
                        out.add(found)
    return out


def opened_beside(path: Path) -> set[Path]:
    """Files a module opens by name from its own folder (`Path(__file__).with_name("catalog.yaml")`): a string
    literal that names an existing non-Python file next to it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return {
        path.parent / n
        for n in names
        if re.fullmatch(r"[\w.-]+\.\w+", n) and not n.endswith(".py") and (path.parent / n).is_file()
    }


def code_deps(module: str) -> set[Path]:
    """Every project file `python -m <module>` computes with: the transitive imports (not through PLUMBING)
    and the files beside them that they open; empty package __init__ files left out."""
    plumbing = {REPO / p for p in PLUMBING}
    seen, todo = set(), [module_file(module)]
    while todo:
        path = todo.pop()
        if path in seen or path in plumbing:
            continue
        seen.add(path)
        todo += imported_files(path) - seen
    files = seen | {f for p in seen for f in opened_beside(p)}
    return {f for f in files if not (f.name == "__init__.py" and only_a_docstring(f))}


def only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def bento_files() -> set[Path]:
    """What the package stage puts into the bento from serving/: the recipe and what its `include:` names there
    (the renderer and the retriever come from stages/common, and package imports them)."""
    recipe = yaml.safe_load((REPO / "serving" / "bentofile.yaml").read_text())
    included = {REPO / "serving" / f for f in recipe["include"]}
    return {REPO / "serving" / "bentofile.yaml"} | {f for f in included if f.is_file()}


def required(name: str, stage: dict) -> set[Path]:
    files = code_deps(re.search(r"-m (stages\.\w+)", stage["cmd"]).group(1))
    if name == "package":  # it builds the bento: a changed service must make a new one
        files |= bento_files()
    return files


def declared(stage: dict) -> set[Path]:
    return {REPO / d for d in stage.get("deps", []) if "${" not in d}


def covered(path: Path, deps: set[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_a_stage_declares_every_project_file_its_code_runs(name):
    stage = dvc_stages()[name]
    deps = declared(stage)
    missing = sorted(str(f.relative_to(REPO)) for f in required(name, stage) if not covered(f, deps))
    assert not missing, f"dvc.yaml stage `{name}` runs {missing} but does not list them in `deps:`: add them"


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_a_stage_declares_no_project_file_its_code_does_not_run(name):
    stage = dvc_stages()[name]
    needed = required(name, stage)
    code = {d for d in declared(stage) if d.suffix in (".py", ".yaml") and d.is_file() and d.parent != REPO}
    stale = sorted(str(d.relative_to(REPO)) for d in code - needed)
    assert not stale, f"dvc.yaml stage `{name}` lists {stale} in `deps:`, which its code never imports: remove them"


def reached(path: Path) -> set[Path]:
    """Every project module `path` imports, transitively, plumbing included."""
    seen, todo = set(), [path]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += imported_files(p) - seen
    return seen


def test_plumbing_is_only_what_every_stage_runs_through():
    """Leaving a file out of the derived deps is right only for what every stage runs through on its way in: each
    PLUMBING file is reached from every stage's entry (one that only some stages import is a dep of those)."""
    modules = {re.search(r"-m (stages\.\w+)", s["cmd"]).group(1) for s in dvc_stages().values()}
    for path in PLUMBING:
        assert (REPO / path).is_file(), f"PLUMBING names {path}, which no longer exists"
        skipped = sorted(m for m in modules if REPO / path not in reached(module_file(m)))
        assert not skipped, f"{path} is not plumbing: {skipped} never import it; let the derivation list it"


def test_the_derivation_follows_function_level_imports_and_files_opened_by_name():
    evaluate = code_deps("stages.evaluate")
    assert REPO / "stages/common/confidence.py" in evaluate
    assert REPO / "stages/common/catalog.yaml" in code_deps("stages.select")  # catalog.py opens it by name
    assert REPO / "stages/select.py" not in evaluate


# Keys a stage reads that are not what it computes with, so dvc.yaml does not track them (an edit re-runs nothing).
READ_NOT_COMPUTED = {
    "project.name": ("*", "the MLflow experiment a stage's records go to (package tracks it: the registered name)"),
    "align.methods": ("align", "align@<method> checks its method is listed; which stages exist is the foreach's"),
}
# Keys dvc.yaml tracks that the stage reads outside `run()` (stage_main), with the reason.
READ_BY_THE_ENTRY = {
    "orchestration.launch": "stage_main starts a training stage under `accelerate launch` with these settings",
}
# Keys a stage reads only on a branch the tiny project does not take (the recording cannot see them), with where.
READ_ON_OTHER_BRANCHES = {
    "data": {
        "adapt.technique": "an empty sft split is refused unless the technique is prompt",
        "scope.labels": "a classification project's answers are checked against its labels",
        "scope.output_format": "a production correction is held to the guardrails (a project with feedback)",
        "evaluate.guardrails": "a production correction is held to the guardrails (a project with feedback)",
    },
    "scope": {"evaluate.max_forgetting": "a release's phase rules ask for a forgetting check (the tiny one is a poc)"},
    "select": {
        "scope.budget": "an API candidate's monthly cost against the budget",
        "scope.serving": "an API candidate's cost per 1k requests against the limit",
        "scope.residency": "an API candidate's regions against the residency region",
        "scope.privacy": "a SaaS-hosted candidate with personal data",
        "scope.phase": "a catalog entry's licence that forbids commercial use, from the MVP on",
    },
}


def not_computed(name: str, key: str) -> bool:
    stages, _ = READ_NOT_COMPUTED.get(key, (None, ""))
    return stages == "*" or stages == name.split("@")[0]


def tracked_params(name: str) -> set[str]:
    return {k for k in dvc_stages()[name].get("params", []) if isinstance(k, str)}


def covers(key: str, read: str) -> bool:
    return read == key or read.startswith(key + ".")


def test_a_stage_tracks_exactly_the_params_keys_it_reads(packaged):
    """Every stage ran on the tiny project (tests/conftest.py) through a view that recorded each key it read."""
    from tests.recording import READS

    assert set(READS) >= set(dvc_stages()), f"stages that did not run here: {set(dvc_stages()) - set(READS)}"
    problems = []
    for name in sorted(dvc_stages()):
        reads = {r for r in READS[name] if not r.startswith("paths.") and not not_computed(name, r)}
        if "<all>" in reads:
            problems.append(f"`{name}` reads the whole of params (a model_dump of the root): read sections")
            continue
        keys = tracked_params(name)
        other_branches = READ_ON_OTHER_BRANCHES.get(name.split("@")[0], {})
        missing = sorted(r for r in reads if not any(covers(k, r) for k in keys))
        # a whole section read (model_dump) covers the keys under it
        unused = sorted(
            k
            for k in keys - set(READ_BY_THE_ENTRY) - set(other_branches)
            if not any(covers(k, r) or covers(r, k) for r in reads) and not not_computed(name, k)
        )
        stale = sorted(set(other_branches) - keys)
        if missing:
            problems.append(f"`{name}` reads {missing}, which dvc.yaml does not track: add them to its `params:`")
        if unused:
            problems.append(f"`{name}` tracks {unused} in dvc.yaml but never reads them: remove them")
        if stale:
            problems.append(f"READ_ON_OTHER_BRANCHES names {stale} for `{name}`, which dvc.yaml does not track")
    assert not problems, "\n".join(problems)
