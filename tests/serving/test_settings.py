"""What the bento carries in place of the params models, which it does not carry: every `serve:` setting (in
packaged_model.json and in the model's serve.json) and every `prompt:` field (the model folder's prompt.json); how
serving/settings.py reads them, in a bento and from the repository."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from stages.common.io import read_json, write_json


@pytest.fixture
def repo_settings(packaged, monkeypatch):
    """serving/settings.py as the repository runs it: no packaged_model.json beside it, the model named by its tag."""
    monkeypatch.setenv("LIFECYCLE_MODEL_TAG", packaged["package"]["bentoml_model"])
    monkeypatch.delitem(sys.modules, "serving.settings", raising=False)
    assert not (Path(__file__).resolve().parents[2] / "serving" / "packaged_model.json").exists()
    return importlib.import_module("serving.settings")


def test_the_bento_carries_every_serve_setting_and_its_model_too(packaged, prepared):
    import bentoml

    from stages.common.params import Serve

    bento = bentoml.get(packaged["package"]["bento"])
    carried = read_json(Path(bento.path) / "src" / "packaged_model.json")["serve"]
    assert set(carried) == set(Serve.model_fields), "packaged_model.json: one entry per params.Serve field"
    assert carried == prepared.serve.model_dump()
    beside_the_weights = read_json(Path(bentoml.models.get(packaged["package"]["bentoml_model"]).path) / "serve.json")
    assert beside_the_weights == prepared.serve.model_dump(), "the model's own copy, for the repository run"


def test_the_bento_carries_every_prompt_field_with_the_projects_values(packaged, prepared):
    import bentoml

    from stages.common.params import Prompt

    model = bentoml.models.get(packaged["package"]["bentoml_model"])
    carried = read_json(Path(model.path) / "prompt.json")["format"]
    assert not set(Prompt.model_fields) - set(carried), "prompt.json lacks a params.Prompt field"
    assert {k: carried[k] for k in Prompt.model_fields} == prepared.prompt.model_dump(mode="json")


def test_from_the_repository_a_model_serves_with_the_settings_it_was_packaged_with(repo_settings, packaged, prepared):
    assert repo_settings.TAG == packaged["package"]["bentoml_model"]
    assert repo_settings.SERVE == prepared.serve.model_dump()


def test_an_environment_variable_overrides_one_setting_as_its_type(repo_settings, prepared, tmp_path):
    packaged_model = tmp_path / "packaged_model.json"
    write_json(packaged_model, {"tag": "help-desk:v1", "serve": prepared.serve.model_dump()})
    tag, serve = repo_settings.load(packaged_model, {"LIFECYCLE_SERVE_MAX_QUEUE": "4"})
    assert tag == "help-desk:v1"
    assert serve == {**prepared.serve.model_dump(), "max_queue": 4}
    with pytest.raises(RuntimeError, match="LIFECYCLE_SERVE_MAX_QUEUE='four': `serve.max_queue` takes int values"):
        repo_settings.load(packaged_model, {"LIFECYCLE_SERVE_MAX_QUEUE": "four"})


def test_a_model_packaged_without_serving_settings_is_refused_by_name(repo_settings):
    import bentoml

    with bentoml.models.create("no-settings") as bare:
        pass
    with pytest.raises(RuntimeError, match=f"model {bare.tag} carries no serving settings"):
        repo_settings.load(Path("/nonexistent/packaged_model.json"), {"LIFECYCLE_MODEL_TAG": str(bare.tag)})
