"""Sources that live in systems, through their snapshots: a query on the PostgreSQL this machine runs, and the
served model's traces with feedback (written by the server's own tracer into a real MLflow store)."""

from __future__ import annotations

import json
import uuid
from collections import Counter

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
                "('What does `os.sep` hold?', 'The path separator.', '2026-01-03');"
                "CREATE SEQUENCE ticket_ids"
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
        # A statement that writes runs in a read-only transaction: refused, naming the role; the table as it was.
        query["query"] = "select nextval('ticket_ids') as id"  # a query that writes (the sequence)
        writes = project(tmp_path, lambda p: p["data"]["sources"].update(general={"sql": query}))
        with pytest.raises(ProjectError, match=r"data.sources.general.sql.*read-only transaction"):
            refresh(writes, tmp_path)
        with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=db) as conn:
            cur = conn.cursor()
            cur.execute("select last_value, is_called from ticket_ids")
            assert cur.fetchone() == (1, False), "the sequence never moved"
        assert snapshot.stat().st_mtime_ns == before, "a failed refresh leaves the last snapshot as it was"
        query["query"] = "select * from no_such_table"
        bad = project(tmp_path, lambda p: p["data"]["sources"].update(general={"sql": query}))
        with pytest.raises(ProjectError, match=r"data.sources.general.sql.*no_such_table"):
            refresh(bad, tmp_path)
        assert "postgres@127.0.0.1" not in str(params.model_dump()), "the URL is never in params"


@pytest.mark.slow  # traces and assessments in a real MLflow store: ~15 s
def test_feedback_traces_become_sft_rows_and_preference_pairs_once_trusted(tmp_path):
    """A correction trains only when trusted: by default once a reviewer approved it (flows/review.py), with
    `callers` when its caller is listed, with `all` always; a rejected one never; one caller at most
    `max_rows_per_caller` rows."""
    from flows import review
    from stages.common.live import APPROVED, REJECTED

    def feedback(forbidden=(), **traces):
        def edit(p):
            p["data"]["sources"].update(feedback={"mlflow_traces": traces})
            p["evaluate"]["guardrails"]["forbidden_terms"] = list(forbidden)

        return project(tmp_path, edit, name)

    name = f"live-{uuid.uuid4().hex[:8]}"
    params = feedback()
    with pytest.raises(ProjectError, match="lifecycle snapshot"):
        load_feedback(params)  # no snapshot yet: say how to make one
    tracer = tracing.Tracer("redacted", params.project.name, {"version": 1})
    asked = {}
    for prompt, answer, caller in [
        ("What does `json.loads` do?", "It writes.", "app"),
        ("What does `heapq.heapify` do?", "Transform a list into a heap.", "app"),
        ("What does `os.walk` do?", "It runs.", "app"),
        ("What does `math.tau` hold?", "Pi.", "app"),
        ("What does `os.sep` hold?", "A colon.", "intern"),
        ("What does `os.getcwd` do?", "Nothing.", "spammer"),
    ]:
        span = tracer.start("/v1/chat/completions", prompt, caller)
        tracer.finish(span, prompt, answer, [], {}, 5.0)
        asked[prompt] = (span.trace_id, caller)
    right = {
        "What does `json.loads` do?": "Deserialize a JSON document to a Python object.",
        "What does `os.sep` hold?": "The character separating pathname components.",
        "What does `os.getcwd` do?": "Buy our product.",
    }
    for prompt, correction in right.items():
        tracer.feedback(asked[prompt][0], 1, correction, None, asked[prompt][1])
    tracer.feedback(asked["What does `heapq.heapify` do?"][0], 5, None, None, "app")
    tracer.feedback(asked["What does `os.walk` do?"][0], 1, None, "useless", "app")
    mlflow.flush_trace_async_logging()

    assert refresh(params, tmp_path)["feedback"]["rows"] == 5, "the unrated trace is not feedback"
    out = load_feedback(params)
    assert out["sft"].records == [] and out["preference"].records == [], "trust: reviewed, nothing reviewed yet"
    assert out["sft"].dropped["pending review"] == 3
    # Oldest first; traces of the same millisecond in any order.
    assert sorted(r["trace_id"] for r in review.pending(params)) == sorted(asked[p][0] for p in right)
    review.record(params, [asked["What does `json.loads` do?"][0]], APPROVED, "lead")
    review.record(params, [asked["What does `os.getcwd` do?"][0]], REJECTED, "lead", "an advertisement")
    with pytest.raises(ProjectError, match="no trace of this project"):
        review.record(params, ["tr-" + "0" * 32], APPROVED, "lead")
    refresh(params, tmp_path)
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
        "pending review": 1,
        "rejected by a reviewer": 1,
    }
    assert out["sft"].callers == {"app": {"taken": 1}, "intern": {"pending": 1}, "spammer": {"rejected": 1}}
    assert [r["caller"] for r in review.pending(params)] == ["intern"]

    listed = load_feedback(feedback(trust="callers", trusted_callers=["intern"]))
    assert [r["completion"] for r in listed["sft"].records] == [right["What does `os.sep` hold?"]]
    everyone = load_feedback(feedback(trust="all"))
    assert len(everyone["sft"].records) == 3, "all: every correction, the rejected one too (validate warns)"
    guarded = load_feedback(feedback(forbidden=["our product"], trust="all"))
    assert len(guarded["sft"].records) == 2 and guarded["sft"].dropped == everyone["sft"].dropped + Counter(
        {"breaks a guardrail of `evaluate.guardrails`": 1}
    ), "a correction is held to the guardrails the model's answers are"
    assert any(
        e.endswith("breaks a guardrail of `evaluate.guardrails` (forbidden term: our product)")
        for e in guarded["sft"].examples
    )
    capped = load_feedback(feedback(trust="all", max_rows_per_caller=1, use_upvoted=True))
    assert capped["sft"].callers["app"] == {"taken": 1, "over_limit": 1}, "app's second row is over its bound"
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


@pytest.mark.slow  # a 1M-row SQLite table made and snapshotted in a fresh process: ~40 s
def test_a_million_row_table_snapshots_in_bounded_memory_and_a_write_is_refused(tmp_path, monkeypatch):
    """Streamed, not held: the child's peak resident memory stays far below what 1M rows held as dicts take
    (~1 GiB before); measured by VmHWM (bench/snapshot.py runs the same on 10M rows)."""
    import sqlite3

    from bench.snapshot import QUERY, make_table, snapshot_peak

    db, out = tmp_path / "tickets.db", tmp_path / "general.jsonl"
    make_table(db, 1_000_000)
    first = snapshot_peak(db, out)
    assert first["rows"] == 1_000_000 == sum(1 for _ in out.open("rb")) and first["changed"]
    assert first["peak_bytes"] < 300 * 2**20, f"peak {first['peak_bytes'] / 2**20:.0f} MiB for 1M rows"
    again = snapshot_peak(db, out)
    assert again == {**again, "changed": False, "new_rows": 0}, "an unchanged table leaves the file alone"

    monkeypatch.setenv("TICKETS_DB", f"sqlite:///{db}")
    writes = project(
        tmp_path,
        lambda p: p["data"]["sources"].update(
            general={"sql": {"query": "delete from tickets returning id", "url_env": "TICKETS_DB"}}
        ),
    )
    with pytest.raises(ProjectError, match=r"data.sources.general.sql.*readonly"):
        refresh(writes, tmp_path)
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from tickets").fetchone()[0] == 1_000_000, "opened read-only"
    assert QUERY.startswith("select")
