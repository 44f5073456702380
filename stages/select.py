"""select: which foundation model? Filter the candidates by the scope's constraints, then measure and rank.

    python -m stages.select         # writes models/selection.json

Filters (each rejection says why): licence, languages, hosting (personal data forbids SaaS), and the memory the
planned technique needs (estimated from the parameter count, read from the config alone) against the GPU
budget, or half the host's RAM on a CPU-only budget. Survivors answer the dev split zero-shot and few-shot;
they are ranked by `select.rank_by` (best of the two prompts), smaller model first on a tie. The default,
answer_perplexity, ranks by what a model knows: greedy answers of small base models mostly measure whether
they already follow the answer format, which is exactly what tuning fixes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from stages.common.cli import stage_main
from stages.common.errors import ProjectError
from stages.common.io import read_jsonl, write_json
from stages.common.metrics import REGISTRY, best_of
from stages.common.params import Candidate, Params, Paths
from stages.scope import plan as scope_plan

log = logging.getLogger(__name__)

GIB = 1024 ** 3

# Bytes per parameter while tuning, by technique (weights + gradients + Adam states), and the share of
# parameters a LoRA adapter trains. Activations and CUDA context are covered by OVERHEAD.
BYTES_PER_PARAM = {
    "prompt": lambda dtype_bytes: dtype_bytes,                      # inference only
    "lora": lambda dtype_bytes: dtype_bytes + 0.02 * 16,            # frozen weights + ~2% trainable in fp32 Adam
    "qlora": lambda dtype_bytes: 0.55 + 0.02 * 16,                  # 4-bit weights (+ quantization constants)
    "prompt_tuning": lambda dtype_bytes: dtype_bytes,               # frozen weights; a few virtual tokens train
    "full": lambda dtype_bytes: 16,                                 # mixed precision: weights, grads, fp32 master + Adam
}
OVERHEAD = 1.3


def memory_estimate_gib(n_params: int, technique: str, precision: str) -> float:
    dtype_bytes = {"fp32": 4, "bf16": 2, "fp16": 2}[precision]
    return n_params * BYTES_PER_PARAM[technique](dtype_bytes) * OVERHEAD / GIB


def host_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def constraint_problems(c: Candidate, plan: dict) -> list[str]:
    """Why a candidate may not be used at all, from the scope's plan. Pure."""
    reasons = []
    if c.licence not in plan["licences"]:
        reasons.append(f"licence {c.licence} not in {plan['licences']}")
    missing = sorted(set(plan["languages"]) - set(c.languages))
    if missing:
        reasons.append(f"does not cover languages {missing}")
    if c.hosting not in plan["candidate_hosting"]:
        reasons.append(f"{c.hosting}-hosted, the scope allows {plan['candidate_hosting']}")
    if c.hosting == "saas":
        reasons.append("SaaS candidates are not measured by this version (no API client): self-host it or remove it")
    return reasons


def check_exists(c: Candidate) -> None:
    if c.path and not Path(c.path).is_dir():
        raise ProjectError([f"params.yaml `select.candidates.{c.name}.path`: {c.path} does not exist "
                            "(did the pretrain stage build it? is the path right?)"])


def measure_prompts(model, renderer, records: list[dict], prompts: list[str], params: Params, max_new_tokens: int,
                    progress: str, names: list[str] | None = None,
                    decoding: dict | None = None) -> tuple[dict, list[str]]:
    """The project's text metrics, latency and answer perplexity of one model and one way of prompting it, and
    its answers. Select, the prompt search and evaluate all measure with this."""
    from stages.common.metrics import context, score, text_metrics
    from stages.common.models import answer_perplexity, generate

    gen = generate(model, renderer, prompts, max_new_tokens, params.evaluate.batch_size, progress=progress,
                   decoding=decoding)
    refs = [r["references"] for r in records]
    metrics = {**score(names or text_metrics(params), gen.answers, refs, **context(params),
                       questions=[r["prompt"] for r in records]),
               "latency_ms": round(gen.seconds_per_answer * 1000, 2),
               "answer_perplexity": round(answer_perplexity(model, renderer, records, prompts), 3)}
    return metrics, gen.answers


def measure(c: Candidate, dev: list[dict], shots: list[dict], params: Params, device: str) -> dict:
    from stages.common.models import load_model, load_tokenizer, render_all, renderer_for

    model, tok = load_model(c.ref, device), load_tokenizer(c.ref)
    n_new = params.select.max_new_tokens
    renderer = renderer_for(params, tok, model, max_new_tokens=n_new)
    out = {"chat_template": renderer.chat}
    for label, examples in (("zero_shot", []), ("few_shot", shots)):
        prompts = render_all(renderer, dev, "dev", examples)
        out[label], _ = measure_prompts(model, renderer, dev, prompts, params, n_new, f"select {c.name} {label}")
    size_mb = sum(f.stat().st_size for f in Path(c.path).rglob("*") if f.is_file()) / 1e6 if c.path else None
    out["size_mb"] = round(size_mb, 2) if size_mb is not None else None
    return out


def run(params: Params, paths: Paths) -> dict:
    from stages.common.models import count_parameters, resolve_device
    from stages.common.tracking import stage_run

    plan = scope_plan(params)  # from the params keys dvc.yaml declares, so a KPI edit does not re-select
    device = resolve_device(params.project.device)
    technique, precision = params.adapt.technique.value, params.adapt.precision.value
    budget = plan["gpu_memory_gib"] or host_memory_gib() / 2
    budget_label = f"GPU budget {plan['gpu_memory_gib']} GiB" if plan["gpu_memory_gib"] else f"half the host RAM ({budget:.1f} GiB)"
    dev = read_jsonl(Path(paths.processed) / "dev.jsonl")
    shots = read_jsonl(Path(paths.processed) / "sft.jsonl")[:params.select.few_shot]
    rank_by = params.select.rank_by
    lower_is_better = REGISTRY[rank_by].higher_is_better is False

    rows = []
    with stage_run("select", params, params.select.model_dump()) as _:
        import mlflow

        for c in params.select.candidates:
            check_exists(c)
            row = {"name": c.name, "ref": c.ref, "licence": c.licence, "hosting": c.hosting}
            reasons = constraint_problems(c, plan)
            if not reasons:
                row["parameters"] = count_parameters(c.ref)
                need = memory_estimate_gib(row["parameters"], technique, precision)
                row["memory_gib"] = float(f"{need:.3g}")
                if need > budget:
                    reasons.append(f"{technique} needs ~{row['memory_gib']} GiB, over the {budget_label}")
            if reasons:
                row.update(status="rejected", reasons=reasons)
                log.info("%s rejected: %s", c.name, "; ".join(reasons))
            else:
                row["metrics"] = measure(c, dev, shots, params, device)
                prompts = {p: row["metrics"][p][rank_by] for p in ("zero_shot", "few_shot")}
                row.update(status="ranked", score=prompts[best_of(prompts, rank_by)])
                mlflow.log_metrics({f"{c.name}.{p}.{k}": v for p in ("zero_shot", "few_shot")
                                    for k, v in row["metrics"][p].items()})
            rows.append(row)

        ranked = [r for r in rows if r["status"] == "ranked"]
        if not ranked:
            raise ProjectError(["no candidate survives the scope's constraints: "
                                + "; ".join(f"{r['name']}: {', '.join(r['reasons'])}" for r in rows)])
        sign = 1 if lower_is_better else -1
        ranked.sort(key=lambda r: (sign * r["score"], r["parameters"]))
        chosen = ranked[0]
        chosen["status"] = "selected"
        runner_up = ranked[1] if len(ranked) > 1 else None
        why = (f"best {rank_by} on the dev split ({chosen['score']:.4f}"
               + (f" vs {runner_up['name']} {runner_up['score']:.4f}" if runner_up else ", the only survivor")
               + f"), {chosen['parameters']:,} parameters, {technique} needs ~{chosen['memory_gib']} GiB")
        selection = {"selected": {"name": chosen["name"], "ref": chosen["ref"], "why": why},
                     "technique": technique, "rank_by": rank_by, "candidates": rows}
        write_json(paths.selection, selection)
        mlflow.set_tag("selected", chosen["name"])
        mlflow.log_artifact(paths.selection)
    return {"selection": selection, "summary": f"selected {chosen['name']}: {why}"}


def main(argv: list[str] | None = None) -> int:
    return stage_main("select", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
