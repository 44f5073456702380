"""The registry's champion/challenger decision, a pure function."""

import pytest

from stages.common.registry import decide

BETTER = {"difference": 0.04, "ci_low": 0.01, "ci_high": 0.07, "p_value": 0.01}
UNSURE = {"difference": 0.02, "ci_low": -0.01, "ci_high": 0.05, "p_value": 0.2}
TIE = {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}


def test_the_first_version_is_champion():
    assert decide(None, None, "rougeL", True).alias == "champion"


@pytest.mark.parametrize("comparison, alias", [(BETTER, "champion"), (UNSURE, "challenger"), (TIE, "challenger")])
def test_champion_moves_only_when_the_new_version_is_better_with_confidence(comparison, alias):
    verdict = decide(3, comparison, "rougeL", True)
    assert verdict.alias == alias and "v3" in verdict.why and "rougeL" in verdict.why


def test_lower_is_better_metrics_need_the_interval_below_zero():
    faster = {"difference": -20.0, "ci_low": -30.0, "ci_high": -10.0, "p_value": 0.001}
    assert decide(1, faster, "latency_ms", False).alias == "champion"
    assert decide(1, BETTER, "latency_ms", False).alias == "challenger"


def test_a_champion_evaluated_on_other_rows_is_not_compared():
    verdict = decide(2, None, "rougeL", True, not_compared="champion v2 was evaluated on another eval split")
    assert verdict.alias == "challenger" and "another eval split" in verdict.why and "lifecycle promote" in verdict.why


def test_policy_always_replaces_the_champion():
    assert decide(2, UNSURE, "rougeL", True, policy="always").alias == "champion"


def test_a_bento_installs_torch_only_where_something_in_it_runs_torch():
    from stages.common.registry import bento_packages

    assert "torch" not in bento_packages(True, None, retrieves=True, reranks=False), "openvino + exported embedder"
    assert "sentence-transformers" not in bento_packages(True, None, retrieves=True, reranks=False)
    assert "torch" in bento_packages(False, None, retrieves=False, reranks=False), "the transformers engine"
    assert {"torch", "sentence-transformers"} <= set(bento_packages(True, None, retrieves=True, reranks=True))
    assert "torchao" in bento_packages(False, "torchao", retrieves=False, reranks=False)
    both = bento_packages(True, None, retrieves=True, reranks=False)
    assert len(both) == len(set(both)) and "openvino" in both, "the engine's and the embedder's openvino once"
