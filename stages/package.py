"""package: ship the candidate that passed its gates. Merge, register in MLflow (alias `champion`), build a bento.

    python -m stages.package        # exits 3, promoting nothing, when the gates in metrics/eval.json failed

One copy between the systems, here only: the merged model goes to the MLflow registry (a new version of the
model named `project.name`, alias `champion`) and to BentoML's model store, and `bentoml build` packs it with
serving/service.py into a bento. models/package/package.json records the versions and tags.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from stages.common.cli import stage_main
from stages.common.errors import GateRefused
from stages.evaluate import cell, variants
from stages.common.io import atomic_dir, read_json, write_json

log = logging.getLogger(__name__)

SERVING_DIR = Path(__file__).resolve().parents[1] / "serving"  # service.py + bentofile.yaml
RENDERER = Path(__file__).resolve().parent / "common" / "prompting.py"  # travels in the bento beside service.py
# What the bento installs; pinned to what this pipeline ran with (bentoml would otherwise lock to the newest).
SERVING_PACKAGES = ("torch", "transformers", "safetensors", "tokenizers", "pydantic")


def candidate_model(spec: dict):
    """The evaluated variant (a spec from evaluate.variants) as one plain model: a LoRA adapter is merged into
    its base, so the registry and the bento hold a folder that loads without the base or a hub."""
    from stages.common.models import load_model, load_tokenizer

    model = load_model(spec["ref"], adapter=spec["adapter"])
    if spec["adapter"]:
        model = model.merge_and_unload()
    return model, load_tokenizer(spec["adapter"] or spec["ref"])


def pinned(packages) -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p).split('+')[0]}" for p in packages]


def register(params, model_dir: Path, model, tokenizer, eval_report: dict) -> dict:
    import mlflow
    from mlflow import MlflowClient

    name = params.project.name
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="model",
        task="text-generation",
        pip_requirements=pinned(SERVING_PACKAGES),  # inferring them trips over torchvision on this stack
        registered_model_name=name,
        metadata={"variant": eval_report["candidate"], "gates": "passed"},
    )
    client = MlflowClient()
    version = info.registered_model_version
    client.set_registered_model_alias(name, params.package.alias, version)
    for k, v in eval_report["variants"][eval_report["candidate"]].items():
        client.set_model_version_tag(name, version, f"eval.{k}", cell(v))
    return {"registered_model": name, "version": int(version), "alias": params.package.alias,
            "model_uri": info.model_uri}


def build_bento(params, model_dir: Path, eval_report: dict) -> dict:
    import bentoml

    name = params.project.name
    labels = {"project": name, "variant": eval_report["candidate"]}
    with bentoml.models.create(name, labels=labels, metadata={"eval": eval_report["variants"][eval_report["candidate"]]}) as bm:
        shutil.copytree(model_dir, bm.path, dirs_exist_ok=True)
    model_tag = str(bm.tag)
    import yaml

    recipe = yaml.safe_load((SERVING_DIR / "bentofile.yaml").read_text(encoding="utf-8"))
    recipe["models"] = [model_tag]
    recipe.setdefault("python", {})["packages"] = pinned(SERVING_PACKAGES)
    recipe["labels"] = labels
    # A build context of its own: the service plus the tag of the model it serves, which travels in the bento.
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy(SERVING_DIR / "service.py", ctx)
        shutil.copy(RENDERER, ctx)
        write_json(Path(ctx) / "packaged_model.json", {"tag": model_tag})
        (Path(ctx) / "bentofile.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
        bento = bentoml.bentos.build_bentofile(str(Path(ctx) / "bentofile.yaml"), name=name, build_ctx=ctx)
    return {"bento": str(bento.tag), "bentoml_model": model_tag}


def run(params, paths) -> dict:
    from stages.common.models import renderer_for
    from stages.common.tracking import stage_run

    report = read_json(paths.eval_metrics)
    if not report["gates"]["passed"]:
        raise GateRefused(report["gates"]["failed"])  # no alias, no bento: nothing of this model ships
    selection, prompt = read_json(paths.selection), read_json(paths.prompt)
    variant = report["candidate"]
    with stage_run("package", params, params.package.model_dump()) as _, atomic_dir(paths.package) as out:
        import mlflow

        spec = variants(paths, selection, prompt)[variant]
        model, tokenizer = candidate_model(spec)
        model_dir = out / "model"
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        # The renderer's settings, as evaluate used them; few-shot examples only when a prompted baseline ships.
        renderer_for(params, tokenizer, model, examples=spec["examples"]).save(model_dir)
        write_json(model_dir / "lifecycle.json", {
            "project": params.project.name,
            "variant": variant,
            "eval": report["variants"][variant],
        })
        record = {"variant": variant, **register(params, model_dir, model, tokenizer, report),
                  **build_bento(params, model_dir, report)}
        write_json(out / "package.json", record)
        mlflow.set_tags({"registered_version": record["version"], "bento": record["bento"]})
        mlflow.log_artifact(str(model_dir / "prompt.json"))  # the renderer's settings the server uses, for review
    return {"package": record, "summary": f"{variant}: MLflow {record['registered_model']} v{record['version']} "
                                          f"@{record['alias']}, bento {record['bento']}"}


def main(argv: list[str] | None = None) -> int:
    return stage_main("package", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
