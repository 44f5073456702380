"""The shipped default project, unchanged, through the real `lifecycle` command: what `make run` does, and the
verdicts its own data earns (the default KPIs, the escalation ladder's outcome) on SmolLM2-135M-Instruct. About
15 minutes (LoRA steps on a 135M model, Python's documentation embedded), so it is its own tier: `make test-default`.
The pipeline's behaviour on every stage is tested on the tiny project by tests/test_e2e.py in `make test`.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO
from tests.workspaces import COPY_IGNORE, last_run, lifecycle, mlflow_client

pytestmark = [pytest.mark.e2e, pytest.mark.default]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("default") / "project"
    shutil.copytree(REPO, root, ignore=COPY_IGNORE)
    (root / "models").mkdir(exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def first_run(project):
    out = lifecycle(project, "run")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def test_the_default_kpis_are_earned(project, first_run):
    """The tuned model beats the best baseline by the stated margin, and the summary says so."""
    report = json.loads((project / "metrics/eval.json").read_text())
    assert report["gates"]["passed"], report["gates"]
    # the default KPIs are earned: the tuned model beats the best baseline by the stated margin
    margin = next(
        k for k in yaml.safe_load((project / "params.yaml").read_text())["scope"]["kpis"] if k["versus"] == "baseline"
    )
    values = {n: {m: v["value"] for m, v in metrics.items()} for n, metrics in report["variants"].items()}
    best_baseline = max(values[b][margin["metric"]] for b in report["baselines"])
    assert values[report["candidate"]][margin["metric"]] >= best_baseline + margin["threshold"]
    compared = report["comparisons"][margin["metric"]]
    assert compared["candidate"] == report["candidate"] and compared["baseline"] in report["baselines"]
    assert compared["ci_low"] <= compared["difference"] <= compared["ci_high"]
    if margin.get("confidence") == "ci":
        assert compared["ci_low"] >= margin["threshold"], "the margin holds with confidence"

    assert "gates      PASSED" in first_run.stdout
    # Python's documentation is indexed and retrieval is measured on every eval question (each names its source)
    retrieval = json.loads((project / "metrics/integrate.json").read_text())
    assert retrieval["retrieval_eval_rows"] == report["eval_rows"] and retrieval["embedded"] == retrieval["chunks"]
    assert 0 < retrieval["dense"]["recall@1"] <= retrieval["dense"]["recall@10"] <= 1
    assert f"integrate  {retrieval['chunks']} chunks" in first_run.stdout
    assert last_run(project)["ran"][-1] == "package"


def test_the_ladder_stops_at_the_first_rung_whose_gates_pass(project, first_run):
    """The default's ladder (`ladder.stop_when_passed`): prompting and retrieval miss the 0.3 ROUGE-L gate on
    SmolLM2, RAFT LoRA with retrieval meets it, so alignment is never run and `sft_rag` ships, on the openvino
    engine that answered in evaluate."""
    record = last_run(project)
    assert not {"reward", "align@dpo", "align@rlhf"} & set(record["ran"]), record["ran"]
    assert "evaluate@prompting" in record["ran"] and "evaluate@retrieval" in record["ran"], record["ran"]
    assert record["ran"][-2:] == ["evaluate@fine-tuning", "package"], record["ran"]
    ladder = record["ladder"]
    assert [(r["rung"], r["passed"]) for r in ladder["rungs"]] == [
        ("prompting", False),
        ("retrieval", False),
        ("fine-tuning", True),
    ]
    assert ladder["winner"] == "fine-tuning" and ladder["not_run"] == ["alignment"]
    report = json.loads((project / "metrics/eval.json").read_text())
    assert report["candidate"] == "sft_rag" and not [v for v in report["variants"] if v.startswith("aligned")]
    assert "align@dpo" in report["not_reached"] and "## Not run" in (project / "reports/eval.md").read_text()
    assert report["answer_cache"]["reused"] >= 3, "the baselines were answered once, at the rung that added them"
    assert "-> fine-tuning PASSED (sft_rag) -> alignment not run" in first_run.stdout
    package = json.loads((project / "models/package/package.json").read_text())
    assert package["variant"] == "sft_rag" and package["engine"] == "openvino"
    assert "engine openvino: auto: OpenVINO GenAI" in first_run.stdout
    client = mlflow_client(project)
    runs = client.search_runs(
        [client.get_run(record["parent_run_id"]).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{record['parent_run_id']}'",
    )
    assert {r.data.tags.get("lifecycle.ladder_rung") for r in runs if r.info.run_name.startswith("evaluate@")} == {
        "prompting",
        "retrieval",
        "fine-tuning",
    }
    status = lifecycle(project, "status")
    assert "align@dpo  changed" in status.stdout, "dvc repro alone would still run alignment"
