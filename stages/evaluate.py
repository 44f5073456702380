"""evaluate: every variant answers the held-out eval questions; the KPI gates decide what may ship.

    python -m stages.evaluate       # writes metrics/eval.json, reports/eval.md, reports/eval.png

Variants: the selected base model zero-shot and with the searched prompt (the baselines), the SFT model and one
aligned model per `align.methods` entry (`aligned_dpo`, `aligned_rlhf`); with a knowledge index (the `integrate`
stage), each of these but the prompted baseline also answers with the retrieved chunks in its prompt
(`baseline_rag`, `sft_rag`, `aligned_dpo_rag`, ...): prompting, RAG,
fine-tuning and fine-tuning + RAG on the same rows. `baseline_rag` is a baseline (tuning must beat RAG alone);
the candidate is the tuned variant best on the primary metric (the first KPI's) unless a simpler one is not worse
with confidence (`gates.prefer_simpler`: a model before its `_rag` twin, SFT before alignment); a `_rag` candidate
ships with its index. Each variant gets the task's metrics (stages/common/metrics.py; `evaluate.metrics` overrides
them), the perplexity of the reference answers, latency per answer and perplexity on the general split (the
forgetting check). Prompts come from the one renderer, as in training and serving; answers from the engine that
serves (stages/common/engines.py). A `versus: baseline` KPI compares the candidate with the best baseline on that
KPI's metric. A candidate whose gates pass is tried at each serving precision (stages/common/precision_trials.py).

Every text metric carries a bootstrap confidence interval over the eval rows, and the candidate is compared with
that best baseline on the same rows (paired: difference, interval, permutation p-value; stages/common/confidence.py).
metrics/eval.json holds `{"variants": {variant: {metric: {"value", "ci_low", "ci_high"}}}, "comparisons": ...,
"gates": ...}`; a metric measured on the model (latency, perplexities) has a value only.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from stages.common import guardrails
from stages.common.answer_cache import AnswerCache, weights_digest
from stages.common.cli import stage_main
from stages.common.errors import ProjectError
from stages.common.eval_report import precision_plot, write_report
from stages.common.gates import choose_precision, prefer_simpler, should_promote
from stages.common.io import read_json, read_jsonl, write_json
from stages.common.measure import decoding
from stages.common.metrics import REGISTRY, evaluated_text_metrics, project_metrics
from stages.common.params import Params, Paths
from stages.common.precision_trials import quality_metric, try_precisions
from stages.common.significance import better_with_confidence, uncertainty
from stages.common.variants import BASELINES, RAG, UNTUNED, rung, variants

log = logging.getLogger(__name__)


def with_context(paths: Paths, rows: list[dict]) -> tuple[list[dict], dict]:
    """The eval rows with the chunks the index retrieves for each (`context`, and their sections as `retrieved`),
    and the index: its card plus every chunk's text (for the context budget)."""
    from stages.common.retrieval import CARD, Retriever

    retriever = Retriever.open(paths.index)
    found = retriever.search([r["prompt"] for r in rows])
    rows = [
        {**r, "context": [c["text"] for c in f], "retrieved": [c["section"] for c in f]}
        for r, f in zip(rows, found, strict=True)
    ]
    index = {**read_json(Path(paths.index) / CARD), "chunk_texts": [c["text"] for c in retriever.chunks.values()]}
    return rows, index


def check_context_budget(
    renderer, chunk_texts: list[str], top_k: int, prompts: list[str], max_new_tokens: int, variant: str
) -> None:
    """top_k x the longest chunk + the longest prompt + max_new_tokens must fit the model's context, in its own
    tokens; otherwise retrieval would silently lose passages. A ProjectError naming the numbers."""

    if renderer.context is None:
        return
    fmt = renderer.fmt.context_template
    chunk = max(renderer.count(fmt.format(text=" ".join(t.split()))) for t in chunk_texts)
    prompt = max(renderer.count(p) for p in prompts)
    need = top_k * chunk + prompt + max_new_tokens
    if need > renderer.context:
        raise ProjectError(
            [
                f"`integrate.top_k` {top_k} x the longest chunk ({chunk} tokens of the {variant} model) "
                f"+ the longest eval prompt ({prompt}) + `evaluate.max_new_tokens` ({max_new_tokens}) "
                f"= {need} tokens, over the model's context of {renderer.context}: lower "
                "integrate.top_k or integrate.chunk_tokens"
            ]
        )


def not_reached(paths: Paths, methods: list[str]) -> dict[str, str]:
    """The training stages the escalation ladder stopped before ({stage: why}); their variants are left out."""
    # The index is not a rung without a knowledge source, and the flow's prompting check comes before `integrate`.
    index = Path(paths.index) / "lifecycle.json"
    infos = {
        "integrate": read_json(index) if index.is_file() else {},
        "adapt": read_json(Path(paths.sft) / "lifecycle.json"),
        **{f"align@{m}": read_json(Path(paths.aligned) / m / "lifecycle.json") for m in methods},
    }
    return {stage: info["not_reached"] for stage, info in infos.items() if info.get("not_reached")}


def variant_model(spec: dict, device: str):
    """A variant's model as its engine runs it: a LoRA adapter merged into its base (the weights that would ship);
    a soft prompt, which cannot be merged, on its base as PEFT runs it."""
    from stages.common.models import candidate_model, load_model, load_tokenizer

    try:
        return candidate_model(spec, device)
    except ProjectError:  # a soft prompt (adapt.technique: prompt_tuning): transformers runs it as it is
        return load_model(spec["ref"], device, adapter=spec["adapter"]), load_tokenizer(spec["adapter"])


def evaluate_variant(
    name: str,
    spec: dict,
    eval_rows: list[dict],
    general: list[str],
    params: Params,
    device: str,
    index: dict | None = None,
    cache: AnswerCache | None = None,
) -> tuple[dict, list[str], dict]:
    """A variant's metrics, answers and the engine that gave them (served answers come from the same engine). An
    entry of `cache` with the same weights, engine, prompts and decoding is taken instead of answering again."""
    from stages.common.engines import engine_choice, engine_version, open_engine
    from stages.common.measure import measure_prompts
    from stages.common.models import perplexity, render_all, renderer_for

    model, tok = variant_model(spec, device)
    n_new = params.evaluate.max_new_tokens
    renderer = renderer_for(params, tok, model, max_new_tokens=n_new)
    if spec.get("rag"):  # checked on the prompts without their passages: the budget adds those
        check_context_budget(
            renderer,
            index["chunk_texts"],
            index["top_k"],
            render_all(renderer, [{**r, "context": None} for r in eval_rows], "eval", []),
            n_new,
            name,
        )
    prompts = render_all(renderer, eval_rows, "eval", spec["examples"])
    soft_prompt = hasattr(model, "peft_config")
    engine, why = (
        ("transformers", "a soft prompt runs on its base in PEFT")
        if soft_prompt
        else engine_choice(params, model.config.model_type, device)
    )
    key = AnswerCache.key(
        weights=weights_digest(spec["ref"], spec["adapter"]),
        engine=engine,
        fast_math=params.serve.fast_math,
        engine_version=engine_version(engine),
        prompts=prompts,
        references=[r["references"] for r in eval_rows],
        decoding=decoding(params),
        metrics=evaluated_text_metrics(params),
        general=general,
    )
    if cache is not None and (hit := cache.get(key)):
        log.info("evaluate %s: answers and figures from the cache (%s, same weights, prompts and engine)", name, key)
        return hit["metrics"], hit["answers"], hit["engine"]
    if soft_prompt:
        from stages.common import generation
        from stages.common.engines import Opened

        opened = Opened(generation.TransformersEngine(model, tok), engine, why, "full", {})
    else:
        opened = open_engine(params, model, tok, device)
    try:
        metrics, answers = measure_prompts(
            model,
            renderer,
            eval_rows,
            prompts,
            params,
            n_new,
            f"evaluate {name} ({opened.name})",
            evaluated_text_metrics(params),
            decoding(params),
            opened,
        )
        record = opened.record()
    finally:
        opened.close()
    if general:
        metrics["perplexity_general"] = round(perplexity(model, tok, general), 2)
    if cache is not None:
        cache.put(key, {"variant": name, "metrics": metrics, "answers": answers, "engine": record})
    return metrics, answers, record


def breaches(params: Params, answers: dict[str, list[str]]) -> dict | None:
    """The guardrails and, per variant, how many answers broke each one (None: the project declares none)."""
    if "guardrail_violations" not in evaluated_text_metrics(params):
        return None
    rules = guardrails.resolve(params)
    counts = {
        n: Counter(k for a in answers[n] for k in guardrails.breaches(a, rules, params.scope.labels)) for n in answers
    }
    return {"rules": rules, "breaches": {n: dict(sorted(c.items())) for n, c in counts.items()}}


def serving_precision(
    params: Params, candidate: str, spec: dict, rows: list[dict], own: dict, answers: list[str], device: str
) -> tuple[dict, dict[str, list[str]]]:
    """The candidate's trials at each `package.quantize` precision and the one that ships ({"quality_metric",
    "trials", "precision", "why", "reasons"}), and the answers at each precision."""
    trials, at = try_precisions(params, candidate, spec, rows, own, answers, device)
    hardware, quality = params.scope.hardware.serving, quality_metric(params)
    chosen = choose_precision(
        trials,
        quality,
        REGISTRY[quality].higher_is_better is not False,
        params.package.max_quality_loss,
        hardware.gpu_memory_gib if hardware.gpu else None,
        params.scope.serving.p95_latency_ms,
    )
    log.info("serving precision %s: %s", chosen["precision"], chosen["why"])
    return {"quality_metric": quality, "trials": trials, **chosen}, at


def log_to_mlflow(report: dict, intervals: dict) -> None:
    """The figures of the report as the evaluate run's metrics and tags (the runs table compares them)."""
    import mlflow

    mlflow.log_metrics(
        {f"{n}.{m}.{end}": i[end] for n in intervals for m, i in intervals[n].items() for end in ("ci_low", "ci_high")}
    )
    mlflow.log_metrics(
        {
            f"compare.{m}.{k}": c[k]
            for m, c in report["comparisons"].items()
            for k in ("difference", "ci_low", "ci_high", "p_value")
        }
    )
    if serving := report["serving"]:
        quality = serving["quality_metric"]
        mlflow.log_metrics(
            {
                f"serving.{n}.{k}": v
                for n, t in serving["trials"].items()
                if "skipped" not in t
                for k, v in {
                    "size_bytes": t["size_bytes"],
                    "memory_gib": t["memory_gib"],
                    "tokens_per_s_alone": t["alone"]["tokens_per_s"],
                    "tokens_per_s_batched": t["batched"]["tokens_per_s"],
                    "p95_ms_alone": t["alone"]["p95_ms"],
                    quality: t["metrics"][quality]["value"],
                    **({"difference": t["difference"]["difference"]} if "difference" in t else {}),
                }.items()
            }
        )
        mlflow.set_tag("serving.precision", serving["precision"])
    passed = report["gates"]["passed"]
    mlflow.set_tags({"candidate": report["candidate"], "gates.passed": str(passed)})
    mlflow.log_metric("gates.passed", float(passed))


def run(params: Params, paths: Paths) -> dict:
    from stages.common.models import resolve_device
    from stages.common.tracking import log_splits, stage_run

    device = resolve_device(params.project.device)
    selection, prompt = read_json(paths.selection), read_json(paths.prompt)
    eval_rows = read_jsonl(Path(paths.processed) / "eval.jsonl")
    general = [r["text"] for r in read_jsonl(Path(paths.processed) / "general.jsonl")]
    primary = params.scope.kpis[0]
    methods = [m.value for m in params.align.methods]
    specs = variants(paths, selection, prompt, methods)

    with stage_run("evaluate", params, params.evaluate.model_dump()) as _:
        import mlflow

        log_splits(paths.processed, ["eval", "general"])
        results, answers, engines = {}, {}, {}
        cache = AnswerCache(paths.answers)
        rag_rows, index = with_context(paths, eval_rows) if any(s.get("rag") for s in specs.values()) else (None, None)
        for name, spec in specs.items():
            rows = rag_rows if spec.get("rag") else eval_rows
            twin = name.removesuffix(RAG) if name != "baseline_rag" else "baseline_zero_shot"
            # A twin's general-text perplexity is its model's, already measured (the passages change no weight).
            results[name], answers[name], engines[name] = evaluate_variant(
                name, spec, rows, [] if spec.get("rag") else general, params, device, index, cache
            )
            if spec.get("rag") and general:
                results[name]["perplexity_general"] = results[twin]["perplexity_general"]
            log.info("%s: %s", name, results[name])
            mlflow.log_metrics({f"{name}.{k}": v for k, v in results[name].items()})

        # The tuned variants compete; with none (the prompting and retrieval rungs, or `adapt.technique: prompt`)
        # the untuned model ships with its searched prompt or with retrieval.
        pool = [n for n in specs if n not in BASELINES] or [n for n in UNTUNED if n in specs]
        choice = prefer_simpler(
            {n: results[n][primary.metric] for n in pool},
            primary.metric,
            primary.direction == "higher",
            lambda costly, simpler: better_with_confidence(params, eval_rows, answers, costly, simpler),
        )
        candidate = choice["candidate"]
        log.info("candidate %s: %s", candidate, choice["why"])
        baselines = {n: results[n] for n in BASELINES if n in results and n != candidate}
        intervals, comparisons = uncertainty(params, eval_rows, answers, candidate, baselines)
        forgetting = (
            {
                "before": results["baseline_zero_shot"]["perplexity_general"],
                "after": results[candidate]["perplexity_general"],
                "limit": params.evaluate.max_forgetting,
            }
            if general
            else None
        )
        decision = should_promote(
            results[candidate], baselines, params.scope.kpis, intervals[candidate], comparisons, forgetting
        )
        serving = None
        # A serving precision is chosen only for a candidate that may ship: on a ladder, a rung that fails its
        # gates would otherwise measure every precision of a model nobody serves.
        if params.package.quantize and decision.passed:
            rows = rag_rows if specs[candidate].get("rag") else eval_rows
            own = {m: {"value": v, **intervals[candidate].get(m, {})} for m, v in results[candidate].items()}
            serving, at = serving_precision(params, candidate, specs[candidate], rows, own, answers[candidate], device)
            answers.update({f"{candidate}@{q}": a for q, a in at.items() if q != "full"})
        report = {
            "variants": {
                n: {m: {"value": v, **intervals[n].get(m, {})} for m, v in results[n].items()} for n in results
            },
            "candidate": candidate,
            "primary_metric": primary.metric,
            "primary_direction": primary.direction,
            "baselines": list(baselines),
            "comparisons": comparisons,
            "forgetting": forgetting,
            "guardrails": breaches(params, answers),
            "gates": decision.as_dict(),
            "eval_rows": len(eval_rows),
            "decoding": decoding(params),
            "confidence_level": params.evaluate.confidence_level,
            "resamples": params.evaluate.resamples,
            "metrics": project_metrics(params),
            "not_reached": not_reached(paths, methods),
            "retrieval": ({k: index[k] for k in ("search", "top_k", "chunks", "embedding_model")} if index else None),
            "choice": choice,
            "rung": rung(candidate),
            # The precision the candidate ships at, chosen among `package.quantize` (null: none was tried).
            "serving": serving,
            # What generated each variant's answers (stages/common/generation.py): the server runs the same.
            "engines": engines,
            "answer_cache": {"reused": cache.hits, "answered": cache.misses},
        }
        log_to_mlflow(report, intervals)
        write_json(paths.eval_metrics, report)
        why_none = "the gates failed: nothing ships" if params.package.quantize else "params: package.quantize is empty"
        write_report(report, paths, eval_rows, rag_rows, answers, prompt, why_none)
        shown = [paths.eval_metrics, paths.eval_report, Path(paths.eval_report).with_suffix(".png")]
        for f in shown + ([precision_plot(paths)] if serving else []):
            mlflow.log_artifact(str(f))
    pruned = cache.prune()
    log.info(
        "answer cache: %d variants reused, %d answered, %d stale entries removed", cache.hits, cache.misses, pruned
    )
    verdict = "PASSED" if decision.passed else "FAILED"
    engine = engines[candidate]
    return {
        "report": report,
        "summary": f"candidate {candidate} on {engine['engine']} ({engine['why']}): gates {verdict}; "
        + "; ".join(decision.reasons),
    }


def main(argv: list[str] | None = None) -> int:
    return stage_main("evaluate", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
