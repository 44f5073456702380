"""The guardrails on an answer: forbidden terms, a required format (a label, JSON that follows a schema), a length."""

from stages.common import guardrails, metrics


def test_guardrails_count_answers_breaking_a_rule_per_100():
    rules = {"forbidden_terms": ["password", "internal use"], "min_words": 2, "max_words": 6, "format": None}
    answers = [
        "Reset it from the login page.",  # fine
        "Your PASSWORD is hunter2.",  # forbidden term, any case
        "Marked internal use only, sorry.",  # forbidden phrase
        "passwords are hashed",  # not the word itself: fine
        "No.",  # too short
        "This answer goes on for far too many words.",
    ]  # too long
    assert guardrails.breaches(answers[1], rules) == ["forbidden term: password"]
    assert guardrails.breaches(answers[4], rules) == ["length"]
    assert metrics.score(["guardrail_violations"], answers, [["x"]] * 6, guardrails=rules) == {
        "guardrail_violations": round(100 * 4 / 6, 4)
    }
    assert guardrails.breaches("billing", {"format": "label"}, labels=["billing", "bug"]) == []
    assert guardrails.breaches("a refund", {"format": "label"}, labels=["billing", "bug"]) == ["format: label"]
    assert guardrails.breaches('{"a": 1}', {"format": "json"}) == []


def test_json_output_with_a_schema_is_a_guardrail(tmp_path):
    """`scope.output_format: json` with a schema: an answer that is JSON but breaks the schema is a violation."""
    import json

    from stages.common.loader import load_params
    from tests.conftest import default_params, write_params

    schema = {
        "type": "object",
        "required": ["module", "summary"],
        "properties": {"module": {"type": "string"}, "summary": {"type": "string", "maxLength": 40}},
    }
    (tmp_path / "answer.schema.json").write_text(json.dumps(schema))
    p = default_params()
    p["scope"]["output_format"] = {"type": "json", "json_schema": str(tmp_path / "answer.schema.json")}
    rules = guardrails.resolve(load_params(write_params(tmp_path, p)))
    assert rules["format"] == "json" and rules["json_schema"] == schema
    good = '{"module": "json", "summary": "Serialize an object to JSON."}'
    assert guardrails.breaches(good, rules) == []
    assert guardrails.breaches('{"module": "json"}', rules) == ["format: json schema"]
    assert guardrails.breaches("Serialize an object.", rules) == ["format: json"]
    assert metrics.score(
        ["guardrail_violations"], [good, '{"module": 1, "summary": "x"}'], [["x"]] * 2, guardrails=rules
    ) == {"guardrail_violations": 50.0}
    p["scope"]["output_format"] = {"type": "plain", "json_schema": None}
    assert guardrails.resolve(load_params(write_params(tmp_path, p)))["format"] is None, "plain text: no format rule"
