"""The serving engine on a CUDA GPU: a ~0.5B-class model (Qwen2.5-0.5B's architecture, built from its config with
random weights: no hub) in bf16, the precision a GPU bento serves in.

    python bench/serve_gpu.py --tokenizer models/pretrain/tiny-m     # on a machine with a CUDA GPU

1. Throughput of one client sending requests one after another (batches of 1) vs 16 concurrent clients
   (batches of up to 16), through the same Engine the service runs: requests/s and generated tokens/s.
2. Greedy parity: every prompt answered in a batch of 16 vs alone, in bf16 and in fp32; how many answers differ
   (on a GPU a batch changes the matrix kernels' shapes and so their rounding).
Random weights never emit end-of-sequence, so every answer runs to max_new_tokens: the figures are pure decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving import engine  # noqa: E402


def build(tokenizer, dtype):
    import torch
    from shapes import qwen25_05b
    from transformers import AutoModelForCausalLM

    config = qwen25_05b(vocab_size=len(tokenizer))  # the vocabulary is the tokenizer's (the demo's embedding)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to("cuda").eval()
    model.generation_config.eos_token_id = None  # random weights: decode to max_new_tokens every time
    return model


def run(eng: engine.Engine, prompts: list[list[int]], n_new: int, concurrent: bool) -> tuple[list, float]:
    async def go():
        if concurrent:
            return await asyncio.gather(*[eng.enqueue(engine.Job(p, n_new), 600) for p in prompts])
        return [await eng.enqueue(engine.Job(p, n_new), 600) for p in prompts]

    start = time.perf_counter()
    results = asyncio.run(go())
    return results, time.perf_counter() - start


def main() -> None:
    import torch
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    questions = [
        f"What does `{name}` do in the standard library, and when would I use it?"
        for name in (
            "json.dumps",
            "heapq.heappush",
            "os.path.join",
            "re.sub",
            "itertools.chain",
            "functools.partial",
            "pathlib.Path.glob",
            "collections.Counter",
        )
    ]
    prompts = [tokenizer(questions[i % len(questions)] + " " * (i % 5))["input_ids"] for i in range(args.requests)]
    print(
        f"{torch.cuda.get_device_name()}; torch {torch.__version__}; {args.requests} requests of "
        f"{args.max_new_tokens} new tokens"
    )
    table = []
    for dtype in (torch.bfloat16, torch.float32):
        model = build(tokenizer, dtype)
        n = sum(p.numel() for p in model.parameters())
        alone = engine.Engine(model, tokenizer, str.strip, max_batch_size=1)
        batched = engine.Engine(model, tokenizer, str.strip, max_batch_size=16, batch_wait_ms=5)
        run(batched, prompts[:16], 8, True)  # warm-up (kernels, allocator)
        torch.cuda.reset_peak_memory_stats()
        one, t_one = run(alone, prompts, args.max_new_tokens, False)
        many, t_many = run(batched, prompts, args.max_new_tokens, True)
        tokens = sum(r.completion_tokens for r in many)
        differ = sum(a.text != b.text for a, b in zip(one, many))
        print(
            f"\n{str(dtype).removeprefix('torch.')}: {n / 1e6:.0f}M parameters, peak "
            f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        )
        print(f"  1 client, sequential : {len(prompts) / t_one:7.1f} req/s {tokens / t_one:8.0f} tokens/s")
        print(
            f"  16 concurrent clients: {len(prompts) / t_many:7.1f} req/s {tokens / t_many:8.0f} tokens/s "
            f"(mean batch {sum(r.batch_size for r in many) / len(many):.1f})"
        )
        print(f"  speed-up {t_one / t_many:.2f}x; greedy answers that differ batched vs alone: {differ}/{len(prompts)}")
        table.append(
            [
                str(dtype).removeprefix("torch."),
                f"{n / 1e6:.0f}M",
                f"{torch.cuda.max_memory_allocated() / 2**30:.2f}",
                f"{len(prompts) / t_one:.1f} ({tokens / t_one:,.0f})",
                f"{len(prompts) / t_many:.1f} ({tokens / t_many:,.0f})",
                f"{t_one / t_many:.2f}x",
                f"{differ}/{len(prompts)}",
            ]
        )
        del model, alone, batched
        torch.cuda.empty_cache()

    from report import command_line, markdown_table, write_section

    write_section(
        "serve_gpu",
        command_line(),
        f"torch {torch.__version__}; the serving engine alone, no HTTP; Qwen2.5-0.5B's architecture from its config "
        f"with random weights (decoding always runs to max_new_tokens); {args.requests} requests of "
        f"{args.max_new_tokens} new tokens.\n\n"
        + markdown_table(
            [
                "dtype",
                "parameters",
                "peak GiB",
                "1 client: req/s (tokens/s)",
                "16 concurrent: req/s (tokens/s)",
                "speed-up",
                "greedy answers that differ, batched vs alone",
            ],
            table,
        ),
        title="Serve on a GPU: the engine batched against one at a time",
    )


if __name__ == "__main__":
    main()
