"""What the training stages (adapt, reward, align) share: resuming after a kill, and peak memory."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

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
        int(latest.name.split("-")[1]) if latest else 0)


def peak_memory(device: str) -> tuple[float, str]:
    """(MiB, what was measured): CUDA's peak allocated memory, or on a CPU the process's peak resident set."""
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"
