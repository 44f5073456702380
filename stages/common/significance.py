"""How sure a comparison of answers is: bootstrap intervals of every variant's text metrics over the eval rows, and
paired tests between two variants on the same rows (stages/common/confidence.py does the resampling). Evaluate
applies these to its variants; the gates (stages/common/gates.py) read the numbers they return."""

from __future__ import annotations

from stages.common.confidence import Resampling, interval, paired
from stages.common.metrics import REGISTRY, context, evaluated_text_metrics, row_scores
from stages.common.params import Params


def resampling(params: Params) -> Resampling:
    return Resampling(params.evaluate.resamples, params.evaluate.confidence_level, params.project.seed)


def scoring(params: Params, rows: list[dict]) -> tuple[list[list[str]], dict]:
    """The references of `rows` and the keyword arguments every metric of the project is scored with."""
    return [r["references"] for r in rows], {**context(params), "questions": [r["prompt"] for r in rows]}


def scores_of(params: Params, rows: list[dict], answers: list[str], names: list[str]) -> dict[str, list | None]:
    """{metric: one score per row} of one variant's answers (None: a corpus metric), computed once and then
    resampled (a judge model scores each answer once)."""
    refs, kw = scoring(params, rows)
    return {m: row_scores(m, answers, refs, **kw) for m in names}


def paired_difference(
    params: Params,
    metric: str,
    rows: list[dict],
    a: list[str],
    b: list[str],
    scores: tuple[list | None, list | None] | None = None,
) -> dict:
    """`a` minus `b` on `metric` over the same rows: {"difference", "ci_low", "ci_high", "p_value"}. `scores`: the
    two variants' row scores when already computed."""
    refs, kw = scoring(params, rows)
    a_rows, b_rows = scores or (row_scores(metric, a, refs, **kw), row_scores(metric, b, refs, **kw))
    return paired(metric, a, b, refs, resampling(params), a_rows, b_rows, **kw)


def rounded(c: dict) -> dict:
    return {k: round(v, 4) for k, v in c.items()}


def intervals_of(
    params: Params, rows: list[dict], answers: list[str], names: list[str], scores: dict | None = None
) -> dict[str, dict]:
    """{metric: {"ci_low", "ci_high"}} of one variant's answers, for each of `names` (`scores`: from `scores_of`)."""
    refs, kw = scoring(params, rows)
    scores = scores or scores_of(params, rows, answers, names)
    out = {}
    for m in names:
        i = interval(m, answers, refs, resampling(params), scores[m], **kw)
        out[m] = {"ci_low": round(i["ci_low"], 4), "ci_high": round(i["ci_high"], 4)}
    return out


def uncertainty(
    params: Params, eval_rows: list[dict], answers: dict[str, list[str]], candidate: str, baselines: dict[str, dict]
) -> tuple[dict, dict]:
    """Bootstrap intervals of every text metric of every variant ({variant: {metric: {"ci_low", "ci_high"}}}) and
    the paired comparison of the candidate with the best baseline for each KPI metric compared to a baseline
    (and the primary metric) ({metric: {"candidate", "baseline", "difference", "ci_low", "ci_high", "p_value"}})."""
    from tqdm.auto import tqdm

    from stages.common.gates import best_baseline

    names = evaluated_text_metrics(params)
    scores = {n: scores_of(params, eval_rows, answers[n], names) for n in answers}
    progress = f"evaluate: bootstrap intervals ({params.evaluate.resamples} resamples)"
    intervals = {
        n: intervals_of(params, eval_rows, answers[n], names, scores[n])
        for n in tqdm(answers, desc=progress, unit="variant")
    }
    compared = [params.scope.kpis[0].metric] + [k.metric for k in params.scope.kpis if k.versus == "baseline"]
    comparisons = {}
    for m in dict.fromkeys(c for c in compared if c in names):
        higher = REGISTRY[m].higher_is_better is not False
        base = best_baseline(baselines, m, higher) if baselines else None
        if base is None:
            continue
        pair = (scores[candidate][m], scores[base][m])
        c = paired_difference(params, m, eval_rows, answers[candidate], answers[base], pair)
        comparisons[m] = {"candidate": candidate, "baseline": base, **rounded(c)}
    return intervals, comparisons


def better_with_confidence(
    params: Params, eval_rows: list[dict], answers: dict[str, list[str]], costly: str, simpler: str
) -> dict | None:
    """Is `costly` better than `simpler` on the primary metric with confidence (the paired interval of the
    difference, on the same rows, excludes 0)? None when the primary metric is one number measured on the model
    (latency: no rows to pair)."""
    metric = params.scope.kpis[0].metric
    if REGISTRY[metric].compute is None:
        return None
    c = paired_difference(params, metric, eval_rows, answers[costly], answers[simpler])
    higher = params.scope.kpis[0].direction == "higher"
    return {
        "costly": costly,
        "simpler": simpler,
        "metric": metric,
        **rounded(c),
        "better": bool(c["ci_low"] > 0 if higher else c["ci_high"] < 0),
    }
