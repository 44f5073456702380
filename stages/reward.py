"""reward: the reward model, the SFT model with a scalar head trained on the preference pairs (TRL RewardTrainer).

    python -m stages.reward         # writes models/reward/ (a sequence-classification model) + metrics/reward.json

It is trained whenever the project has preference pairs: its pairwise accuracy on held-out pairs (next to chance,
0.5) says whether the preferences carry a signal a model can learn, which DPO needs as much as RLHF does; `align@rlhf`
then optimises the policy against it. Each trained reward model is registered in MLflow (`<project>-reward`), and
the RLHF policy records the version it was optimised against.
"""

from __future__ import annotations

import logging
import random
import tempfile
from pathlib import Path

from stages.common.cli import stage_main
from stages.common.errors import ProjectError
from stages.common.io import atomic_dir, read_json, read_jsonl, write_csv, write_json
from stages.common.params import Params, Paths, Precision
from stages.common.training import preference_rows, sft_model

log = logging.getLogger(__name__)

CARD = "lifecycle.json"
CHANCE = 0.5  # a reward model that ranks a pair at random is right half the time


def split(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): a seeded shuffle, at least one pair held out."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)  # noqa: S311 - seeded sampling, not security
    n = max(1, round(len(rows) * fraction))
    return [rows[i] for i in order[n:]], [rows[i] for i in order[:n]]


def train_reward_model(params: Params, paths: Paths, device: str, out: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardConfig, RewardTrainer

    from stages.common.models import renderer_for, torch_dtype

    p = params.align.rlhf.reward_model
    precision = params.align.precision
    policy, tok = sft_model(paths, precision.value)
    renderer = renderer_for(params, tok, policy, max_new_tokens=0)
    rows = preference_rows(renderer, read_jsonl(Path(paths.processed) / "preference.jsonl"))
    train, held_out = split(rows, p.eval_fraction, params.project.seed)
    set_seed(params.project.seed)  # the new scalar head's random start: the same reward model every run
    with tempfile.TemporaryDirectory() as tmp:  # the SFT model as one folder, loaded again with a scalar head
        policy.save_pretrained(tmp)
        model = AutoModelForSequenceClassification.from_pretrained(
            tmp, num_labels=1, dtype=torch_dtype(precision.value)
        )
    model.config.pad_token_id = tok.pad_token_id
    del policy
    config = RewardConfig(
        output_dir=str(Path(paths.reward).parent / ".checkpoints" / "reward"),
        **p.trainer.model_dump(),
        bf16=precision is Precision.bf16,
        fp16=precision is Precision.fp16,
        use_cpu=device == "cpu",
        save_strategy="no",
        eval_strategy="no",
        report_to=["mlflow"],
        seed=params.project.seed,
        disable_tqdm=False,
    )
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(held_out),
        processing_class=tok,
    )
    used = len(trainer.train_dataset)  # RewardTrainer drops pairs longer than max_length
    if used < len(train):
        log.warning(
            "%d of %d training pairs are longer than align.rlhf.reward_model.trainer.max_length %d and were left out",
            len(train) - used,
            len(train),
            p.trainer.max_length,
        )
    if not used:
        raise ProjectError(
            [
                f"`align.rlhf.reward_model.trainer.max_length` {p.trainer.max_length}: every preference "
                "pair is longer, so none is left to train on; raise it"
            ]
        )
    trainer.evaluate()  # RewardTrainer adds its accuracy and margin to the logged metrics, not the returned ones
    before = trainer.state.log_history[-1]
    result = trainer.train()
    trainer.evaluate()
    after = trainer.state.log_history[-1]
    trainer.model.save_pretrained(out)
    tok.save_pretrained(out)
    curve = [
        {"step": h["step"], "loss": round(h["loss"], 5), "accuracy": round(h["accuracy"], 4)}
        for h in trainer.state.log_history
        if "loss" in h and "accuracy" in h
    ]  # training batches
    write_csv(Path(paths.metrics) / "reward_curve.csv", curve, ["step", "loss", "accuracy"])
    return {
        "heldout_accuracy": round(after["eval_accuracy"], 4),
        "heldout_accuracy_untrained": round(before["eval_accuracy"], 4),
        "chance_accuracy": CHANCE,
        "heldout_margin": round(after["eval_margin"], 4),
        "heldout_pairs": len(held_out),
        "train_pairs": used,
        "train_pairs_too_long": len(train) - used,
        "train_loss": round(result.training_loss, 4),
        "train_seconds": round(result.metrics["train_runtime"], 1),
    }


def register(params: Params, out: Path, metrics: dict) -> dict:
    """The reward model as its own registered MLflow model, `<project>-reward`: the policy names the version."""
    import mlflow
    from huggingface_hub import ModelCard
    from mlflow import MlflowClient
    from transformers import AutoModelForSequenceClassification

    from stages.common.models import load_tokenizer
    from stages.common.registry import SERVING_PACKAGES, TORCH_PACKAGES, pinned

    name = f"{params.project.name}-reward"
    card = ModelCard(
        f"---\nlicense: {params.scope.licences[0]}\n---\n# {name}\n\nReward model of "
        f"{params.project.name}: held-out pairwise accuracy {metrics['heldout_accuracy']} "
        f"(chance {CHANCE}).\n"
    )
    info = mlflow.transformers.log_model(
        model_card=card,
        transformers_model={
            "model": AutoModelForSequenceClassification.from_pretrained(out),
            "tokenizer": load_tokenizer(str(out)),
        },
        name="reward_model",
        task="text-classification",
        pip_requirements=pinned(SERVING_PACKAGES + TORCH_PACKAGES),
        registered_model_name=name,
    )
    version = int(info.registered_model_version)
    client = MlflowClient()
    for k in ("heldout_accuracy", "chance_accuracy", "heldout_pairs"):
        client.set_model_version_tag(name, str(version), f"reward.{k}", str(metrics[k]))
    return {"registered_model": name, "version": version}


def run(params: Params, paths: Paths) -> dict:
    from stages.common.models import resolve_device
    from stages.common.tracking import log_splits, stage_run

    device = resolve_device(params.project.device)
    has_pairs = (Path(paths.processed) / "preference.jsonl").is_file() and params.data.sources.preference is not None
    sft_trained = read_json(Path(paths.sft) / "lifecycle.json")["trained"]
    with stage_run("reward", params, params.align.rlhf.reward_model.model_dump(mode="json")) as _:
        import mlflow

        with atomic_dir(paths.reward) as out:
            if has_pairs and sft_trained:
                log_splits(paths.processed, ["preference"])
                metrics = {**train_reward_model(params, paths, device, out), "trained": True}
                mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
                card = {
                    "trained": True,
                    **register(params, out, metrics),
                    "heldout_accuracy": metrics["heldout_accuracy"],
                }
            else:
                why = "no preference pairs" if not has_pairs else "no tuned model to start from"
                metrics, card = {"trained": False, "why": why}, {"trained": False, "why": why}
                write_csv(Path(paths.metrics) / "reward_curve.csv", [], ["step", "loss", "accuracy"])
            write_json(out / CARD, card)
        write_json(Path(paths.metrics) / "reward.json", metrics)
    summary = (
        f"held-out pairwise accuracy {metrics['heldout_accuracy']} (chance {CHANCE}, untrained "
        f"{metrics['heldout_accuracy_untrained']}), MLflow {card['registered_model']} v{card['version']}"
        if metrics["trained"]
        else f"not trained: {metrics['why']}"
    )
    return {"metrics": metrics, "summary": summary}


def not_reached(params: Params, paths: Paths, why: str) -> None:
    """The escalation ladder did not (yet) climb to alignment (see adapt.not_reached)."""
    with atomic_dir(paths.reward) as out:
        write_json(out / CARD, {"trained": False, "not_reached": why})
    write_json(Path(paths.metrics) / "reward.json", {"trained": False, "not_reached": why})
    write_csv(Path(paths.metrics) / "reward_curve.csv", [], ["step", "loss", "accuracy"])


def main(argv: list[str] | None = None) -> int:
    return stage_main("reward", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
