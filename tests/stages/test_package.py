"""package: a refused model gets no alias and no bento; a passing one gets both."""

from pathlib import Path

import pytest

from stages.common.errors import GateRefused
from stages.common.io import read_json, write_json
from stages.common.tracking import sha256


def test_failed_gate_promotes_nothing(prepared, aligned, tmp_path):
    import bentoml
    from mlflow import MlflowClient

    from stages import package

    report = {"gates": {"passed": False, "failed": ["rougeL 0.1 (>= 0.9 needed)"], "reasons": []}}
    write_json(tmp_path / "eval.json", report)
    paths = prepared.paths.model_copy(
        update={"eval_metrics": str(tmp_path / "eval.json"), "package": str(tmp_path / "package")}
    )
    client = MlflowClient()

    def versions() -> int:
        name = prepared.project.name
        return len(client.search_model_versions(f"name='{name}'")) if client.search_registered_models() else 0

    bentos_before, versions_before = len(bentoml.list()), versions()
    with pytest.raises(GateRefused, match="rougeL 0.1"):
        package.run(prepared, paths)
    assert not (tmp_path / "package").exists()
    assert len(bentoml.list()) == bentos_before, "no bento built"
    assert versions() == versions_before, "no model version registered"


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
    # The serving settings travel in the bento; the resources reach its service configuration (cloud targets).
    packed = read_json(Path(bento.path) / "src" / "packaged_model.json")
    registered = {k: record[k] for k in ("registered_model", "version", "alias")}
    assert packed == {"tag": record["bentoml_model"], "serve": prepared.serve.model_dump(), "registered": registered}
    assert bento.info.services[0].config["resources"] == {"cpu": "1", "memory": "2Gi"}
    assert (Path(bento.path) / "src" / "engine.py").is_file()
    model_dir = Path(prepared.paths.package) / "model"
    assert (model_dir / "lifecycle.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("adapter_*")), "merged: one plain model folder"
    # Served on the engine and at the precision evaluate chose, with why.
    report = read_json(prepared.paths.eval_metrics)
    shipped = read_json(model_dir / "lifecycle.json")
    precision = report["serving"]["precision"]
    assert record["precision"] == precision == shipped["precision"] and record["engine"] == "openvino"
    trial = report["serving"]["trials"][precision]
    assert record["eval_answers"] == record["variant"] + ("" if precision == "full" else f"@{precision}")
    assert shipped["eval"] == (trial["metrics"] if precision != "full" else report["variants"][record["variant"]])
    assert (
        champion.tags["lifecycle.precision"] == precision
        and champion.tags["lifecycle.precision_why"] == (report["serving"]["why"])
        and champion.tags["lifecycle.engine"] == "openvino"
    )
    # The bento carries the GGUF file evaluate answered with (same bytes), not the float32 weights.
    bento_model = Path(bentoml.models.get(record["bentoml_model"]).path)
    assert shipped["file"] == "model.gguf" and shipped["gguf_type"] == trial["engine"]["gguf_type"]
    assert sha256(bento_model / "model.gguf") == trial["engine"]["sha256"]
    assert not list(bento_model.glob("*.safetensors"))
    assert (bento_model / "model.gguf").stat().st_size < (model_dir / "model.safetensors").stat().st_size
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text()
    assert "openvino-genai==2026.4.1.0" in requirements, "the engine travels with the bento"
    assert (Path(bento.path) / "src" / "generation.py").is_file()


def test_a_second_version_that_is_no_better_is_challenger_then_promote_and_rollback(
    packaged, prepared, tiny_root, monkeypatch
):
    from mlflow import MlflowClient

    from flows.cli import main as lifecycle
    from stages import package
    from stages.common.registry import history

    name, first = prepared.project.name, packaged["package"]["version"]
    latest = max(int(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'"))
    # The tiny project's primary metric is latency, one number: a second version cannot be compared row by row.
    second = package.run(prepared, prepared.paths)["package"]
    assert second["version"] == latest + 1 and second["alias"] == "challenger"
    assert second["versus_champion"] is None and "latency_ms is one number measured on the model" in second["why"]
    # On a per-row primary metric, the same answers on the same rows are compared and found no better.
    report = read_json(prepared.paths.eval_metrics)
    write_json(tiny_root / "eval-rougeL.json", {**report, "primary_metric": "rougeL", "primary_direction": "higher"})
    paths = prepared.paths.model_copy(update={"eval_metrics": str(tiny_root / "eval-rougeL.json")})
    second = package.run(prepared, paths)["package"]
    assert second["version"] == latest + 2 and second["alias"] == "challenger"
    assert second["versus_champion"]["difference"] == 0.0 and "does not beat champion" in second["why"]
    client = MlflowClient()
    assert int(client.get_model_version_by_alias(name, "champion").version) == first
    v2 = client.get_model_version(name, str(second["version"]))
    for tag in (
        "lifecycle.git_commit",
        "lifecycle.params_sha256",
        "lifecycle.dvc_lock_sha256",
        "lifecycle.data.eval_sha256",
        "lifecycle.bento",
        "eval.latency_ms",
    ):
        assert v2.tags.get(tag), tag
    assert v2.tags["lifecycle.verdict"].startswith("challenger: does not beat champion")
    assert "Registry: challenger" in v2.description and "bootstrap intervals" in v2.description

    monkeypatch.chdir(tiny_root)  # the commands read the project's params.yaml from the working directory
    assert lifecycle(["promote", str(second["version"]), "--reason", "reviewed by hand"]) == 0
    assert int(client.get_model_version_by_alias(name, "champion").version) == second["version"]
    assert "challenger" not in client.get_registered_model(name).aliases
    assert (
        client.get_model_version(name, str(second["version"]))
        .tags["lifecycle.champion_since"]
        .endswith("promoted by hand: reviewed by hand")
    )
    assert history(client, name)[-2:] == [first, second["version"]]
    assert lifecycle(["promote", str(second["version"]), "--reason", "again"]) == 0
    assert history(client, name)[-2:] == [first, second["version"]], "the champion promoted again: no new entry"
    assert lifecycle(["rollback", "--reason", "latency regression"]) == 0
    assert int(client.get_model_version_by_alias(name, "champion").version) == first
    assert (
        client.get_model_version(name, str(second["version"]))
        .tags["lifecycle.rolled_back"]
        .endswith("latency regression")
    )
    assert lifecycle(["promote", "999", "--reason", "typo"]) == 1, "a version that does not exist"
    assert lifecycle(["rollback", "--reason", "again"]) == 1, "nothing earlier than the first champion"


def test_a_retrieval_variant_ships_its_index(packaged_rag, prepared):
    import bentoml
    from mlflow import MlflowClient

    from stages.common.retrieval import Retriever

    record = packaged_rag["package"]
    assert record["variant"].endswith("_rag")
    model_dir = Path(packaged_rag["paths"].package) / "model"
    info = read_json(model_dir / "lifecycle.json")
    assert info["retrieval"]["collection"] == "knowledge" and info["retrieval"]["top_k"] == 2
    shipped = Retriever.open(model_dir / "index")  # the packaged copy alone answers the search
    assert len(shipped.chunks) == info["retrieval"]["chunks"]
    bento = bentoml.get(record["bento"])
    assert (Path(bento.path) / "src" / "retrieval.py").is_file()
    packages = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text().split()
    names = {p.split("==")[0] for p in packages}
    assert {"chromadb", "bm25s", "openvino"} <= names, "the store, BM25 and the exported embedder's runtime"
    assert not {"torch", "sentence-transformers"} & names, "a tiny champion on OpenVINO: nothing in it runs torch"
    store_copy = Path(bentoml.models.get(record["bentoml_model"]).path) / "index"
    assert (store_copy / "lifecycle.json").is_file() and (store_copy / "embedder" / "model.xml").is_file()
    run = MlflowClient().get_run(MlflowClient().get_model_version(prepared.project.name, str(record["version"])).run_id)
    assert "index" in [a.path for a in MlflowClient().list_artifacts(run.info.run_id)]


def test_a_package_that_fails_after_registering_leaves_no_version(packaged, prepared, tiny_root, tmp_path):
    """A real failure after the version exists (the bento store is unusable): the version is withdrawn, the
    champion stays, no package folder is left (the run's own process, as DVC runs it)."""
    import os
    import subprocess
    import sys

    from mlflow import MlflowClient

    from tests.conftest import tiny_params_dict, write_params

    client = MlflowClient()
    name = prepared.project.name
    before = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    champion = client.get_model_version_by_alias(name, "champion").version
    p = tiny_params_dict(tiny_root)
    p["paths"]["package"] = str(tmp_path / "package")
    params_file = write_params(tmp_path / "project", p)
    (tmp_path / "not-a-folder").write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "stages.package", "--params", str(params_file)],
        cwd=tmp_path,
        env={**os.environ, "BENTOML_HOME": str(tmp_path / "not-a-folder")},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode != 0
    assert f"removed {name} version" in out.stderr, out.stderr[-3000:]
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'")) == before
    assert client.get_model_version_by_alias(name, "champion").version == champion
    assert not (tmp_path / "package").exists()


def test_a_version_an_unfinished_package_run_left_is_removed_by_the_next(packaged, prepared):
    """A tracking outage between registering and the alias leaves a version `withdraw` could not reach: the next
    package run of the same workspace removes it, and only it (not a colleague's registration in progress)."""
    from mlflow import MlflowClient

    from stages import package

    client = MlflowClient()
    name = prepared.project.name
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.tags[package.PACKAGED_TAG] == "true" and champion.tags[package.WORKSPACE_TAG]
    ours = client.create_model_version(name, champion.source, tags={package.WORKSPACE_TAG: package.workspace_id()})
    theirs = client.create_model_version(name, champion.source, tags={package.WORKSPACE_TAG: "elsewhere:/work/project"})
    try:
        assert package.sweep_unfinished(client, name) == [int(ours.version)]
        left = {v.version for v in client.search_model_versions(f"name='{name}'")}
        assert ours.version not in left and {theirs.version, champion.version} <= left
        assert package.sweep_unfinished(client, name) == []
    finally:
        client.delete_model_version(name, theirs.version)
