"""How sure a number is: bootstrap confidence intervals over eval rows, and paired comparisons of two variants.

Both resample *rows* (scipy.stats), so they work for any metric of the registry: a per-row metric (ROUGE, exact
match, ...) resamples its array of row scores; a corpus metric (BLEU, chrF, macro-F1, field F1) is recomputed on
each resample of the rows. A paired comparison answers "is the candidate better than the baseline on the same
rows?": the difference, its bootstrap interval, and a paired permutation test's p-value (each row's two answers
swapped at random, the usual approximate-randomisation test of machine-translation papers).

Percentile intervals, not BCa: BCa needs a jackknife (one more metric computation per row), which is costly for
corpus metrics and degenerate for a constant metric; with hundreds of rows the two agree closely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.common.metrics import REGISTRY


@dataclass(frozen=True)
class Resampling:
    resamples: int = 1000
    level: float = 0.95
    seed: int = 17


def _subset(values: list, index) -> list:
    return [values[i] for i in index]


def _statistic(metric: str, predictions: list[str], references: list[list[str]], rows, kwargs: dict):
    """f(index array(s)) -> the metric on those rows; vectorized over a leading batch axis for per-row metrics.
    `predictions` may hold several variants one after another; row i's references are at i % len(references)."""
    n = len(references)
    if rows is not None:
        rows = np.asarray(rows, dtype=float)
        return (lambda index, axis=-1: rows[index].mean(axis=axis)), True
    compute = REGISTRY[metric].compute

    def corpus(index):
        return compute(_subset(predictions, index), [references[i % n] for i in index], **kwargs)

    return corpus, False


def interval(
    metric: str, predictions: list[str], references: list[list[str]], how: Resampling, rows=None, **kwargs
) -> dict:
    """{"value", "ci_low", "ci_high"} of one variant's metric. `rows` are its per-row scores when the metric has
    them (metrics.REGISTRY[metric].rows), computed once by the caller."""
    from scipy.stats import bootstrap

    statistic, vectorized = _statistic(metric, predictions, references, rows, kwargs)
    index = np.arange(len(references))
    value = float(statistic(index))
    if len(index) < 2:
        return {"value": value, "ci_low": value, "ci_high": value}
    res = bootstrap(
        (index,),
        statistic,
        vectorized=vectorized,
        n_resamples=how.resamples,
        confidence_level=how.level,
        method="percentile",
        rng=np.random.default_rng(how.seed),
    )
    ci = res.confidence_interval
    return {"value": value, "ci_low": float(ci.low), "ci_high": float(ci.high)}


def paired(
    metric: str,
    candidate: list[str],
    baseline: list[str],
    references: list[list[str]],
    how: Resampling,
    candidate_rows=None,
    baseline_rows=None,
    **kwargs,
) -> dict:
    """Candidate minus baseline on the same rows: {"difference", "ci_low", "ci_high", "p_value"}."""
    from scipy.stats import bootstrap, permutation_test

    n = len(references)
    rows = None if candidate_rows is None else list(candidate_rows) + list(baseline_rows)
    one, vectorized = _statistic(metric, list(candidate) + list(baseline), references, rows, kwargs)
    if vectorized:

        def difference(x, y, axis=-1):
            return one(x, axis=axis) - one(y, axis=axis)
    else:

        def difference(x, y):
            return one(x) - one(y)

    x, y = np.arange(n), np.arange(n) + n  # candidate's rows, baseline's rows (indices into both answer lists)
    value = float(difference(x, y))
    if n < 2:
        return {"difference": value, "ci_low": value, "ci_high": value, "p_value": 1.0}
    ci = bootstrap(
        (x, y),
        difference,
        paired=True,
        vectorized=vectorized,
        n_resamples=how.resamples,
        confidence_level=how.level,
        method="percentile",
        rng=np.random.default_rng(how.seed),
    ).confidence_interval
    test = permutation_test(
        (x, y),
        difference,
        permutation_type="samples",
        vectorized=vectorized,
        n_resamples=how.resamples,
        rng=np.random.default_rng(how.seed + 1),
    )
    return {"difference": value, "ci_low": float(ci.low), "ci_high": float(ci.high), "p_value": float(test.pvalue)}


def cell(v: dict) -> str:
    """A report cell: the value and, when it has one, its confidence interval."""
    return f"{v['value']} [{v['ci_low']}, {v['ci_high']}]" if "ci_low" in v else str(v["value"])
