"""evaluate: every variant answers the held-out eval questions; the KPI gates decide what may ship.

    python -m stages.evaluate       # writes metrics/eval.json, reports/eval.md, reports/eval.png

Variants: the selected base model zero-shot and with the searched prompt (the baselines), the SFT model and one
aligned model per `align.methods` entry (`aligned_dpo`, `aligned_rlhf`); with a knowledge index (the `integrate`
stage), each of these but the prompted baseline also answers with the retrieved chunks in its prompt
(`baseline_rag`, `sft_rag`, `aligned_dpo_rag`, ...): prompting, RAG,
fine-tuning and fine-tuning + RAG on the same rows. `baseline_rag` is a baseline (tuning must beat RAG alone);
the candidate is the variant best on the primary metric unless a simpler one is not worse with confidence
(`prefer_simpler`: a model before its `_rag` twin, SFT before alignment); a `_rag` candidate ships with its index. Each gets the task's metrics (stages/common/metrics.py; `evaluate.metrics` overrides them), the
perplexity of the reference answers, latency per answer and perplexity on the general split (the forgetting
check). Prompts come from the one renderer, as in training and serving. The candidate is the tuned variant best
on the first KPI's metric (the primary one); a `versus: baseline` KPI compares it with the best baseline on that
KPI's metric.

Every text metric carries a bootstrap confidence interval over the eval rows, and the candidate is compared with
that best baseline on the same rows (paired: difference, interval, permutation p-value; stages/common/confidence.py).
metrics/eval.json holds `{"variants": {variant: {metric: {"value", "ci_low", "ci_high"}}}, "comparisons": ...,
"gates": ...}`; a metric measured on the model (latency, perplexities) has a value only.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from stages.common.answer_cache import AnswerCache, weights_digest
from stages.common.cli import stage_main
from stages.common.confidence import cell
from stages.common.errors import ProjectError
from stages.common.gates import choose_precision, should_promote
from stages.common.io import read_json, read_jsonl, write_csv, write_json, write_jsonl, write_text
from stages.common.metrics import (
    REGISTRY,
    context,
    evaluated_text_metrics,
    guardrail_breaches,
    guardrails,
    project_metrics,
    row_scores,
)
from stages.common.params import Params, Paths
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
    from stages.common.engines import engine_choice, open_engine
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


def engine_version(engine: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openvino-genai" if engine == "openvino" else "transformers")
    except PackageNotFoundError:
        return "?"


def quality_metric(params: Params) -> str:
    """What a smaller precision may lose only so much of: the primary KPI's metric when it is scored per answer,
    else the task's first such metric (a latency KPI says nothing of quality)."""
    names = evaluated_text_metrics(params)
    primary = params.scope.kpis[0].metric
    return primary if primary in names else names[0]


def try_precisions(
    params: Params, candidate: str, spec: dict, rows: list[dict], full: dict, full_answers: list[str], device: str
) -> tuple[dict, dict[str, list[str]]]:
    """The candidate at each `package.quantize` precision beside its trained weights (`full`), on the same eval rows
    and through the engine that serves it (OpenVINO: the GGUF file at F16, Q8_0, Q4_0): the task metrics with their
    intervals (`full`: the candidate's own row of the report), the paired difference with the trained weights on the
    quality metric, the bytes of the weights, the estimated serving memory, and the decoding speed alone and at the
    server's batch size. A precision that cannot run here is skipped with the reason. Returns ({precision: trial},
    {precision: answers})."""
    from stages.common import precision as precisions
    from stages.common.confidence import Resampling, interval, paired
    from stages.common.engines import engine_choice, open_engine
    from stages.common.generation import GGUF_TYPE
    from stages.common.measure import decoding_speed, measure_prompts
    from stages.common.memory import GIB, estimate, shape_of
    from stages.common.models import candidate_model, render_all, renderer_for

    n_new, batch = params.evaluate.max_new_tokens, params.serve.max_batch_size
    metric = quality_metric(params)
    how = Resampling(params.evaluate.resamples, params.evaluate.confidence_level, params.project.seed)
    refs, kw = [r["references"] for r in rows], {**context(params), "questions": [r["prompt"] for r in rows]}
    trials, answers = {}, {}
    for name in [precisions.FULL] + [q.value for q in params.package.quantize]:
        try:  # a LoRA candidate is merged first: its merged weights are what is quantized and served
            model, tok = candidate_model(spec, device)
            engine, _ = engine_choice(params, model.config.model_type, device)
            # The openvino engine runs its own file types (GGUF_TYPE); the torch libraries serve the transformers
            # engine, and bitsandbytes' on a GPU whatever the engine.
            why = None if engine == "openvino" and name in GGUF_TYPE else precisions.unavailable(name, device)
        except ProjectError as exc:  # a soft prompt cannot be merged, so it is not quantized either
            why = exc.problems[0]
        if why:
            trials[name] = {"skipped": why}
            log.warning("evaluate: %s skipped: %s", name, why)
            continue
        shape = shape_of(model.config, sum(p.numel() for p in model.parameters()))
        renderer = renderer_for(params, tok, model, max_new_tokens=n_new)
        prompts = render_all(renderer, rows, "eval", spec["examples"])
        opened = open_engine(params, model, tok, device, name)
        if name == precisions.FULL:  # measured with the other variants: the same engine, the same answers
            metrics, answers[name] = full, full_answers
        else:
            values, answers[name] = measure_prompts(
                model,
                renderer,
                rows,
                prompts,
                params,
                n_new,
                f"evaluate {candidate}@{name} ({opened.name})",
                evaluated_text_metrics(params),
                decoding(params),
                opened,
            )
            metrics = {m: {"value": v} for m, v in values.items()}
            for m in evaluated_text_metrics(params):
                i = interval(m, answers[name], refs, how, row_scores(m, answers[name], refs, **kw), **kw)
                metrics[m].update(ci_low=round(i["ci_low"], 4), ci_high=round(i["ci_high"], 4))
        served = estimate(  # the server runs float32 on a CPU, the packaged 16-bit weights on a GPU
            shape,
            "inference",
            "bf16" if device.startswith("cuda") else "fp32",
            batch,
            params.data.max_length,
            quantized=None if name == precisions.FULL else name,
        )
        trials[name] = {
            "metrics": metrics,
            "size_bytes": opened.size_bytes,
            "memory_gib": round(served.total / GIB, 4),
            "alone": decoding_speed(opened, renderer, prompts, n_new, 1, rounds=8),
            "batched": decoding_speed(opened, renderer, prompts, n_new, batch, rounds=2),
            "engine": opened.record(),
        }
        opened.close()
        trials[name]["p95_ms"] = trials[name]["alone"]["p95_ms"]
        if name != precisions.FULL:
            c = paired(
                metric,
                answers[name],
                full_answers,
                refs,
                how,
                row_scores(metric, answers[name], refs, **kw),
                row_scores(metric, full_answers, refs, **kw),
                **kw,
            )
            trials[name]["difference"] = {k: round(v, 4) for k, v in c.items()}
        log.info("evaluate @%s: %s", name, {k: v for k, v in trials[name].items() if k != "metrics"})
        del model
    return trials, answers


def decoding(params: Params) -> dict:
    """The generation settings evaluate uses, as recorded with the metrics."""
    return {
        **params.evaluate.decoding.model_dump(),
        "max_new_tokens": params.evaluate.max_new_tokens,
        "seed": params.project.seed,
    }


def uncertainty(
    params: Params, eval_rows: list[dict], answers: dict[str, list[str]], candidate: str, baselines: dict[str, dict]
) -> tuple[dict, dict]:
    """Bootstrap intervals of every text metric of every variant ({variant: {metric: {"ci_low", "ci_high"}}}) and
    the paired comparison of the candidate with the best baseline for each KPI metric compared to a baseline
    (and the primary metric) ({metric: {"candidate", "baseline", "difference", "ci_low", "ci_high", "p_value"}})."""
    from tqdm.auto import tqdm

    from stages.common.confidence import Resampling, interval, paired
    from stages.common.gates import best_baseline

    how = Resampling(params.evaluate.resamples, params.evaluate.confidence_level, params.project.seed)
    refs = [r["references"] for r in eval_rows]
    kw = {**context(params), "questions": [r["prompt"] for r in eval_rows]}
    names = evaluated_text_metrics(params)
    rows = {n: {m: row_scores(m, answers[n], refs, **kw) for m in names} for n in answers}
    intervals = {}
    for n in tqdm(answers, desc=f"evaluate: bootstrap intervals ({how.resamples} resamples)", unit="variant"):
        intervals[n] = {}
        for m in names:
            i = interval(m, answers[n], refs, how, rows[n][m], **kw)
            intervals[n][m] = {"ci_low": round(i["ci_low"], 4), "ci_high": round(i["ci_high"], 4)}
    compared = [params.scope.kpis[0].metric] + [k.metric for k in params.scope.kpis if k.versus == "baseline"]
    comparisons = {}
    for m in dict.fromkeys(c for c in compared if c in names):
        higher = REGISTRY[m].higher_is_better is not False
        base = best_baseline(baselines, m, higher) if baselines else None
        if base is None:
            continue
        c = paired(m, answers[candidate], answers[base], refs, how, rows[candidate][m], rows[base][m], **kw)
        comparisons[m] = {"candidate": candidate, "baseline": base, **{k: round(v, 4) for k, v in c.items()}}
    return intervals, comparisons


def better_with_confidence(
    params: Params, eval_rows: list[dict], answers: dict[str, list[str]], costly: str, simpler: str
) -> dict | None:
    """Is `costly` better than `simpler` on the primary metric with confidence (the paired interval of the
    difference, on the same rows, excludes 0)? None when the primary metric is one number measured on the model
    (latency: no rows to pair)."""
    from stages.common.confidence import Resampling, paired

    metric = params.scope.kpis[0].metric
    if REGISTRY[metric].compute is None:
        return None
    how = Resampling(params.evaluate.resamples, params.evaluate.confidence_level, params.project.seed)
    refs = [r["references"] for r in eval_rows]
    kw = {**context(params), "questions": [r["prompt"] for r in eval_rows]}
    c = paired(
        metric,
        answers[costly],
        answers[simpler],
        refs,
        how,
        row_scores(metric, answers[costly], refs, **kw),
        row_scores(metric, answers[simpler], refs, **kw),
        **kw,
    )
    higher = params.scope.kpis[0].direction == "higher"
    return {
        "costly": costly,
        "simpler": simpler,
        "metric": metric,
        **{k: round(v, 4) for k, v in c.items()},
        "better": bool(c["ci_low"] > 0 if higher else c["ci_high"] < 0),
    }


def prefer_simpler(
    params: Params, eval_rows: list[dict], answers: dict[str, list[str]], results: dict, pool: list[str]
) -> dict:
    """The candidate among `pool` (cheapest first: a model before its `_rag` twin, SFT before alignment, DPO
    before RLHF): the best on the primary metric, unless a simpler variant is not worse with confidence, in which
    case the simplest such one ships (a costlier model costs training, serving or an index for a difference the
    eval rows cannot tell from noise)."""
    metric = params.scope.kpis[0].metric
    higher = params.scope.kpis[0].direction == "higher"
    values = {n: results[n][metric] for n in pool}
    best = (max if higher else min)(values, key=values.get)
    checked = []
    for simpler in pool[: pool.index(best)]:
        c = better_with_confidence(params, eval_rows, answers, best, simpler)
        if c is None:
            return {
                "best": best,
                "candidate": best,
                "comparisons": [],
                "why": f"{best} is best on {metric} ({values[best]:.4g}); {metric} is measured on the model, with "
                "no rows to compare on, so the point estimate decides",
            }
        checked.append(c)
        if not c["better"]:
            return {
                "best": best,
                "candidate": simpler,
                "comparisons": checked,
                "why": f"{best} ({values[best]:.4g}) is not better than the simpler {simpler} ({values[simpler]:.4g}) "
                f"on {metric} with confidence (difference {c['difference']:+} [{c['ci_low']:+}, "
                f"{c['ci_high']:+}]): {simpler} ships",
            }
    why = f"{best} is best on {metric} ({values[best]:.4g})"
    if checked:
        why += (
            " and better with confidence than every simpler variant ("
            + ", ".join(f"{c['simpler']} {c['difference']:+} [{c['ci_low']:+}, {c['ci_high']:+}]" for c in checked)
            + ")"
        )
    return {"best": best, "candidate": best, "comparisons": checked, "why": why}


def breaches(params: Params, answers: dict[str, list[str]]) -> dict | None:
    """The guardrails and, per variant, how many answers broke each one (None: the project declares none)."""
    if "guardrail_violations" not in evaluated_text_metrics(params):
        return None
    rules = guardrails(params)
    counts = {
        n: Counter(k for a in answers[n] for k in guardrail_breaches(a, rules, params.scope.labels)) for n in answers
    }
    return {"rules": rules, "breaches": {n: dict(sorted(c.items())) for n, c in counts.items()}}


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
        choice = prefer_simpler(params, eval_rows, answers, results, pool)
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
            spec, rows = specs[candidate], rag_rows if specs[candidate].get("rag") else eval_rows
            own = {m: {"value": v, **intervals[candidate].get(m, {})} for m, v in results[candidate].items()}
            trials, at = try_precisions(params, candidate, spec, rows, own, answers[candidate], device)
            hardware = params.scope.hardware.serving
            quality = quality_metric(params)
            serving = {
                "quality_metric": quality,
                "trials": trials,
                **choose_precision(
                    trials,
                    quality,
                    REGISTRY[quality].higher_is_better is not False,
                    params.package.max_quality_loss,
                    hardware.gpu_memory_gib if hardware.gpu else None,
                    params.scope.serving.p95_latency_ms,
                ),
            }
            log.info("serving precision %s: %s", serving["precision"], serving["why"])
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
        mlflow.log_metrics(
            {
                f"{n}.{m}.{end}": i[end]
                for n in intervals
                for m, i in intervals[n].items()
                for end in ("ci_low", "ci_high")
            }
        )
        mlflow.log_metrics(
            {
                f"compare.{m}.{k}": c[k]
                for m, c in comparisons.items()
                for k in ("difference", "ci_low", "ci_high", "p_value")
            }
        )
        write_json(paths.eval_metrics, report)
        # The DVC plot of the variants: the primary metric with its interval, one row per variant.
        write_csv(
            Path(paths.metrics) / "eval_variants.csv",
            [
                {
                    "variant": n,
                    "primary": v[primary.metric]["value"],
                    "ci_low": v[primary.metric].get("ci_low", ""),
                    "ci_high": v[primary.metric].get("ci_high", ""),
                }
                for n, v in report["variants"].items()
            ],
            ["variant", "primary", "ci_low", "ci_high"],
        )
        write_jsonl(
            Path(paths.eval_report).with_name("eval_answers.jsonl"),
            [
                {
                    "prompt": r["prompt"],
                    "references": r["references"],
                    **({"retrieved": rag_rows[i]["retrieved"]} if rag_rows else {}),
                    **{n: answers[n][i] for n in answers},
                }
                for i, r in enumerate(eval_rows)
            ],
        )
        plot(report["variants"], Path(paths.eval_report).with_suffix(".png"))
        precision_plot = Path(paths.eval_report).with_name("eval_precision.png")
        if serving:
            plot_precisions(serving, serving["quality_metric"], precision_plot)
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
                        serving["quality_metric"]: t["metrics"][serving["quality_metric"]]["value"],
                        **({"difference": t["difference"]["difference"]} if "difference" in t else {}),
                    }.items()
                }
            )
            mlflow.set_tag("serving.precision", serving["precision"])
            mlflow.log_artifact(str(precision_plot))
        else:  # DVC wants every declared plot: say why there is none
            why = "the gates failed: nothing ships" if params.package.quantize else "params: package.quantize is empty"
            plot_precisions(None, primary.metric, precision_plot, why)
        write_text(paths.eval_report, markdown(report, eval_rows, answers, prompt))
        mlflow.set_tags({"candidate": candidate, "gates.passed": str(decision.passed)})
        mlflow.log_metric("gates.passed", float(decision.passed))
        for f in (paths.eval_metrics, paths.eval_report, Path(paths.eval_report).with_suffix(".png")):
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


def plot(results: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, len(shown), figsize=(3.1 * len(shown), 3.2), squeeze=False)
    axes = axes[0]
    names = list(results)
    for ax, metric in zip(axes, shown):
        cells = [results[n][metric] for n in names]
        value = [c["value"] for c in cells]
        err = (
            [
                [c["value"] - c.get("ci_low", c["value"]) for c in cells],
                [c.get("ci_high", c["value"]) - c["value"] for c in cells],
            ]
            if "ci_low" in cells[0]
            else None
        )
        ax.bar(
            range(len(names)),
            value,
            yerr=err,
            capsize=4,
            color=[_colour(n) for n in names],
            hatch=[("//" if n.endswith(RAG) else "") for n in names],
        )
        ax.set_xticks(
            range(len(names)), [n.replace("baseline_", "base\n").replace(RAG, "\n+rag") for n in names], fontsize=8
        )
        ax.set_title(metric)
    fig.suptitle(
        "held-out eval split, every variant side by side, with confidence intervals "
        "(perplexities, latency, invalid rate: lower is better)"
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _colour(variant: str) -> str:
    """One colour per model (a +rag twin shares its model's, hatched): baselines grey, SFT blue, aligned green."""
    base = variant.removesuffix(RAG)
    return {
        "baseline_zero_shot": "#999",
        "baseline_prompted": "#bbb",
        "baseline": "#999",
        "sft": "#4a90d9",
        "aligned_dpo": "#2a6",
        "aligned_rlhf": "#b5a",
    }.get(base, "#c84")


def markdown(report: dict, eval_rows: list[dict], answers: dict, prompt: dict) -> str:
    results = report["variants"]
    metrics = list(next(iter(results.values())))
    lines = [
        "# Evaluation",
        "",
        f"{report['eval_rows']} held-out rows. Candidate: **{report['candidate']}** (best tuned variant "
        f"on {report['primary_metric']}); baselines: {', '.join(report['baselines'])}; the prompted baseline uses {prompt['shots']}-shot "
        f"(best on the dev split: {prompt['dev_scores']}).",
        "",
        "| variant | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    lines += [f"| {n} | " + " | ".join(cell(r[m]) for m in metrics) + " |" for n, r in results.items()]
    if report.get("retrieval"):
        r = report["retrieval"]
        lines += [
            "",
            f"`{RAG[1:]}` variants: the same model with the {r['top_k']} chunks the index retrieves for the "
            f"question ({r['search']} search over {r['chunks']} chunks, {r['embedding_model']}) in its prompt.",
        ]
    choice = report["choice"]
    lines += ["", f"Candidate **{report['candidate']}**: {choice['why']}."]
    if choice["comparisons"]:
        lines += [
            "",
            f"| {choice['best']} vs | difference | CI | p (paired permutation) | better with confidence |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['simpler']} | {c['difference']:+} | [{c['ci_low']:+}, {c['ci_high']:+}] | {c['p_value']} | "
            f"{'yes' if c['better'] else 'no'} |"
            for c in choice["comparisons"]
        ]
    level = f"{report['confidence_level']:.0%}"
    lines += [
        "",
        f"Brackets: {level} bootstrap confidence intervals over the eval rows ({report['resamples']} "
        f"resamples, percentile method). Decoding: {report['decoding']}.",
    ]
    if report["comparisons"]:
        lines += [
            "",
            "## Candidate vs the best baseline, on the same rows",
            "",
            f"| metric | candidate | baseline | difference | {level} CI | p (paired permutation) |",
            "|---|---|---|---:|---|---:|",
        ]
        lines += [
            f"| {m} | {c['candidate']} | {c['baseline']} | {c['difference']:+} | [{c['ci_low']:+}, "
            f"{c['ci_high']:+}] | {c['p_value']} |"
            for m, c in report["comparisons"].items()
        ]
    if report.get("guardrails"):
        rules = {k: v for k, v in report["guardrails"]["rules"].items() if v}
        lines += ["", "## Guardrails", "", f"Rules: {rules}. Answers breaking each (of {report['eval_rows']}):", ""]
        lines += [f"- {n}: {c or 'none'}" for n, c in report["guardrails"]["breaches"].items()]
    if report.get("serving"):
        lines += serving_section(report)
    if report["not_reached"]:
        lines += ["", "## Not run: the escalation ladder stopped below", ""]
        lines += [f"- `{stage}`: {why}" for stage, why in report["not_reached"].items()]
    lines += ["", f"## Gates: {'PASSED' if report['gates']['passed'] else 'FAILED'}", ""]
    lines += [f"- {r}" for r in report["gates"]["reasons"]]
    lines += ["", "![metrics](eval.png)", "", "## Sample answers", ""]
    for i, row in enumerate(eval_rows[:5]):
        lines += [f"**{row['prompt']}**  ", f"reference: {row['references'][0]}  "]
        lines += [f"{n}: {answers[n][i]}  " for n in answers] + [""]
    return "\n".join(lines) + "\n"


def serving_section(report: dict) -> list[str]:
    """The candidate at each serving precision: quality with intervals, the paired loss, size, memory and speed."""
    serving, metric = report["serving"], report["serving"]["quality_metric"]
    full = serving["trials"].get("full", {}).get("size_bytes")
    lines = [
        "",
        f"## Serving precision: **{serving['precision']}**",
        "",
        f"{serving['why']}.",
        "",
        f"| precision | {metric} | vs full (paired) | weights | × full | est. memory | tokens/s alone | "
        "p50 / p95 ms alone | tokens/s batched | p95 ms batched |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, t in serving["trials"].items():
        if "skipped" in t:
            lines.append(f"| {name} | skipped: {t['skipped']} | | | | | | | | |")
            continue
        d = t.get("difference")
        vs = f"{d['difference']:+} [{d['ci_low']:+}, {d['ci_high']:+}]" if d else "—"
        ratio = f"{t['size_bytes'] / full:.2f}" if full else ""
        a, b = t["alone"], t["batched"]
        lines.append(
            f"| {name} | {cell(t['metrics'][metric])} | {vs} | {t['size_bytes'] / 2**20:,.2f} MiB | {ratio} | "
            f"{t['memory_gib']:.3f} GiB | {a['tokens_per_s']} | {a['p50_ms']:.0f} / {a['p95_ms']:.0f} | "
            f"{b['tokens_per_s']} | {b['p95_ms']:.0f} |"
        )
    lines += ["", "![quality against size](eval_precision.png)"]
    return lines


def plot_precisions(serving: dict | None, metric: str, path: Path, why_none: str = "") -> None:
    """Quality against size: the primary metric with its interval at each precision that ran (None: none did,
    `why_none`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if serving is None:
        ax.text(0.5, 0.5, f"no serving precision tried\n({why_none})", ha="center", va="center")
        ax.set_axis_off()
    ran = {n: t for n, t in serving["trials"].items() if "skipped" not in t} if serving else {}
    for name, t in ran.items():
        m = t["metrics"][metric]
        x, y = t["size_bytes"] / 2**20, m["value"]
        err = [[y - m.get("ci_low", y)], [m.get("ci_high", y) - y]]
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=4, color="tab:red" if name == serving["precision"] else "tab:blue")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4))
    if serving:
        ax.set_xlabel("weights (MiB)")
        ax.set_ylabel(metric)
        ax.set_title(f"serving precision: {serving['precision']} ships (red)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    return stage_main("evaluate", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
