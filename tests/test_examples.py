"""Each shipped example runs end to end through the real `lifecycle` command, on tiny settings, in a copy of the
repository (as its README says: copy its params.yaml over the default one, then run)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO
from tests.workspaces import COPY_IGNORE, last_run, lifecycle, mlflow_client

pytestmark = pytest.mark.e2e


def shrink(p: dict) -> dict:
    """The example's own params, with models, steps and splits cut to seconds."""
    p["pretrain"].update(batch_size=8)  # vocabulary and context as shipped: the example's prompts must still fit
    p["pretrain"]["models"] = [
        {"name": "tiny-s", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "steps": 20}
    ]
    p["select"]["candidates"] = p["select"]["candidates"][:1]
    p["data"]["holdout"].update(eval=16, dev=8)
    p["prompt_search"]["shots"] = [0, 1]
    p["adapt"]["trainer"].update(max_steps=6, per_device_train_batch_size=8, logging_steps=2)
    p["select"]["max_new_tokens"] = p["evaluate"]["max_new_tokens"] = 8
    # Tiny models earn no real margin: gate on what any run meets, keep the task's metrics.
    p["scope"]["kpis"] = [
        {"metric": "rouge1", "threshold": 0.0, "direction": "higher", "versus": "absolute"},
        {"metric": "length_words", "threshold": 100, "direction": "lower", "versus": "absolute"},
    ]
    return p


# The tiny help desk is every pipeline fixture's base and tests/test_e2e.py runs it through `lifecycle` already.
FIXTURE = {"stdlib-helpdesk-tiny"}


@pytest.mark.parametrize(
    "example",
    sorted(p.name for p in (REPO / "examples").iterdir() if (p / "params.yaml").is_file() and p.name not in FIXTURE),
)
def test_example_runs_end_to_end(example, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(REPO, root, ignore=COPY_IGNORE)
    (root / "models").mkdir(exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    params = yaml.safe_load((root / "examples" / example / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(shrink(params), sort_keys=False))

    validate = lifecycle(root, "validate")
    assert validate.returncode == 0, validate.stderr[-3000:]
    out = lifecycle(root, "run")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    from flows.lifecycle import stage_order

    assert last_run(root)["ran"] == stage_order(root), "every stage ran"
    report = json.loads((root / "metrics" / "eval.json").read_text())
    task = params["scope"]["task"]
    if task == "summarization":
        assert {"rouge1", "rouge2", "rougeL", "length_words"} <= set(report["variants"]["sft"])
    card = (root / "data" / "processed" / "card.md").read_text()
    assert params["project"]["name"] in card
    name = params["project"]["name"]
    assert mlflow_client(root).get_model_version_by_alias(name, "champion")
    served = json.loads((root / "models" / "package" / "model" / "prompt.json").read_text())
    assert served["format"]["template"] == params["prompt"]["template"]
