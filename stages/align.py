"""align: preference tuning on top of the SFT model, one DVC stage per `align.methods` entry.

    python -m stages.align --method dpo     # writes models/aligned/dpo/ (a full model folder, SFT + the method merged)
    python -m stages.align --method rlhf    # RLOO or GRPO against models/reward/ (+ the rule rewards in params)

The SFT adapter is merged into the base first and each method trains a fresh LoRA adapter on that; with the adapter
disabled the model *is* the SFT model, so the reference (DPO's, and the KL anchor of RLOO/GRPO) costs no second copy
in memory and the policy is anchored to what SFT learned (not to the raw base). The result is merged again so
evaluate and package load one plain folder. A killed run resumes from its last checkpoint (models/.checkpoints/).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from stages.common.cli import stage_main
from stages.common.errors import ProjectError
from stages.common.io import atomic_dir, read_json, read_jsonl, write_csv, write_json
from stages.common.launch import is_main_process, output_dir
from stages.common.params import AlignMethod, Params, Paths, Precision, RuleRewards
from stages.common.training import preference_rows, sft_model, train_resumable

log = logging.getLogger(__name__)

CURVE_FIELDS = ["step", "loss", "reward", "kl"]


def checkpoint_dir(params: Params, paths: Paths, method: str) -> Path:
    """Unique per configuration, SFT model and pairs: resuming is only safe with the same start and settings."""
    import hashlib

    from stages.common.tracking import sha256

    weights = sorted(Path(paths.sft).glob("*.safetensors"))
    key = json.dumps(
        {
            "align": getattr(params.align, method).model_dump(mode="json"),
            "precision": params.align.precision.value,
            "lora": params.adapt.lora.model_dump(mode="json"),
            "prompt": params.prompt.model_dump(mode="json"),
            "sft": [sha256(w) for w in weights],
            "seed": params.project.seed,
            "pairs": sha256(Path(paths.processed) / "preference.jsonl"),
        },
        sort_keys=True,
    )
    return (
        Path(paths.aligned).parent / ".checkpoints" / f"align-{method}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    )


def training_args(params: Params, trainer, ckpt: Path, device: str, drop: tuple = ()) -> dict:
    """What every TRL config of this stage shares: the project's trainer settings, precision, checkpoints."""
    return {
        "output_dir": str(ckpt),
        **{k: v for k, v in trainer.model_dump().items() if k not in drop},
        "bf16": params.align.precision is Precision.bf16,
        "fp16": params.align.precision is Precision.fp16,
        "use_cpu": device == "cpu",
        "save_strategy": "steps",
        "save_total_limit": 1,
        "report_to": ["mlflow"],
        "seed": params.project.seed,
        "disable_tqdm": False,
    }


def train_dpo(params: Params, paths: Paths, device: str, out: Path, ckpt: Path) -> tuple[dict, list[dict]]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from stages.common.models import renderer_for

    p = params.align.dpo
    model, tok = sft_model(paths, params.align.precision.value)
    renderer = renderer_for(params, tok, model, max_new_tokens=0)
    train = Dataset.from_list(preference_rows(renderer, read_jsonl(Path(paths.processed) / "preference.jsonl")))
    config = DPOConfig(**training_args(params, p.trainer, ckpt, device), beta=p.beta)
    trainer, result, resumed = fit_lora(DPOTrainer, params, model, tok, config, train, ckpt, out, ref_model=None)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    curve = [
        {"step": h["step"], "loss": round(h["loss"], 5), "reward": round(h["rewards/margins"], 5)}
        for h in logs
        if "rewards/margins" in h
    ]
    first, last = (logs[0], logs[-1]) if logs else ({}, {})
    return {
        "train_loss": round(result.training_loss, 4),
        "train_seconds": round(result.metrics["train_runtime"], 1),
        "first_reward_accuracy": first.get("rewards/accuracies"),
        "last_reward_accuracy": last.get("rewards/accuracies"),
        "first_reward_margin": first.get("rewards/margins"),
        "last_reward_margin": last.get("rewards/margins"),
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed,
    }, curve


def fit_lora(Trainer, params: Params, model, tok, config, train, ckpt: Path, out: Path, **kwargs):
    """A LoRA on the SFT model trained by a TRL trainer class (DPO, RLOO, GRPO), resumed from its checkpoint when
    one is there, and saved merged into `out`. Returns (trainer, train result, step resumed from)."""
    from peft import LoraConfig

    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=train,
        processing_class=tok,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **params.adapt.lora.model_dump()),
        **kwargs,
    )
    result, resumed = train_resumable(trainer, ckpt)
    save_merged(trainer, tok, out)
    return trainer, result, resumed


def save_merged(trainer, tok, out: Path) -> None:
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out)
    tok.save_pretrained(out)


def rule_reward(rules: RuleRewards, answer: str) -> float:
    """The rule rewards of one answer: each broken rule costs up to 1 (0 = every rule kept)."""
    penalty = 0.0
    if rules.max_words:
        over = len(answer.split()) - rules.max_words
        penalty += min(1.0, max(0, over) / rules.max_words)
    if rules.format and not re.fullmatch(rules.format, answer.strip(), flags=re.DOTALL):
        penalty += 1.0
    if any(t.lower() in answer.lower() for t in rules.forbidden_terms):
        penalty += 1.0
    return -penalty


def reward_functions(params: Params, paths: Paths, renderer, device: str) -> tuple[list, list[float], dict]:
    """TRL reward functions: the reward model's score of what the user would see (the completion cut at the stop
    sequences, as the server cuts it), and the rule rewards. Returns (functions, weights, the reward model card)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from stages.common.models import load_tokenizer

    card = read_json(Path(paths.reward) / "lifecycle.json")
    if not card.get("trained"):
        raise ProjectError(
            [
                f"`align.methods` lists rlhf but {paths.reward} holds no reward model "
                f"({card.get('why') or card.get('not_reached')}): the reward stage trains one from "
                "`data.sources.preference` on a tuned model"
            ]
        )
    rm = AutoModelForSequenceClassification.from_pretrained(paths.reward).to(device).eval()
    rm_tok = load_tokenizer(paths.reward)
    rm_tok.padding_side = "right"

    def reward_model(prompts, completions, record, **_) -> list[float]:
        # Formatted as the reward model was trained: the prompt, then the answer as `renderer.completion` renders it.
        texts = [
            p + renderer.completion(json.loads(r), renderer.cut(c))
            for p, c, r in zip(prompts, completions, record, strict=True)
        ]
        batch = rm_tok(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=params.align.rlhf.reward_model.trainer.max_length,
        ).to(device)
        with torch.no_grad():
            return rm(**batch).logits[:, 0].float().tolist()

    rules = params.align.rlhf.rules

    def rules_reward(completions, **_) -> list[float]:
        return [rule_reward(rules, renderer.cut(c)) for c in completions]

    if rules.any:
        return [reward_model, rules_reward], [1.0, rules.weight], card
    return [reward_model], [1.0], card


def train_rlhf(params: Params, paths: Paths, device: str, out: Path, ckpt: Path) -> tuple[dict, list[dict]]:
    import mlflow
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from stages.common.models import render_all, renderer_for

    p = params.align.rlhf
    model, tok = sft_model(paths, params.align.precision.value)
    renderer = renderer_for(params, tok, model, max_new_tokens=0)
    functions, weights, card = reward_functions(params, paths, renderer, device)
    if is_main_process():
        mlflow.set_tags({"lifecycle.reward_model": f"{card['registered_model']} v{card['version']}"})
        mlflow.log_params(
            {"reward_model.registered_model": card["registered_model"], "reward_model.version": card["version"]}
        )
    rows = read_jsonl(Path(paths.processed) / "preference.jsonl")
    prompts = render_all(renderer, rows, "preference", examples=[], max_new_tokens=p.max_completion_length)
    # `record`: TRL hands every other column to the reward functions, which render the answer with it.
    train = Dataset.from_list([{"prompt": q, "record": json.dumps(r)} for q, r in zip(prompts, rows, strict=True)])
    Config, Trainer = {"rloo": (RLOOConfig, RLOOTrainer), "grpo": (GRPOConfig, GRPOTrainer)}[p.optimizer]
    config = Config(
        **training_args(params, p.trainer, ckpt, device, drop=("max_length",)),
        beta=p.beta,
        num_generations=p.num_generations,
        max_completion_length=p.max_completion_length,
        temperature=p.temperature,
        reward_weights=weights,
        log_completions=False,
    )
    trainer, result, resumed = fit_lora(Trainer, params, model, tok, config, train, ckpt, out, reward_funcs=functions)
    logs = [h for h in trainer.state.log_history if "rewards/reward_model/mean" in h]
    curve = [
        {
            "step": h["step"],
            "loss": round(h.get("loss", float("nan")), 5),
            "reward": round(h["rewards/reward_model/mean"], 5),
            "kl": round(h.get("kl", float("nan")), 5),
        }
        for h in logs
    ]
    first, last = (logs[0], logs[-1]) if logs else ({}, {})
    third = max(1, len(curve) // 3)  # one step's few samples are noisy: the first and last third of the curve
    return {
        "optimizer": p.optimizer,
        "reward_model_mean_first_third": round(sum(c["reward"] for c in curve[:third]) / third, 4) if curve else None,
        "reward_model_mean_last_third": round(sum(c["reward"] for c in curve[-third:]) / third, 4) if curve else None,
        "train_loss": round(result.training_loss, 4),
        "train_seconds": round(result.metrics["train_runtime"], 1),
        "first_reward_model_mean": first.get("rewards/reward_model/mean"),
        "last_reward_model_mean": last.get("rewards/reward_model/mean"),
        "first_total_reward": first.get("reward"),
        "last_total_reward": last.get("reward"),
        "last_kl": last.get("kl"),
        "reward_model": f"{card['registered_model']} v{card['version']}",
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed,
    }, curve


TRAINERS = {AlignMethod.dpo: train_dpo, AlignMethod.rlhf: train_rlhf}


def run(params: Params, paths: Paths, method: str) -> dict:
    from stages.common.models import resolve_device
    from stages.common.tracking import log_splits, stage_run

    method = AlignMethod(method)
    if method not in params.align.methods:
        raise ProjectError(
            [
                f"`align.methods` {[m.value for m in params.align.methods]} does not list {method.value}: "
                "add it there (dvc.yaml makes one align@<method> stage per entry)"
            ]
        )
    device = resolve_device(params.project.device)
    section = {
        "method": method.value,
        "precision": params.align.precision.value,
        **getattr(params.align, method.value).model_dump(mode="json"),
    }
    ckpt = checkpoint_dir(params, paths, method.value)
    with stage_run(f"align@{method.value}", params, section) as _:
        import mlflow

        log_splits(paths.processed, ["preference"])
        with output_dir(Path(paths.aligned) / method.value) as out:
            metrics, curve = TRAINERS[method](params, paths, device, out, ckpt)
            metrics["trained"] = True
            write_json(out / "lifecycle.json", {"method": method.value, "model": True})
        if is_main_process():  # under `accelerate launch`, the others train in step and write nothing
            shutil.rmtree(ckpt, ignore_errors=True)  # done: the model is the result, checkpoints are not
            write_csv(Path(paths.metrics) / f"align_{method.value}_curve.csv", curve, CURVE_FIELDS)
            write_json(Path(paths.metrics) / f"align_{method.value}.json", metrics)
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    return {"metrics": metrics, "summary": f"{method.value}: " + ", ".join(f"{k} {v}" for k, v in metrics.items())}


def not_reached(params: Params, paths: Paths, why: str) -> None:
    """The escalation ladder did not (yet) climb to alignment: each method's outputs say so (see adapt.not_reached)."""
    for method in params.align.methods:
        with atomic_dir(Path(paths.aligned) / method.value) as out:
            write_json(out / "lifecycle.json", {"method": method.value, "model": False, "not_reached": why})
        write_json(Path(paths.metrics) / f"align_{method.value}.json", {"trained": False, "not_reached": why})
        write_csv(Path(paths.metrics) / f"align_{method.value}_curve.csv", [], CURVE_FIELDS)


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        "align", run, argv, method=[m.value for m in AlignMethod], precision=lambda params: params.align.precision.value
    )


if __name__ == "__main__":
    raise SystemExit(main())
