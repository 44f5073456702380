"""align: preference tuning with TRL DPO on top of the SFT model.

    python -m stages.align          # writes models/aligned/ (a full model folder, SFT + DPO merged)

The SFT adapter is merged into the base first and DPO trains a fresh LoRA adapter on that; with the adapter
disabled the model *is* the SFT model, so DPO's reference costs no second copy in memory and the policy is
anchored to what SFT learned (not to the raw base). The result is merged again so evaluate and package load
one plain folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stages.common.cli import stage_main
from stages.common.io import atomic_dir, read_json, read_jsonl, write_json, write_loss_curve
from stages.common.params import AlignMethod, Params, Paths, Precision

log = logging.getLogger(__name__)


def sft_model(paths: Paths, precision: str):
    """The adapted model as one plain model: the base with the SFT adapter merged (or the base alone)."""
    from stages.common.models import load_model

    info = read_json(Path(paths.sft) / "lifecycle.json")
    if info["adapter"]:
        return load_model(info["base"], "cpu", precision, adapter=paths.sft).merge_and_unload(), info
    if info["trained"]:  # full fine-tuning: the folder is the model
        return load_model(paths.sft, "cpu", precision), info
    return load_model(info["base"], "cpu", precision), info


def train_dpo(params: Params, paths: Paths, device: str, out: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from stages.common.models import load_tokenizer, render_all, renderer_for

    p = params.align
    model, info = sft_model(paths, p.precision.value)
    tok = load_tokenizer(paths.sft if info["trained"] else info["base"])
    renderer = renderer_for(params, tok, model)
    rows = read_jsonl(Path(paths.processed) / "preference.jsonl")
    prompts = render_all(renderer, rows, "preference", examples=[], max_new_tokens=0)
    train = Dataset.from_list([{"prompt": prompt, "chosen": renderer.completion(r, r["chosen"]),
                                "rejected": renderer.completion(r, r["rejected"])} for prompt, r in zip(prompts, rows)])
    config = DPOConfig(
        output_dir=str(Path(paths.aligned).parent / ".checkpoints" / "align"),
        **p.trainer.model_dump(),
        beta=p.beta,
        bf16=p.precision is Precision.bf16,
        fp16=p.precision is Precision.fp16,
        use_cpu=device == "cpu",
        save_strategy="no",
        report_to=["mlflow"],
        seed=params.project.seed,
    )
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=train, processing_class=tok,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", **params.adapt.lora.model_dump()))
    result = trainer.train()
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    write_loss_curve(Path(paths.metrics) / "align_loss.csv", trainer.state.log_history)
    first, last = (logs[0], logs[-1]) if logs else ({}, {})
    return {
        "train_loss": round(result.training_loss, 4),
        "train_seconds": round(result.metrics["train_runtime"], 1),
        "first_reward_accuracy": first.get("rewards/accuracies"),
        "last_reward_accuracy": last.get("rewards/accuracies"),
        "last_reward_margin": last.get("rewards/margins"),
    }


def run(params: Params, paths: Paths) -> dict:
    from stages.common.models import resolve_device
    from stages.common.tracking import stage_run

    device = resolve_device(params.project.device)
    with stage_run("align", params, params.align.model_dump(mode="json")) as _, atomic_dir(paths.aligned) as out:
        import mlflow

        if params.align.method is AlignMethod.none:
            metrics = {"trained": False}
            write_loss_curve(Path(paths.metrics) / "align_loss.csv", [])
        else:
            metrics = {**train_dpo(params, paths, device, out), "trained": True}
        write_json(out / "lifecycle.json", {"method": params.align.method.value, "model": metrics["trained"]})
        write_json(Path(paths.metrics) / "align.json", metrics)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    return {"metrics": metrics, "summary": f"{params.align.method.value}: "
                                           + ", ".join(f"{k} {v}" for k, v in metrics.items())}


def not_reached(params: Params, paths: Paths, why: str) -> None:
    """The escalation ladder did not (yet) climb to alignment: outputs that say so (see adapt.not_reached)."""
    with atomic_dir(paths.aligned) as out:
        write_json(out / "lifecycle.json", {"method": params.align.method.value, "model": False, "not_reached": why})
    write_json(Path(paths.metrics) / "align.json", {"trained": False, "not_reached": why})
    write_loss_curve(Path(paths.metrics) / "align_loss.csv", [])


def main(argv: list[str] | None = None) -> int:
    return stage_main("align", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
