"""One model, one way of prompting it, measured on records: the project's text metrics, latency and answer
perplexity, and the answers. Select, the prompt search and evaluate all measure with this, so their figures
compare."""

from __future__ import annotations

from stages.common.params import Params


def decoding(params: Params) -> dict:
    """The generation settings evaluate measures with, as recorded with its metrics and answers."""
    return {
        **params.evaluate.decoding.model_dump(),
        "max_new_tokens": params.evaluate.max_new_tokens,
        "seed": params.project.seed,
    }


def measure_prompts(
    model,
    renderer,
    records: list[dict],
    prompts: list[str],
    params: Params,
    max_new_tokens: int,
    progress: str,
    names: list[str] | None = None,
    decoding: dict | None = None,
    opened=None,
) -> tuple[dict, list[str]]:
    """The project's text metrics, latency and answer perplexity of one model and one way of prompting it, and
    its answers (through `opened`, an engine from stages/common/engines.py; else transformers on `model`).
    Select, the prompt search and evaluate all measure with this."""
    from stages.common.engines import generate
    from stages.common.metrics import context, score, text_metrics
    from stages.common.models import answer_perplexity

    gen = generate(model, renderer, prompts, max_new_tokens, params.evaluate.batch_size, progress, decoding, opened)
    refs = [r["references"] for r in records]
    metrics = {
        **score(
            names or text_metrics(params),
            gen.answers,
            refs,
            **context(params),
            questions=[r["prompt"] for r in records],
        ),
        "latency_ms": round(gen.seconds_per_answer * 1000, 2),
        "answer_perplexity": round(answer_perplexity(model, renderer, records, prompts), 3),
    }
    return metrics, gen.answers


def decoding_speed(
    opened, renderer, prompts: list[str], max_new_tokens: int, concurrency: int, rounds: int = 2
) -> dict:
    """How fast an engine answers `concurrency` requests at once, as the server runs them: `rounds` waves of that
    many prompts (cycling through `prompts`), each forced to `max_new_tokens` new tokens so that every precision
    does the same work. {"tokens_per_s", "p50_ms", "p95_ms"} (a request's latency is its wave's)."""
    import time

    import numpy as np

    from stages.common import generation

    latencies, tokens, elapsed = [], 0, 0.0
    for r in range(rounds + 1):  # the first wave warms up (allocations, kernels) and is not counted
        batch = [renderer.encode(prompts[(r * concurrency + i) % len(prompts)]) for i in range(concurrency)]
        start = time.perf_counter()
        raw = generation.Generator(opened.engine, renderer.tokenizer, str)  # no stops: every row runs to the end
        out = generation.answer_all(raw, batch, generation.Decoding(max_new_tokens, ignore_eos=True), concurrency)
        seconds = time.perf_counter() - start
        if r:
            latencies += [seconds * 1000] * concurrency
            tokens += out.tokens
            elapsed += seconds
    return {
        "tokens_per_s": round(tokens / elapsed, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
    }
