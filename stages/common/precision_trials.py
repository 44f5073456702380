"""The candidate at each serving precision (`package.quantize`, stages/common/precision.py), measured the way it
would serve: the same eval rows, through the engine that serves it (OpenVINO: the GGUF file at F16, Q8_0, Q4_0).
Evaluate runs these trials for a candidate whose gates passed; `gates.choose_precision` picks from them."""

from __future__ import annotations

import logging

from stages.common.errors import ProjectError
from stages.common.metrics import evaluated_text_metrics
from stages.common.params import Params

log = logging.getLogger(__name__)


def quality_metric(params: Params) -> str:
    """What a smaller precision may lose only so much of: the primary KPI's metric when it is scored per answer,
    else the task's first such metric (a latency KPI says nothing of quality)."""
    names = evaluated_text_metrics(params)
    primary = params.scope.kpis[0].metric
    return primary if primary in names else names[0]


def try_precisions(
    params: Params, candidate: str, spec: dict, rows: list[dict], full: dict, full_answers: list[str], device: str
) -> tuple[dict, dict[str, list[str]]]:
    """The candidate at each `package.quantize` precision beside its trained weights (`full`): the task metrics
    with their intervals (`full`: the candidate's own row of the report), the paired difference with the trained
    weights on the quality metric, the bytes of the weights, the estimated serving memory, and the decoding speed
    alone and at the server's batch size. A precision that cannot run here is skipped with the reason. Returns
    ({precision: trial}, {precision: answers})."""
    from stages.common import precision as precisions
    from stages.common.engines import engine_choice, open_engine
    from stages.common.generation import GGUF_TYPE
    from stages.common.measure import decoding, decoding_speed, measure_prompts
    from stages.common.memory import GIB, estimate, shape_of
    from stages.common.models import candidate_model, render_all, renderer_for
    from stages.common.significance import intervals_of, paired_difference, rounded

    n_new, batch = params.evaluate.max_new_tokens, params.serve.max_batch_size
    metric, names = quality_metric(params), evaluated_text_metrics(params)
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
                names,
                decoding(params),
                opened,
            )
            ci = intervals_of(params, rows, answers[name], names)
            metrics = {m: {"value": v, **ci.get(m, {})} for m, v in values.items()}
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
            trials[name]["difference"] = rounded(paired_difference(params, metric, rows, answers[name], full_answers))
        log.info("evaluate @%s: %s", name, {k: v for k, v in trials[name].items() if k != "metrics"})
        del model
    return trials, answers
