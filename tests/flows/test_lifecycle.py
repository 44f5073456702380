"""The flow reads its stages from dvc.yaml; retries spare verdicts; the CLI maps errors to exit codes."""

from __future__ import annotations

import json

import pytest
import yaml
from prefect.states import Completed, Failed

from flows.cli import main, scheduled_deployment
from flows.lifecycle import StageFailed, _exit_status_of, _retry_unless_user_error, stage_order
from stages.common.errors import ExitStatus
from tests.conftest import REPO, STAGES, default_params, stages_run, write_params


def test_stage_order_is_dvc_yaml(monkeypatch):
    declared = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert declared == STAGES
    methods = yaml.safe_load((REPO / "params.yaml").read_text())["align"]["methods"]  # what stage_order reads
    assert stage_order(REPO) == stages_run(methods), "one align stage per align.methods entry, before evaluate"


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
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "make": {
                        "cmd": f"{sys.executable} step.py",
                        "deps": ["step.py"],
                        "outs": ["out", {"metrics.json": {"cache": False}}],
                    }
                }
            }
        )
    )
    (tmp_path / "step.py").write_text(
        "import os\nos.makedirs('out', exist_ok=True)\n"
        "open('out/model.bin', 'w').write('good')\nopen('metrics.json', 'w').write('{\"v\": 1}')\n"
    )
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
    assert spent == {
        "wall_hours": 1.1,
        "training_hours": 1.0,
        "gpu_hours": 2.0,
        "budget_training_hours": 0.5,
        "over_budget": True,
    }
    assert not cost({"adapt": 1800.0}, 0.5)["over_budget"], "exactly the budget is within it"


@pytest.mark.slow  # a real DVC repo, pretrain and a Prefect flow run: ~20 s
def test_an_enforced_budget_stops_before_the_next_training_stage(tmp_path, monkeypatch):
    """A real DVC repo and a real Prefect flow run: `pretrain` overspends a tiny budget, `adapt` never starts."""
    import subprocess
    import sys

    from flows.lifecycle import lifecycle
    from tests.conftest import tiny_params_dict, write_params

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    p = tiny_params_dict(tmp_path)
    p["scope"]["budget"].update(training_hours=0.0002, enforce=True)  # 0.72 s
    write_params(tmp_path, p)
    python = sys.executable
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "scope": {"cmd": f"{python} -c \"open('scoped', 'w').write('x')\"", "outs": ["scoped"]},
                    "pretrain": {
                        "cmd": f"{python} -c \"import time; time.sleep(1.5); open('pretrained', 'w').write('x')\"",
                        "deps": ["scoped"],
                        "outs": ["pretrained"],
                    },
                    "adapt": {
                        "cmd": f"{python} -c \"open('adapted', 'w').write('x')\"",
                        "deps": ["pretrained"],
                        "outs": ["adapted"],
                    },
                }
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    state = lifecycle(str(tmp_path), return_state=True)
    assert state.is_failed(), "the flow run is marked failed (red in the Prefect UI)"
    result = state.result(raise_on_failure=False)  # the RunResult, for the CLI's summary
    assert result.exit_status == ExitStatus.INVALID_PROJECT and result.failed_stage == "adapt"
    assert result.ran == ["scope", "pretrain"] and not (tmp_path / "adapted").exists()
    assert "over budget" in result.error and "`adapt` was not started" in result.error
    assert result.cost["over_budget"] and result.cost["training_hours"] >= 1.5 / 3600


TOY_STAGES = """import json, pathlib, sys
def write(path, obj):
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(json.dumps(obj))
def read(path):
    return json.loads(pathlib.Path(path).read_text())
stage = sys.argv[1]
if stage == "select":
    write("models/selection.json", {"selected": {"ref": "base", "name": "base", "why": "toy"}, "candidates": []})
elif stage == "prompt_search":
    write("models/prompt.json", {"shots": 1})
elif stage == "integrate":
    write("models/index/lifecycle.json", {"chunks": 3})
elif stage == "adapt":
    write("models/sft/lifecycle.json", {"trained": True})
elif stage == "reward":
    write("models/reward/lifecycle.json", {"trained": True})
elif stage == "align":
    write(f"models/aligned/{sys.argv[2]}/lifecycle.json", {"model": True})
elif stage == "evaluate":  # the gates pass once a fine-tuned model exists
    trained = read("models/sft/lifecycle.json")["trained"]
    aligned = read("models/aligned/dpo/lifecycle.json")["model"]
    indexed = read("models/index/lifecycle.json")["chunks"] > 0
    candidate = "aligned_dpo" if aligned else "sft" if trained else "baseline_rag" if indexed else "baseline_prompted"
    write("metrics/eval.json", {"candidate": candidate, "variants": {candidate: {"rougeL": {"value": 0.5}}},
                                "baselines": [], "confidence_level": 0.95,
                                "gates": {"passed": trained, "reasons": [], "failed": [] if trained else ["margin"]}})
elif stage == "package":
    write("models/package/package.json", {"variant": read("metrics/eval.json")["candidate"], "version": 1,
                                          "alias": "champion", "registered_model": "toy", "bento": "toy:1"})
"""


@pytest.mark.slow  # a real DVC repo and Prefect flow run over stand-in stage commands: ~30 s
def test_the_ladder_stops_at_the_first_rung_that_passes(tmp_path, monkeypatch):
    """A real DVC repo and a real Prefect flow run (stand-in stage commands): prompting fails the gates, so does
    retrieval, the flow climbs to fine-tuning, which passes; alignment never runs, and DVC still sees it as to be
    run."""
    import subprocess
    import sys

    from dvc.repo import Repo

    from flows.lifecycle import lifecycle
    from tests.conftest import tiny_params_dict, write_params

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    p = tiny_params_dict(tmp_path)
    p["ladder"] = {"stop_when_passed": True}
    write_params(tmp_path, p)
    (tmp_path / "toy.py").write_text(TOY_STAGES)
    step = f"{sys.executable} toy.py"
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "select": {"cmd": f"{step} select", "deps": ["toy.py"], "outs": ["models/selection.json"]},
                    "prompt_search": {
                        "cmd": f"{step} prompt_search",
                        "deps": ["models/selection.json"],
                        "outs": ["models/prompt.json"],
                    },
                    "integrate": {"cmd": f"{step} integrate", "deps": ["toy.py"], "outs": ["models/index"]},
                    "adapt": {"cmd": f"{step} adapt", "deps": ["models/selection.json"], "outs": ["models/sft"]},
                    "reward": {"cmd": f"{step} reward", "deps": ["models/sft"], "outs": ["models/reward"]},
                    "align": {
                        "foreach": ["dpo", "rlhf"],
                        "do": {
                            "cmd": f"{step} align ${{item}}",
                            "deps": ["models/sft", "models/reward"],
                            "outs": ["models/aligned/${item}"],
                        },
                    },
                    "evaluate": {
                        "cmd": f"{step} evaluate",
                        "deps": ["models/prompt.json", "models/index", "models/sft", "models/aligned"],
                        "outs": ["metrics/eval.json"],
                    },
                    "package": {"cmd": f"{step} package", "deps": ["metrics/eval.json"], "outs": ["models/package"]},
                }
            },
            sort_keys=False,
        )
    )
    monkeypatch.chdir(tmp_path)
    result = lifecycle(str(tmp_path))
    assert result.ran == [
        "select",
        "prompt_search",
        "evaluate@prompting",
        "integrate",
        "evaluate@retrieval",
        "adapt",
        "evaluate@fine-tuning",
        "package",
    ]
    assert result.skipped == ["evaluate"], "the pipeline's own evaluate: nothing changed since the fine-tuning check"
    ladder = result.ladder
    assert [(r["rung"], r["passed"], r["candidate"]) for r in ladder["rungs"]] == [
        ("prompting", False, "baseline_prompted"),
        ("retrieval", False, "baseline_rag"),
        ("fine-tuning", True, "sft"),
    ]
    assert ladder["winner"] == "fine-tuning" and ladder["not_run"] == ["alignment"]
    assert ladder["stages_not_run"] == ["reward", "align"]
    assert json.loads((tmp_path / "models/package/package.json").read_text())["variant"] == "sft"
    for method in ("dpo", "rlhf"):
        aligned = json.loads((tmp_path / f"models/aligned/{method}/lifecycle.json").read_text())
        assert aligned["model"] is False and "evaluates the fine-tuning rung first" in aligned["not_reached"]
    assert "not_reached" in json.loads((tmp_path / "models/reward/lifecycle.json").read_text())
    assert json.loads((tmp_path / "metrics/integrate.json").read_text())["documents"] == 0, (
        "while prompting was evaluated, the index said it was not reached (the stage then ran)"
    )
    with Repo(str(tmp_path)) as repo:
        status = repo.status()
        assert {"reward", "align@dpo", "align@rlhf"} <= set(status), "a plain `dvc repro` still runs the skipped rung"
    from mlflow import MlflowClient

    tags = MlflowClient().get_run(result.parent_run_id).data.tags
    assert tags["lifecycle.ladder.winner"] == "fine-tuning" and tags["lifecycle.ladder.not_run"] == "alignment"
    assert "(ladder: fine-tuning)" in tags["mlflow.runName"]
    assert (
        "ladder     prompting FAILED (baseline_prompted) -> retrieval FAILED (baseline_rag) -> fine-tuning PASSED "
        "(sft) -> alignment not run" in tags["mlflow.note.content"]
    )


@pytest.mark.slow  # the real `lifecycle run` in a subprocess: ~20 s
def test_each_dvc_line_is_logged_once_and_no_git_hint(tmp_path):
    """The real `lifecycle run` on a two-stage DVC project: DVC's lines reach the console once (through the task
    run's logger, so the Prefect UI has them too), without DVC's "enable auto staging" hint after every stage."""
    import os
    import subprocess
    import sys

    from tests.conftest import tiny_params_dict, write_params

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    write_params(tmp_path, tiny_params_dict(tmp_path))
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "scope": {"cmd": f"{sys.executable} -c \"open('scoped', 'w').write('x')\"", "outs": ["scoped"]},
                    "data": {
                        "cmd": f"{sys.executable} -c \"open('data', 'w').write('x')\"",
                        "deps": ["scoped"],
                        "outs": ["data"],
                    },
                }
            }
        )
    )
    lifecycle = os.path.join(os.path.dirname(sys.executable), "lifecycle")
    out = subprocess.run([lifecycle, "run"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    logged = out.stdout + out.stderr
    for stage in ("scope", "data"):
        assert logged.count(f"Running stage '{stage}'") == 1, logged[-3000:]
        assert f"Task run '{stage}' - Running stage '{stage}'" in logged, "in the task run's log (and the UI)"
    assert "auto staging" not in logged
    assert "git add" not in logged
