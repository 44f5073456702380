"""The scope's guardrails on an answer (`evaluate.guardrails`): forbidden terms, a required format (a declared
label, a JSON object that follows the scope's schema) and a length in words.

Evaluate counts the answers that break one (the `guardrail_violations` metric), the monitor the served ones, and
data drops a production correction that breaks one before it becomes a training row. Pure text rules: no model.
"""

from __future__ import annotations

import json
import math
import re
import string
from pathlib import Path

# The answer a classification metric gives a prediction that is none of the declared labels.
INVALID_LABEL = "<invalid>"


def normalize_label(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().strip().strip(string.punctuation + " "))


def as_label(prediction: str, labels: list[str]) -> str:
    """The declared label a prediction names (case and surrounding punctuation ignored), or INVALID_LABEL."""
    by_key = {normalize_label(label): label for label in labels}
    return by_key.get(normalize_label(prediction), INVALID_LABEL)


def json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def breaches(answer: str, rules: dict, labels=()) -> list[str]:
    """Which of the guardrails (`resolve`'s) an answer breaks: `forbidden term: x`, `format: json|label`, `length`."""
    broken = [
        f"forbidden term: {t}"
        for t in rules.get("forbidden_terms", ())
        if re.search(rf"(?<!\w){re.escape(t)}(?!\w)", answer, re.IGNORECASE)
    ]
    fmt = rules.get("format")
    if (fmt == "json" and json_object(answer) is None) or (
        fmt == "label" and as_label(answer, labels) == INVALID_LABEL
    ):
        broken.append(f"format: {fmt}")
    elif fmt == "json" and rules.get("json_schema") and not follows(answer, rules["json_schema"]):
        broken.append("format: json schema")
    words = len(answer.split())
    if words < (rules.get("min_words") or 0) or words > (rules.get("max_words") or math.inf):
        broken.append("length")
    return broken


def follows(answer: str, schema: dict) -> bool:
    import jsonschema

    return jsonschema.validators.validator_for(schema)(schema).is_valid(json.loads(answer))


def resolve(params) -> dict:
    """`evaluate.guardrails` resolved: format `auto` is json for extraction and for `scope.output_format: json`, a
    label for classification; a JSON answer must also follow `scope.output_format.json_schema` when one is given."""
    g = params.evaluate.guardrails
    out = params.scope.output_format
    fmt = g.format
    if fmt == "auto":
        fmt = {"extraction": "json", "classification": "label"}.get(
            params.scope.task.value, "json" if out.type == "json" else "none"
        )
    schema = None
    if fmt == "json" and out.type == "json" and out.json_schema:
        try:
            schema = json.loads(Path(out.json_schema).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # params validation names the file (stages/common/file_checks.py): nothing runs with it unread
    return {
        "forbidden_terms": list(g.forbidden_terms),
        "min_words": g.min_words,
        "max_words": g.max_words,
        "format": None if fmt == "none" else fmt,
        "json_schema": schema,
    }
