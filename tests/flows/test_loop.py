"""The loop's decision (pure): run on enough new rows, on drift, or on every tick without live sources."""

from __future__ import annotations

from flows.loop import decide
from tests.conftest import tiny_params_dict, write_params


def params(tmp_path, min_new_rows=5, on_drift=True):
    from stages.common.loader import load_params

    p = tiny_params_dict(tmp_path)
    p["loop"] = {"min_new_rows": min_new_rows, "retrain_on_drift": on_drift}
    return load_params(write_params(tmp_path, p))


def snap(untrained: int) -> dict:
    return {"feedback": {"rows": 10, "new_rows": untrained, "changed": True, "untrained_rows": untrained}}


DRIFT = {"drift": {"drifted": True, "versus": "the eval split", "ks_statistic": 0.9, "p_value": 1e-6}}


def test_enough_new_rows_run_the_pipeline_and_say_why(tmp_path):
    assert decide(params(tmp_path), snap(5), None) == "5 new rows from live sources (loop.min_new_rows 5)"


def test_too_few_rows_and_no_drift_run_nothing(tmp_path):
    assert decide(params(tmp_path), snap(4), {"drift": {"drifted": False}}) is None


def test_drift_runs_it_unless_told_not_to(tmp_path):
    assert decide(params(tmp_path), snap(0), DRIFT).startswith("input drift versus the eval split (KS 0.9")
    assert decide(params(tmp_path, on_drift=False), snap(0), DRIFT) is None


def test_a_project_without_live_sources_runs_on_every_tick(tmp_path):
    assert decide(params(tmp_path), {}, None) == "scheduled (the project has no live sources)"
