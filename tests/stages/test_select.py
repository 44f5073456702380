import pytest

from stages.common.candidates import candidate_filters
from stages.common.errors import ProjectError
from stages.common.io import read_json
from stages.common.params import Candidate, Phase
from stages.select import explain


def test_selection_ranks_survivors_with_reasons(selected, prepared):
    selection = read_json(prepared.paths.selection)
    table = explain(selection)
    assert "filters: licence ok, languages ok" in table and "memory_training ok" in table
    assert f"selected {selection['selected']['name']}" in table
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
    assert chosen["rank"] == 1 and other["rank"] == 2
    parts = chosen["memory_gib"]["training"]
    assert (
        parts["technique"] == "lora"
        and parts["activations"] > 0
        and parts["total"]
        == pytest.approx(parts["weights"] + parts["gradients"] + parts["optimizer"] + parts["activations"], abs=1e-3)
    )


def scoped(prepared, **scope):
    """The tiny project with scope keys replaced (nested models by dotted path: `privacy.personal_data`)."""
    s = prepared.scope
    for key, value in scope.items():
        section, _, field = key.partition("__")
        if field:
            value = getattr(s, section).model_copy(update={field: value})
        s = s.model_copy(update={section: value})
    return prepared.model_copy(update={"scope": s})


def test_filters_give_each_verdict_with_its_reason(tiny):
    params = scoped(
        tiny,
        languages=["en", "de"],
        privacy__personal_data=True,
        phase=Phase.mvp,
        residency=tiny.scope.residency.model_copy(update={"region": "apac"}),
    )
    saas = Candidate(name="x", hub_id="org/x", licence="llama3", languages=["en"], hosting="saas")
    f = candidate_filters(saas, params)
    assert "licence llama3" in f["licence"] and "['de']" in f["languages"] and "personal data" in f["hosting"]
    gpt = Candidate(name="g", catalog="gpt-4o-mini", licence="apache-2.0")
    assert (
        gpt.hosting == "saas" and gpt.endpoint.model == "gpt-4o-mini" and gpt.endpoint.api_key_env == "OPENAI_API_KEY"
    )
    assert "residency region is apac" in candidate_filters(gpt, params)["residency"]
    nc = Candidate(name="nc", catalog="c4ai-command-r-v01", licence="apache-2.0")
    assert nc.hub_id == "CohereForAI/c4ai-command-r-v01"
    assert "forbids commercial use" in candidate_filters(nc, params)["commercial_use"]
    assert candidate_filters(nc, scoped(tiny, phase=Phase.poc))["commercial_use"] is None, "fine before an MVP"
    t5 = Candidate(name="t5", catalog="flan-t5-base")
    assert t5.licence == "apache-2.0" and candidate_filters(t5, tiny)["context"] is None
    assert "encoder-decoder: this pipeline tunes and serves decoder-only" in candidate_filters(t5, tiny)["architecture"]
    assert candidate_filters(Candidate(name="q", catalog="qwen2.5-0.5b-instruct"), tiny)["architecture"] is None
    long = tiny.model_copy(update={"data": tiny.data.model_copy(update={"max_length": 4096})})
    assert "context 512 tokens" in candidate_filters(t5, long)["context"]


def on_an_untrained_model(params, folder: str):
    """The tiny project with one local candidate whose folder holds an untrained model: memory estimates read its
    config, not its weights."""
    candidate = params.select.candidates[0].model_copy(update={"path": folder})
    return params.model_copy(update={"select": params.select.model_copy(update={"candidates": [candidate]})})


def test_over_budget_and_missing_path(processed, untrained_lm, tmp_path):
    from stages import select

    local = on_an_untrained_model(processed, untrained_lm)
    hardware = local.scope.hardware.model_copy(
        update={
            "training": local.scope.hardware.training.model_copy(
                update={"gpu": "tiny-gpu", "gpu_memory_gib": 1e-9, "count": 1}
            )
        }
    )
    params = scoped(local, hardware=hardware)
    paths = local.paths.model_copy(update={"selection": str(tmp_path / "selection.json")})
    with pytest.raises(ProjectError, match="no local candidate survives.*over the training GPU's 1e-09 GiB"):
        select.run(params, paths)
    assert not (tmp_path / "selection.json").exists()

    gone = local.select.candidates[0].model_copy(update={"path": str(tmp_path / "gone")})
    params = local.model_copy(update={"select": local.select.model_copy(update={"candidates": [gone]})})
    with pytest.raises(ProjectError, match="gone does not exist"):
        select.run(params, paths)


def test_serving_memory_and_api_cost_are_held_against_the_scope(tiny, untrained_lm):
    from stages.select import budgets, cost_verdicts, judge

    local = on_an_untrained_model(tiny, untrained_lm)
    hw = local.scope.hardware
    tiny_gpu = hw.serving.model_copy(update={"gpu": "tiny-gpu", "gpu_memory_gib": 1e-6, "count": 1})
    params = scoped(local, hardware=hw.model_copy(update={"serving": tiny_gpu}))
    row = judge(local.select.candidates[0], params, budgets(params))
    assert row["filters"]["memory_training"] is None
    assert (
        "inference at nf4 needs ~" in row["filters"]["memory_serving"]  # the tiny project's smallest precision
        and "the serving GPU's 1e-06 GiB" in row["filters"]["memory_serving"]
    )
    parts = row["memory_gib"]["serving"]
    assert parts["technique"] == "inference" and parts["gradients"] == 0 and parts["activations"] > 0

    from stages.common.params import Quantization

    # A model too big for the serving GPU at its trained precision but fitting at 4 bits stays a candidate when
    # `package.quantize` lets evaluate try 4 bits.
    def serving_row(quantize: list[str], gib: float) -> dict:
        gpu = hw.serving.model_copy(update={"gpu": "tiny-gpu", "gpu_memory_gib": gib, "count": 1})
        p = scoped(local, hardware=hw.model_copy(update={"serving": gpu}))
        p = p.model_copy(
            update={"package": p.package.model_copy(update={"quantize": [Quantization(q) for q in quantize]})}
        )
        return judge(local.select.candidates[0], p, budgets(p))

    full, int4 = (serving_row(q, 1e-6)["memory_gib"]["serving"]["total"] for q in ([], ["int4"]))
    between = (full + int4) / 2
    assert int4 < full and "inference needs ~" in serving_row([], between)["filters"]["memory_serving"]
    assert serving_row(["int8", "int4"], between)["filters"]["memory_serving"] is None
    assert "inference at int4 needs ~" in serving_row(["int4"], int4 / 2)["filters"]["memory_serving"]

    limits = local.scope.serving.model_copy(update={"max_cost_per_1k_requests_usd": 0.5, "requests_per_month": 200_000})
    params = scoped(local, serving=limits, budget=local.scope.budget.model_copy(update={"monthly_serving_usd": 50}))
    assert cost_verdicts(params, 0.2) == {"cost_per_request": None, "monthly_budget": None}  # $40 a month
    over = cost_verdicts(params, 0.6)
    assert "$0.6 per 1k requests, over the $0.5 limit" in over["cost_per_request"]
    assert "~$120.00 a month at 200,000 requests, over the $50.00 budget" in over["monthly_budget"]
    assert cost_verdicts(params, None) == {"cost_per_request": None, "monthly_budget": None}, "no price: no verdict"
