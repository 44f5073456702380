"""select: which foundation model? Filter the candidates by the scope's constraints, then measure and rank.

    python -m stages.select         # writes models/selection.json
    lifecycle select --explain      # that selection as a table: every filter's verdict, the figures, the rank

A candidate is a local folder, a hub id, a catalog entry (`lifecycle catalog`) or an OpenAI-compatible endpoint.
Filters (each verdict recorded, each rejection says why): licence, languages, hosting (personal data forbids
SaaS), residency (where an API processes data), commercial use from the MVP on, context length, and the memory
the planned technique needs (stages/common/memory.py, in parts) against the training GPU, or half the host's RAM
on a CPU-only project, and inference memory against the serving GPU when one is declared. Survivors answer the dev
split zero-shot and few-shot; an API candidate's cost per 1000 requests (catalog price x the tokens its endpoint
counted) is then held against `scope.serving.max_cost_per_1k_requests_usd` and the monthly budget. They are ranked
by `select.rank_by` (best of the two prompts), smaller model first on a tie. The default, answer_perplexity, ranks
by what a model knows: greedy answers of small base models mostly measure whether they already follow the answer
format, which is exactly what tuning fixes.

An API candidate is measured and ranked for the record but never tuned here: the selected model is the best
local one, and `api_alternative` names an API model that ranked above it, with its cost.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from stages.common import weights
from stages.common.candidates import candidate_filters
from stages.common.cli import stage_main
from stages.common.errors import ProjectError
from stages.common.io import read_json, read_jsonl, write_json
from stages.common.measure import measure_prompts
from stages.common.memory import GIB, QUANTIZED_BYTES, Shape, estimate, shape_of
from stages.common.metrics import REGISTRY, best_of
from stages.common.params import Candidate, Params, Paths

log = logging.getLogger(__name__)

PROMPTS = ("zero_shot", "few_shot")


def host_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def budgets(params: Params) -> dict:
    """GiB available (and how to say it) for training and for serving; serving None: not checked (CPU)."""
    hw = params.scope.hardware
    training = hw.training.gpu_memory_gib or host_memory_gib() / 2
    return {
        "training": (
            training,
            f"the training GPU's {training:g} GiB"
            if hw.training.gpu_memory_gib
            else f"half the host RAM ({training:.1f} GiB)",
        ),
        "serving": (
            hw.serving.gpu_memory_gib or None,
            f"the serving GPU's {hw.serving.gpu_memory_gib:g} GiB"
            if hw.serving.gpu_memory_gib
            else "not checked (no serving GPU declared)",
        ),
    }


def check_exists(c: Candidate) -> None:
    if c.path and not Path(c.path).is_dir():
        raise ProjectError(
            [
                f"params.yaml `select.candidates.{c.name}.path`: {c.path} does not exist "
                "(did the pretrain stage build it? is the path right?)"
            ]
        )


def shape(c: Candidate, ref: str) -> Shape:
    """Parameters and architecture from the candidate's config (no weights loaded); a catalog entry's parameter
    count when its config cannot be read here (a hub id offline)."""
    from transformers import AutoConfig

    from stages.common.models import count_parameters

    try:
        return shape_of(AutoConfig.from_pretrained(ref), count_parameters(ref))
    except OSError as exc:
        if c.entry and c.entry.parameters:
            log.warning("%s: config not readable (%s); memory from the catalog's parameter count", c.name, exc)
            return Shape(parameters=c.entry.parameters)
        raise ProjectError(
            [f"`select.candidates.{c.name}`: cannot read the config of {ref} ({exc}); offline, give a local `path`"]
        ) from None


def memory(s: Shape, params: Params) -> dict:
    """The planned technique's estimate with the adapt settings, and inference at the serving batch."""
    a = params.adapt
    technique = a.technique.value
    train = estimate(
        s,
        "inference" if technique == "prompt" else technique,
        a.precision.value,
        a.trainer.per_device_train_batch_size,
        a.trainer.max_length,
        a.lora.r,
        virtual_tokens=a.prompt_tuning.num_virtual_tokens,
    )
    # Served at the smallest precision evaluate may choose (`package.quantize`): a model too big for the serving
    # GPU at its trained precision but fitting at 4 bits stays a candidate.
    smallest = min(params.package.quantize, key=lambda q: QUANTIZED_BYTES[q.value], default=None)
    serve = estimate(
        s,
        "inference",
        a.precision.value,
        params.serve.max_batch_size,
        params.data.max_length,
        quantized=smallest.value if smallest else None,
    )
    return {"training": train.gib(), "serving": {**serve.gib(), "quantized": smallest.value if smallest else None}}


def measure(c: Candidate, ref: str, dev: list[dict], shots: list[dict], params: Params, device: str) -> dict:
    from stages.common.engines import open_engine
    from stages.common.models import load_model, load_tokenizer, render_all, renderer_for

    model, tok = load_model(ref, device), load_tokenizer(ref)
    n_new = params.select.max_new_tokens
    renderer = renderer_for(params, tok, model, max_new_tokens=n_new)
    out = {"chat_template": renderer.chat}
    opened = open_engine(params, model, tok, device)  # the engine that would serve it (serve.engine)
    try:
        for label, examples in (("zero_shot", []), ("few_shot", shots)):
            prompts = render_all(renderer, dev, "dev", examples)
            out[label], _ = measure_prompts(
                model, renderer, dev, prompts, params, n_new, f"select {c.name} {label} ({opened.name})", opened=opened
            )
    finally:
        opened.close()
    out["engine"] = opened.record()
    local = Path(ref).is_dir()
    size_mb = sum(f.stat().st_size for f in Path(ref).rglob("*") if f.is_file()) / 1e6 if local else None
    out["size_mb"] = round(size_mb, 2) if size_mb is not None else None
    return out


def measure_api(c: Candidate, dev: list[dict], shots: list[dict], params: Params) -> dict:
    """The same dev split and metrics through the endpoint (no answer perplexity: an API gives no log-probabilities
    of the reference), and the cost per 1000 requests from the catalog price and the tokens it counted."""
    from stages.common import api
    from stages.common.metrics import context, score, text_metrics

    out = {}
    for label, examples in (("zero_shot", []), ("few_shot", shots)):
        got = api.ask(c, params, dev, examples, f"select {c.name} {label}")
        out[label] = {
            **score(
                text_metrics(params),
                got.answers,
                [r["references"] for r in dev],
                **context(params),
                questions=[r["prompt"] for r in dev],
            ),
            "latency_ms": round(got.seconds_per_answer * 1000, 2),
        }
        out[label]["cost_per_1k_requests_usd"] = api.cost_per_1k_requests(c.entry, got, len(dev))
        out[label]["tokens"] = {"prompt": got.prompt_tokens, "completion": got.completion_tokens}
    return out


def cost_verdicts(params: Params, cost: float | None) -> dict:
    """An API candidate's measured cost against the serving limits and the monthly budget."""
    s = params.scope
    limit, monthly = s.serving.max_cost_per_1k_requests_usd, s.budget.monthly_serving_usd
    per_month = cost * s.serving.requests_per_month / 1000 if cost is not None else None
    return {
        "cost_per_request": (
            f"${cost:g} per 1k requests, over the ${limit:g} limit"
            if cost is not None and limit is not None and cost > limit
            else None
        ),
        "monthly_budget": (
            f"~${per_month:,.2f} a month at {s.serving.requests_per_month:,} requests, over the ${monthly:,.2f} budget"
            if per_month is not None and monthly is not None and per_month > monthly
            else None
        ),
    }


def convert_once(c: Candidate, ref: str, where: str) -> dict:
    """A GGUF candidate's folder: converted unless a folder converted from the same file is already there (DVC
    removes select's outputs before a pipeline run; a hand run of the stage reuses them)."""
    gguf = weights.gguf_file(c, where)
    card = Path(ref) / weights.CARD
    if card.is_file() and read_json(card).get("gguf_sha256") == weights.digest(gguf):
        info = read_json(card)
    else:
        log.info("%s: converting %s into %s (once; later stages load the folder)", c.name, gguf.name, ref)
        info = weights.convert(gguf, Path(ref))
    return {"source": weights.source(c), **info}


def judge(c: Candidate, params: Params, budget: dict) -> dict:
    """Every filter's verdict on one candidate (None passes), memory included; no model is loaded (GGUF weights
    are converted into their folder first: the config is read from there)."""
    ref = weights.ref_of(c, params.paths)
    row = {
        "name": c.name,
        "ref": ref,
        "kind": "api" if c.endpoint else "local",
        "catalog": c.catalog,
        "licence": c.licence,
        "hosting": c.hosting,
        "filters": candidate_filters(c, params),
    }
    if c.endpoint:
        row["endpoint"] = {"base_url": c.endpoint.base_url, "model": c.endpoint.model}
        row["parameters"] = c.entry.parameters if c.entry else None
        return row
    check_exists(c)
    if any(row["filters"].values()):
        return row
    if c.converted:
        row["weights"] = convert_once(c, ref, f"`select.candidates.{c.name}`")
    s = shape(c, ref)
    row["parameters"] = s.parameters
    row["memory_gib"] = memory(s, params)
    need = row["memory_gib"]["training"]
    technique = params.adapt.technique.value
    (train_budget, train_label), (serve_budget, serve_label) = budget["training"], budget["serving"]
    row["filters"]["memory_training"] = (
        f"{technique} needs ~{need['total']:.3g} GiB, over {train_label}" if need["total"] > train_budget else None
    )
    serving, quantized = row["memory_gib"]["serving"]["total"], row["memory_gib"]["serving"]["quantized"]
    at = f" at {quantized}" if quantized else ""
    row["filters"]["memory_serving"] = (
        f"inference{at} needs ~{serving:.3g} GiB, over {serve_label}"
        if serve_budget and serving > serve_budget
        else None
    )
    return row


def run(params: Params, paths: Paths) -> dict:
    from stages.common import api
    from stages.common.models import resolve_device
    from stages.common.tracking import stage_run

    device = resolve_device(params.project.device)
    technique = params.adapt.technique.value
    budget = budgets(params)
    Path(paths.weights).mkdir(parents=True, exist_ok=True)  # a DVC output even when no candidate is GGUF
    rows = [judge(c, params, budget) for c in params.select.candidates]
    by_name = {c.name: c for c in params.select.candidates}
    admissible = [by_name[r["name"]] for r in rows if not any(r["filters"].values())]
    missing = api.missing_keys(admissible)  # before any record is sent anywhere
    if missing:
        raise ProjectError(missing)
    dev = read_jsonl(Path(paths.processed) / "dev.jsonl")
    shots = read_jsonl(Path(paths.processed) / "sft.jsonl")[: params.select.few_shot]
    rank_by = params.select.rank_by
    lower_is_better = REGISTRY[rank_by].higher_is_better is False

    with stage_run("select", params, params.select.model_dump()) as _:
        import mlflow

        for row in rows:
            c = by_name[row["name"]]
            if not any(row["filters"].values()):
                if c.endpoint:
                    row["metrics"] = measure_api(c, dev, shots, params)
                    best = best_of({p: row["metrics"][p][rank_by] for p in PROMPTS}, rank_by)
                    row["cost_per_1k_requests_usd"] = row["metrics"][best]["cost_per_1k_requests_usd"]
                    row["filters"].update(cost_verdicts(params, row["cost_per_1k_requests_usd"]))
                else:
                    row["metrics"] = measure(c, row["ref"], dev, shots, params, device)
                scores = {p: row["metrics"][p][rank_by] for p in PROMPTS}
                row["score"] = scores[best_of(scores, rank_by)]
                mlflow.log_metrics(
                    {
                        f"{c.name}.{p}.{k}": v
                        for p in PROMPTS
                        for k, v in row["metrics"][p].items()
                        if isinstance(v, (int, float)) and v is not None
                    }
                )
            reasons = [r for r in row["filters"].values() if r]
            if reasons:
                row.update(status="rejected", reasons=reasons)
                log.info("%s rejected: %s", c.name, "; ".join(reasons))
            else:
                row["status"] = "ranked"

        sign = 1 if lower_is_better else -1
        ranked = sorted(
            (r for r in rows if r["status"] == "ranked"),
            key=lambda r: (sign * r["score"], r["parameters"] or float("inf")),
        )
        for i, r in enumerate(ranked, 1):
            r["rank"] = i
        local = [r for r in ranked if r["kind"] == "local"]
        if not local:
            raise ProjectError(
                [
                    "no local candidate survives the scope's constraints (an API candidate is measured "
                    "but never tuned or served here): "
                    + "; ".join(f"{r['name']}: {', '.join(r.get('reasons', ['ranked (API)']))}" for r in rows)
                ]
            )
        chosen = local[0]
        chosen["status"] = "selected"
        runner_up = local[1] if len(local) > 1 else None
        need = chosen["memory_gib"]["training"]["total"]
        why = (
            f"best {rank_by} on the dev split ({chosen['score']:.4f}"
            + (f" vs {runner_up['name']} {runner_up['score']:.4f}" if runner_up else ", the only local survivor")
            + f"), {chosen['parameters']:,} parameters, {technique} needs ~{need:.3g} GiB"
        )
        selection = {
            "selected": {
                "name": chosen["name"],
                "ref": chosen["ref"],
                "why": why,
                "model": facts(by_name[chosen["name"]], chosen),
            },
            "technique": technique,
            "rank_by": rank_by,
            "budgets": {k: v[1] for k, v in budget.items()},
            "candidates": rows,
        }
        above = [r for r in ranked if r["kind"] == "api" and r["rank"] < chosen["rank"]]
        if above:
            a = above[0]
            selection["api_alternative"] = {
                "name": a["name"],
                "score": a["score"],
                "cost_per_1k_requests_usd": a.get("cost_per_1k_requests_usd"),
                "why": f"ranks above {chosen['name']} on {rank_by} ({a['score']:.4f} vs {chosen['score']:.4f}) as a "
                "prompt-only solution through its API; it is not tuned or served by this pipeline",
            }
        write_json(paths.selection, selection)
        mlflow.set_tag("selected", chosen["name"])
        mlflow.log_artifact(paths.selection)
    summary = f"selected {chosen['name']}: {why}"
    if "api_alternative" in selection:
        summary += f"; API alternative {selection['api_alternative']['name']} ranks above it"
    return {"selection": selection, "summary": summary}


def facts(c: Candidate, row: dict) -> dict:
    """What the model card says of the base model: licence, size, context, where its weights came from."""
    entry = c.entry
    return {
        "catalog": c.catalog,
        "name": entry.name if entry else c.name,
        "publisher": entry.publisher if entry else None,
        "licence": c.licence,
        "parameters": row["parameters"],
        "context_length": entry.context_length if entry else (row.get("weights") or {}).get("context_length"),
        "weights": (row.get("weights") or {}).get("source") or c.path or c.hub_id,
        "card": str(entry.sources.card) if entry else None,
    }


FILTERS = (
    "licence",
    "languages",
    "hosting",
    "residency",
    "commercial_use",
    "context",
    "architecture",
    "memory_training",
    "memory_serving",
    "cost_per_request",
    "monthly_budget",
)


def explain(selection: dict) -> str:
    """models/selection.json as a table a project lead reads: each candidate, each filter's verdict, the figures."""
    rank_by = selection["rank_by"]
    head = (
        f"{'rank':<5}{'candidate':<22}{'kind':<6}{'params':>9}{'train GiB':>10}{'serve GiB':>10}"
        f"{rank_by + ' 0/few-shot':>30}{'latency ms':>11}{'$/1k req':>9}  status"
    )
    lines = [
        f"technique {selection['technique']}; ranked by {rank_by}; memory budgets: training "
        f"{selection['budgets']['training']}, serving {selection['budgets']['serving']}",
        "",
        head,
        "-" * len(head),
    ]

    def number(v, fmt="{:.4g}") -> str:
        return "-" if v is None else fmt.format(v)

    for r in sorted(selection["candidates"], key=lambda r: (r.get("rank") or 10**6, r["name"])):
        m = r.get("metrics") or {}
        scores = "/".join(number(m[p][rank_by]) for p in PROMPTS) if m else "-"
        latency = min(m[p]["latency_ms"] for p in PROMPTS) if m else None
        mem = r.get("memory_gib") or {}
        params = r.get("parameters")
        size = "-" if params is None else f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.2f}M"
        lines.append(
            f"{number(r.get('rank'), '{}'):<5}{r['name']:<22}{r['kind']:<6}{size:>9}"
            f"{number(mem.get('training', {}).get('total'), '{:.3g}'):>10}"
            f"{number(mem.get('serving', {}).get('total'), '{:.3g}'):>10}{scores:>30}"
            f"{number(latency, '{:.1f}'):>11}{number(r.get('cost_per_1k_requests_usd'), '{:.3g}'):>9}  "
            f"{r['status']}"
        )
        verdicts = ", ".join(
            f"{f} {'ok' if r['filters'].get(f) is None else 'FAIL'}" for f in FILTERS if f in r["filters"]
        )
        lines.append(f"{'':<5}  filters: {verdicts}")
        lines += [f"{'':<5}  - {reason}" for reason in r.get("reasons", [])]
    lines += ["", f"selected {selection['selected']['name']}: {selection['selected']['why']}"]
    if "api_alternative" in selection:
        lines.append(f"API alternative {selection['api_alternative']['name']}: {selection['api_alternative']['why']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return stage_main("select", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
