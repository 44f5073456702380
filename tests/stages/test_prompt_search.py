from pathlib import Path

from stages.common.io import read_json, read_jsonl
from stages.common.metrics import REGISTRY


def test_prompt_search_records_dev_scores(prepared, prompted):
    """The search keeps the shot count whose dev score, as recorded in its own metrics, is best for the metric's
    direction (the fewer shots on a tie), and the prompt carries exactly that many SFT examples."""
    prompt = read_json(prepared.paths.prompt)
    metrics = read_json(f"{prepared.paths.metrics}/prompt_search.json")
    metric = prompt["metric"]
    searched = sorted(prepared.prompt_search.shots)
    assert sorted(int(k) for k in prompt["dev_scores"]) == searched
    recorded = {k: metrics[f"{k}_shot.{metric}"] for k in searched}
    assert recorded == {k: prompt["dev_scores"][str(k)] for k in searched}, "metrics and prompt agree"
    sign = -1 if REGISTRY[metric].higher_is_better is False else 1
    best = max(sign * v for v in recorded.values())
    expected = min(k for k, v in recorded.items() if sign * v == best)
    assert prompt["shots"] == metrics["shots"] == expected, (metric, recorded)
    sft = read_jsonl(Path(prepared.paths.processed) / "sft.jsonl")
    assert prompt["examples"] == sft[:expected], "the first `shots` SFT rows, as the search rendered them"
