import numpy as np
import pytest

from stages.common.confidence import Resampling, interval, paired
from stages.common.metrics import REGISTRY

HOW = Resampling(resamples=1000, level=0.95, seed=17)


def test_a_constant_metric_has_a_zero_width_interval():
    refs = [["the cat sat"]] * 50
    rows = REGISTRY["rougeL"].rows(["the cat sat"] * 50, refs)
    assert interval("rougeL", ["the cat sat"] * 50, refs, HOW, rows) == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}


def test_a_fair_coin_interval_covers_one_half():
    flips = np.random.default_rng(3).integers(0, 2, 400)
    answers = ["yes" if f else "no" for f in flips]
    refs = [["yes"]] * 400
    result = interval("exact_match", answers, refs, HOW, REGISTRY["exact_match"].rows(answers, refs))
    assert result["value"] == pytest.approx(flips.mean())
    assert result["ci_low"] < 0.5 < result["ci_high"]
    assert 0.06 < result["ci_high"] - result["ci_low"] < 0.14, "about 4 standard errors of a mean of 400 flips"


def test_a_corpus_metric_is_resampled_by_recomputing_it():
    refs = [[f"the quick brown fox jumps over dog number {i}"] for i in range(30)]
    answers = [r[0] if i % 3 else "a slow red cat" for i, r in enumerate(refs)]
    result = interval("chrf", answers, refs, Resampling(200, 0.9, 1))
    assert REGISTRY["chrf"].rows is None
    assert result["value"] == pytest.approx(REGISTRY["chrf"].compute(answers, refs))
    assert result["ci_low"] < result["value"] < result["ci_high"]


@pytest.mark.parametrize("metric", ["rougeL", "bleu"])
def test_identical_systems_do_not_differ(metric):
    refs = [[f"word {i} and more words here"] for i in range(25)]
    answers = [f"word {i} and words" for i in range(25)]
    rows = REGISTRY[metric].rows
    result = paired(
        metric,
        answers,
        answers,
        refs,
        Resampling(200, 0.95, 5),
        rows and rows(answers, refs),
        rows and rows(answers, refs),
    )
    assert result == {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}


def test_a_better_system_differs_with_confidence_and_a_small_p_value():
    refs = [[f"answer number {i}"] for i in range(60)]
    good = [r[0] for r in refs]
    bad = [f"answer {i}" if i % 4 else "none" for i in range(60)]
    rows = REGISTRY["rougeL"].rows
    result = paired("rougeL", good, bad, refs, HOW, rows(good, refs), rows(bad, refs))
    assert 0 < result["ci_low"] <= result["difference"] <= result["ci_high"]
    assert result["p_value"] < 0.01
    swapped = paired("rougeL", bad, good, refs, HOW, rows(bad, refs), rows(good, refs))
    assert swapped["difference"] == pytest.approx(-result["difference"]) and swapped["ci_high"] < 0
