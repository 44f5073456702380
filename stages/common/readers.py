"""Reading a data source's files: each format to rows, never a row silently skipped.

Formats: JSONL, JSON (a list of objects), CSV (UTF-8), Parquet; for `knowledge` also Markdown, plain text, HTML and
PDF (a file, or a folder of them); or a dataset id loaded by `datasets.load_dataset` (split and revision from
params). A row that cannot be read (malformed JSON, a file that is not UTF-8) is a problem naming the file and the
line; what a row must hold is stages/common/records.py, loading a role from its source stages/common/sources.py.

    python -m stages.common.source_report    # what `lifecycle validate` reports per role: rows found, dropped, why
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from stages.common.errors import ProjectError

TABULAR = (".jsonl", ".json", ".csv", ".parquet")
DOCUMENTS = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")
MAX_PROBLEMS = 8  # per role: enough to see the pattern, not a wall of text


class Problems:
    """Structural errors of one role, capped: all roles are read before anything is raised."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.more = 0

    def add(self, message: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(message)
        else:
            self.more += 1

    def done(self) -> list[str]:
        return self.items + ([f"... and {self.more} more like these"] if self.more else [])


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not found:
            raise ProjectError([f"{path}: no {' / '.join(suffixes)} files in this folder"])
        return found
    if path.suffix.lower() not in suffixes:
        raise ProjectError([f"{path}: unsupported file type {path.suffix!r} (use {', '.join(suffixes)})"])
    return [path]


def _first_bad_utf8_line(path: Path) -> tuple[int, str]:
    for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return number, str(exc)
    return 0, "unknown"


def read_rows(path: Path, problems: Problems) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row of a tabular file; unreadable rows are problems, never silently skipped."""
    if path.stat().st_size == 0:
        problems.add(f"{path}: empty file (no rows); remove it from params.yaml or fill it")
        return
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        problems.add(
                            f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                            "every line of a .jsonl file is one JSON object"
                        )
                        continue
                    if not isinstance(row, dict):
                        problems.add(f"{path}:{number}: a JSON {type(row).__name__}, not an object with fields")
                        continue
                    yield f"{path}:{number}", row
        elif suffix == ".json":
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                problems.add(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
                return
            if not isinstance(rows, list):
                problems.add(f"{path}: a .json source must hold a list of objects (for one object per line use .jsonl)")
                return
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    problems.add(f"{path}[{i}]: a JSON {type(row).__name__}, not an object with fields")
                    continue
                yield f"{path}[{i}]", row
        elif suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                start = 2  # a quoted cell may span lines: a row is named by the line it starts on
                for row in reader:
                    where, start = f"{path}:{start}", reader.line_num + 1
                    if None in row:  # more cells than the header has columns
                        problems.add(f"{where}: {len(row[None])} more cells than the header's columns")
                        continue
                    yield where, row
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            for i, row in enumerate(pq.read_table(path).to_pylist()):
                yield f"{path}[row {i}]", row
    except UnicodeDecodeError:
        number, reason = _first_bad_utf8_line(path)
        problems.add(
            f"{path}:{number}: not UTF-8 ({reason}); re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        )


def read_document(path: Path) -> dict:
    """A knowledge document as clean text with its source and title (HTML through BeautifulSoup, PDF through
    pypdf: its text layer, page by page; a scanned PDF without one reads as empty)."""
    if path.suffix.lower() == ".pdf":
        from pypdf import PdfReader

        reader = PdfReader(path)
        text = "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
        title = (reader.metadata or {}).get("/Title")
        return {"text": text, "title": str(title or path.stem), "source": str(path)}
    raw = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".html", ".htm"):
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(raw, "html.parser")
        title = soup.title.get_text(strip=True) if soup.title else None
        for tag in soup(["head", "title", "script", "style", "nav"]):
            tag.decompose()
        text = re.sub(r"\n{3,}", "\n\n", soup.get_text("\n")).strip()
    else:
        text = raw.strip()
        heading = re.search(r"^#+\s+(.+)$", text, re.MULTILINE) if path.suffix.lower() in (".md", ".markdown") else None
        title = heading.group(1).strip() if heading else None
    return {"text": text, "title": title or path.stem, "source": str(path)}


UNREADABLE = "_unreadable"


def _document(path: Path) -> tuple[str, dict]:
    """(where, document); one that cannot be read comes back marked, so that it is reported and skipped."""
    try:
        return str(path), read_document(path)
    except Exception as exc:  # noqa: BLE001 - a broken file of any kind (encoding, a corrupt PDF) is one skipped document
        return str(path), {UNREADABLE: f"{type(exc).__name__}: {exc}"[:200]}


def read_files(path: Path, suffixes: tuple[str, ...], problems: Problems) -> Iterator[tuple[str, dict]]:
    """(where, row) of a local source, a file or a folder of them: a row per record of a tabular file, one per
    document (an unreadable one marked with UNREADABLE); a path with no file of these types is an error now."""
    files = _files(path, suffixes)
    return (
        pair for f in files for pair in ([_document(f)] if f.suffix.lower() in DOCUMENTS else read_rows(f, problems))
    )


def read_dataset(source, role: str) -> Iterator[tuple[str, dict]]:
    """A dataset id through `datasets.load_dataset` (the hub, or the datasets cache when offline)."""
    import datasets

    try:
        ds = datasets.load_dataset(source.dataset, source.name, split=source.split, revision=source.revision)
    except Exception as exc:  # datasets raises many types (connection, not found, offline): name the id either way
        offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "0") not in ("0", "")]
        hint = (
            f"{' and '.join(offline)} is set, so only a dataset already in the datasets cache can load; unset it "
            "on a machine that reaches the hub, or point `path:` at a local copy"
            if offline
            else "check the id, `split` and `revision`, and that this machine reaches the hub"
        )
        raise ProjectError(
            [
                f"`data.sources.{role}.dataset` {source.dataset!r} (split {source.split!r}, revision "
                f"{source.revision!r}) could not be loaded: {type(exc).__name__}: {str(exc)[:300]}; "
                f"{hint}"
            ]
        ) from None
    for i, row in enumerate(ds):
        yield f"{source.dataset}[{source.split}][{i}]", row
