"""The files params.yaml names, checked when it is loaded (stages/common/loader.py): the output format's JSON
Schema, the local data sources and the local candidates. The rules across fields (stages/common/rules.py) read no
file; these are the checks that must.

    python -m stages.common.loader params.yaml      # prints the validated project or the problems, exit 2
"""

from __future__ import annotations

import json
from pathlib import Path

from stages.common import weights
from stages.common.errors import ProjectError
from stages.common.params import ROLES, Params


def problems(p: Params, files: bool = True) -> list[str]:
    """The JSON Schema's problems, and with `files` those of the data sources and candidates (`lifecycle models`,
    `deploy`, `serve` need neither the data nor the candidates' folders: a serving host has the registry)."""
    return json_schema_problems(p) + (file_problems(p) if files else [])


def json_schema_problems(p: Params) -> list[str]:
    """`scope.output_format.json_schema` exists and is a JSON Schema (its absence is a rule: rules.py)."""
    import jsonschema

    fmt = p.scope.output_format
    path = fmt.json_schema
    if fmt.type != "json" or path is None:
        return []
    if not Path(path).is_file():
        return [f"`scope.output_format.json_schema`: {path} does not exist"]
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except (ValueError, jsonschema.SchemaError) as exc:
        return [f"`scope.output_format.json_schema`: {path} is not a JSON Schema ({str(exc).splitlines()[0]})"]
    return []


def file_problems(p: Params) -> list[str]:
    """The files params.yaml names, for the commands that read them (run, validate, the stages): local sources
    exist and live under `paths.sources` (DVC tracks it); local candidates exist or pretrain builds them."""
    problems = []
    src = p.data.sources
    root = Path(p.paths.sources).resolve()
    for role in ROLES:
        source = getattr(src, role)
        if source is None or source.path is None:
            continue
        where = Path(source.path)
        if not where.exists():
            problems.append(f"`data.sources.{role}.path`: {source.path} does not exist")
        elif root != where.resolve() and root not in where.resolve().parents:
            problems.append(
                f"`data.sources.{role}.path`: {source.path} is outside `paths.sources` "
                f"({p.paths.sources}); move it there so DVC tracks it, or change `paths.sources`"
            )
    built = {str(Path(p.paths.pretrain) / m.name) for m in p.pretrain.models}
    for c in p.select.candidates:
        # A local candidate must exist now, unless the pretrain stage is about to build it.
        if c.path and str(Path(c.path)) not in built and not Path(c.path).is_dir():
            problems.append(
                f"`select.candidates.{c.name}.path`: {c.path} does not exist (and no "
                "`pretrain.models` entry builds it); fix the path or use `hub_id`"
            )
        if c.converted:
            try:
                weights.gguf_file(c, f"`select.candidates.{c.name}`")
            except ProjectError as exc:
                problems += exc.problems
    return problems
