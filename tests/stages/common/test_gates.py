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
    kpis = [Kpi(metric="latency_ms", threshold=10, direction="lower"),
            Kpi(metric="rougeL", threshold=0.3, direction="higher")]
    decision = should_promote({"rougeL": 0.31, "latency_ms": 12}, BASES, kpis)
    assert not decision.passed and len(decision.failed) == 1 and decision.failed[0].startswith("latency_ms")
    assert [r[:4] for r in decision.reasons] == ["FAIL", "PASS"]
