"""LoRA vs QLoRA training on a CUDA GPU: a ~0.5B-class model (Qwen2.5-0.5B's architecture, built from its config
with random weights: no hub), the techniques `adapt.technique: lora | qlora` configure.

    python bench/adapt_gpu.py            # on a machine with a CUDA GPU and bitsandbytes

Both train the same LoRA (r 16, alpha 32, every linear layer but the head) on the same random token batches, in
bf16 (QLoRA: the base quantised to 4-bit NF4 with bf16 compute, as stages/adapt.py loads it). Printed per technique:
tokens/s, peak memory (torch.cuda.max_memory_allocated) and MFU = 6 * N * tokens / time / peak bf16 FLOP/s, with N
the model's parameter count (the usual convention; a frozen base skips its weight gradients, so the work done is
nearer 4 * N and MFU by this formula overstates it). Side by side, then the ratios QLoRA / LoRA.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from shapes import qwen25_05b

# Dense bf16 peak FLOP/s of the cards this has run on (the publishers' datasheets, without sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    )


def measure(model, n_params: int, steps: int, batch: int, seq: int, vocab: int) -> dict:
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator(device="cuda").manual_seed(0)
    data = [torch.randint(0, vocab, (batch, seq), device="cuda", generator=gen) for _ in range(steps + 2)]
    model.train()

    def step(ids):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for ids in data[:2]:  # warm-up: kernels chosen, allocator settled
        step(ids)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for ids in data[2:]:
        loss = step(ids)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = steps * batch * seq
    name = torch.cuda.get_device_name()
    peak = peak_flops(name)
    return {
        "tokens_per_s": tokens / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "weights_gib": model.get_memory_footprint() / 2**30,
        "mfu": 6 * n_params * tokens / seconds / peak if peak else float("nan"),
        "loss": loss.item(),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seq", type=int, default=512)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    cfg = qwen25_05b()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in base.parameters())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)  # QLoRA quantises while loading, as from_pretrained(quantization_config=...) does
        model = lora(base.to("cuda"))
        for batch in args.batch:
            results["lora", batch] = measure(model, n_params, args.steps, batch, args.seq, cfg.vocab_size)
        del base, model
        torch.cuda.empty_cache()
        from peft import prepare_model_for_kbit_training

        quantized = AutoModelForCausalLM.from_pretrained(
            tmp,
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            ),
            device_map={"": 0},
        )
        # As TRL's trainers do for a k-bit model: the parameters left unquantised (embeddings, norms) to fp32.
        model = lora(prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False))
        for batch in args.batch:
            results["qlora", batch] = measure(model, n_params, args.steps, batch, args.seq, cfg.vocab_size)
    print(
        f"device {torch.cuda.get_device_name()}, torch {torch.__version__}; Qwen2.5-0.5B shape, "
        f"{n_params / 1e6:.0f}M parameters; {args.seq}-token rows, {args.steps} steps, bf16"
    )
    print(
        f"{'technique':<10}{'batch':>6}{'trainable':>12}{'tokens/s':>12}{'weights GiB':>13}{'peak GiB':>10}"
        f"{'MFU':>8}{'last loss':>11}"
    )
    for (name, batch), r in results.items():
        print(
            f"{name:<10}{batch:>6}{r['trainable']:>12,}{r['tokens_per_s']:>12,.0f}{r['weights_gib']:>13.2f}"
            f"{r['peak_memory_gib']:>10.2f}{r['mfu']:>8.1%}{r['loss']:>11.3f}"
        )
    for batch in args.batch:
        lo, q = results["lora", batch], results["qlora", batch]
        print(
            f"batch {batch}: qlora/lora tokens/s {q['tokens_per_s'] / lo['tokens_per_s']:.2f}x, peak memory "
            f"{q['peak_memory_gib'] / lo['peak_memory_gib']:.2f}x, weights {q['weights_gib'] / lo['weights_gib']:.2f}x"
        )

    from report import command_line, markdown_table, write_section

    rows = [
        [
            f"`{name}`",
            batch,
            f"{r['trainable']:,}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['weights_gib']:.2f}",
            f"{r['peak_memory_gib']:.2f}",
            f"{r['mfu']:.1%}",
            f"{r['loss']:.3f}",
        ]
        for (name, batch), r in results.items()
    ]
    ratios = "\n".join(
        f"- batch {batch}: QLoRA / LoRA tokens/s "
        f"**{results['qlora', batch]['tokens_per_s'] / results['lora', batch]['tokens_per_s']:.2f}x**, peak memory "
        f"{results['qlora', batch]['peak_memory_gib'] / results['lora', batch]['peak_memory_gib']:.2f}x, weights "
        f"{results['qlora', batch]['weights_gib'] / results['lora', batch]['weights_gib']:.2f}x"
        for batch in args.batch
    )
    write_section(
        "adapt_gpu",
        command_line(),
        f"torch {torch.__version__}; Qwen2.5-0.5B's shape from its config with random weights, "
        f"{n_params / 1e6:.0f}M parameters; LoRA r 16 on every linear layer but the head; {args.seq}-token rows, "
        f"{args.steps} steps, bf16 (QLoRA: a 4-bit NF4 base with bf16 compute). MFU = 6 x N x tokens / time / "
        "peak bf16 FLOP/s (overstates the work of a frozen base).\n\n"
        + markdown_table(
            ["technique", "batch", "trainable", "tokens/s", "weights GiB", "peak GiB", "MFU", "last loss"], rows
        )
        + "\n\n"
        + ratios,
        title="Adapt on a GPU: LoRA against QLoRA",
    )


if __name__ == "__main__":
    main()
