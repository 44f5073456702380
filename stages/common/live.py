"""Sources that live in systems, copied into files: database queries (`sql:`) and the served model's traces with
their feedback (`mlflow_traces:`), one JSONL per role under `paths.snapshots`.

    lifecycle snapshot            # refresh them (every `lifecycle run` and `lifecycle loop` does it first)

The data stage reads only these files, never the systems: `dvc repro` stays reproducible (the same files give the
same data), and DVC re-runs the data stage, and what follows it, only when a refresh brought different rows. A
file is replaced only when its rows changed (written beside it, then moved), so an unchanged source leaves
nothing for DVC to see.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import os
import time
from pathlib import Path

from stages.common.errors import ProjectError
from stages.common.io import write_jsonl
from stages.common.params import FEEDBACK, ROLES

log = logging.getLogger(__name__)

# The names serving/tracing.py gives the assessments on a trace (the bento cannot import this module).
RATING, CORRECTION = "rating", "correction"
REVIEW = "review"  # a reviewer's verdict on a trace's feedback: approved | rejected (`lifecycle review`)
APPROVED, REJECTED = "approved", "rejected"


def snapshot_path(folder: str | Path, role: str) -> Path:
    """A live role's snapshot in `paths.snapshots`."""
    return Path(folder) / f"{role}.jsonl"


def live_roles(params) -> dict:
    """The roles whose source is a system, and that source."""
    sources = params.data.sources
    return {
        role: getattr(sources, role)
        for role in (*ROLES, FEEDBACK)
        if getattr(sources, role) is not None and getattr(sources, role).live
    }


def _plain(value):
    """A database value as JSON: dates as ISO text, decimals as numbers, bytes as text."""
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return value


def read_sql(role: str, sql) -> list[dict]:
    """The query's rows, through SQLAlchemy; the URL from the environment variable params name."""
    import sqlalchemy

    where = f"`data.sources.{role}.sql`"
    url = os.environ.get(sql.url_env)
    if not url:
        raise ProjectError(
            [
                f"{where}: the environment variable {sql.url_env} (`url_env`) is not set; export the database "
                "URL in it, e.g. postgresql://user@host:5432/db (params never hold it: it may carry a password)"
            ]
        )
    try:
        engine = sqlalchemy.create_engine(url)
    except Exception as exc:  # noqa: BLE001 - a malformed URL or a missing driver: name the variable either way
        raise ProjectError([f"{where}: ${sql.url_env} is not a database URL SQLAlchemy can use: {exc}"]) from None
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as db:
            rows = [{k: _plain(v) for k, v in r.items()} for r in db.execute(sqlalchemy.text(sql.query)).mappings()]
    except Exception as exc:  # noqa: BLE001 - connection refused, a bad query: the database's own words
        first = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
        raise ProjectError([f"{where}: the query on {shown} failed: {type(exc).__name__}: {first}"]) from None
    finally:
        engine.dispose()
    return rows


def _text(value) -> str:
    if isinstance(value, dict):
        value = value.get("prompt") or value.get("answer") or next(iter(value.values()), "")
    return value if isinstance(value, str) else json.dumps(value)


def feedback_row(trace) -> dict | None:
    """One trace as a feedback row (None when no one rated or corrected it): the latest rating and correction,
    who gave them, and a reviewer's latest verdict on it (`review`: approved | rejected | null)."""
    rating = correction = comment = rated_by = corrected_by = review = reviewed_by = None
    for a in sorted(trace.info.assessments or [], key=lambda a: a.create_time_ms or 0):
        if getattr(a, "valid", True) is False:
            continue  # overridden by a newer one
        who = a.source.source_id if a.source else None
        if a.name == RATING and a.feedback is not None:
            rating, comment, rated_by = a.feedback.value, a.rationale, who
        elif a.name == CORRECTION and a.expectation is not None:
            correction, corrected_by = a.expectation.value, who
        elif a.name == REVIEW and a.feedback is not None:
            review, reviewed_by = str(a.feedback.value), who
    if rating is None and correction is None:
        return None
    root = trace.data.spans[0] if trace.data.spans else None
    tags = trace.info.tags
    return {
        "trace_id": trace.info.trace_id,
        "time": dt.datetime.fromtimestamp(trace.info.request_time / 1000, dt.timezone.utc).isoformat(),
        "prompt": _text(root.inputs) if root else "",
        "served": _text(root.outputs) if root else "",
        "rating": rating,
        "correction": correction,
        "comment": comment,
        "caller": corrected_by or rated_by,
        "review": review,
        "reviewed_by": reviewed_by,
        "model_version": tags.get("lifecycle.version", ""),
    }


def read_traces(project: str, traces) -> list[dict]:
    """Every rated or corrected trace of the experiment (the last `since_days` only, if set), oldest first."""
    import mlflow

    name = traces.experiment or project
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        log.info("no MLflow experiment %r yet: no traces, no feedback", name)
        return []
    since = (
        f"trace.timestamp_ms > {int((time.time() - traces.since_days * 86400) * 1000)}" if traces.since_days else None
    )
    found = mlflow.search_traces(
        experiment_ids=[experiment.experiment_id], filter_string=since, return_type="list", flush=True
    )
    rows = [r for r in map(feedback_row, found) if r]
    return sorted(rows, key=lambda r: (r["time"], r["trace_id"]))


def refresh(params, root: str | Path = ".") -> dict[str, dict]:
    """Each live role's rows into its snapshot file; per role: rows, rows new to the file, whether it changed."""
    done, live = {}, live_roles(params)
    folder = Path(root) / params.paths.snapshots
    try:
        folder.mkdir(parents=True, exist_ok=True)  # a DVC dependency of the data stage: it must exist
    except OSError:
        if live:  # without live sources a project whose dvc.yaml does not read the folder needs none
            raise
    for role, source in live.items():
        rows = (
            read_traces(params.project.name, source.mlflow_traces)
            if source.mlflow_traces
            else read_sql(role, source.sql)
        )
        path = snapshot_path(folder, role)
        lines = [json.dumps(r, ensure_ascii=False) for r in rows]  # as write_jsonl writes them
        old = path.read_text(encoding="utf-8").splitlines() if path.is_file() else None
        if lines != old:
            write_jsonl(path, rows)
        done[role] = {"rows": len(rows), "new_rows": len(set(lines) - set(old or ())), "changed": lines != old}
    return done
