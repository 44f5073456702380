"""One model, one way of prompting it, measured on records: the project's text metrics, latency and answer
perplexity, and the answers. Select, the prompt search and evaluate all measure with this, so their figures
compare."""

from __future__ import annotations

from stages.common.params import Params


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
) -> tuple[dict, list[str]]:
    """The project's text metrics, latency and answer perplexity of one model and one way of prompting it, and
    its answers. Select, the prompt search and evaluate all measure with this."""
    from stages.common.metrics import context, score, text_metrics
    from stages.common.models import answer_perplexity, generate

    gen = generate(
        model, renderer, prompts, max_new_tokens, params.evaluate.batch_size, progress=progress, decoding=decoding
    )
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
