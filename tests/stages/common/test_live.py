"""Sources that live in systems, through their snapshots: a query on the PostgreSQL this machine runs, and the
served model's traces with feedback (written by the server's own tracer into a real MLflow store)."""

from __future__ import annotations

import json
import uuid

import mlflow
import pytest

from serving import tracing
from stages.common.errors import ProjectError
from stages.common.live import refresh
from stages.common.loader import load_params
from stages.common.sources import load_feedback, load_role
from tests.conftest import new_postgres_database, tiny_params_dict, write_params


def project(tmp_path, edit, name: str | None = None) -> object:
    p = tiny_params_dict(tmp_path)
    p["project"]["name"] = name or f"live-{uuid.uuid4().hex[:8]}"
    edit(p)
    return load_params(write_params(tmp_path, p))


def test_a_sql_source_is_snapshotted_and_read_like_a_file(tmp_path, monkeypatch):
    import psycopg2

    with new_postgres_database() as db:
        with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=db) as conn:
            conn.cursor().execute(
                "CREATE TABLE tickets (question text, answer text, opened date);"
                "INSERT INTO tickets VALUES ('What does `os.getcwd` do?', 'Return the current directory.', '2026-01-02'),"
                "('What does `os.sep` hold?', 'The path separator.', '2026-01-03')"
            )
        query = {"query": "select question, answer, opened from tickets order by opened", "url_env": "TICKETS_DB"}
        params = project(
            tmp_path,
            lambda p: p["data"]["sources"].update(
                general={"sql": query, "fields": {"question": "text"}},
            ),
        )
        monkeypatch.delenv("TICKETS_DB", raising=False)
        with pytest.raises(ProjectError, match="TICKETS_DB .*is not set"):
            refresh(params, tmp_path)
        monkeypatch.setenv("TICKETS_DB", f"postgresql://postgres@127.0.0.1:5432/{db}")
        assert refresh(params, tmp_path)["general"] == {"rows": 2, "new_rows": 2, "changed": True}
        snapshot = tmp_path / "data" / "snapshots" / "general.jsonl"
        rows = [json.loads(line) for line in snapshot.read_text().splitlines()]
        assert rows[0] == {
            "question": "What does `os.getcwd` do?",
            "answer": "Return the current directory.",
            "opened": "2026-01-02",
        }
        data = load_role("general", params.data.sources.general, params)
        assert [r["text"] for r in data.records] == ["What does `os.getcwd` do?", "What does `os.sep` hold?"]
        before = snapshot.stat().st_mtime_ns
        assert refresh(params, tmp_path)["general"]["changed"] is False
        assert snapshot.stat().st_mtime_ns == before, "an unchanged source leaves the file alone (DVC sees nothing)"
        query["query"] = "select * from no_such_table"
        bad = project(tmp_path, lambda p: p["data"]["sources"].update(general={"sql": query}))
        with pytest.raises(ProjectError, match=r"data.sources.general.sql.*no_such_table"):
            refresh(bad, tmp_path)
        assert "postgres@127.0.0.1" not in str(params.model_dump()), "the URL is never in params"


@pytest.mark.slow  # traces and assessments in a real MLflow store: ~11 s
def test_feedback_traces_become_sft_rows_and_preference_pairs(tmp_path):
    params = project(tmp_path, lambda p: p["data"]["sources"].update(feedback={"mlflow_traces": {}}))
    with pytest.raises(ProjectError, match="lifecycle snapshot"):
        load_feedback(params)  # no snapshot yet: say how to make one
    tracer = tracing.Tracer("redacted", params.project.name, {"version": 1})
    asked = {}
    for prompt, answer in [
        ("What does `json.loads` do?", "It writes."),
        ("What does `heapq.heapify` do?", "Transform a list into a heap."),
        ("What does `os.walk` do?", "It runs."),
        ("What does `math.tau` hold?", "Pi."),
    ]:
        span = tracer.start("/v1/chat/completions", prompt, "app")
        tracer.finish(span, prompt, answer, [], {}, 5.0)
        asked[prompt] = span.trace_id
    tracer.feedback(
        asked["What does `json.loads` do?"], 1, "Deserialize a JSON document to a Python object.", None, "app"
    )
    tracer.feedback(asked["What does `heapq.heapify` do?"], 5, None, None, "app")
    tracer.feedback(asked["What does `os.walk` do?"], 1, None, "useless", "app")
    mlflow.flush_trace_async_logging()

    assert refresh(params, tmp_path)["feedback"]["rows"] == 3, "the unrated trace is not feedback"
    out = load_feedback(params)
    assert out["sft"].records == [
        {"prompt": "What does `json.loads` do?", "completion": "Deserialize a JSON document to a Python object."}
    ]
    assert out["preference"].records == [
        {
            "prompt": "What does `json.loads` do?",
            "chosen": "Deserialize a JSON document to a Python object.",
            "rejected": "It writes.",
        }
    ]
    assert dict(out["sft"].dropped) == {
        "approved, not used": 1,
        "rated low without a correction: no better answer to learn": 1,
    }
    upvoted = {"mlflow_traces": {"use_upvoted": True}}
    params = project(tmp_path, lambda p: p["data"]["sources"].update(feedback=upvoted), params.project.name)
    assert {"prompt": "What does `heapq.heapify` do?", "completion": "Transform a list into a heap."} in load_feedback(
        params
    )["sft"].records
    assert refresh(params, tmp_path)["feedback"]["changed"] is False
    tracer.stop()


def test_a_live_source_is_refused_where_it_does_not_belong(tmp_path):
    with pytest.raises(Exception, match="mlflow_traces. is the .feedback. role"):
        project(tmp_path, lambda p: p["data"]["sources"].update(general={"mlflow_traces": {}}))
    with pytest.raises(Exception, match="give exactly one of"):
        project(
            tmp_path,
            lambda p: p["data"]["sources"].update(
                general={"path": "x.jsonl", "sql": {"query": "select 1", "url_env": "X"}}
            ),
        )
