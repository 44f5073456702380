"""Intervals and paired tests over answers (stages/common/significance.py), on hand-made answers."""


def test_uncertainty_compares_the_candidate_with_the_best_baseline_on_the_same_rows(tiny):
    from stages.common.params import Kpi
    from stages.common.significance import uncertainty

    rows = [{"prompt": f"q{i}", "references": [f"answer number {i}"]} for i in range(40)]
    answers = {
        "baseline_zero_shot": ["nothing"] * 40,
        "baseline_prompted": [f"answer {i}" if i % 2 else "no" for i in range(40)],
        "sft": [f"answer number {i}" for i in range(40)],
    }
    results = {"baseline_zero_shot": {"rougeL": 0.0}, "baseline_prompted": {"rougeL": 0.4}, "sft": {"rougeL": 1.0}}
    params = tiny.model_copy(
        update={
            "scope": tiny.scope.model_copy(
                update={
                    "kpis": [
                        Kpi(metric="rougeL", threshold=0.1, direction="higher", versus="baseline", confidence="ci")
                    ]
                }
            )
        }
    )
    intervals, comparisons = uncertainty(
        params, rows, answers, "sft", {n: results[n] for n in ("baseline_zero_shot", "baseline_prompted")}
    )
    assert intervals["sft"]["rougeL"] == {"ci_low": 1.0, "ci_high": 1.0}, "a constant metric: zero width"
    assert (
        intervals["baseline_prompted"]["rougeL"]["ci_low"] < 0.4 < intervals["baseline_prompted"]["rougeL"]["ci_high"]
    )
    assert set(intervals["sft"]) == {"exact_match", "token_f1", "rougeL", "guardrail_violations"}  # max_words
    c = comparisons["rougeL"]
    assert c["baseline"] == "baseline_prompted", "the best baseline for the metric"
    assert c["ci_low"] <= c["difference"] <= c["ci_high"] and c["difference"] > 0.3 and c["p_value"] < 0.01


def test_the_judge_joins_the_intervals_when_configured(tiny, untrained_lm):
    from stages.common.params import Judge
    from stages.common.significance import uncertainty

    judge = Judge(model=untrained_lm)
    params = tiny.model_copy(update={"evaluate": tiny.evaluate.model_copy(update={"judge": judge})})
    rows = [{"prompt": f"What does `f{i}` do?", "references": [f"Return {i}."]} for i in range(12)]
    answers = {
        n: [f"Return {i}." if n == "sft" else "No." for i in range(12)]
        for n in ("baseline_zero_shot", "baseline_prompted", "sft")
    }
    intervals, _ = uncertainty(params, rows, answers, "sft", {"baseline_zero_shot": {}, "baseline_prompted": {}})
    judged = intervals["sft"]["judge_score"]
    assert 1 <= judged["ci_low"] <= judged["ci_high"] <= 5
