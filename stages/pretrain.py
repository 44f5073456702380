"""pretrain: build the from-scratch candidates params.yaml declares (only the offline default has any).

    python -m stages.pretrain       # writes models/pretrain/<name>/ (save_pretrained) + metrics/pretrain.json

A byte-level BPE tokenizer is trained on the corpus split, then each declared Llama-architecture model is
trained on random windows of it. Every later stage loads the result with `from_pretrained(path)`, exactly as
it would load a hub id.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from stages.common.cli import stage_main
from stages.common.io import atomic_dir, read_jsonl, write_json, write_text
from stages.common.params import Params, Paths, PretrainModel

log = logging.getLogger(__name__)

EOS, PAD = "<|endoftext|>", "<|pad|>"


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD], show_progress=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, pad_token=PAD, model_max_length=2048
    )


def build_model(spec: PretrainModel, vocab_size: int, seq_len: int, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=4 * seq_len,  # room for few-shot prompts longer than the training windows
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def train(model, tokens, spec: PretrainModel, p, seed: int, device: str, log_metric) -> dict:
    """Plain next-token training on random windows; AdamW, linear warm-up then cosine decay."""
    import torch
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.learning_rate, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, spec.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    losses, start = [], time.perf_counter()
    bar = tqdm(range(spec.steps), desc=f"pretrain {spec.name}", unit="step")
    for step in bar:
        starts = torch.randint(0, len(tokens) - p.seq_len - 1, (p.batch_size,), generator=generator)
        batch = torch.stack([tokens[s : s + p.seq_len] for s in starts]).to(device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == spec.steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            log_metric(f"{spec.name}.loss", losses[-1], step)
    seconds = time.perf_counter() - start
    model.eval()
    return {
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "seconds": round(seconds, 1),
        "tokens_per_second": round(spec.steps * p.batch_size * p.seq_len / seconds),
    }


def run(params: Params, paths: Paths) -> dict:
    import torch

    from stages.common.models import resolve_device
    from stages.common.tracking import stage_run

    p = params.pretrain
    device = resolve_device(params.project.device)
    metrics: dict = {}
    with stage_run("pretrain", params, p.model_dump()) as _, atomic_dir(paths.pretrain) as out:
        import mlflow

        if not p.models:
            write_text(out / "README.md", "No from-scratch candidates are declared in params.yaml `pretrain.models`.\n")
        else:
            texts = [r["text"] for r in read_jsonl(Path(paths.processed) / "corpus.jsonl")]
            tokenizer = train_tokenizer(texts, p.vocab_size)
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            tokens = torch.tensor([t for doc in ids for t in doc + [tokenizer.eos_token_id]], dtype=torch.long)
            metrics["corpus_tokens"] = len(tokens)
            log.info("tokenizer: %d tokens in the vocabulary, corpus of %d tokens", len(tokenizer), len(tokens))
            for spec in p.models:
                torch.manual_seed(params.project.seed)
                model = build_model(spec, len(tokenizer), p.seq_len, tokenizer)
                n_params = sum(t.numel() for t in model.parameters())
                result = train(
                    model, tokens, spec, p, params.project.seed, device, lambda k, v, s: mlflow.log_metric(k, v, step=s)
                )
                result["parameters"] = n_params
                model.save_pretrained(out / spec.name)
                tokenizer.save_pretrained(out / spec.name)
                metrics[spec.name] = result
                log.info(
                    "%s: %d parameters, loss %.2f -> %.2f in %.0f s",
                    spec.name,
                    n_params,
                    result["first_loss"],
                    result["final_loss"],
                    result["seconds"],
                )
                mlflow.log_metrics({f"{spec.name}.{k}": v for k, v in result.items()})
        write_json(Path(paths.metrics) / "pretrain.json", metrics)
    names = ", ".join(m.name for m in p.models) or "nothing to build"
    return {"metrics": metrics, "summary": f"pretrained: {names}"}


def main(argv: list[str] | None = None) -> int:
    return stage_main("pretrain", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
