"""`orchestration.launch`: adapt through `accelerate launch` with 2 CPU processes (gloo DDP), for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stages.common.errors import ProjectError
from stages.common.launch import accelerate_command
from stages.common.params import Launch
from tests.conftest import tiny_params_dict, write_params


def test_command_per_strategy():
    ddp = accelerate_command(Launch(launcher="accelerate", num_processes=2), "cpu", "bf16", "stages.adapt", ["--x"])
    assert ddp[1:4] == ["launch", "--num_processes", "2"] and "--multi_gpu" in ddp
    assert ddp[ddp.index("--mixed_precision") + 1] == "no", "no mixed precision on a CPU"
    assert ddp[-3:] == ["-m", "stages.adapt", "--x"]
    fsdp = accelerate_command(
        Launch(launcher="accelerate", num_processes=8, strategy="fsdp"), "cuda", "bf16", "stages.align", []
    )
    assert "--use_fsdp" in fsdp and fsdp[fsdp.index("--mixed_precision") + 1] == "bf16"
    with pytest.raises(ProjectError, match="orchestration.launch.strategy"):
        accelerate_command(Launch(launcher="accelerate", strategy="fsdp"), "cpu", "fp32", "stages.adapt", [])


def test_several_processes_need_accelerate():
    with pytest.raises(ValueError, match="launcher: accelerate"):
        Launch(num_processes=2)


def lora_b_norm(folder) -> float:
    from safetensors.torch import load_file

    weights = load_file(str(folder / "adapter_model.safetensors"))
    return sum(float(t.abs().sum()) for k, t in weights.items() if "lora_B" in k)


def test_adapt_trains_in_two_gloo_processes_and_one_writes(prepared, adapted, tiny_root, tmp_path):
    from mlflow import MlflowClient

    p = tiny_params_dict(tiny_root)
    p["paths"].update(sft=str(tmp_path / "models" / "sft"), metrics=str(tmp_path / "metrics"))
    p["orchestration"]["launch"] = {"launcher": "accelerate", "num_processes": 2, "strategy": "ddp"}
    params_file = write_params(tmp_path, p)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(p["project"]["name"])
    runs_before = {r.info.run_id for r in client.search_runs([experiment.experiment_id])} if experiment else set()

    out = subprocess.run(
        [sys.executable, "-m", "stages.adapt", "--params", str(params_file)],
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "accelerate launch --num_processes 2" in out.stdout

    metrics = json.loads((tmp_path / "metrics" / "adapt.json").read_text())
    assert metrics["processes"] == 2 and metrics["global_step"] == p["adapt"]["trainer"]["max_steps"]
    sft = tmp_path / "models" / "sft"
    assert lora_b_norm(sft) > 0, "LoRA B starts at zero: it moved, the adapter trained"
    # One writer: the outputs once, no other process's leftovers beside them, one MLflow run.
    assert sorted(f.name for f in sft.iterdir()) == sorted(f.name for f in (tiny_root / "models" / "sft").iterdir()), (
        "the same files as a one-process adapt"
    )
    assert sorted(f.name for f in (tmp_path / "models").iterdir()) == [".checkpoints", "sft"]
    assert not list((tmp_path / "models" / ".checkpoints").glob("*/checkpoint-*")), "checkpoints removed when done"
    experiment = client.get_experiment_by_name(p["project"]["name"])
    new = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id not in runs_before]
    assert [r.data.tags["lifecycle.stage"] for r in new] == ["adapt"], [r.info.run_name for r in new]
    assert new[0].data.metrics["processes"] == 2
