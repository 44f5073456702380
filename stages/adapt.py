"""adapt: the fine-tuning rung, supervised fine-tuning with TRL SFTTrainer: PEFT LoRA, QLoRA (4-bit base, CUDA),
prompt tuning (a soft prompt), or full fine-tuning.

    python -m stages.adapt          # writes models/sft/ (the adapter or soft prompt, or the full model)
    dvc exp run -S adapt.lora.r=16  # try another rank; only adapt and what follows re-run

SFT trains on prompt/completion pairs, the loss on the completion only. With `adapt.raft`, each question is
trained with retrieved chunks in its prompt, its source chunk among distractors (RAFT, see `raft_rows`), so the
model learns to answer from the right passage: its `sft_rag` variant is evaluated with retrieval. A killed run
resumes from its last checkpoint (kept under models/.checkpoints/, keyed by the configuration so a changed config
never resumes a stale one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from stages.common.cli import stage_main
from stages.common.errors import ProjectError
from stages.common.io import atomic_dir, read_json, read_jsonl, write_json, write_loss_curve
from stages.common.launch import is_main_process, output_dir
from stages.common.params import ADAPTERS, Params, Paths, Precision, Technique
from stages.common.training import peak_memory, train_resumable

log = logging.getLogger(__name__)


def sft_rows(renderer, rows: list[dict]) -> list[dict]:
    """Prompt/completion strings exactly as the renderer makes them (the model answers zero-shot after SFT);
    SFTTrainer puts the loss on the completion only."""
    from stages.common.models import render_all

    prompts = render_all(renderer, rows, "sft", examples=[], max_new_tokens=0)
    return [{"prompt": p, "completion": renderer.completion(r)} for p, r in zip(prompts, rows, strict=True)]


def raft_rows(rows: list[dict], retriever, oracle_fraction: float, seed: int) -> list[dict]:
    """RAFT: each row with `top_k` chunks as `context`. A row naming its `source` gets that section's chunk (the one
    holding its answer, else the first) among the best-ranked other chunks (distractors) in a random position, or,
    in a 1 - oracle_fraction share, distractors only; a row without a known source gets what the index retrieves,
    as a served question does. `oracle` says which it was (None: no known source)."""
    import random

    rng = random.Random(seed)  # noqa: S311 - seeded sampling, not security
    k = retriever.top_k
    by_source: dict[str, list[dict]] = {}
    for c in retriever.chunks.values():
        for key in {c.get("section"), c.get("title")} - {None}:
            by_source.setdefault(key, []).append(c)
    # The whole fused ranking (CANDIDATES deep): a long source section can fill the first places by itself.
    found = retriever.rankings([r["prompt"] for r in rows])[retriever.search_kind]
    out = []
    for row, ids in zip(rows, found, strict=True):
        ranked = [retriever.chunks[i] for i in ids]
        sources = by_source.get(row.get("source") or "")
        if not sources:
            out.append({**row, "context": [c["text"] for c in ranked[:k]], "oracle": None})
            continue
        answer = row.get("completion", "")
        oracle = next((c for c in sources if answer and answer in " ".join(c["text"].split())), sources[0])
        distractors = [c for c in ranked if c["id"] not in {s["id"] for s in sources}]
        with_oracle = rng.random() < oracle_fraction
        context = distractors[: k - 1] if with_oracle else distractors[:k]
        if with_oracle:
            context.insert(rng.randrange(len(context) + 1), oracle)
        out.append({**row, "context": [c["text"] for c in context], "oracle": with_oracle})
    return out


def check_lengths(renderer, rows: list[dict], max_length: int, raft: bool) -> None:
    """A row longer than the trainer's max_length loses the end of its answer to truncation. With RAFT (the
    retrieved chunks make every row long) that is an error naming the numbers; otherwise a warning (the data stage's
    `data.max_length` is the row gate, counted in another tokenizer)."""
    lengths = [renderer.count(r["prompt"] + r["completion"]) for r in rows]
    over = sum(n > max_length for n in lengths)
    if over and raft:
        raise ProjectError(
            [
                f"`adapt.trainer.max_length` {max_length}: {over} RAFT training rows are longer, the "
                f"longest {max(lengths)} tokens with its retrieved chunks, so their answers would be cut "
                f"off: raise max_length to at least {max(lengths)}, or lower integrate.top_k or "
                "integrate.chunk_tokens"
            ]
        )
    if over:
        log.warning(
            "%d training rows are longer than adapt.trainer.max_length %d (the longest %d tokens): their "
            "answers are truncated",
            over,
            max_length,
            max(lengths),
        )


def sft_config(params: Params, output_dir: Path, device: str):
    from trl import SFTConfig

    p = params.adapt
    return SFTConfig(
        output_dir=str(output_dir),
        **p.trainer.model_dump(),
        completion_only_loss=True,  # learn the answer, not the question
        packing=p.packing,  # rows share sequences (best-fit), attention kept within each row
        bf16=p.precision is Precision.bf16,  # bf16 on CPU is emulated (~10x slower): fp32 there
        fp16=p.precision is Precision.fp16,
        use_cpu=device == "cpu",
        save_strategy="steps",
        save_total_limit=1,
        report_to=["mlflow"],  # into the active (nested) MLflow run of this stage
        seed=params.project.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def checkpoint_dir(params: Params, paths: Paths, selection: dict) -> Path:
    """Unique per configuration: resuming is only safe with the same model, data and hyperparameters."""
    key = json.dumps(
        {
            "adapt": params.adapt.model_dump(mode="json"),
            "base": selection["selected"]["ref"],
            "seed": params.project.seed,
        },
        sort_keys=True,
    )
    return Path(paths.sft).parent / ".checkpoints" / f"adapt-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def peft_config(params: Params, tok):
    """The PEFT method of the technique (None: full fine-tuning, every weight trains)."""
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit

    p = params.adapt
    if p.technique is Technique.full:
        return None
    if p.technique is Technique.prompt_tuning:
        pt = p.prompt_tuning
        init = (
            {
                "prompt_tuning_init": PromptTuningInit.TEXT,
                "prompt_tuning_init_text": pt.init_text,
                "tokenizer_name_or_path": tok.name_or_path,
            }
            if pt.init_text
            else {"prompt_tuning_init": PromptTuningInit.RANDOM}
        )
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=pt.num_virtual_tokens, **init)
    return LoraConfig(task_type="CAUSAL_LM", **p.lora.model_dump())


def folder_bytes(path: Path, pattern: str = "*.safetensors") -> int:
    return sum(f.stat().st_size for f in Path(path).glob(pattern))


def train_sft(params: Params, paths: Paths, base_ref: str, device: str, out: Path, ckpt: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from trl import SFTTrainer

    from stages.common.models import load_tokenizer, renderer_for, torch_dtype

    p = params.adapt
    tok = load_tokenizer(base_ref)
    kwargs = {"dtype": torch_dtype(p.precision.value)}
    if p.technique is Technique.qlora:
        import importlib.util

        if device != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
            raise ProjectError(
                [
                    "`adapt.technique` qlora needs a CUDA GPU and the bitsandbytes package "
                    f"(device here: {device}; `pip install bitsandbytes`), or use lora"
                ]
            )

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = AutoModelForCausalLM.from_pretrained(base_ref, **kwargs)
    renderer = renderer_for(params, tok, model, max_new_tokens=0)
    rows = read_jsonl(Path(paths.processed) / "sft.jsonl")
    raft = {}
    if p.raft.enabled:
        from stages.common.retrieval import Retriever

        rows = raft_rows(rows, Retriever.open(paths.index), p.raft.oracle_fraction, params.project.seed)
        raft = {
            "raft_rows_with_oracle": sum(r["oracle"] is True for r in rows),
            "raft_rows_without_oracle": sum(r["oracle"] is False for r in rows),
            "raft_rows_without_source": sum(r["oracle"] is None for r in rows),
        }
    rendered = sft_rows(renderer, rows)
    check_lengths(renderer, rendered, p.trainer.max_length, p.raft.enabled)
    train = Dataset.from_list(rendered)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(params, ckpt, device),
        train_dataset=train,
        processing_class=tok,
        peft_config=peft_config(params, tok),
    )
    result, resumed = train_resumable(trainer, ckpt)
    trainer.model.save_pretrained(out)
    tok.save_pretrained(out)
    trainable = sum(t.numel() for t in trainer.model.parameters() if t.requires_grad)
    total = sum(t.numel() for t in trainer.model.parameters())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if is_main_process():
        write_loss_curve(Path(paths.metrics) / "adapt_loss.csv", trainer.state.log_history)
    # Non-padding tokens the trainer saw (SFTTrainer's own count: attention mask, or every token when packed);
    # after a resume, those since the restart, timed since the restart.
    tokens = getattr(trainer, "_total_train_tokens", 0)
    memory, memory_kind = peak_memory(device)
    return {
        "tokens_per_second": round(tokens / max(result.metrics["train_runtime"], 1e-9), 1),
        "trained_tokens": int(tokens),
        "peak_memory_mib": round(memory, 1),
        "peak_memory_measure": memory_kind,
        "output_bytes": folder_bytes(out),
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed,
        "packing": p.packing,
        "train_loss": round(result.training_loss, 4),
        "first_logged_loss": round(losses[0], 4) if losses else None,
        "last_logged_loss": round(losses[-1], 4) if losses else None,
        "train_seconds": round(result.metrics["train_runtime"], 1),
        "trainable_parameters": trainable,
        "trainable_percent": round(100 * trainable / total, 3),
        "processes": trainer.args.world_size,
        **raft,
    }


def run(params: Params, paths: Paths) -> dict:
    from stages.common.models import resolve_device
    from stages.common.tracking import log_splits, stage_run

    selection = read_json(paths.selection)
    base_ref = selection["selected"]["ref"]
    device = resolve_device(params.project.device)
    trains = params.adapt.technique is not Technique.prompt
    main = is_main_process()  # under `accelerate launch`, the others train in step and write nothing
    with stage_run("adapt", params, params.adapt.model_dump(mode="json")) as _:
        import mlflow

        log_splits(paths.processed, ["sft"])
        with output_dir(paths.sft) as out:
            if trains:
                ckpt = checkpoint_dir(params, paths, selection)
                metrics = {**train_sft(params, paths, base_ref, device, out, ckpt), "trained": True}
            else:  # prompting only: the "adapted" model is the base + models/prompt.json
                metrics = {"trained": False}
                write_loss_curve(Path(paths.metrics) / "adapt_loss.csv", [])
            write_json(out / "lifecycle.json", model_info(params, base_ref, trained=trains))
        if main:
            if trains:
                shutil.rmtree(ckpt, ignore_errors=True)  # done: the adapter is the result, checkpoints are not
            write_json(Path(paths.metrics) / "adapt.json", metrics)
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    return {
        "metrics": metrics,
        "summary": f"{params.adapt.technique.value} on {selection['selected']['name']}: "
        + ", ".join(f"{k} {v}" for k, v in metrics.items()),
    }


def model_info(params: Params, base_ref: str, trained: bool, not_reached: str | None = None) -> dict:
    """models/sft/lifecycle.json: what align, evaluate and package need to load the result."""
    info = {
        "base": base_ref,
        "technique": params.adapt.technique.value,
        "trained": trained,
        "adapter": trained and params.adapt.technique in ADAPTERS,
    }
    return {**info, "not_reached": not_reached} if not_reached else info


def not_reached(params: Params, paths: Paths, why: str) -> None:
    """The escalation ladder did not (yet) climb to this rung: the stage's outputs say so instead of holding a
    model, so evaluate leaves the variant out and DVC sees `adapt` as changed (a plain `dvc repro` trains it)."""
    base_ref = read_json(paths.selection)["selected"]["ref"]
    with atomic_dir(paths.sft) as out:
        write_json(out / "lifecycle.json", model_info(params, base_ref, trained=False, not_reached=why))
    write_json(Path(paths.metrics) / "adapt.json", {"trained": False, "not_reached": why})
    write_loss_curve(Path(paths.metrics) / "adapt_loss.csv", [])


def main(argv: list[str] | None = None) -> int:
    return stage_main("adapt", run, argv, precision=lambda params: params.adapt.precision.value)


if __name__ == "__main__":
    raise SystemExit(main())
