"""How much memory a candidate needs for each technique, in parts: weights, gradients, optimizer states,
activations (for the configured batch and sequence length) and, for inference, the KV cache.

    python -m stages.common.memory models/pretrain/tiny-m --batch 16 --seq 96     # the table for one model

What each part counts (bytes; `w` is the precision's bytes per weight, T the trainable parameters):
- weights: every parameter at `w`; QLoRA: NF4 (0.5 B) + its absmax constants (1 fp32 per 64 weights) for the
  decoder layers' linear weights, `w` for embeddings, norms and the head (bitsandbytes leaves them).
- gradients: T at the trainable parameters' dtype (PEFT keeps adapters in fp32; full tuning at `w`).
- optimizer: AdamW's two moments per trainable parameter at the same dtype.
- activations: what autograd keeps for backward per token and layer (attention inputs, q/k/v, the attention
  output, the MLP's three projections and activation, the norms) plus the logits and their fp32 log-softmax;
  the attention matrix is left out (PyTorch's SDPA does not keep it). Inference keeps no activations: the KV
  cache, one layer's prefill working set and the last position's logits.
The test holds the sum against the peak memory measured for a tiny model on CPU (tests/stages/common/test_memory.py).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

GIB = 1024**3
TECHNIQUES = ("inference", "prompt_tuning", "lora", "qlora", "full")
QLORA_BYTES = 0.5 + 4 / 64  # NF4 weights and one fp32 absmax per block of 64 (no double quantization)
# Bytes per linear weight when served at a smaller precision (stages/common/precision.py): int8 with a scale per
# row (negligible), quanto's int4 with an fp32 scale and shift per group of 128, LLM.int8, NF4 as in QLoRA.
# Embeddings and the head keep the model's precision.
QUANTIZED_BYTES = {"int8": 1.0, "int4": 0.5 + 8 / 128, "bnb_int8": 1.0, "nf4": QLORA_BYTES}


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of an architecture; from a transformers config, or a parameter count alone."""

    parameters: int
    hidden: int | None = None
    layers: int | None = None
    intermediate: int | None = None
    vocab: int | None = None
    kv_hidden: int | None = None  # grouped-query attention: the k/v projections' width
    embedding_parameters: int = 0  # input embeddings and (untied) head: never quantized

    @property
    def known(self) -> bool:
        return None not in (self.hidden, self.layers, self.intermediate, self.vocab)


def shape_of(config, parameters: int) -> Shape:
    """The shape from a (decoder) transformers config; whatever a config does not say stays unknown."""
    get = lambda *names: next((getattr(config, n) for n in names if getattr(config, n, None)), None)  # noqa: E731
    hidden, heads = get("hidden_size", "d_model", "n_embd"), get("num_attention_heads", "n_head")
    kv_heads = get("num_key_value_heads") or heads
    vocab = get("vocab_size")
    tied = getattr(config, "tie_word_embeddings", True)
    return Shape(
        parameters=parameters,
        hidden=hidden,
        layers=get("num_hidden_layers", "num_layers", "n_layer"),
        intermediate=get("intermediate_size", "ffn_dim", "n_inner") or (4 * hidden if hidden else None),
        vocab=vocab,
        kv_hidden=hidden * kv_heads // heads if hidden and heads else hidden,
        embedding_parameters=(vocab * hidden * (1 if tied else 2)) if vocab and hidden else 0,
    )


def lora_parameters(shape: Shape, r: int) -> int | None:
    """LoRA on every linear layer of each decoder layer (`all-linear`): r x (in + out) for q, k, v, o and the
    gate, up and down projections."""
    if not shape.known:
        return None
    h, kv, i = shape.hidden, shape.kv_hidden or shape.hidden, shape.intermediate
    per_layer = r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)
    return per_layer * shape.layers


@dataclass(frozen=True)
class Estimate:
    technique: str
    weights: float  # bytes
    gradients: float
    optimizer: float
    activations: float | None  # None: the architecture is unknown (a parameter count alone)
    trainable: int

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + (self.activations or 0)

    def gib(self) -> dict:
        parts = {k: (round(v / GIB, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        return {**parts, "total": round(self.total / GIB, 4)}


def estimate(
    shape: Shape,
    technique: str,
    precision: str = "fp32",
    batch: int = 1,
    seq: int = 512,
    lora_r: int = 8,
    trainable: int | None = None,
    virtual_tokens: int = 16,
    quantized: str | None = None,
) -> Estimate:
    """The memory `technique` needs for one model (see the module docstring for what each part counts).
    `trainable`: the exact trainable count where known (e.g. PEFT counted it), else derived from the shape.
    `quantized`: inference served at that precision (QUANTIZED_BYTES) instead of `precision`'s bytes."""
    w = {"fp32": 4, "bf16": 2, "fp16": 2}[precision]
    n = shape.parameters
    if technique == "qlora":
        weights = (n - shape.embedding_parameters) * QLORA_BYTES + shape.embedding_parameters * w
    elif technique == "inference" and quantized:
        weights = (n - shape.embedding_parameters) * QUANTIZED_BYTES[quantized] + shape.embedding_parameters * w
    else:
        weights = n * w
    if trainable is None:
        trainable = {"inference": 0, "full": n, "prompt_tuning": virtual_tokens * (shape.hidden or 0)}.get(technique)
        if trainable is None:  # lora, qlora
            trainable = lora_parameters(shape, lora_r) or round(0.01 * n)
    state = w if technique == "full" else 4  # PEFT keeps its adapters and their states in fp32
    gradients, optimizer = trainable * state, 2 * trainable * state
    activations = None
    if shape.known:
        h, kv, i, v, layers = (
            shape.hidden,
            shape.kv_hidden or shape.hidden,
            shape.intermediate,
            shape.vocab,
            shape.layers,
        )
        tokens = batch * seq
        act = 2 if technique == "qlora" else w  # QLoRA computes in 16-bit
        if technique == "inference":
            # the KV cache, one layer's prefill working set (norm, q/k/v/o, the MLP), the last position's logits
            activations = 2 * layers * tokens * kv * act + tokens * (4 * h + 3 * i) * act + batch * v * 4
        else:
            # per token and layer: 2 norms' inputs (2h), q k v (h + 2kv), attention output and o-proj input (2h),
            # gate, up, their activation and product, down's input (4i); the residual stream is shared.
            per_layer = (8 * h + 2 * kv + 4 * i) * act
            logits = tokens * v * (act + 4 + 4)  # logits, fp32 log-softmax and its gradient
            activations = tokens * layers * per_layer + logits
    return Estimate(
        technique,
        float(weights),
        float(gradients),
        float(optimizer),
        None if activations is None else float(activations),
        int(trainable),
    )


def table(estimates: list[Estimate]) -> str:
    head = f"{'technique':<14}{'weights':>10}{'gradients':>11}{'optimizer':>11}{'activations':>13}{'total GiB':>11}"
    rows = [head]
    for e in estimates:
        g = e.gib()
        act = "unknown" if g["activations"] is None else f"{g['activations']:.3f}"
        rows.append(
            f"{e.technique:<14}{g['weights']:>10.3f}{g['gradients']:>11.3f}{g['optimizer']:>11.3f}"
            f"{act:>13}{g['total']:>11.3f}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoConfig

    from stages.common.models import count_parameters

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ref", help="a local model folder or hub id")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--lora-r", type=int, default=8)
    args = ap.parse_args(argv)
    shape = shape_of(AutoConfig.from_pretrained(args.ref), count_parameters(args.ref))
    print(table([estimate(shape, t, args.precision, args.batch, args.seq, args.lora_r) for t in TECHNIQUES]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
