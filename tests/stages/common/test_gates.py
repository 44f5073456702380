from stages.common.gates import should_promote
from stages.common.params import Kpi

BASES = {"zero": {"rougeL": 0.08, "latency_ms": 5.0}, "prompted": {"rougeL": 0.10, "latency_ms": 9.0}}


def test_margin_over_baseline_is_required():
    kpis = [Kpi(metric="rougeL", threshold=0.05, direction="higher", versus="baseline")]
    assert should_promote({"rougeL": 0.16, "latency_ms": 1}, BASES, kpis).passed
    decision = should_promote({"rougeL": 0.14, "latency_ms": 1}, BASES, kpis)
    assert not decision.passed and "rougeL 0.1400 vs prompted 0.1000" in decision.failed[0], "the best baseline"


def test_lower_is_better_margin_uses_the_fastest_baseline():
    kpis = [Kpi(metric="latency_ms", threshold=1.0, direction="lower", versus="baseline")]
    assert should_promote({"rougeL": 0, "latency_ms": 3.9}, BASES, kpis).passed
    assert not should_promote({"rougeL": 0, "latency_ms": 4.5}, BASES, kpis).passed


def test_absolute_and_lower_is_better():
    kpis = [
        Kpi(metric="latency_ms", threshold=10, direction="lower"),
        Kpi(metric="rougeL", threshold=0.3, direction="higher"),
    ]
    decision = should_promote({"rougeL": 0.31, "latency_ms": 12}, BASES, kpis)
    assert not decision.passed and len(decision.failed) == 1 and decision.failed[0].startswith("latency_ms")
    assert [r[:4] for r in decision.reasons] == ["FAIL", "PASS"]


COMPARED = {
    "rougeL": {
        "candidate": "sft",
        "baseline": "prompted",
        "difference": 0.06,
        "ci_low": 0.01,
        "ci_high": 0.11,
        "p_value": 0.02,
    }
}


def test_a_margin_met_on_the_point_estimate_only_is_said_so_and_fails_when_confidence_is_required():
    point = [Kpi(metric="rougeL", threshold=0.05, direction="higher", versus="baseline")]
    decision = should_promote({"rougeL": 0.16, "latency_ms": 1}, BASES, point, comparisons=COMPARED)
    assert decision.passed and "met on the point estimate only" in decision.reasons[0]
    assert "difference +0.0600 [CI +0.0100, +0.1100], p=0.02" in decision.reasons[0]
    ci = [Kpi(metric="rougeL", threshold=0.05, direction="higher", versus="baseline", confidence="ci")]
    decision = should_promote({"rougeL": 0.16, "latency_ms": 1}, BASES, ci, comparisons=COMPARED)
    assert not decision.passed and decision.failed[0].endswith("with confidence)")
    sure = {"rougeL": {**COMPARED["rougeL"], "ci_low": 0.05}}
    assert should_promote({"rougeL": 0.16, "latency_ms": 1}, BASES, ci, comparisons=sure).passed, "tie passes"


def test_an_absolute_kpi_with_confidence_needs_the_whole_interval():
    ci = [Kpi(metric="rougeL", threshold=0.3, direction="higher", confidence="ci")]
    inside = {"rougeL": {"ci_low": 0.28, "ci_high": 0.36}}
    assert not should_promote({"rougeL": 0.32}, BASES, ci, intervals=inside).passed
    assert should_promote({"rougeL": 0.32}, BASES, ci, intervals={"rougeL": {"ci_low": 0.3, "ci_high": 0.36}}).passed
    lower = [Kpi(metric="rougeL", threshold=0.3, direction="lower", confidence="ci")]
    assert not should_promote(
        {"rougeL": 0.25}, BASES, lower, intervals={"rougeL": {"ci_low": 0.2, "ci_high": 0.31}}
    ).passed


def test_a_ci_kpi_without_an_interval_fails():
    ci = [Kpi(metric="latency_ms", threshold=10, direction="lower", confidence="ci")]
    decision = should_promote({"latency_ms": 1}, BASES, ci)
    assert not decision.passed and "no interval was computed" in decision.failed[0]


def test_forgetting_beyond_the_limit_fails_with_the_figures():
    kpis = [Kpi(metric="rougeL", threshold=0.1, direction="higher")]
    decision = should_promote({"rougeL": 0.2}, BASES, kpis, forgetting={"before": 150.0, "after": 240.0, "limit": 0.5})
    assert not decision.passed
    assert decision.failed == ["forgetting: general-text perplexity 150.0 -> 240.0 (+60%; <= +50% allowed)"]
    assert should_promote(
        {"rougeL": 0.2}, BASES, kpis, forgetting={"before": 150.0, "after": 240.0, "limit": 0.6}
    ).passed
    unlimited = should_promote(
        {"rougeL": 0.2}, BASES, kpis, forgetting={"before": 150.0, "after": 900.0, "limit": None}
    )
    assert unlimited.passed and unlimited.reasons[-1].startswith("NOTE: forgetting")


def test_an_exact_tie_with_the_margin_passes():
    kpis = [Kpi(metric="rougeL", threshold=0.05, direction="higher", versus="baseline")]
    assert should_promote({"rougeL": 0.15, "latency_ms": 1}, BASES, kpis).passed, "0.15 - 0.10 is 0.05 in floats too"


def _trial(
    mib: float, low: float | None = None, high: float | None = None, p95: float = 10, gib: float = 0.5, speed=100.0
):
    trial = {"size_bytes": mib * 2**20, "memory_gib": gib, "p95_ms": p95, "batched": {"tokens_per_s": speed}}
    if low is not None:
        trial["difference"] = {"difference": (low + high) / 2, "ci_low": low, "ci_high": high}
    return trial


def test_among_precisions_within_the_loss_the_fastest_ships_ties_to_the_smaller():
    from stages.common.gates import choose_precision

    trials = {"full": _trial(100), "int8": _trial(40, -0.01, 0.005), "int4": _trial(25, -0.05, 0.0)}
    chosen = choose_precision(trials, "rougeL", True, 0.02)
    assert chosen["precision"] == "int8", "as fast as full (a tie) and smaller; int4 may lose too much"
    assert chosen["why"].startswith("int8 is the fastest that fits (100 tokens/s batched, the smallest within 5%")
    assert "may drop by 0.0500 [CI -0.0500, +0.0000] > 0.02 allowed" in chosen["reasons"]["int4"]
    # A smaller file that decodes slower does not ship over a faster one (int4 on torch decoded 2.8x slower).
    slow_small = {"full": _trial(100, speed=300), "int4": _trial(25, 0.0, 0.0, speed=107)}
    assert choose_precision(slow_small, "rougeL", True, 0.02)["precision"] == "full"
    fast_small = {"full": _trial(100, speed=100), "int8": _trial(40, 0.0, 0.0, speed=180)}
    assert choose_precision(fast_small, "rougeL", True, 0.02)["precision"] == "int8"
    # A point estimate of no loss is not enough when the interval reaches past the limit.
    assert choose_precision({**trials, "int8": _trial(40, -0.03, 0.03)}, "rougeL", True, 0.02)["precision"] == "full"
    # A lower-is-better metric loses when it rises.
    assert (
        choose_precision({"full": _trial(100), "int8": _trial(40, -0.5, 0.01)}, "ppl", False, 0.02)["precision"]
        == "int8"
    )


def test_the_scope_limits_and_skipped_precisions_are_reasons_too():
    from stages.common.gates import choose_precision

    trials = {
        "full": _trial(100, gib=30, p95=50),
        "int8": _trial(40, 0.0, 0.0, gib=9, p95=300),
        "int4": _trial(25, 0.0, 0.0, gib=6),
        "nf4": {"skipped": "nf4 needs a CUDA GPU"},
    }
    chosen = choose_precision(trials, "rougeL", True, 0.02, memory_gib=24, p95_latency_ms=200)
    assert chosen["precision"] == "int4"
    assert (
        "needs ~30.00 GiB > 24 GiB" in chosen["reasons"]["full"] and "p95 300 ms > 200 ms" in chosen["reasons"]["int8"]
    )
    assert chosen["reasons"]["nf4"] == "not tried: nf4 needs a CUDA GPU"
    none_fit = choose_precision({"full": _trial(100), "int8": _trial(40, -0.5, 0.0)}, "rougeL", True, 0.02)
    assert none_fit["precision"] == "full" and "int8 40.0 MiB: rougeL may drop" in none_fit["why"]


def test_a_costlier_variant_ships_only_when_it_is_better_with_confidence(tiny):
    from stages.common.gates import prefer_simpler
    from stages.common.params import Kpi
    from stages.common.significance import better_with_confidence

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
        values = {n: results[n]["rougeL"] for n in answers}
        return prefer_simpler(
            values,
            "rougeL",
            True,
            lambda costly, simpler: better_with_confidence(params, rows, answers, costly, simpler),
        )

    pays = choose({"sft": wrong, "sft_rag": right})
    assert pays["candidate"] == "sft_rag" and pays["comparisons"][0]["ci_low"] > 0, "retrieval pays: it ships"
    tie = choose({"sft": almost, "sft_rag": right, "aligned_dpo": right})
    assert tie["best"] == "sft_rag" and tie["candidate"] == "sft", "a difference within noise keeps the simpler one"
    assert "not better than the simpler sft" in tie["why"] and not tie["comparisons"][0]["better"]
    climbs = choose({"sft": wrong, "sft_rag": wrong, "aligned_dpo": right})
    assert climbs["candidate"] == "aligned_dpo" and len(climbs["comparisons"]) == 2, "better than every simpler one"
    assert choose({"sft": right, "sft_rag": wrong})["comparisons"] == [], "the simplest is best: nothing to compare"
    answers = {"sft": wrong, "sft_rag": right}
    measured = prefer_simpler(
        {"sft": 9.0, "sft_rag": 5.0},
        "latency_ms",
        False,
        lambda costly, simpler: better_with_confidence(tiny, rows, answers, costly, simpler),
    )
    assert measured["candidate"] == "sft_rag" and "point estimate" in measured["why"], (
        "latency, the tiny project's primary metric, has no rows to pair"
    )
