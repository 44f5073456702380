"""The server's tracer in process, on a real MLflow store (the tests' SQLite): a trace per request with what the
issue lists, redaction of planted personal data, feedback as assessments, an unknown trace refused, and the
retention command deleting what is older than its days."""

from __future__ import annotations

import time
import uuid

import mlflow
import pytest

from serving import tracing

MODEL = {"model": "helpdesk", "version": 3, "alias": "champion", "variant": "sft", "precision": "int8"}
EMAIL, PHONE = "jane.doe@example.com", "+1 201-555-0123"


def traced(tracer, prompt: str, answer: str, start_ns: int | None = None):
    span = tracer.start("/v1/chat/completions", prompt, "support-app")
    if start_ns is not None:  # an old request, for the retention test
        span._span._start_time = start_ns
    tracer.finish(
        span,
        f"<|user|>{prompt}<|assistant|>",
        answer,
        [{"source": "json.md", "section": "dumps"}],
        {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        12.5,
    )
    return span.trace_id


@pytest.fixture
def experiment() -> str:
    return f"tracing-{uuid.uuid4().hex[:8]}"


def test_a_redacted_trace_holds_the_request_and_no_personal_data(experiment):
    tracer = tracing.Tracer("redacted", experiment, MODEL)
    trace_id = traced(tracer, f"mail {EMAIL} or call {PHONE}: what does json.dumps do?", f"ask {EMAIL}")
    mlflow.flush_trace_async_logging()
    trace = mlflow.get_trace(trace_id)
    tags, root = trace.info.tags, trace.data.spans[0]
    assert tags["lifecycle.version"] == "3" and tags["lifecycle.alias"] == "champion"
    assert tags["lifecycle.caller"] == "support-app" and tags["lifecycle.variant"] == "sft"
    assert root.attributes["mlflow.chat.tokenUsage"] == {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    assert root.attributes["latency_ms"] == 12.5 and trace.info.token_usage["total_tokens"] == 10
    assert root.attributes["sources"] == ["json.md#dumps"]
    everything = str(trace.to_dict())
    assert EMAIL not in everything and "555-0123" not in everything, "nothing personal reached MLflow"
    assert "[EMAIL]" in root.inputs["prompt"] and "[PHONE]" in root.inputs["prompt"]
    assert root.outputs == {"answer": "ask [EMAIL]"}
    tracer.stop()


def test_full_tracing_keeps_the_text_and_off_traces_nothing(experiment):
    full = tracing.Tracer("full", experiment, MODEL)
    trace_id = traced(full, f"mail {EMAIL}", "ok")
    mlflow.flush_trace_async_logging()
    assert mlflow.get_trace(trace_id).data.spans[0].inputs["prompt"] == f"mail {EMAIL}"
    full.stop()
    off = tracing.Tracer("off", experiment, MODEL)
    assert off.start("/generate", "hello", "anonymous") is None


def test_feedback_is_recorded_on_the_trace_and_an_unknown_trace_is_refused(experiment):
    tracer = tracing.Tracer("redacted", experiment, MODEL)
    trace_id = traced(tracer, "What does `heapq.heappush` do?", "It sorts.")
    # Feedback right after the answer: the trace may still be in the export queue; the tracer sends it first.
    tracer.feedback(trace_id, 1, "Push an item onto the heap, keeping the heap invariant.", "wrong", "support-app")
    trace = mlflow.get_trace(trace_id)
    found = {a.name: a for a in trace.info.assessments}
    assert found["rating"].feedback.value == 1 and found["rating"].rationale == "wrong"
    assert found["rating"].source.source_id == "support-app" and found["rating"].source.source_type == "HUMAN"
    assert found["correction"].expectation.value.startswith("Push an item")
    with pytest.raises(tracing.Unknown):
        tracer.feedback("tr-" + "0" * 32, 5, None, None, "support-app")
    tracer.stop()


def test_feedback_is_bound_to_its_caller_and_its_model_and_replaces_the_callers_earlier_one(experiment):
    """The hostile caller: another key's trace (403), another project's or model's trace (404, as unknown); the
    caller's own vote and correction given twice: one each, the latest."""
    tracer = tracing.Tracer("redacted", experiment, MODEL)
    mine = traced(tracer, "What does `heapq.heappop` do?", "It pushes.")  # made for support-app
    with pytest.raises(tracing.NotYours):
        tracer.feedback(mine, 1, "Poison.", None, "other-app")
    other_project = tracing.Tracer("redacted", f"{experiment}-other", MODEL)
    theirs = traced(other_project, "What does `os.sep` do?", "A separator.")
    other_model = tracing.Tracer("redacted", experiment, {**MODEL, "model": "another-model"})
    other_models = traced(other_model, "What does `os.sep` do?", "A separator.")
    mlflow.flush_trace_async_logging()
    for foreign in (theirs, other_models):
        with pytest.raises(tracing.Unknown):
            tracer.feedback(foreign, 1, "Poison.", None, "support-app", reviewer=True)
    tracer.feedback(mine, 1, "Pop the smallest item.", "wrong", "support-app")
    tracer.feedback(mine, 2, "Pop and return the smallest item off the heap.", "still", "support-app")
    tracer.feedback(mine, 5, None, "fine", "reviewer-1", reviewer=True)
    valid = [a for a in mlflow.get_trace(mine).info.assessments if a.valid is not False]
    by = {(a.source.source_id, a.name): a for a in valid}
    assert len(valid) == len(by) == 3, "one rating and one correction per caller: later ones replace earlier"
    assert by[("support-app", "rating")].feedback.value == 2
    assert by[("support-app", "correction")].expectation.value.startswith("Pop and return")
    assert by[("reviewer-1", "rating")].feedback.value == 5
    for t in (tracer, other_project, other_model):
        t.stop()


def test_retention_deletes_the_traces_older_than_its_days(experiment, tmp_path):
    from flows.loop import prune_traces
    from stages.common.loader import load_params
    from tests.conftest import tiny_params_dict, write_params

    p = tiny_params_dict(tmp_path)
    p["project"]["name"] = experiment
    p["scope"]["residency"]["retention_days"] = 30
    params = load_params(write_params(tmp_path, p))
    tracer = tracing.Tracer("redacted", experiment, MODEL)
    old = traced(tracer, "an old question", "old", start_ns=int((time.time() - 40 * 86_400) * 1e9))
    new = traced(tracer, "a new question", "new")
    mlflow.flush_trace_async_logging()
    assert prune_traces.fn(str(tmp_path), params) == 1
    assert mlflow.get_trace(old, silent=True) is None and mlflow.get_trace(new) is not None
    tracer.stop()


def test_without_a_usable_tracking_uri_the_server_serves_untraced(monkeypatch, caplog):
    """In a container the bento has MLflow's tracing SDK only: without MLFLOW_TRACKING_URI there is no store."""

    def no_store():
        raise ModuleNotFoundError("No module named 'sqlparse'")

    monkeypatch.setattr(tracing.Tracer, "_uri", staticmethod(no_store))
    tracer = tracing.Tracer("redacted", "anything", MODEL)
    assert tracer.mode == "off" and tracer.start("/generate", "hi", "anonymous") is None
    assert "set MLFLOW_TRACKING_URI to a tracking server" in caplog.text
    tracer.stop()


def test_a_key_gets_its_calls_per_minute_and_waits_for_the_oldest_to_age_out():
    now = [0.0]
    limit = tracing.RateLimit(3, clock=lambda: now[0])
    assert [limit.wait("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    now[0] = 20.0
    assert limit.wait("a") == 40.0, "the first call leaves the window at 60 s"
    assert limit.wait("b") == 0.0, "another key has its own budget"
    now[0] = 60.0
    assert limit.wait("a") == 0.0 and limit.wait("a") == 0.0, "only the calls of the last minute count"
