"""Training across processes: `adapt` and `align` start through `accelerate launch` when params say so.

    orchestration:
      launch: {launcher: accelerate, num_processes: 2, strategy: ddp}

`python -m stages.adapt` (what dvc.yaml runs) then starts `accelerate launch --num_processes 2 ... -m
stages.adapt` and returns its exit status; each launched process trains its shard of every batch (DDP: NCCL
on GPUs, gloo on a CPU), and only the main process writes the stage's outputs, its metrics and its MLflow run.
FSDP and DeepSpeed ZeRO shard the model itself across GPUs (CUDA only).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from stages.common.errors import ProjectError
from stages.common.io import atomic_dir


def launched() -> bool:
    """This process was started by a distributed launcher (accelerate / torchrun set LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    """The process that writes outputs: rank 0, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def output_dir(path: str | Path):
    """The stage's output folder in the main process (written atomically); a throwaway folder in the others,
    which train in step with it and would otherwise write the same files."""
    if is_main_process():
        with atomic_dir(path) as out:
            yield out
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"rank{os.environ.get('RANK')}-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def accelerate_command(launch, device: str, precision: str, module: str, argv: list[str]) -> list[str]:
    """The `accelerate launch` command line for params `orchestration.launch`; ProjectError for a strategy this
    machine cannot run."""
    if launch.strategy != "ddp" and device != "cuda":
        raise ProjectError(
            [
                f"`orchestration.launch.strategy` {launch.strategy} shards the model across GPUs and "
                f"needs CUDA (device here: {device}); use ddp"
            ]
        )
    if launch.strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ProjectError(
                [
                    "`orchestration.launch.strategy` deepspeed needs the deepspeed package "
                    "(`pip install deepspeed`), or use fsdp"
                ]
            )
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    command = [
        accelerate,
        "launch",
        "--num_processes",
        str(launch.num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        precision if device == "cuda" and precision in ("bf16", "fp16") else "no",
        "--dynamo_backend",
        "no",
    ]
    if launch.strategy == "ddp":
        command.append("--multi_gpu")  # torchrun's launcher; on a CPU the Trainer picks gloo (use_cpu)
    elif launch.strategy == "fsdp":
        command += [
            "--use_fsdp",
            "--fsdp_version",
            "2",
            "--fsdp_auto_wrap_policy",
            "TRANSFORMER_BASED_WRAP",
            "--fsdp_state_dict_type",
            "FULL_STATE_DICT",
        ]  # a whole model to save, not shards
    else:
        command += ["--use_deepspeed", "--zero_stage", str(launch.zero_stage)]
    return command + ["-m", module, *argv]
