"""The flow reads its stages from dvc.yaml; retries spare verdicts; the CLI maps errors to exit codes."""

from __future__ import annotations

import yaml
from prefect.states import Completed, Failed

from flows.cli import main, scheduled_deployment
from flows.lifecycle import StageFailed, _exit_status_of, _retry_unless_user_error, stage_order
from stages.common.errors import ExitStatus
from tests.conftest import REPO, default_params, write_params


def test_stage_order_is_dvc_yaml(monkeypatch):
    declared = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert stage_order(REPO) == declared
    assert declared == ["scope", "data", "pretrain", "select", "adapt", "align", "evaluate", "package"]


def test_exit_status_is_read_from_dvc_error():
    try:
        try:
            raise RuntimeError("failed to run: python -m stages.package, exited with 3")
        except RuntimeError as inner:
            raise RuntimeError("failed to reproduce 'package'") from inner
    except RuntimeError as outer:
        assert _exit_status_of(outer) == 3
    assert _exit_status_of(ValueError("boom")) == ExitStatus.ERROR


def test_retries_crashes_but_not_verdicts():
    def failed(exc):
        return Failed(data=exc)

    assert _retry_unless_user_error(None, None, failed(StageFailed("adapt", 1, "killed"))) is True
    assert _retry_unless_user_error(None, None, failed(StageFailed("scope", 2, "typo"))) is False
    assert _retry_unless_user_error(None, None, failed(StageFailed("package", 3, "gate"))) is False
    assert _retry_unless_user_error(None, None, Completed()) is False


def test_schedule_is_a_cron_deployment():
    deployment = scheduled_deployment("0 3 * * *", "nightly", str(REPO))
    assert deployment.name == "nightly"
    assert deployment.schedules[0].schedule.cron == "0 3 * * *"
    assert deployment.parameters == {"root": str(REPO)}


def test_validate_exit_codes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the default's sources are relative to the repository root
    assert main(["validate", "--params", "params.yaml"]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert "sft               1904    1904" in out and "corpus            2702    2700  2 duplicate" in out
    assert "plan (from the rows found)" in out
    p = default_params()
    p["scope"]["privacy"]["personal_data"] = True
    p["scope"]["deployment_target"] = "saas"
    assert main(["validate", "--params", str(write_params(tmp_path, p))]) == ExitStatus.INVALID_PROJECT
    assert "deployment_target" in capsys.readouterr().err


def test_bad_cron_is_invalid_input(capsys):
    assert main(["schedule", "--cron", "every day"]) == ExitStatus.INVALID_PROJECT
    assert "not a valid cron expression" in capsys.readouterr().err


def test_a_failed_stage_leaves_its_last_good_outputs(tmp_path, monkeypatch):
    """A real DVC repo: a stage that fails gets its cached and uncached outputs of the last good run back."""
    import subprocess
    import sys

    import pytest

    from dvc.repo import Repo

    from flows.lifecycle import restored_on_failure

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": {
        "cmd": f"{sys.executable} step.py", "deps": ["step.py"],
        "outs": ["out", {"metrics.json": {"cache": False}}]}}}))
    (tmp_path / "step.py").write_text("import os\nos.makedirs('out', exist_ok=True)\n"
                                      "open('out/model.bin', 'w').write('good')\nopen('metrics.json', 'w').write('{\"v\": 1}')\n")
    monkeypatch.chdir(tmp_path)
    with Repo(str(tmp_path)) as repo, restored_on_failure(repo, "make"):
        assert repo.reproduce("make", single_item=True)
    (tmp_path / "step.py").write_text("open('out/model.bin', 'w').write('half')\nraise SystemExit(1)\n")
    with pytest.raises(Exception, match="failed to reproduce"):
        with Repo(str(tmp_path)) as repo, restored_on_failure(repo, "make"):
            repo.reproduce("make", single_item=True)
    assert (tmp_path / "out" / "model.bin").read_text() == "good"
    assert (tmp_path / "metrics.json").read_text() == '{"v": 1}'


def test_cost_is_summed_against_the_training_budget():
    from flows.lifecycle import cost

    spent = cost({"scope": 0.0, "pretrain": 1800.0, "adapt": 1800.0, "evaluate": 360.0}, 0.5, gpus=2)
    assert spent == {"wall_hours": 1.1, "training_hours": 1.0, "gpu_hours": 2.0, "budget_training_hours": 0.5,
                     "over_budget": True}
    assert not cost({"adapt": 1800.0}, 0.5)["over_budget"], "exactly the budget is within it"


def test_an_enforced_budget_stops_before_the_next_training_stage(tmp_path, monkeypatch):
    """A real DVC repo and a real Prefect flow run: `pretrain` overspends a tiny budget, `adapt` never starts."""
    import subprocess
    import sys

    from flows.lifecycle import StageFailed, lifecycle
    from tests.conftest import tiny_params_dict, write_params

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    p = tiny_params_dict(tmp_path)
    p["scope"]["budget"].update(training_hours=0.0002, enforce=True)  # 0.72 s
    write_params(tmp_path, p)
    python = sys.executable
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "scope": {"cmd": f"{python} -c \"open('scoped', 'w').write('x')\"", "outs": ["scoped"]},
        "pretrain": {"cmd": f"{python} -c \"import time; time.sleep(1.5); open('pretrained', 'w').write('x')\"",
                     "deps": ["scoped"], "outs": ["pretrained"]},
        "adapt": {"cmd": f"{python} -c \"open('adapted', 'w').write('x')\"", "deps": ["pretrained"],
                  "outs": ["adapted"]},
    }}))
    monkeypatch.chdir(tmp_path)
    state = lifecycle(str(tmp_path), return_state=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, StageFailed)
    result = error.result
    assert result.exit_status == ExitStatus.INVALID_PROJECT and result.failed_stage == "adapt"
    assert result.ran == ["scope", "pretrain"] and not (tmp_path / "adapted").exists()
    assert "over budget" in result.error and "`adapt` was not started" in result.error
    assert result.cost["over_budget"] and result.cost["training_hours"] >= 1.5 / 3600
