"""Reading a team's data: one source per role, in TRL's record formats, renamed by `fields:`, checked row by row.

    python -m stages.common.source_report    # what `lifecycle validate` reports per role: rows found, dropped, why

Formats: JSONL, JSON (a list of objects), CSV (UTF-8), Parquet; for `knowledge` also Markdown, plain text and HTML
(a file, or a folder of them); or a dataset id loaded by `datasets.load_dataset` (split and revision from params).

Records, after `fields:` renames the team's columns (their column -> our field):
  sft         prompt + completion, or `messages` (TRL's standard and conversational formats); an Alpaca-style
              `input` is joined into the prompt
  eval, dev   prompt + completion / reference / references (one or more), or `messages`; every answer the row
              gives is one of its references: the `completion` (or the last assistant turn), then `reference`,
              then `references`, empty ones skipped, a list flattened, repeats dropped
  preference  prompt + chosen + rejected (strings or conversational message lists)
  knowledge   documents: `text` (+ `title`), or .md / .txt / .html files
  general, corpus   `text`
A row that cannot be read (malformed JSON, a missing field, a file that is not UTF-8) is an error naming the file, the
line and the field; a row that can be read but is unusable (an empty field, too long, a duplicate, chosen ==
rejected) is dropped and counted with its reason.

`fields:` is one-to-one: a record field takes one column, so two columns mapped to one field (or a mapped column
landing on a column the row already has under that name) is an error naming both, never a silent last-one-wins.
The exception is `references`: several columns mapped to it become the row's list of references, in column order
(`fields: {gold: references, gold_alt: references}` scores each row against both); see field_mapping_problems.
"""

from __future__ import annotations

import csv
import json
import os
import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stages.common.errors import ProjectError
from stages.common.params import FEEDBACK

TABULAR = (".jsonl", ".json", ".csv", ".parquet")
DOCUMENTS = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")
QA_ROLES = ("sft", "eval", "dev")
TEXT_ROLES = ("knowledge", "general", "corpus")
MAX_PROBLEMS = 8  # per role: enough to see the pattern, not a wall of text
MAX_EXAMPLES = 5  # dropped rows quoted per role
# Several columns may map to this field: they are the row's references, a list (every other field takes one column).
MANY = "references"


def count_tokens(text: str) -> int:
    """Tokens for `data.max_length`, counted as whitespace-separated words: the data stage runs before any model
    (and its tokenizer) is chosen. Subword tokenizers give about 1.3-2x this count on English text; the renderer
    checks the real count against the chosen model's context later."""
    return len(text.split())


def holdout_size(size: float, total: int) -> int:
    """`data.holdout` sizes: an integer is rows, a number below 1 a fraction of `total`."""
    return int(size) if size >= 1 else round(size * total)


def normalize(text: str) -> str:
    """The key two texts share when they are 'the same' (case, spacing, surrounding punctuation ignored)."""
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


@dataclass
class RoleData:
    role: str
    source: str
    records: list[dict] = field(default_factory=list)
    found: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # "file:line: reason" of the first dropped rows

    def drop(self, where: str, reason: str) -> None:
        self.dropped[reason.split(" (")[0]] += 1  # counted by kind; the example keeps the figures
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def summary(self) -> dict:
        return {
            "source": self.source,
            "rows_found": self.found,
            "rows_kept": len(self.records),
            "rows_dropped": dict(self.dropped),
            "first_dropped": self.examples,
        }


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


# --- reading files ----------------------------------------------------------------------------------------------


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


# --- rows to records -------------------------------------------------------------------------------------------


def _content(value, where: str, name: str) -> str:
    """A field's text: a string, or the content of the last message of a conversational value."""
    if isinstance(value, list):
        if not value or not isinstance(value[-1], dict) or "content" not in value[-1]:
            raise ValueError(f"{where}: field `{name}` is a list but not of messages ({{role, content}})")
        value = value[-1]["content"]
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _from_messages(messages, where: str) -> dict:
    """TRL's conversational format: the last assistant turn is the answer, the user turn before it the prompt."""
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    ):
        raise ValueError(f"{where}: field `messages` must be a list of {{role, content}} objects")
    turns = list(messages)
    system = turns.pop(0)["content"] if turns and turns[0]["role"] == "system" else None
    if len(turns) < 2 or turns[-1]["role"] != "assistant" or turns[-2]["role"] != "user":
        raise ValueError(f"{where}: field `messages` must end with a user turn and the assistant's answer")
    record = {"prompt": turns[-2]["content"], "completion": turns[-1]["content"]}
    if system:
        record["system"] = system
    if len(turns) > 2:
        record["history"] = [{"role": t["role"], "content": t["content"]} for t in turns[:-2]]
    return record


def _listed(names: list[str]) -> str:
    """`a`; both `a` and `b`; `a`, `b` and `c`."""
    quoted = [f"`{n}`" for n in names]
    if len(quoted) < 3:
        return " and ".join(quoted) if len(quoted) < 2 else f"both {quoted[0]} and {quoted[1]}"
    return f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def field_mapping_problems(
    role: str, fields: dict[str, str], columns: Iterable[str] | None = None, label: str | None = None
) -> list[str]:
    """Many-to-one `fields:` mappings of one role's source, each naming the columns, the field and what to do.

    A record field holds one column: two columns mapped to one field would keep only the last of them, silently
    (an eval scored against one of its two references). So that is an error, except into `references`, where
    several columns become the row's list of references, in column order. With `columns` (a row's) it also finds
    a mapped column that lands on a column the row already has under that field's name (an unmapped column keeps
    its name). `label` names the source in the message. Pure: params validation calls it with `fields` alone, the
    data stage again before reading (so it cannot be bypassed) and per set of columns."""
    key = f"`data.sources.{role}.fields`" + (f" ({label})" if label else "")
    into: dict[str, list[str]] = {}
    for column, name in fields.items():
        into.setdefault(name, []).append(column)
    own = {c for c in columns or () if c not in fields and c in into}  # unmapped, already named as a target
    problems = []
    for name, mapped in into.items():
        if name == MANY or len(mapped) + (name in own) < 2:
            continue
        clash = f"{key} maps {_listed(mapped)} to `{name}`"
        columns_in = mapped
        if name in own:
            clash += f", and the row also has a column named `{name}`"
            columns_in = [*mapped, name]
        if role in ("eval", "dev") and name in ("completion", "reference"):
            fix = (
                "to score each row against all of them, map them to `references` instead (the row's list of "
                f"references): `fields: {{{', '.join(f'{c}: {MANY}' for c in columns_in)}}}`; or keep only one"
            )
        elif name in own:
            fix = f"map the row's own `{name}` column to another name too (e.g. `{name}: original_{name}`)"
        else:
            fix = "keep only the one you mean in `fields:` (a column left out keeps its own name)"
        problems.append(f"{clash}: a record field holds one column, so all but one would be lost; {fix}")
    return problems


def _mapped(row: dict, fields: dict[str, str], where: str) -> dict:
    """The row with its columns renamed by `fields:` (checked one-to-one by field_mapping_problems first); the cells
    of several columns mapped to `references` become one list, in column order, a missing one skipped."""
    many = {c for c, name in fields.items() if name == MANY}
    optional = many if len(many) > 1 and not many.isdisjoint(row) else set()
    missing = [col for col in fields if col not in row and col not in optional]
    if missing:
        raise ValueError(
            f"{where}: no column {', '.join(f'`{c}`' for c in missing)} (mapped by `fields:` to "
            f"{', '.join(fields[c] for c in missing)}); its columns are {', '.join(map(str, row)) or 'none'}"
        )
    out: dict = {}
    cells = []
    for column, value in row.items():
        name = fields.get(column, column)
        if name == MANY:
            cells.append(value)
        else:
            out[name] = value
    if cells:
        out[MANY] = cells[0] if len(cells) == 1 else cells
    return out


def _need(row: dict, name: str, where: str, role: str, hint: str = "") -> None:
    if name not in row:
        cols = ", ".join(f"`{c}`" for c in row) or "none"
        raise ValueError(
            f"{where}: no field `{name}` (the row has {cols}); map your column to it with "
            f"`data.sources.{role}.fields`{hint}"
        )


def _answers(value, where: str) -> list[str]:
    """A reference cell's answers: none for a missing or blank cell, the last message's content for a
    conversational value (a list of {role, content}), each item of any other list (flattened)."""
    if value is None:
        return []
    if isinstance(value, list):
        if not (value and all(isinstance(v, dict) for v in value)):
            return [a for v in value for a in _answers(v, where)]
        value = _content(value, where, "references")
    text = value if isinstance(value, str) else str(value)
    return [text] if text.strip() else []


def _references(role: str, row: dict, answer, where: str) -> list[str]:
    """An eval or dev row's references: every answer it gives, in order: its `completion` (or the last assistant
    turn), `reference`, then `references` (several columns mapped there arrive as a list); repeats dropped."""
    cells = (answer, row.get("reference"), row.get("references"))
    if all(cell is None for cell in cells):
        raise ValueError(
            f"{where}: an {role} row without a reference (a `completion`, `reference` or "
            f"`references` field); every {role} row needs the expected answer"
        )
    refs = list(dict.fromkeys(a for cell in cells for a in _answers(cell, where)))
    if not refs:
        raise ValueError(f"{where}: an {role} row whose reference is empty; every {role} row needs the expected answer")
    return refs


def to_record(role: str, row: dict, where: str, template_fields: list[str]) -> dict:
    """One row in the role's canonical shape; raises ValueError naming the file, line and field."""
    if role in TEXT_ROLES:
        _need(row, "text", where, role, ", e.g. {body: text}")
        record = {"text": _content(row["text"], where, "text")}
        if role == "knowledge":
            record["title"] = str(row.get("title") or "")
            record["source"] = str(row.get("source") or where)
        return record
    if "messages" in row and role != "preference":
        record = _from_messages(row["messages"], where)
    else:
        _need(row, "prompt", where, role, ", e.g. {instruction: prompt}")
        record = {"prompt": _content(row["prompt"], where, "prompt")}
        if isinstance(row["prompt"], list):  # conversational prompt: earlier turns are the history
            record.update(
                {
                    k: v
                    for k, v in _from_messages(row["prompt"] + [{"role": "assistant", "content": ""}], where).items()
                    if k in ("system", "history")
                }
            )
        if role == "preference":
            for name in ("chosen", "rejected"):
                _need(row, name, where, role)
                record[name] = _content(row[name], where, name)
        elif role == "sft":
            _need(row, "completion", where, role, ", e.g. {output: completion}")
            record["completion"] = _content(row["completion"], where, "completion")
        else:
            record["references"] = _references(role, row, row.get("completion"), where)
        if row.get("input"):  # Alpaca: the instruction's input joins the prompt
            record["prompt"] = f"{record['prompt']}\n\n{_content(row['input'], where, 'input')}"
        if row.get("system"):
            record["system"] = _content(row["system"], where, "system")
    if row.get("source"):  # the knowledge section or document that answers it: retrieval is measured with it
        record["source"] = str(row["source"])
    if role in ("eval", "dev") and "references" not in record:  # `messages`: the last assistant turn is one
        record["references"] = _references(role, row, record.pop("completion"), where)
    for name in template_fields:
        if name != "prompt":
            _need(row, name, where, role, f" (`prompt.template` uses {{{name}}})")
            record[name] = _content(row[name], where, name)
    return record


def _unusable(role: str, record: dict, max_length: int) -> str | None:
    """Why a readable record cannot be used, or None."""
    texts = {k: record[k] for k in ("prompt", "completion", "chosen", "rejected", "text") if k in record}
    if role in ("eval", "dev"):
        texts["reference"] = record["references"][0] if record["references"] else ""
    for name, text in texts.items():
        if not text.strip():
            return f"empty field `{name}`"
    if role == "preference" and normalize(record["chosen"]) == normalize(record["rejected"]):
        return "chosen == rejected"
    if role not in TEXT_ROLES:
        answer = max((texts.get(k, "") for k in ("completion", "chosen", "rejected", "reference")), key=len)
        length = count_tokens(record["prompt"]) + count_tokens(answer)
        if length > max_length:
            return f"over max_length ({length} > {max_length} tokens)"
    return None


def dedupe_key(role: str, record: dict) -> tuple:
    if role in TEXT_ROLES:
        return (normalize(record["text"]),)
    if role == "preference":
        return normalize(record["prompt"]), normalize(record["chosen"]), normalize(record["rejected"])
    if role == "sft":
        return normalize(record["prompt"]), normalize(record["completion"])
    return (normalize(record["prompt"]),)


def load_role(role: str, source, params) -> RoleData:
    """Read, map, check and deduplicate one role's source; structural problems raise, all of them at once."""
    data = RoleData(role, source.label)
    mapping = field_mapping_problems(role, source.fields, label=source.label)
    if mapping:  # before a row is read: a params.yaml mistake, not the data's
        raise ProjectError(mapping)
    clashes: dict[tuple, list[str]] = {}  # per set of columns: reported once, not on every row of a CSV
    problems = Problems()
    template_fields = params.prompt.fields if role not in TEXT_ROLES else []
    labels = params.scope.labels if params.scope.task.value == "classification" else None
    group_by = params.data.holdout.group_by if role == "sft" and params.data.sources.eval is None else None
    seen: set[tuple] = set()

    if source.dataset:
        rows = read_dataset(source, role)
    else:
        path = snapshot(role, source, params) if source.live else Path(source.path)
        suffixes = TABULAR + DOCUMENTS if role in TEXT_ROLES else TABULAR
        files = _files(path, suffixes)
        rows = (
            pair
            for f in files
            for pair in ([_document(f)] if f.suffix.lower() in DOCUMENTS else read_rows(f, problems))
        )
    for where, row in rows:
        data.found += 1
        if UNREADABLE in row:  # a document is skipped, by name; the role fails only if nothing usable is left
            data.drop(where, f"unreadable ({row[UNREADABLE]})")
            continue
        if source.fields:
            columns = tuple(row)
            if columns not in clashes:
                clashes[columns] = field_mapping_problems(role, source.fields, columns)
                for clash in clashes[columns]:
                    problems.add(f"{where} (and every row with the same columns): {clash}")
            if clashes[columns]:
                continue
        try:
            mapped = _mapped(row, source.fields, where) if source.fields else row
            record = to_record(role, mapped, where, template_fields)
        except ValueError as exc:
            problems.add(str(exc))
            continue
        if group_by is not None:
            if group_by not in mapped:
                problems.add(
                    f"{where}: no field `{group_by}` (`data.holdout.group_by`); the row has "
                    f"{', '.join(f'`{c}`' for c in mapped)}"
                )
                continue
            record["group"] = str(mapped[group_by])
        if labels is not None and role in QA_ROLES:
            answers = [record["completion"]] if role == "sft" else record["references"]
            stray = [a for a in answers if a.strip() not in labels]
            if stray:
                problems.add(
                    f"{where}: answer {stray[0]!r} is not one of `scope.labels` {labels}; fix the row or "
                    "the declared label set"
                )
                continue
        reason = _unusable(role, record, params.data.max_length)
        if reason is None:
            key = dedupe_key(role, record)
            reason = "duplicate" if key in seen else None
            seen.add(key)
        if reason:
            data.drop(where, reason)
            continue
        data.records.append(record)
    if data.found == 0 and not problems.items:
        problems.add(f"`data.sources.{role}` ({source.label}): no rows found")
    elif not data.records and not problems.items:
        problems.add(
            f"`data.sources.{role}` ({source.label}): nothing usable is left of {data.found} rows; "
            + "; ".join(data.examples)
        )
    if problems.items:
        raise ProjectError([f"`data.sources.{role}`: {p}" for p in problems.done()])
    return data


def snapshot(role: str, source, params) -> Path:
    """A live source's snapshot file (stages/common/live.py writes it); missing: say how to make it."""
    from stages.common.live import snapshot_path

    path = snapshot_path(params.paths.snapshots, role)
    if not path.is_file():
        raise ProjectError(
            [
                f"`data.sources.{role}` ({source.label}) is read from its snapshot {path}, which does not exist: "
                "run `lifecycle snapshot` (`lifecycle run` does it before the pipeline)"
            ]
        )
    return path


def load_feedback(params) -> dict[str, RoleData]:
    """Production feedback (the `feedback` role's snapshot of rated traces) as training records: a correction is
    an sft row (prompt -> correction) and a preference pair (chosen: the correction, rejected: what was served); an
    approved answer (rating >= `min_rating`) is an sft row with `use_upvoted`; anything else teaches nothing and is
    counted as dropped, with its reason."""
    source = params.data.sources.feedback
    traces = source.mlflow_traces
    path = snapshot(FEEDBACK, source, params)
    out = {role: RoleData(role, f"{source.label} -> {role}") for role in ("sft", "preference")}
    sft, pairs = out["sft"], out["preference"]
    problems = Problems()
    seen: set[tuple] = set()
    for where, row in read_rows(path, problems):
        sft.found += 1
        missing = [k for k in ("prompt", "served", "rating", "correction") if k not in row]
        if missing:
            problems.add(f"{where}: no {', '.join(missing)}: not a feedback snapshot; run `lifecycle snapshot` again")
            continue
        prompt, served, correction = row["prompt"].strip(), (row["served"] or "").strip(), row["correction"]
        correction = correction.strip() if isinstance(correction, str) else None
        rating = row["rating"]
        made = []
        if not prompt:
            sft.drop(where, "no prompt in the trace (tracing off, or redacted away)")
            continue
        if correction:
            made.append(("sft", {"prompt": prompt, "completion": correction}))
            if served and normalize(served) != normalize(correction):
                made.append(("preference", {"prompt": prompt, "chosen": correction, "rejected": served}))
        elif isinstance(rating, (int, float)) and rating >= traces.min_rating:
            if traces.use_upvoted and served:
                made.append(("sft", {"prompt": prompt, "completion": served}))
            else:
                sft.drop(where, "approved, not used (`mlflow_traces.use_upvoted` is false)")
        else:
            sft.drop(where, "rated low without a correction: no better answer to learn")
        for role, record in made:
            reason = _unusable(role, record, params.data.max_length)
            key = dedupe_key(role, record)
            if reason is None and key in seen:
                reason = "duplicate"
            seen.add(key)
            if reason:
                out[role].drop(where, reason)
            else:
                out[role].records.append(record)
    if problems.items:
        raise ProjectError([f"`data.sources.{FEEDBACK}`: {p}" for p in problems.done()])
    pairs.found = sft.found
    return out


def load_all(params) -> dict[str, RoleData]:
    """Every declared role; the problems of all roles are raised together."""
    loaded, problems = {}, []
    for role in ("sft", "preference", "eval", "dev", "knowledge", "general", "corpus"):
        source = getattr(params.data.sources, role)
        if source is None:
            continue
        try:
            loaded[role] = load_role(role, source, params)
        except ProjectError as exc:
            problems += exc.problems
    if problems:
        raise ProjectError(problems)
    return loaded
