"""package: ship the candidate that passed its gates. Merge, register in MLflow, build a bento.

    python -m stages.package        # exits 3, registering nothing, when the gates in metrics/eval.json failed

One copy between the systems, here only: the merged model goes to the MLflow registry (a new version of the
model named `project.name`, with its metrics and confidence intervals, and its lineage as tags) and to BentoML's
model store, and `bentoml build` packs it with serving/service.py into a bento. The version takes the alias
`champion` only if it beats the current champion on the primary metric on the same eval rows (a paired test of
the two versions' answers); otherwise it is `challenger` (stages/common/registry.py). models/package/package.json
records the version, the alias, why, and the bento.
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
from pathlib import Path

from stages.common.cli import stage_main
from stages.common.confidence import cell
from stages.common.errors import GateRefused
from stages.common.generation import GGUF_FILE, OPENVINO
from stages.common.io import atomic_dir, read_json, read_jsonl, write_json
from stages.common.precision import FULL, LIBRARY
from stages.common.registry import SERVING_PACKAGES, TORCH_PACKAGES, bento_packages, pinned
from stages.common.retrieval import CARD, EMBEDDER
from stages.common.tracking import git_commit, sha256
from stages.common.variants import variants

log = logging.getLogger(__name__)
WORKSPACE_TAG = "lifecycle.workspace"  # host:folder of the workspace whose package run registered the version
PACKAGED_TAG = "lifecycle.packaged"  # set last: the version has its bento and its alias

SERVING_DIR = Path(__file__).resolve().parents[1] / "serving"  # service.py + bentofile.yaml
# The bento carries the service's modules (serving/*.py: the service, its settings, protocol, telemetry, keys and
# the request queue) and, beside them, the generation engine, the renderer, the serving precisions and the retriever.
SHARED = [
    Path(__file__).resolve().parent / "common" / f
    for f in ("generation.py", "pii.py", "precision.py", "prompting.py", "retrieval.py")
] + sorted(SERVING_DIR.glob("*.py"))


def lineage(params, paths) -> dict[str, str]:
    """What this version was made from, as registry tags: the commit, dvc.lock, params.yaml and the data splits."""
    tags = {
        "lifecycle.git_commit": git_commit(),
        "lifecycle.dvc_lock_sha256": sha256(Path("dvc.lock")),
        "lifecycle.params_sha256": sha256(Path("params.yaml")),
    }
    for f in sorted(Path(paths.processed).glob("*.jsonl")):
        tags[f"lifecycle.data.{f.stem}_sha256"] = sha256(f)
    return tags


ANSWERS = "eval/candidate_answers.json"  # logged by every package run: what the next version is compared with


def shipped_precision(eval_report: dict) -> str:
    """The precision the candidate ships at: evaluate's choice among `package.quantize`, else its trained weights."""
    return (eval_report.get("serving") or {}).get("precision", FULL)


def shipped(eval_report: dict) -> str:
    """The shipped model's name in reports/eval_answers.jsonl (`sft`, or `sft@int8` when it ships quantized)."""
    precision = shipped_precision(eval_report)
    return eval_report["candidate"] + ("" if precision == FULL else f"@{precision}")


def shipped_engine(eval_report: dict) -> dict:
    """What generated the shipped answers in evaluate: the engine, its file type and the file's digest."""
    precision = shipped_precision(eval_report)
    if precision != FULL:
        return eval_report["serving"]["trials"][precision]["engine"]
    return eval_report["engines"][eval_report["candidate"]]


def engine_file(params, model, tokenizer, model_dir: Path, eval_report: dict) -> str:
    """The GGUF file the openvino engine serves, written as evaluate wrote it (same weights, same type, same
    writer): its digest must be the one evaluate's answers came from, or nothing ships."""
    from stages.common.engines import write_engine_file

    expected = shipped_engine(eval_report)
    out = model_dir / GGUF_FILE
    write_engine_file(model, tokenizer, out, shipped_precision(eval_report), params.project.name)
    if expected.get("sha256") and sha256(out) != expected["sha256"]:
        raise RuntimeError(
            f"{out}: the {expected['gguf_type']} file differs from the one evaluate answered with "
            f"(sha256 {sha256(out)[:12]} vs {expected['sha256'][:12]}); run evaluate again (`dvc repro evaluate`)"
        )
    return GGUF_FILE


def shipped_metrics(eval_report: dict) -> dict:
    """The shipped model's metrics with their intervals: the candidate's, or its quantized trial's."""
    precision = shipped_precision(eval_report)
    if precision == FULL:
        return eval_report["variants"][eval_report["candidate"]]
    return eval_report["serving"]["trials"][precision]["metrics"]


def against_champion(params, paths, client, name: str, report: dict, answers: list[str]):
    """The registry's verdict for the new version: the paired comparison with the champion's answers, which the
    champion's package run logged with the digest of the eval split they answer."""
    import mlflow

    from stages.common.confidence import Resampling, paired
    from stages.common.metrics import REGISTRY, context, row_scores
    from stages.common.registry import champion_version, decide

    metric = report["primary_metric"]
    higher = report["primary_direction"] == "higher"  # the primary KPI's direction, as evaluate chose by it
    champion = champion_version(client, name)
    comparison, not_compared = None, ""
    if champion is not None and REGISTRY[metric].compute is None:
        not_compared = f"the primary metric {metric} is one number measured on the model, not per row"
    elif champion is not None:
        run_id = client.get_model_version_by_alias(name, "champion").run_id
        try:
            theirs = read_json(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ANSWERS))
        except Exception as exc:  # a champion registered before answers were logged, or its artifacts gone
            log.warning("champion v%s: no logged eval answers (%s)", champion, exc)
            theirs = None
        eval_file = Path(paths.processed) / "eval.jsonl"
        if theirs is None:
            not_compared = f"champion v{champion} has no logged eval answers"
        elif theirs["eval_sha256"] != sha256(eval_file):
            not_compared = f"champion v{champion} was evaluated on another eval split"
        else:
            how = Resampling(params.evaluate.resamples, params.evaluate.confidence_level, params.project.seed)
            rows = read_jsonl(eval_file)
            refs, kw = [r["references"] for r in rows], {**context(params), "questions": [r["prompt"] for r in rows]}
            comparison = paired(
                metric,
                answers,
                theirs["answers"],
                refs,
                how,
                row_scores(metric, answers, refs, **kw),
                row_scores(metric, theirs["answers"], refs, **kw),
                **kw,
            )
    verdict = decide(
        champion, comparison, metric, higher, params.evaluate.confidence_level, params.package.promote, not_compared
    )
    return verdict, comparison


def base_model_line(base: dict) -> str:
    """The base model as the card names it: who made it, its licence, size, context and where the weights came from."""
    size = f"{base['parameters'] / 1e6:,.1f}M parameters" if base.get("parameters") else "size unknown"
    by = f" ({base['publisher']})" if base.get("publisher") else ""
    context = f", context {base['context_length']:,} tokens" if base.get("context_length") else ""
    card = f", card {base['card']}" if base.get("card") else ""
    return (
        f"Base model: {base['name']}{by}, licence {base['licence']}, {size}{context}; weights from {base['weights']}"
        f"{card}."
    )


def register(params, paths, model_dir: Path, model, tokenizer, eval_report: dict) -> dict:
    import mlflow
    from huggingface_hub import ModelCard
    from mlflow import MlflowClient

    name = params.project.name
    candidate, precision = eval_report["candidate"], shipped_precision(eval_report)
    answers = [r[shipped(eval_report)] for r in read_jsonl(Path(paths.eval_report).with_name("eval_answers.jsonl"))]
    with tempfile.TemporaryDirectory() as tmp:
        write_json(
            Path(tmp) / Path(ANSWERS).name,
            {
                "eval_sha256": sha256(Path(paths.processed) / "eval.jsonl"),
                "primary_metric": eval_report["primary_metric"],
                "answers": answers,
            },
        )
        mlflow.log_artifact(str(Path(tmp) / Path(ANSWERS).name), artifact_path=str(Path(ANSWERS).parent))
    client = MlflowClient()
    verdict, comparison = against_champion(params, paths, client, name, eval_report, answers)
    # Our own card: without one, MLflow asks the hub for the card of a local folder's name (and, offline, retries).
    base = read_json(paths.selection)["selected"]["model"]
    card = ModelCard(
        f"---\nlicense: {base['licence']}\n---\n# {name}\n\n"
        f"{params.project.description}\n\n{base_model_line(base)}\n\n"
        f"Variant {candidate}; gates: " + "; ".join(eval_report["gates"]["reasons"]) + "\n"
    )
    info = mlflow.transformers.log_model(
        model_card=card,
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="model",
        task="text-generation",
        pip_requirements=pinned(SERVING_PACKAGES + TORCH_PACKAGES),  # inferring them trips over torchvision here
        metadata={"variant": candidate, "precision": precision, "gates": "passed"},
    )
    # Registered in one call with the workspace tag, so a version this workspace left unfinished is recognisable.
    version = int(mlflow.register_model(info.model_uri, name, tags={WORKSPACE_TAG: workspace_id()}).version)
    metrics = shipped_metrics(eval_report)
    tags = {
        "lifecycle.variant": candidate,
        "lifecycle.precision": precision,
        "lifecycle.engine": shipped_engine(eval_report)["engine"],
        "lifecycle.engine_why": shipped_engine(eval_report)["why"],
        **({"lifecycle.precision_why": eval_report["serving"]["why"]} if eval_report.get("serving") else {}),
        "lifecycle.primary_metric": eval_report["primary_metric"],
        "lifecycle.verdict": f"{verdict.alias}: {verdict.why}",
        **lineage(params, paths),
        **{f"eval.{k}": cell(v) for k, v in metrics.items()},
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, v)
    run = mlflow.active_run()
    client.update_model_version(
        name,
        str(version),
        description="\n".join(
            [
                f"Variant **{candidate}** of {name}, from run {run.info.run_id} (experiment {run.info.experiment_id}).",
                f"Registry: {verdict.alias} — {verdict.why}.",
                f"Served at {precision}"
                + (f": {eval_report['serving']['why']}." if eval_report.get("serving") else "."),
                "Gates: " + "; ".join(eval_report["gates"]["reasons"]),
                f"Metrics on the held-out eval split, with {eval_report['confidence_level']:.0%} bootstrap intervals: "
                + ", ".join(f"{k} {cell(v)}" for k, v in metrics.items()),
            ]
        ),
    )
    return {
        "registered_model": name,
        "version": version,
        "alias": verdict.alias,
        "why": verdict.why,
        "versus_champion": comparison,
        "model_uri": info.model_uri,
    }


def alias(record: dict) -> None:
    """Apply the registry's verdict: crown the new version champion, or make it the challenger; then mark the
    version packaged (the mark that tells a finished version from one a failed run left behind)."""
    from mlflow import MlflowClient

    from stages.common.registry import CHALLENGER, CHAMPION, crown

    client, name, version = MlflowClient(), record["registered_model"], record["version"]
    client.set_model_version_tag(name, str(version), "lifecycle.bento", record["bento"])
    if record["alias"] == CHAMPION:
        crown(client, name, version, record["why"])
    else:
        client.set_registered_model_alias(name, CHALLENGER, str(version))
    client.set_model_version_tag(name, str(version), PACKAGED_TAG, "true")


def workspace_id() -> str:
    return f"{socket.gethostname()}:{Path.cwd().resolve()}"


def sweep_unfinished(client, name: str) -> list[int]:
    """Versions that a package run of this workspace registered and never finished (the tracking server went away
    between registering and the alias, so `withdraw` could not reach it): deleted now. Only this workspace's: one
    run at a time holds it, so none of them is in progress; a colleague's registration on a shared server is not
    touched."""
    if not client.search_registered_models(f"name = '{name}'"):
        return []
    here, removed = workspace_id(), []
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get(WORKSPACE_TAG) == here and PACKAGED_TAG not in version.tags and not version.aliases:
            client.delete_model_version(name, version.version)
            log.warning(
                "removed %s version %s: registered by a package run of this workspace that did not finish",
                name,
                version.version,
            )
            removed.append(int(version.version))
    return removed


def withdraw(name: str, run_id: str) -> None:
    """Packaging failed after the registry had a new version (its bento or alias never came): remove the version,
    so the registry never lists one that cannot be served. Best effort: with the tracking server gone, say which."""
    from mlflow import MlflowClient

    try:
        client = MlflowClient()
        for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
            client.delete_model_version(name, version.version)
            log.warning("package failed: removed %s version %s, registered by this run", name, version.version)
    except Exception as exc:  # the server is gone: the next package run of this workspace sweeps the version
        log.error(
            "package failed and the registry could not be cleaned (%s): the %s versions of run %s have no "
            "alias and no bento; the next package run of this workspace removes them",
            exc,
            name,
            run_id,
        )


def ship_index(paths, model_dir: Path) -> dict:
    """A retrieval variant ships its index inside the model folder (`index/`): the embedded Chroma store, or only
    the card (collection and server URL) and the embedder when the store is a server."""
    card = read_json(Path(paths.index) / CARD)
    if card.get("url"):
        shutil.copytree(Path(paths.index) / EMBEDDER, model_dir / "index" / EMBEDDER)
    else:
        shutil.copytree(paths.index, model_dir / "index")
    if card.get("rerank_model") and Path(card["rerank_model"]).is_dir():  # a local reranker travels too
        shutil.copytree(card["rerank_model"], model_dir / "index" / "reranker")
        card = {**card, "rerank_model": "reranker"}
    write_json(model_dir / "index" / CARD, card)
    return card


def build_bento(params, model_dir: Path, eval_report: dict, registered: dict) -> dict:
    import bentoml

    name = params.project.name
    labels = {"project": name, "variant": eval_report["candidate"]}
    engine = shipped_engine(eval_report)["engine"]
    with bentoml.models.create(name, labels=labels, metadata={"eval": shipped_metrics(eval_report)}) as bm:
        # The openvino engine serves the GGUF file alone: the float32 weights stay in the MLflow registry.
        ignore = shutil.ignore_patterns("*.safetensors") if engine == OPENVINO else None
        shutil.copytree(model_dir, bm.path, dirs_exist_ok=True, ignore=ignore)
        # The serving settings beside the weights too: a model served from the repository (no packaged_model.json)
        # runs as it was packaged. A file, not metadata: BentoML's metadata refuses nulls (`gpu_type: null`).
        write_json(Path(bm.path) / "serve.json", params.serve.model_dump())
    model_tag = str(bm.tag)
    import yaml

    recipe = yaml.safe_load((SERVING_DIR / "bentofile.yaml").read_text(encoding="utf-8"))
    recipe["models"] = [model_tag]
    card = model_dir / "index" / CARD
    precision = shipped_precision(eval_report)
    quantizer = LIBRARY[precision] if precision != FULL and engine != OPENVINO else None
    reranks = card.is_file() and bool(read_json(card).get("rerank_model"))
    recipe.setdefault("python", {})["packages"] = pinned(
        bento_packages(engine == OPENVINO, quantizer, card.is_file(), reranks)
    )
    recipe["labels"] = labels
    # A build context of its own: the service plus the tag of the model it serves, which travels in the bento.
    with tempfile.TemporaryDirectory() as ctx:
        for f in SHARED:
            shutil.copy(f, ctx)
        # What the service reads at start-up: the model and its serving settings (params `serve:`).
        # And the registry version, which the served model's traces name.
        write_json(
            Path(ctx) / "packaged_model.json",
            {"tag": model_tag, "serve": params.serve.model_dump(), "registered": registered},
        )
        (Path(ctx) / "bentofile.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
        bento = bentoml.bentos.build_bentofile(str(Path(ctx) / "bentofile.yaml"), name=name, build_ctx=ctx)
    return {"bento": str(bento.tag), "bentoml_model": model_tag}


def run(params, paths) -> dict:
    from stages.common.models import candidate_model, renderer_for
    from stages.common.tracking import stage_run

    report = read_json(paths.eval_metrics)
    if not report["gates"]["passed"]:
        raise GateRefused(report["gates"]["failed"])  # no alias, no bento: nothing of this model ships
    selection, prompt = read_json(paths.selection), read_json(paths.prompt)
    variant = report["candidate"]
    with stage_run("package", params, params.package.model_dump()) as _, atomic_dir(paths.package) as out:
        import mlflow
        from mlflow import MlflowClient

        spec = variants(paths, selection, prompt, [m.value for m in params.align.methods])[variant]
        model, tokenizer = candidate_model(spec)
        model_dir = out / "model"
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        # The renderer's settings, as evaluate used them; few-shot examples only when a prompted baseline ships.
        renderer_for(params, tokenizer, model, examples=spec["examples"]).save(model_dir)
        engine = shipped_engine(report)
        file = engine_file(params, model, tokenizer, model_dir, report) if engine["engine"] == OPENVINO else None
        write_json(
            model_dir / "lifecycle.json",
            {
                "project": params.project.name,
                "variant": variant,
                "eval": shipped_metrics(report),
                # The engine and precision evaluate answered with: OpenVINO runs `file` as it is; transformers
                # quantizes the weights at start-up (precision.py).
                "precision": shipped_precision(report),
                "engine": engine["engine"],
                "file": file,
                "gguf_type": engine.get("gguf_type"),
                "retrieval": ship_index(paths, model_dir) if spec.get("rag") else None,
                # What the server's traces redact in (serve.tracing: redacted): the data stage's phone region.
                "phone_region": params.scope.privacy.phone_region,
            },
        )
        sweep_unfinished(MlflowClient(), params.project.name)
        try:
            record = {
                "variant": variant,
                "precision": shipped_precision(report),
                "engine": engine["engine"],
                "eval_answers": shipped(report),  # its column in reports/eval_answers.jsonl: what it answered there
                **register(params, paths, model_dir, model, tokenizer, report),
            }
            registered = {k: record[k] for k in ("registered_model", "version", "alias")}
            record.update(build_bento(params, model_dir, report, registered))
            write_json(out / "package.json", record)
            alias(record)  # last: an alias never points at a version without its bento
        except BaseException:
            withdraw(params.project.name, mlflow.active_run().info.run_id)
            raise
        mlflow.set_tags(
            {"registered_version": record["version"], "bento": record["bento"], "registry_alias": record["alias"]}
        )
        mlflow.log_artifact(str(model_dir / "prompt.json"))  # the renderer's settings the server uses, for review
        if (model_dir / "index").is_dir():  # the knowledge the version answers from, beside it in the run
            mlflow.log_artifacts(str(model_dir / "index"), artifact_path="index")
    return {
        "package": record,
        "summary": f"{variant}@{shipped_precision(report)} on {record['engine']}: MLflow {record['registered_model']} v{record['version']} "
        f"@{record['alias']} ({record['why']}), bento {record['bento']}",
    }


def main(argv: list[str] | None = None) -> int:
    return stage_main("package", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
