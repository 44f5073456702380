"""prompt_search: the cheapest rung of the escalation ladder, the best few-shot prompt for the selected model.

    python -m stages.prompt_search  # writes models/prompt.json and metrics/prompt_search.json

The selected model answers the dev split with 0, 1, ... `prompt_search.shots` examples from the SFT data in the
prompt; the count best on the primary KPI's metric wins (the shorter prompt on a tie). "The baseline, prompted"
in evaluate is this prompt, and with `ladder.stop_when_passed` it is the first rung the gates judge, before any
training.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stages.common.cli import stage_main
from stages.common.io import read_json, read_jsonl, write_json
from stages.common.params import Params, Paths

log = logging.getLogger(__name__)


def prompt_metric(params: Params) -> str:
    """What the search optimises: the primary KPI's metric when the dev split measures it, else the task's
    first metric that has a direction."""
    from stages.common.metrics import REGISTRY, selection_metrics

    measured = [m for m in selection_metrics(params) if REGISTRY[m].higher_is_better is not None]
    primary = params.scope.kpis[0].metric
    return primary if primary in measured else measured[0]


def search_prompt(model, tok, dev: list[dict], examples: list[dict], shot_counts: list[int], params: Params) -> dict:
    from stages.common.engines import open_engine
    from stages.common.measure import measure_prompts
    from stages.common.metrics import best_of
    from stages.common.models import render_all, renderer_for

    metric = prompt_metric(params)
    n_new = params.select.max_new_tokens
    renderer = renderer_for(params, tok, model, max_new_tokens=n_new)
    results = {}
    # The engine that evaluates and serves (serve.engine) answers here too: the shots are chosen on its answers.
    opened = open_engine(params, model, tok, str(model.device))
    try:
        for k in sorted(shot_counts):  # sorted: on a tie the shorter (cheaper) prompt, found first, wins
            prompts = render_all(renderer, dev, "dev", examples[:k])
            measured, _ = measure_prompts(
                model, renderer, dev, prompts, params, n_new, f"prompt search {k}-shot ({opened.name})", opened=opened
            )
            results[k] = measured[metric]
    finally:
        opened.close()
    best = best_of(results, metric)
    return {
        "shots": best,
        "examples": examples[:best],
        "dev_scores": {str(k): v for k, v in results.items()},
        "metric": metric,
    }


def run(params: Params, paths: Paths) -> dict:
    from stages.common.models import load_model, load_tokenizer, resolve_device
    from stages.common.tracking import log_splits, stage_run

    selection = read_json(paths.selection)
    base_ref = selection["selected"]["ref"]
    shots = params.prompt_search.shots
    dev = read_jsonl(Path(paths.processed) / "dev.jsonl")
    examples = read_jsonl(Path(paths.processed) / "sft.jsonl")[: max(shots)]
    with stage_run("prompt_search", params, params.prompt_search.model_dump()) as _:
        import mlflow

        log_splits(paths.processed, ["sft", "dev"])
        model = load_model(base_ref, resolve_device(params.project.device))
        prompt = search_prompt(model, load_tokenizer(base_ref), dev, examples, shots, params)
        write_json(paths.prompt, prompt)
        metrics = {
            "shots": prompt["shots"],
            **{f"{k}_shot.{prompt['metric']}": v for k, v in prompt["dev_scores"].items()},
        }
        write_json(Path(paths.metrics) / "prompt_search.json", metrics)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    return {
        "metrics": metrics,
        "summary": f"{prompt['shots']}-shot on {selection['selected']['name']} "
        f"({prompt['metric']} on dev by shots: {prompt['dev_scores']})",
    }


def main(argv: list[str] | None = None) -> int:
    return stage_main("prompt_search", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
