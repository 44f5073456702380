"""Reading params.yaml: the file parsed, validated against the schema (stages/common/params.py), checked by the
rules (stages/common/rules.py) and the files it names checked (stages/common/file_checks.py), every problem
reported at once in one ProjectError.

    python -m stages.common.loader params.yaml      # prints the validated project or the problems, exit 2
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from stages.common import file_checks, rules
from stages.common.errors import ExitStatus, ProjectError
from stages.common.params import Params

MOVED = {
    "adapt.prompt_shots": "prompt_search.shots",  # keys an earlier version of this file had elsewhere
    "align.method": "align.methods",  # a list now: [dpo], [dpo, rlhf], or [] for none
    "align.beta": "align.dpo.beta",
    "align.trainer": "align.dpo.trainer",
    "scope.budget.gpu_memory_gib": "scope.hardware.training.gpu_memory_gib",
}


def _location(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def load_params(path: str | Path = "params.yaml", files: bool = True) -> Params:
    """Read and validate the whole file; every schema problem and contradiction in one ProjectError.

    `files=False` for the commands that only need the registry (`lifecycle models`, `promote`, `rollback`,
    `deploy`, `serve`, `status`): the data files and the candidates' folders are not checked, so they work on a
    serving host, or in a clone before `dvc pull`."""
    path = Path(path)
    if not path.is_file():
        raise ProjectError([f"{path}: file not found (run from the project root, or pass --params)"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProjectError([f"{path}: not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ProjectError([f"{path}: expected a mapping of sections (project, scope, ...), got {type(raw).__name__}"])
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = _location(err["loc"])
            if err["type"] == "extra_forbidden" and where in MOVED:
                problems.append(
                    f"{path}: `{where}` has moved to `{MOVED[where]}`: move it there"
                    + (" as a list, e.g. `methods: [dpo]` (`[]`: no alignment)" if where == "align.method" else "")
                )
            elif err["type"] == "extra_forbidden":
                problems.append(f"{path}: unknown key `{where}` (a typo? remove it or fix its name)")
            elif err["type"] == "missing":
                problems.append(f"{path}: missing key `{where}`")
            else:
                problems.append(f"{path}: `{where}`: {err['msg']} (got {err.get('input')!r})")
        raise ProjectError(problems) from None
    found = rules.problems(params) + file_checks.problems(params, files)
    problems = [f"{path}: {p}" for p in found + unwritten_tracked_keys(raw, path.parent / "dvc.yaml")]
    if problems:
        raise ProjectError(problems)
    return params


def unwritten_tracked_keys(raw: dict, dvc_file: Path) -> list[str]:
    """DVC reads the params file itself and fails on a key a stage tracks but the file leaves to its default:
    name each such key here, with the fix, instead of DVC's MissingParamsError mid-run."""
    if not dvc_file.is_file():
        return []
    stages = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages", {})
    problems = []
    tracked = {
        k
        for stage in stages.values()
        for k in {**stage, **stage.get("do", {})}.get("params", [])
        if isinstance(k, str) and "${" not in k
    }  # a foreach stage's `align.${item}`: a required section
    for key in sorted(tracked):
        node = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                problems.append(
                    f"`{key}` is tracked by {dvc_file.name} but not written in the file: write it out, "
                    "even with its default value (e.g. `labels: []`, `metrics: null`)"
                )
                break
            node = node[part]
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        params = load_params(args[0] if args else "params.yaml")
    except ProjectError as exc:
        print(exc, file=sys.stderr)
        return ExitStatus.INVALID_PROJECT
    print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return ExitStatus.OK


if __name__ == "__main__":
    raise SystemExit(main())
