"""The full offline pipeline through the real `lifecycle` command, in a copy of the repository with the tiny
settings (every stage runs, on models of thousands of parameters; the shipped default's own run and verdicts
are tests/test_default.py, `make test-default`).

Embedded defaults only (MLflow SQLite in the project, Prefect's ephemeral server, DVC's local cache, BentoML's
store in the project). One workspace, runs in order: full, no-op, a shared module edited, the registry commands
without the data, a schedule, one DPO hyperparameter changed, a gate that refuses, bad data, invalid params.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import stages_run
from tests.workspaces import edit_params, last_run, lifecycle, mlflow_client, tiny_project

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """One workspace for the whole module: one full run, then each test changes something and runs again."""
    return tiny_project(tmp_path_factory.mktemp("e2e") / "project")


def child_stages(client, parent_run_id: str) -> set[str]:
    exp = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r.data.tags["lifecycle.stage"] for r in runs}


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def first_run(project):
    out = lifecycle(project, "run")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def test_full_run_builds_tracks_and_packages(project, first_run):
    stages = stages_run(["dpo", "rlhf"])  # the tiny example aligns both ways
    record = last_run(project)
    assert record["ran"] == stages
    for f in (
        "reports/scope.json",
        "models/selection.json",
        "metrics/eval.json",
        "reports/eval.md",
        "models/package/package.json",
    ):
        assert (project / f).is_file(), f
    report = json.loads((project / "metrics/eval.json").read_text())
    assert report["gates"]["passed"], report["gates"]
    # the knowledge base is indexed (the tiny one: one page; retrieval quality on the default: test_default.py)
    retrieval = json.loads((project / "metrics/integrate.json").read_text())
    assert retrieval["chunks"] > 0 and retrieval["embedded"] == retrieval["chunks"]
    client = mlflow_client(project)
    assert child_stages(client, record["parent_run_id"]) == set(stages)
    logged = client.get_run(record["parent_run_id"]).data.params  # the project, flattened: runs compare by column
    p = yaml.safe_load((project / "params.yaml").read_text())
    assert logged["adapt.technique"] == p["adapt"]["technique"] and logged["project.seed"] == str(p["project"]["seed"])
    package = json.loads((project / "models/package/package.json").read_text())
    champion = client.get_model_version_by_alias("stdlib-helpdesk", "champion")
    assert int(champion.version) == package["version"]
    assert (project / ".bentoml" / "bentos" / package["bento"].replace(":", "/")).is_dir()
    for line in (
        "scope ",
        "select ",
        "gates      PASSED",
        "package    MLflow model stdlib-helpdesk",
        "mlflow ui",
        "lifecycle serve",
        "bootstrap confidence intervals",
        "champion: no champion yet",
        "cost       ",
    ):
        assert line in first_run.stdout, line
    assert record["cost"]["training_hours"] > 0 and record["cost"]["gpu_hours"] == 0  # CPU only
    # The training curves and the variant comparison render with `dvc plots show`.
    plots = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "plots", "show", "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plots.returncode == 0, plots.stderr[-2000:]
    for f in (
        "metrics/adapt_loss.csv",
        "metrics/reward_curve.csv",
        "metrics/align_dpo_curve.csv",
        "metrics/align_rlhf_curve.csv",
        "metrics/eval_variants.csv",
        "reports/eval.png",
    ):
        assert f in plots.stdout, f

    # Readable from the MLflow runs table: name, description, verdict, lineage, datasets, the training view.
    parent = client.get_run(record["parent_run_id"])
    assert parent.info.run_name.endswith(
        f"{', '.join(stages)}: gates PASSED: {report['candidate']} v{package['version']} @champion"
    )
    assert "gates      PASSED" in parent.data.tags["mlflow.note.content"]
    assert (
        parent.data.tags["lifecycle.params_sha256"]
        == hashlib.sha256((project / "params.yaml").read_bytes()).hexdigest()
    )
    assert parent.data.tags["lifecycle.git_commit"]
    inputs = {
        (d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"]) for d in parent.inputs.dataset_inputs
    }
    assert {("sft", "training"), ("eval", "evaluation"), ("dev", "validation")} <= inputs
    assert client.get_experiment_by_name("stdlib-helpdesk").tags["mlflow.experimentKind"] == "custom_model_development"
    assert "Registry: champion" in champion.description and "bootstrap" in champion.description


def test_second_run_runs_nothing(project, first_run):
    out = lifecycle(project, "run")
    assert out.returncode == 0, out.stderr[-3000:]
    record = last_run(project)
    from flows.lifecycle import stage_order

    stages = stage_order(project)
    assert len(stages) == 12 and record["ran"] == [] and record["skipped"] == stages
    assert child_stages(mlflow_client(project), record["parent_run_id"]) == set()
    status = lifecycle(project, "status")
    assert status.returncode == 0 and status.stdout.count("up to date") >= len(stages)


def test_an_edit_of_a_shared_module_marks_the_stages_that_compute_with_it(project, first_run):
    """dvc.yaml's code deps are derived from the imports (tests/test_dvc.py): editing the confidence intervals
    makes evaluate and package out of date, and no training stage."""
    confidence = project / "stages" / "common" / "confidence.py"
    original = confidence.read_text()
    confidence.write_text(original + "\n# an edit\n")
    try:
        status = lifecycle(project, "status")
    finally:
        confidence.write_text(original)
    assert status.returncode == 0, status.stderr[-3000:]
    stage_lines = status.stdout.split("\n\n")[0].splitlines()  # the first block: one line per stage
    verdicts = {line.split()[0]: line for line in stage_lines}
    assert "changed" in verdicts["evaluate"] and "confidence.py" in verdicts["evaluate"], status.stdout
    assert "changed" in verdicts["package"]
    for stage in ("data", "pretrain", "select", "adapt", "reward"):
        assert verdicts[stage].endswith("up to date"), verdicts[stage]


def test_registry_commands_work_where_the_data_is_not(project, first_run, tmp_path):
    """A serving host, or a clone before `dvc pull`, has the repository and the registry but not the data:
    `models` and `deploy --target k8s` work there; `validate`, which reads the data, names what is missing."""
    data = project / "data" / "stdlib"
    aside = tmp_path / "stdlib"
    shutil.move(data, aside)
    try:
        models = lifecycle(project, "models")
        k8s = lifecycle(project, "deploy", "--target", "k8s", "--out", str(tmp_path / "k8s"))
        validate = lifecycle(project, "validate")
    finally:
        shutil.move(aside, data)
    assert models.returncode == 0 and "champion" in models.stdout, models.stderr[-3000:]
    assert k8s.returncode == 0, k8s.stderr[-3000:]
    assert list((tmp_path / "k8s").iterdir()) and "deployed to k8s" in k8s.stdout
    assert validate.returncode == 2 and "data.sources.sft.path" in validate.stderr


def test_schedule_fires_a_real_flow_run(project, first_run):
    """`lifecycle schedule` on a every-minute cron: a scheduled Prefect run of the (up-to-date) pipeline happens."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = last_run(project)["parent_run_id"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BENTOML_HOME", "PREFECT_HOME")}
    # The scheduler and the runner look every 60 s and 10 s by default: the wait is theirs, not the flow's.
    env |= {"PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "lifecycle"), "schedule", "--cron", "* * * * *", "--port", str(port)],
        cwd=project,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # bounded: a cron minute, the scheduler's 60 s loop and a no-op run fit in 200 s
            time.sleep(2)
            assert proc.poll() is None, f"lifecycle schedule exited with {proc.returncode}"
            if last_run(project)["parent_run_id"] != before:
                break
        record = last_run(project)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    assert record["parent_run_id"] != before, "no scheduled run happened within 200 s"
    assert record["exit_status"] == 0 and record["ran"] == []


def test_a_method_hyperparameter_reruns_that_method_and_downstream_only(project, first_run):
    edit_params(project, lambda p: p["align"]["dpo"].update(beta=0.2))
    out = lifecycle(project, "run")
    assert out.returncode == 0, out.stderr[-3000:]
    record = last_run(project)
    assert record["ran"] == ["align@dpo", "evaluate", "package"], "not adapt, reward or align@rlhf"
    client = mlflow_client(project)
    assert child_stages(client, record["parent_run_id"]) == set(record["ran"])
    # The new version was compared with the champion on the same eval rows; the registry followed the verdict.
    package = json.loads((project / "models/package/package.json").read_text())
    compared = package["versus_champion"]
    assert compared is not None and compared["ci_low"] <= compared["difference"] <= compared["ci_high"]
    holder = int(client.get_model_version_by_alias("stdlib-helpdesk", package["alias"]).version)
    assert holder == package["version"] and package["alias"] == ("champion" if compared["ci_low"] > 0 else "challenger")
    models = lifecycle(project, "models")
    assert models.returncode == 0 and f"{package['version']:>7}  {package['alias']}" in models.stdout


def test_refused_gate_promotes_nothing(project, first_run):
    client = mlflow_client(project)
    champion_before = client.get_model_version_by_alias("stdlib-helpdesk", "champion").version
    versions_before = len(client.search_model_versions("name='stdlib-helpdesk'"))
    bentos_before = sorted(p.name for p in (project / ".bentoml" / "bentos" / "stdlib-helpdesk").iterdir())
    edit_params(
        project,
        lambda p: p["scope"]["kpis"].append(
            {"metric": "exact_match", "threshold": 0.99, "direction": "higher", "versus": "absolute"}
        ),
    )
    # (the KPIs change: scope and the prompt search, which optimises the primary KPI, re-run; training does not)
    out = lifecycle(project, "run")
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr[-3000:]
    assert "gates      FAILED" in out.stdout and "refused" in out.stderr
    assert last_run(project)["failed_stage"] == "package"
    assert client.get_model_version_by_alias("stdlib-helpdesk", "champion").version == champion_before
    assert len(client.search_model_versions("name='stdlib-helpdesk'")) == versions_before
    assert sorted(p.name for p in (project / ".bentoml" / "bentos" / "stdlib-helpdesk").iterdir()) == bentos_before


def test_bad_data_fails_at_scope_and_leaves_the_workspace_as_it_was(project, first_run):
    """A malformed line in a data file: exit 2 naming file and line, and the outputs of the last good run stay
    (DVC deleted the failing stage's outputs before running it; the flow restored them)."""
    sft = project / "data" / "stdlib" / "sft.jsonl"
    good = sft.read_text()
    folders = ("models", "metrics", "data/processed")
    before = {d: tree_digest(project / d) for d in folders}
    scope_report = (project / "reports" / "scope.json").read_text()
    sft.write_text(good + '{"prompt": "What does `x` do?", "completion": \n')
    try:
        out = lifecycle(project, "run")
        assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
        said = f"sft.jsonl:{len(good.splitlines()) + 1}: not valid JSON"
        assert said in out.stderr
        # The truth, once: the stage's message, no traceback for a user's error, a summary that says FAILED and
        # shows nothing an earlier run left behind (the last good run's evaluation table passed its gates).
        assert (out.stdout + out.stderr).count(said) == 1, out.stdout[-2000:] + out.stderr[-3000:]
        assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
        assert "FAILED     at `scope`: the project definition is invalid" in out.stdout
        assert "PASSED" not in out.stdout and "evaluate   " not in out.stdout
        assert last_run(project)["failed_stage"] == "scope"
        assert said in last_run(project)["error"], "the run record keeps the stage's own message"
        status = lifecycle(project, "status")
        assert status.returncode == 0 and said in status.stdout
        assert {d: tree_digest(project / d) for d in folders} == before
        assert (project / "reports" / "scope.json").read_text() == scope_report, "the last good report is back"
    finally:
        sft.write_text(good)


def test_invalid_params_fail_before_any_model(project, first_run):
    before = {d: tree_digest(project / d) for d in ("models", "metrics")}
    edit_params(project, lambda p: p["adapt"]["trainer"].update(max_stepz=10))
    out = lifecycle(project, "run")
    assert out.returncode == 2
    assert "unknown key `adapt.trainer.max_stepz`" in out.stderr
    assert {d: tree_digest(project / d) for d in ("models", "metrics")} == before
    validate = lifecycle(project, "validate")
    assert validate.returncode == 2 and "max_stepz" in validate.stderr
