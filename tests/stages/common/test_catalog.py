"""The shipped model catalog against its schema; a broken entry is an error naming the entry and the field."""

from __future__ import annotations

import pytest
import yaml

from stages.common import catalog


def test_the_shipped_catalog_is_valid_and_covers_the_kinds_the_lifecycle_names():
    c = catalog.load()
    models = c.models
    assert len(models) >= 20
    assert {m.architecture for m in models} == {"decoder-only", "encoder-only", "encoder-decoder"}
    assert {m.kind for m in models} == {"open", "api"}
    assert {m.api.provider for m in models if m.api} == {"openai", "anthropic-bedrock", "google-vertex"}
    publishers = " ".join(m.publisher for m in models)
    for name in ("Meta", "Mistral", "Qwen", "Google", "Microsoft", "TII", "Hugging Face", "OpenAI", "Anthropic"):
        assert name in publishers, name
    for m in models:
        assert m.sources.card, m.id
        if m.kind == "api":
            assert m.api.price_per_1m_output_usd >= m.api.price_per_1m_input_usd > 0, m.id
            assert m.sources.pricing, m.id
        else:
            assert m.parameters and m.sources.licence and "/" in m.hub_id, m.id
    assert any(not m.commercial_use for m in models), "one entry shows the commercial-use filter"


@pytest.mark.parametrize("field", ["licence", "context_length", "languages", "sources"])
def test_an_entry_missing_a_field_fails_naming_it(tmp_path, field):
    raw = yaml.safe_load(catalog.CATALOG.read_text())
    del raw["models"][3][field]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=rf"models\.3\.{field}: Field required"):
        catalog.load(path)


def test_an_api_entry_without_prices_or_an_open_one_without_weights_fails(tmp_path):
    raw = yaml.safe_load(catalog.CATALOG.read_text())
    api = next(i for i, m in enumerate(raw["models"]) if m["kind"] == "api")
    del raw["models"][api]["api"]["price_per_1m_input_usd"]
    raw["models"][0]["hub_id"] = None
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError) as err:
        catalog.load(path)
    text = str(err.value)
    assert f"models.{api}.api.price_per_1m_input_usd: Field required" in text
    assert "models.0: Value error, an open model has a `hub_id`" in text


def test_duplicate_ids_fail(tmp_path):
    raw = yaml.safe_load(catalog.CATALOG.read_text())
    raw["models"].append(dict(raw["models"][1]))
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="ids must be unique"):
        catalog.load(path)


def test_lifecycle_catalog_prints_the_table_and_json(capsys):
    import json

    from flows.cli import main

    assert main(["catalog"]) == 0
    out = capsys.readouterr().out
    assert "gpt-4o-mini" in out and "qwen2.5-0.5b-instruct" in out and "encoder-decoder" in out
    assert main(["catalog", "--json", "--kind", "api"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert entries and all(e["kind"] == "api" and e["sources"]["pricing"].startswith("https://") for e in entries)
