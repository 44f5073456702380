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
from collections.abc import Iterable, Iterator
from pathlib import Path

from stages.common.errors import ProjectError
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


CHUNK = 10_000  # rows fetched from the database at a time (a server-side cursor): memory stays flat
PROGRESS = 500_000  # a progress line every this many rows
PAGE = 500  # traces read from the tracking store at a time


def read_sql(role: str, sql) -> Iterator[dict]:
    """The query's rows, streamed (a server-side cursor, `CHUNK` rows at a time) in a read-only transaction where
    the dialect has one (PostgreSQL: `SET TRANSACTION READ ONLY`; SQLite: the file opened `mode=ro`), with a
    statement timeout (`sql.timeout_s`); the URL from the environment variable params name. A statement that
    would write fails there, naming the role."""
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
        engine = read_only_engine(url, sql.timeout_s)
    except Exception as exc:  # noqa: BLE001 - a malformed URL or a missing driver: name the variable either way
        raise ProjectError([f"{where}: ${sql.url_env} is not a database URL SQLAlchemy can use: {exc}"]) from None
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as db:
            if engine.dialect.name == "postgresql":
                db.exec_driver_sql("SET TRANSACTION READ ONLY")
                db.exec_driver_sql(f"SET LOCAL statement_timeout = {int(sql.timeout_s * 1000)}")
            result = db.execution_options(stream_results=True, yield_per=CHUNK).execute(sqlalchemy.text(sql.query))
            if not result.returns_rows:
                raise ProjectError([f"{where}: the query returns no rows: a source is a SELECT (read only)"])
            for row in result.mappings():
                yield {k: _plain(v) for k, v in row.items()}
    except ProjectError:
        raise
    except Exception as exc:  # noqa: BLE001 - connection refused, a bad query, a write refused: the database's words
        first = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
        raise ProjectError([f"{where}: the query on {shown} failed: {type(exc).__name__}: {first}"]) from None
    finally:
        engine.dispose()


def read_only_engine(url: str, timeout_s: float):
    """An engine that cannot write where the dialect allows it: SQLite's file opened read-only (`mode=ro`), with
    the statement interrupted after `timeout_s` (SQLite has no statement timeout: a progress handler stops it)."""
    import sqlite3

    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return sqlalchemy.create_engine(url)
    path = Path(parsed.database).resolve()
    if not path.is_file():
        raise ValueError(f"no SQLite database file {path}")

    def connect():
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
        deadline = time.monotonic() + timeout_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 100_000)
        return conn

    return sqlalchemy.create_engine("sqlite://", creator=connect)


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


def read_traces(project: str, traces) -> Iterator[dict]:
    """Every rated or corrected trace of the experiment (the last `since_days` only, if set), oldest first, read a
    page at a time (`PAGE` traces), so the feedback of a long-running service never sits in memory at once."""
    from mlflow import MlflowClient

    name = traces.experiment or project
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        log.info("no MLflow experiment %r yet: no traces, no feedback", name)
        return
    since = (
        f"trace.timestamp_ms > {int((time.time() - traces.since_days * 86400) * 1000)}" if traces.since_days else None
    )
    token, flush = None, True
    while True:
        page = client.search_traces(
            locations=[experiment.experiment_id],
            filter_string=since,
            max_results=PAGE,
            order_by=["timestamp_ms ASC", "request_id ASC"],  # a stable order: an unchanged source, an unchanged file
            page_token=token,
            flush=flush,  # what this process's tracer still holds goes first
        )
        flush = False
        yield from (r for r in map(feedback_row, page) if r)
        token = page.token
        if not token:
            return


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
        done[role] = write_snapshot(snapshot_path(folder, role), rows, role)
    return done


def write_snapshot(path: Path, rows: Iterable[dict], role: str) -> dict:
    """The rows as JSON lines (as write_jsonl writes them) streamed to a temporary file, which replaces `path` only
    when its content changed (so DVC sees an unchanged source as unchanged). Memory: 8 bytes a row for the count of
    new rows, whatever the table's size. {"rows", "new_rows" (lines the old file did not have), "changed"}."""
    import hashlib
    from array import array

    import numpy as np

    def line_hash(line: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "little")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    digest, hashes, n = hashlib.sha256(), array("Q"), 0
    try:
        with tmp.open("wb") as f:
            for row in rows:
                line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
                f.write(line)
                digest.update(line)
                hashes.append(line_hash(line))
                n += 1
                if n % PROGRESS == 0:
                    log.info("snapshot %s: %d rows", role, n)
        old_digest, old_hashes = hashlib.sha256(), array("Q")
        if path.is_file():
            with path.open("rb") as f:
                for line in f:
                    old_digest.update(line)
                    old_hashes.append(line_hash(line))
        changed = not path.is_file() or digest.digest() != old_digest.digest()
        new_rows = int(np.setdiff1d(np.frombuffer(hashes, np.uint64), np.frombuffer(old_hashes, np.uint64)).size)
        if changed:
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if n >= PROGRESS:
        log.info("snapshot %s: %d rows, %d new, %s", role, n, new_rows, "written" if changed else "unchanged")
    return {"rows": n, "new_rows": new_rows, "changed": changed}
