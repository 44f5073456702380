from pathlib import Path

from stages.common.io import read_json
from stages.common.params import EVAL_METRICS
from stages.common.metrics import score


def test_scoring_extremes():
    perfect = score(["Return the sum."], ["Return the sum."])
    assert perfect["rougeL"] == 1.0 and perfect["exact_match"] == 1.0 and perfect["bleu"] > 99
    wrong = score(["Open a socket."], ["Return the sum of values."])
    assert wrong["rougeL"] == 0.0 and wrong["exact_match"] == 0.0


def test_every_variant_is_scored_and_gated(prepared, aligned, tmp_path):
    from stages import evaluate

    paths = prepared.paths.model_copy(update={"eval_metrics": str(tmp_path / "eval.json"),
                                              "eval_report": str(tmp_path / "eval.md")})
    evaluate.run(prepared, paths)
    report = read_json(tmp_path / "eval.json")
    assert set(report["variants"]) == {"baseline_zero_shot", "baseline_prompted", "sft", "aligned"}
    for metrics in report["variants"].values():
        assert set(metrics) == set(EVAL_METRICS)
    assert report["candidate"] in ("sft", "aligned")
    assert report["baselines"] == ["baseline_zero_shot", "baseline_prompted"]
    assert report["gates"]["passed"] is True  # the tiny project's KPI: latency under a minute
    assert (tmp_path / "eval.png").stat().st_size > 1000
    assert "| sft |" in (tmp_path / "eval.md").read_text()
    assert len((tmp_path / "eval_answers.jsonl").read_text().splitlines()) == 16
