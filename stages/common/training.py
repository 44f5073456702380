"""What the training stages (adapt, reward, align) share: the SFT model to start from, the preference pairs as
the model sees them, resuming after a kill, and peak memory."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from stages.common.io import read_json
from stages.common.params import Paths

log = logging.getLogger(__name__)


def train_resumable(trainer, ckpt: Path) -> tuple:
    """trainer.train(), from the newest complete checkpoint when a killed run left one. Returns (result, the step
    it resumed from, 0 for a fresh start). transformers writes a checkpoint in place, `trainer_state.json` last: a
    run killed mid-save leaves one without it, which is removed rather than resumed from."""
    complete = []
    for folder in ckpt.glob("checkpoint-*"):
        if (folder / "trainer_state.json").is_file():
            complete.append(folder)
        else:
            log.warning("removing %s: a checkpoint the killed run did not finish writing", folder)
            shutil.rmtree(folder, ignore_errors=True)
    latest = max(complete, key=lambda d: int(d.name.split("-")[1]), default=None)
    if latest:
        log.info("resuming from %s", latest)
    return trainer.train(resume_from_checkpoint=str(latest) if latest else None), (
        int(latest.name.split("-")[1]) if latest else 0
    )


def peak_memory(device: str) -> tuple[float, str]:
    """(MiB, what was measured): CUDA's peak allocated memory, or on a CPU the process's peak resident set."""
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"


def sft_model(paths: Paths, precision: str):
    """(model, tokenizer): the adapted model as one plain model, the base with the SFT adapter merged (or the base
    alone), and the tokenizer saved with it."""
    from stages.common.models import load_model, load_tokenizer

    info = read_json(Path(paths.sft) / "lifecycle.json")
    if info["technique"] == "prompt_tuning":  # a soft prompt cannot be merged into the weights: start from the base
        log.info("adapt trained a soft prompt, which cannot be merged into the weights: starting from the base")
        return load_model(info["base"], "cpu", precision), load_tokenizer(info["base"])
    if info["adapter"]:
        model = load_model(info["base"], "cpu", precision, adapter=paths.sft).merge_and_unload()
    elif info["trained"]:  # full fine-tuning: the folder is the model
        model = load_model(paths.sft, "cpu", precision)
    else:
        return load_model(info["base"], "cpu", precision), load_tokenizer(info["base"])
    return model, load_tokenizer(paths.sft)


def preference_rows(renderer, rows: list[dict]) -> list[dict]:
    """prompt / chosen / rejected as the model sees them: the prompt rendered, the answers as training renders them."""
    from stages.common.models import render_all

    prompts = render_all(renderer, rows, "preference", examples=[], max_new_tokens=0)
    return [
        {
            "prompt": prompt,
            "chosen": renderer.completion(r, r["chosen"]),
            "rejected": renderer.completion(r, r["rejected"]),
        }
        for prompt, r in zip(prompts, rows, strict=True)
    ]
