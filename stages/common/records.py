"""A row as a record: the team's columns renamed by `fields:`, then shaped into TRL's record format of its role.

Records, after `fields:` renames the team's columns (their column -> our field):
  sft         prompt + completion, or `messages` (TRL's standard and conversational formats); an Alpaca-style
              `input` is joined into the prompt
  eval, dev   prompt + completion / reference / references (one or more), or `messages`; every answer the row
              gives is one of its references: the `completion` (or the last assistant turn), then `reference`,
              then `references`, empty ones skipped, a list flattened, repeats dropped
  preference  prompt + chosen + rejected (strings or conversational message lists)
  knowledge   documents: `text` (+ `title`), or .md / .txt / .html files
  general, corpus   `text`
A row without a field its role needs is an error naming the file, the line and the field; a record that can be read
but is unusable (an empty field, too long, chosen == rejected) says why, and the loader (stages/common/sources.py)
drops it and counts the reason.

`fields:` is one-to-one: a record field takes one column, so two columns mapped to one field (or a mapped column
landing on a column the row already has under that name) is an error naming both, never a silent last-one-wins.
The exception is `references`: several columns mapped to it become the row's list of references, in column order
(`fields: {gold: references, gold_alt: references}` scores each row against both); see field_mapping_problems.
Pure: no file is read here (that is stages/common/readers.py).
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from stages.common.params import TEXT_ROLES

# Several columns may map to this field: they are the row's references, a list (every other field takes one column).
MANY = "references"


def count_tokens(text: str) -> int:
    """Tokens for `data.max_length`, counted as whitespace-separated words: the data stage runs before any model
    (and its tokenizer) is chosen. Subword tokenizers give about 1.3-2x this count on English text; the renderer
    checks the real count against the chosen model's context later."""
    return len(text.split())


def normalize(text: str) -> str:
    """The key two texts share when they are 'the same' (case, spacing, surrounding punctuation ignored)."""
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


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


def map_fields(row: dict, fields: dict[str, str], where: str) -> dict:
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


def unusable(role: str, record: dict, max_length: int) -> str | None:
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
