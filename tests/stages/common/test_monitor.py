"""The monitor on real traces (the server's tracer into the tests' MLflow store) and the real MiniLM: a window of
eval-split questions is in domain and does not drift; a window from another domain trips it."""

from __future__ import annotations

import time
import uuid

import mlflow
import pytest

from serving import tracing
from stages.common import monitor
from stages.common.io import read_jsonl

ELSEWHERE = [
    "How long should I boil an egg for a runny yolk?",
    "Which wine goes with grilled salmon?",
    "What is the capital of Mongolia?",
    "How do I repot an orchid without hurting the roots?",
    "Who won the football world cup in 1998?",
    "How many calories are in a banana?",
    "What is a good stretching routine after running?",
    "Can you recommend a novel about the sea?",
    "How do I remove a red wine stain from a carpet?",
    "When is the best season to visit Japan?",
    "What should I pack for a weekend of hiking?",
    "How do I knit a scarf for beginners?",
]


def window(params, prompts: list[str], rate: int | None = None):
    """One request per prompt, traced as the server traces it, into a project of its own."""
    name = f"monitor-{uuid.uuid4().hex[:8]}"
    project = params.project.model_copy(update={"name": name})
    knobs = params.monitor.model_copy(update={"min_requests": 10, "window_days": 1})
    mine = params.model_copy(update={"project": project, "monitor": knobs})
    tracer = tracing.Tracer("redacted", name, {"version": 1})
    for prompt in prompts:
        span = tracer.start("/v1/chat/completions", prompt, "app")
        tracer.finish(span, prompt, "An answer.", [], {}, 20.0)
        if rate is not None:
            tracer.feedback(span.trace_id, rate, None, None, "app")
    mlflow.flush_trace_async_logging()
    tracer.stop()
    return mine


@pytest.mark.slow  # MiniLM embeds the window and the training prompts: ~30 s
def test_questions_from_the_eval_split_stay_in_domain_and_do_not_drift(processed, tmp_path):
    eval_prompts = [r["prompt"] for r in read_jsonl(processed.paths.processed + "/eval.jsonl")]
    params = window(processed, eval_prompts, rate=5)
    report = monitor.measure(params, processed.paths.processed, int(time.time() * 1000) + 1000)
    assert report["judged"] and report["requests"] == len(eval_prompts)
    assert report["drift"]["versus"] == "the eval split" and not report["drift"]["drifted"], report["drift"]
    assert report["out_of_domain"]["share"] <= 0.25
    assert report["approval"]["rate"] == 1.0 and report["approval"]["ci"][0] > 0.7
    assert report["latency_ms"]["p95"] == 20.0 and not report["crossed"], report["crossed"]


@pytest.mark.slow  # MiniLM embeds the window and the training prompts: ~30 s
def test_a_window_from_another_domain_trips_the_monitor(processed, tmp_path):
    params = window(processed, ELSEWHERE, rate=1)
    report = monitor.run(params, tmp_path, int(time.time() * 1000) + 1000)
    assert report["drift"]["drifted"] and report["drift"]["p_value"] < 0.01
    assert report["out_of_domain"]["share"] > 0.5
    crossed = " ".join(report["crossed"])
    assert "input drift" in crossed and "out-of-domain" in crossed and "approval" in crossed
    written = (tmp_path / "reports" / "monitor.md").read_text()
    assert "CROSSED: input drift" in written and (tmp_path / "reports" / "monitor.png").stat().st_size > 10_000


def test_too_few_requests_are_not_judged(processed, tmp_path):
    params = window(processed, ELSEWHERE[:3])
    report = monitor.measure(params, processed.paths.processed, int(time.time() * 1000) + 1000)
    assert not report["judged"] and "fewer than `monitor.min_requests` 10" in report["why"]
