"""SFT through the `adapt` stage vs a bare TRL script, packing on vs off, and LoRA's size against its formula.

    make bench-adapt                 # the default project's selected model (tiny-m); runs `dvc repro select` first
    python bench/adapt.py --steps 200 --rounds 3

1. Tokens/s of supervised fine-tuning through stages.adapt.train_sft (the stage's rows, renderer, SFTConfig,
   checkpoints, metrics) vs a bare `SFTTrainer` script given the same model, rows and settings. Non-padding tokens
   (SFTTrainer's own count) per second of training; the two alternate, `--rounds` times each, and the medians are
   compared: the stage should cost nothing (ratio >= 0.95).
2. Packing off vs on (`adapt.packing`), through the stage: effective (non-padding) tokens/s each. The faster one
   is the default in params.yaml.
3. LoRA's trainable parameters and adapter bytes next to r * sum(d_in + d_out) over the targeted modules (every
   linear layer but the head): equal parameter counts; bytes = 4 per fp32 parameter + the safetensors header.
4. Each technique that runs on a CPU (lora, prompt_tuning, full) through the stage, each in its own process (peak
   memory is the process's peak resident set): trainable share, output bytes, tokens/s, peak memory, final loss.
On a shared 2-core machine seconds are noisy: read the ratios, which are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def with_adapt(params, **changes):
    adapt = params.adapt.model_copy(update=changes)
    return params.model_copy(update={"adapt": adapt})


def bare_sft(params, paths, base_ref: str, out: Path) -> float:
    """The same fine-tuning written as one would without the project: SFTTrainer on prompt/completion rows."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from stages.adapt import sft_rows
    from stages.common.io import read_jsonl
    from stages.common.models import load_tokenizer, renderer_for

    p = params.adapt
    tok = load_tokenizer(base_ref)
    model = AutoModelForCausalLM.from_pretrained(base_ref)
    rows = sft_rows(renderer_for(params, tok, model), read_jsonl(Path(paths.processed) / "sft.jsonl"))
    config = SFTConfig(
        output_dir=str(out),
        **p.trainer.model_dump(),
        completion_only_loss=True,
        packing=p.packing,
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        report_to=[],
        seed=params.project.seed,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **p.lora.model_dump()),
    )
    result = trainer.train()
    return trainer._total_train_tokens / result.metrics["train_runtime"]


def stage_sft(params, paths, base_ref: str, tmp: Path) -> dict:
    from stages.adapt import train_sft

    out, ckpt = tmp / "sft", tmp / "ckpt"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(ckpt, ignore_errors=True)
    out.mkdir()
    metrics = train_sft(params, paths.model_copy(update={"metrics": str(tmp / "metrics")}), base_ref, "cpu", out, ckpt)
    adapter = out / "adapter_model.safetensors"
    if adapter.is_file():  # full fine-tuning writes a whole model instead
        metrics["adapter_file_bytes"], metrics["adapter_header_bytes"] = adapter.stat().st_size, header_bytes(adapter)
    return metrics


def lora_formula(base_ref: str, r: int) -> int:
    """r * (d_in + d_out) summed over the linear layers `all-linear` targets (PEFT leaves out the output head)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_ref)
    head = model.get_output_embeddings()
    return sum(
        r * (m.in_features + m.out_features)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    )


def header_bytes(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: a u64 length, then the JSON header


def main() -> None:
    import mlflow
    import torch

    from stages.common.io import read_json
    from stages.common.loader import load_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--technique", help="only train this technique through the stage, print its metrics as JSON")
    args = parser.parse_args()
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro", "-q", "select"], cwd=ROOT, check=True)
    torch.set_num_threads(2)  # training: 2 threads beat 1 on this 2-core machine (measured)
    params = load_params(ROOT / "params.yaml")
    params = with_adapt(
        params,
        raft=params.adapt.raft.model_copy(update={"enabled": False}),
        trainer=params.adapt.trainer.model_copy(update={"max_steps": args.steps, "save_steps": 10**6}),
    )
    paths = params.paths.model_copy(update={k: str(ROOT / v) for k, v in params.paths.model_dump().items()})
    base_ref = str(ROOT / read_json(paths.selection)["selected"]["ref"])
    mlflow.set_tracking_uri(f"sqlite:///{tempfile.mkdtemp()}/bench.db")  # the stage reports to MLflow; not to ours
    if args.technique:
        from stages.common.params import Technique

        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
            metrics = stage_sft(with_adapt(params, technique=Technique(args.technique)), paths, base_ref, Path(tmp))
        print(json.dumps(metrics))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stage, bare, packed = [], [], []
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}", flush=True)
            with mlflow.start_run():
                unpacked = stage_sft(params, paths, base_ref, tmp)
            stage.append(unpacked["tokens_per_second"])
            bare.append(bare_sft(params, paths, base_ref, tmp / "bare"))
            with mlflow.start_run():
                packed.append(stage_sft(with_adapt(params, packing=True), paths, base_ref, tmp)["tokens_per_second"])
        s, b, pk = statistics.median(stage), statistics.median(bare), statistics.median(packed)
        r = params.adapt.lora.r
        formula = lora_formula(base_ref, r)
    print(
        f"\nmodel {read_json(paths.selection)['selected']['name']}, {args.steps} steps x batch "
        f"{params.adapt.trainer.per_device_train_batch_size}, LoRA r {r}, CPU, {args.rounds} rounds (medians)"
    )
    print(
        f"1. SFT non-padding tokens/s: adapt stage {s:,.0f}, bare SFTTrainer {b:,.0f}; stage/bare {s / b:.3f} "
        f"(target >= 0.95)  [rounds: stage {[round(x) for x in stage]}, bare {[round(x) for x in bare]}]"
    )
    print(
        f"2. effective tokens/s: packing off {s:,.0f}, on {pk:,.0f}; on/off {pk / s:.3f} -> default "
        f"`adapt.packing: {str(pk > s).lower()}`  [on: {[round(x) for x in packed]}]"
    )
    print(
        f"3. LoRA trainable parameters: stage {unpacked['trainable_parameters']:,}, formula r*sum(d_in+d_out) "
        f"{formula:,}: {'equal' if unpacked['trainable_parameters'] == formula else 'DIFFERENT'}"
    )
    techniques = {}
    for technique in ("lora", "prompt_tuning", "full"):
        out = subprocess.run(
            [sys.executable, __file__, "--steps", str(args.steps), "--technique", technique],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        techniques[technique] = json.loads(out.strip().splitlines()[-1])
    data = unpacked["adapter_file_bytes"] - unpacked["adapter_header_bytes"]
    print(
        f"   adapter file {unpacked['adapter_file_bytes']:,} bytes = header {unpacked['adapter_header_bytes']:,} + "
        f"tensors {data:,}; 4 bytes (fp32) x formula = {4 * formula:,}: {'equal' if data == 4 * formula else 'DIFFERENT'}"
    )
    print(
        f"4. {'technique':<14}{'trainable':>12}{'share':>9}{'output bytes':>14}{'tokens/s':>10}{'peak RSS MiB':>14}"
        f"{'last loss':>11}"
    )
    for name, m in techniques.items():
        print(
            f"   {name:<14}{m['trainable_parameters']:>12,}{m['trainable_percent']:>8}%{m['output_bytes']:>14,}"
            f"{m['tokens_per_second']:>10,.0f}{m['peak_memory_mib']:>14,.0f}{m['last_logged_loss']:>11}"
        )

    from report import command_line, markdown_table, write_section

    rows = [
        [
            f"`{name}`",
            f"{m['trainable_parameters']:,}",
            f"{m['trainable_percent']} %",
            f"{m['output_bytes']:,}",
            f"{m['tokens_per_second']:,.0f}",
            f"{m['peak_memory_mib']:,.0f}",
            m["last_logged_loss"],
        ]
        for name, m in techniques.items()
    ]
    write_section(
        "adapt",
        command_line("bench-adapt"),
        f"The selected model `{read_json(paths.selection)['selected']['name']}`, {args.steps} steps x batch "
        f"{params.adapt.trainer.per_device_train_batch_size}, LoRA r {r}, CPU, fp32; {args.rounds} alternating rounds, "
        "medians.\n\n"
        f"- SFT through the `adapt` stage vs a bare `SFTTrainer` script (same model, rows and settings), non-padding "
        f"tokens/s: {s:,.0f} vs {b:,.0f}, **{s / b:.3f}x** (target 0.95).\n"
        f"- Packing (`adapt.packing`) on vs off, effective tokens/s: {pk:,.0f} vs {s:,.0f}, **{pk / s:.2f}x** "
        f"(the faster is the default: `adapt.packing: {str(pk > s).lower()}`).\n"
        f"- LoRA's trainable parameters: {unpacked['trainable_parameters']:,}, r x sum(d_in + d_out) = {formula:,} "
        f"({'equal' if unpacked['trainable_parameters'] == formula else 'DIFFERENT'}); adapter file "
        f"{unpacked['adapter_file_bytes']:,} bytes = header {unpacked['adapter_header_bytes']:,} + tensors {data:,} "
        f"({'equal to' if data == 4 * formula else 'DIFFERENT from'} 4 bytes x the formula).\n\n"
        "Each technique that runs on a CPU, through the stage, in its own process:\n\n"
        + markdown_table(
            ["technique", "trainable", "share", "output bytes", "tokens/s", "peak RSS (MiB)", "last loss"], rows
        ),
        title="Adapt: the stage against bare TRL, packing, LoRA's size, the CPU techniques",
    )


if __name__ == "__main__":
    main()
