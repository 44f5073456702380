"""package: a refused model gets no alias and no bento; a passing one gets both."""

from pathlib import Path

import pytest

from stages.common.errors import GateRefused
from stages.common.io import read_json, write_json


def test_failed_gate_promotes_nothing(prepared, aligned, tmp_path):
    import bentoml
    from mlflow import MlflowClient

    from stages import package

    report = {"gates": {"passed": False, "failed": ["rougeL 0.1 (>= 0.9 needed)"], "reasons": []}}
    write_json(tmp_path / "eval.json", report)
    paths = prepared.paths.model_copy(update={"eval_metrics": str(tmp_path / "eval.json"),
                                              "package": str(tmp_path / "package")})
    bentos_before = len(bentoml.list())
    with pytest.raises(GateRefused, match="rougeL 0.1"):
        package.run(prepared, paths)
    assert not (tmp_path / "package").exists()
    assert len(bentoml.list()) == bentos_before
    client = MlflowClient()
    versions = client.search_model_versions(f"name='{prepared.project.name}'") if client.search_registered_models() else []
    for v in versions:  # any version present was registered by a passing package run, never this one
        assert v.tags.get("eval.rougeL") is not None


def test_passing_model_is_registered_champion_and_bento(packaged, prepared):
    import bentoml
    from mlflow import MlflowClient

    record = read_json(Path(prepared.paths.package) / "package.json")
    assert record == packaged["package"]
    client = MlflowClient()
    champion = client.get_model_version_by_alias(prepared.project.name, "champion")
    assert int(champion.version) == record["version"]
    bento = bentoml.get(record["bento"])
    assert record["bentoml_model"] in [str(m.tag) for m in bento.info.models]
    model_dir = Path(prepared.paths.package) / "model"
    assert (model_dir / "lifecycle.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("adapter_*")), "merged: one plain model folder"
