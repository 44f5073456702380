import pytest

from stages.common.errors import ProjectError
from stages.common.io import read_json
from stages.common.params import Candidate
from stages.select import constraint_problems, memory_estimate_gib


def test_selection_ranks_survivors_with_reasons(selected, prepared):
    selection = read_json(prepared.paths.selection)
    ranked = [c for c in selection["candidates"] if c["status"] in ("selected", "ranked")]
    assert len(ranked) == 2
    chosen = next(c for c in ranked if c["status"] == "selected")
    other = next(c for c in ranked if c["status"] == "ranked")
    assert selection["rank_by"] == "answer_perplexity"
    assert chosen["score"] <= other["score"], "lower answer perplexity ranks first"
    for c in ranked:
        assert set(c["metrics"]["few_shot"]) == {"exact_match", "token_f1", "rougeL", "latency_ms", "answer_perplexity"}
        assert c["score"] == min(c["metrics"][p]["answer_perplexity"] for p in ("zero_shot", "few_shot"))
    assert selection["selected"]["name"] == chosen["name"] and "dev split" in selection["selected"]["why"]


def test_constraints_reject_with_reasons():
    plan = {"licences": ["apache-2.0"], "languages": ["en", "de"], "candidate_hosting": ["self"]}
    c = Candidate(name="x", hub_id="org/x", licence="llama3", languages=["en"], hosting="saas")
    reasons = constraint_problems(c, plan)
    assert any("licence llama3" in r for r in reasons)
    assert any("['de']" in r for r in reasons)
    assert any("saas-hosted" in r for r in reasons)


def test_memory_estimate_orders_techniques():
    n = 500_000_000
    assert memory_estimate_gib(n, "qlora", "bf16") < memory_estimate_gib(n, "lora", "bf16") \
        < memory_estimate_gib(n, "full", "bf16")
    assert 7 < memory_estimate_gib(n, "full", "bf16") < 11  # 16 bytes/param * 1.3 = ~9.7 GiB


def test_over_budget_and_missing_path(prepared, tmp_path):
    from stages import select

    budget = prepared.scope.budget.model_copy(update={"gpu_memory_gib": 1e-9})
    params = prepared.model_copy(update={"scope": prepared.scope.model_copy(update={"budget": budget})})
    paths = prepared.paths.model_copy(update={"selection": str(tmp_path / "selection.json")})
    with pytest.raises(ProjectError, match="no candidate survives.*over the GPU budget"):
        select.run(params, paths)
    assert not (tmp_path / "selection.json").exists()

    gone = prepared.select.candidates[0].model_copy(update={"path": str(tmp_path / "gone")})
    params = prepared.model_copy(update={"select": prepared.select.model_copy(update={"candidates": [gone]})})
    with pytest.raises(ProjectError, match="gone does not exist"):
        select.run(params, paths)
