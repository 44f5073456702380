from pathlib import Path

from stages.common.io import read_json
from stages.common.metrics import project_metrics


def test_every_variant_is_scored_and_gated(prepared, aligned, tmp_path):
    from stages import evaluate

    paths = prepared.paths.model_copy(update={"eval_metrics": str(tmp_path / "eval.json"),
                                              "eval_report": str(tmp_path / "eval.md")})
    evaluate.run(prepared, paths)
    report = read_json(tmp_path / "eval.json")
    assert set(report["variants"]) == {"baseline_zero_shot", "baseline_prompted", "sft", "aligned"}
    for metrics in report["variants"].values():
        assert set(metrics) == set(project_metrics(prepared))
        assert {"exact_match", "token_f1", "rougeL", "perplexity_general"} <= set(metrics)  # question answering
    assert report["candidate"] in ("sft", "aligned")
    assert report["baselines"] == ["baseline_zero_shot", "baseline_prompted"]
    assert report["gates"]["passed"] is True  # the tiny project's KPI: latency under a minute
    assert (tmp_path / "eval.png").stat().st_size > 1000
    assert "| sft |" in (tmp_path / "eval.md").read_text()
    answers = (tmp_path / "eval_answers.jsonl").read_text().splitlines()
    assert len(answers) == 16 and all("\n" not in a for a in answers)
