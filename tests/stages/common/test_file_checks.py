"""The files params.yaml names, checked when it is loaded: the JSON Schema answers must follow, the candidates'
folders; each problem names its key."""

from __future__ import annotations

import pytest

from stages.common.loader import load_params
from tests.conftest import default_params, write_params
from tests.stages.common.test_loader import problems_for


def schema_file(text: str):
    def edit(p, tmp_path):
        (tmp_path / "answer.schema.json").write_text(text)
        p["scope"]["output_format"] = {"type": "json", "json_schema": str(tmp_path / "answer.schema.json")}

    return edit


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"type": "object", "required": ["answer"]}', None),
        ('{"type": "objekt"}', "is not a JSON Schema"),
        ("{not json", "is not a JSON Schema"),
    ],
)
def test_the_json_schema_file_is_checked(tmp_path, text, message):
    p = default_params()
    schema_file(text)(p, tmp_path)
    if message is None:
        load_params(write_params(tmp_path, p))
    else:
        assert any(message in m and "`scope.output_format.json_schema`" in m for m in problems_for(tmp_path, p))


def test_missing_candidate_path_is_named(tmp_path):
    p = default_params()
    p["select"]["candidates"][0]["path"] = "models/nowhere"
    assert any("models/nowhere does not exist" in m for m in problems_for(tmp_path, p))
