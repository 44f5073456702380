"""The metric registry: each metric computed by its library, with a range, a direction and a task."""

from __future__ import annotations

import pytest

from stages.common import guardrails, metrics
from stages.common.errors import ProjectError
from stages.common.loader import load_params
from tests.conftest import default_params, write_params


def test_question_answering_extremes():
    perfect = metrics.score(["exact_match", "token_f1", "rougeL", "bleu"], ["Return the sum."], [["return the sum"]])
    assert perfect["exact_match"] == 1.0 and perfect["token_f1"] == 1.0 and perfect["rougeL"] == 1.0
    wrong = metrics.score(["exact_match", "token_f1", "rougeL"], ["Open a socket."], [["Return the sum of values."]])
    assert wrong == {"exact_match": 0.0, "token_f1": 0.0, "rougeL": 0.0}


def test_best_of_several_references():
    refs = [["Close the file.", "Return the sum."]]
    assert metrics.score(["exact_match", "rougeL", "chrf"], ["Return the sum."], refs)["exact_match"] == 1.0
    assert (
        metrics.score(["bleu"], ["Return the sum.", "Open it."], [["Return the sum."], ["Open it.", "x"]])["bleu"] > 99
    )


def test_classification_counts_invalid_answers():
    labels = ["billing", "bug"]
    preds, refs = ["Billing.", "bug", "refund please"], [["billing"], ["billing"], ["bug"]]
    scores = metrics.score(["accuracy", "macro_f1", "invalid_rate"], preds, refs, labels=labels)
    assert scores["accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert scores["invalid_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert 0 < scores["macro_f1"] < 1


def test_extraction_json_validity_and_field_f1():
    refs = [['{"name": "Ada", "year": 1843}'], ['{"name": "Alan"}']]
    scores = metrics.score(["json_valid", "field_f1"], ['{"name": "Ada", "year": 1842}', "not json"], refs)
    assert scores["json_valid"] == 0.5
    assert scores["field_f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3), abs=1e-4)


def test_semantic_similarity_with_the_shipped_minilm():
    close = metrics.score(
        ["semantic_similarity"],
        ["Reset your password from the login page."],
        [["Use the login page to reset the password."]],
    )["semantic_similarity"]
    far = metrics.score(
        ["semantic_similarity"], ["The weather is warm in July."], [["Use the login page to reset the password."]]
    )["semantic_similarity"]
    assert 0.6 < close <= 1 and far < close - 0.3


def test_every_task_has_registered_metrics_with_ranges():
    for task, names in metrics.TASK_METRICS.items():
        assert names and all(n in metrics.REGISTRY and metrics.REGISTRY[n].compute for n in names), task
    for m in metrics.REGISTRY.values():
        assert m.low < m.high


def problems(tmp_path, change) -> list[str]:
    p = default_params()
    change(p)
    with pytest.raises(ProjectError) as err:
        load_params(write_params(tmp_path, p))
    return err.value.problems


def test_kpi_outside_its_metric_range_is_rejected(tmp_path):
    def change(p):
        p["scope"]["kpis"][1]["threshold"] = 2.0  # rougeL lies in [0, 1]

    assert any("`scope.kpis.1.threshold` 2.0: rougeL lies in [0, 1]" in m for m in problems(tmp_path, change))


def test_kpi_on_a_metric_of_another_task(tmp_path):
    def change(p):
        p["scope"]["kpis"].append({"metric": "accuracy", "threshold": 0.5, "direction": "higher"})

    assert any(
        "`scope.kpis.3.metric` 'accuracy' is not computed for a question-answering project" in m
        for m in problems(tmp_path, change)
    )


def test_rank_by_needs_a_direction(tmp_path):
    def change(p):
        p["scope"]["task"] = "summarization"
        p["scope"]["kpis"] = [{"metric": "rougeL", "threshold": 0.1, "direction": "higher"}]
        p["select"]["rank_by"] = "length_words"

    assert any("`select.rank_by` 'length_words' cannot rank" in m for m in problems(tmp_path, change))


def test_validate_exits_2_on_a_kpi_out_of_range(tmp_path, capsys):
    from flows.cli import main

    p = default_params()
    p["scope"]["kpis"][0]["threshold"] = 2.0
    assert main(["validate", "--params", str(write_params(tmp_path, p))]) == 2
    assert "rougeL" in capsys.readouterr().err


def test_guardrails_join_the_evaluated_metrics_only_when_declared(tmp_path):
    from stages.common.loader import load_params
    from tests.conftest import default_params, write_params

    p = default_params()
    p["evaluate"]["guardrails"] = {"forbidden_terms": [], "max_words": None, "format": "auto"}
    plain = load_params(write_params(tmp_path, p))
    assert "guardrail_violations" not in metrics.project_metrics(plain)
    p["scope"]["kpis"].append({"metric": "guardrail_violations", "threshold": 5, "direction": "lower"})
    p["evaluate"]["guardrails"]["forbidden_terms"] = ["password"]
    guarded = load_params(write_params(tmp_path, p))
    assert "guardrail_violations" in metrics.project_metrics(guarded)
    assert "guardrail_violations" not in metrics.selection_metrics(guarded), "never re-runs select or adapt"
    assert guardrails.resolve(guarded)["format"] is None, "question answering has no required format"


def test_an_llm_judge_rates_each_answer_from_1_to_5(untrained_lm):
    judge = {"model": untrained_lm, "rubric": "Rate the answer from 1 to 5."}  # any causal LM rates: the range holds
    questions = ["What does `json.dumps` do?", "What does `os.getcwd` do?"]
    refs = [["Serialize obj to a JSON formatted str."], ["Return a string representing the current directory."]]
    answers = ["Serialize obj to a JSON formatted str.", "Open a socket."]
    rows = metrics.REGISTRY["judge_score"].rows(answers, refs, judge=judge, questions=questions)
    assert len(rows) == 2 and all(1 <= r <= 5 for r in rows)
    assert rows == metrics.REGISTRY["judge_score"].rows(answers, refs, judge=judge, questions=questions)
    assert metrics.score(["judge_score"], answers, refs, judge=judge, questions=questions)["judge_score"] == round(
        sum(rows) / 2, 4
    )


def test_a_saas_judge_is_refused_for_personal_data(tmp_path):
    from stages.common.loader import load_params
    from tests.conftest import default_params, write_params

    p = default_params()
    p["scope"]["privacy"]["personal_data"] = True
    p["evaluate"]["judge"] = {"model": "some-org/judge-7b", "hosting": "saas"}
    with pytest.raises(Exception) as err:
        load_params(write_params(tmp_path, p))
    assert any("`evaluate.judge` is SaaS-hosted" in m for m in err.value.problems)
    p["evaluate"]["judge"]["hosting"] = "self"
    params = load_params(write_params(tmp_path, p))
    assert "judge_score" in metrics.project_metrics(params) and "judge_score" not in metrics.selection_metrics(params)
