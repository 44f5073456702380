"""What confidence costs in `evaluate`: bootstrap intervals and the paired test next to the evaluation they
qualify, on the same rows, in one run.

    make bench-evaluate        # or: .venv/bin/python bench/evaluate.py [--rows 10000 --sample 500 --resamples 1000]

Needs a trained model: `--model` (default models/pretrain/tiny-m, which `make run` builds). It answers `--sample`
questions of the default project with `evaluate`'s batched greedy generation; generation time is linear in rows,
so the time for `--rows` is that measurement scaled (10k rows would take most of an hour on 2 cores). The answers
are repeated to `--rows`, and on all of them the evaluation's scoring (exact match, token F1, ROUGE-L) and,
against it, the confidence work are timed: per-row scores, a bootstrap interval for each of the three metrics,
and one paired comparison (bootstrap interval + permutation test) of two variants, with `--resamples`.
Prints seconds for each and the ratio confidence / evaluation for one variant (goal: under 0.10).

Then batching: the first `--batching-rows` prompts answered one at a time and in evaluate's batches, same model,
same greedy decoding: generated tokens per second of each, their ratio (goal >= 4), and how many answers agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(REPO / "models" / "pretrain" / "tiny-m"))
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--sample", type=int, default=500, help="rows actually generated (time scaled to --rows)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--batching-rows", type=int, default=96)
    args = ap.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        print(
            f"{args.model}: no trained model there; run `make run` first (it builds models/pretrain/tiny-m) "
            "or pass --model",
            file=sys.stderr,
        )
        return 2

    import torch

    from stages.common.confidence import Resampling, interval, paired
    from stages.common.engines import generate
    from stages.common.loader import load_params
    from stages.common.metrics import REGISTRY, score
    from stages.common.models import load_model, load_tokenizer, render_all, renderer_for

    params = load_params(REPO / "params.yaml")
    model, tokenizer = load_model(args.model, "cpu"), load_tokenizer(args.model)
    n_new = params.evaluate.max_new_tokens
    renderer = renderer_for(params, tokenizer, model, max_new_tokens=n_new)
    sft = [json.loads(line) for line in (REPO / "data/stdlib/sft.jsonl").read_text().splitlines()]
    rows = [{"prompt": r["prompt"], "references": [r["completion"]]} for r in sft * (args.rows // len(sft) + 1)]
    rows = rows[: args.rows]
    refs = [r["references"] for r in rows]
    names = ["exact_match", "token_f1", "rougeL"]

    sample = rows[: args.sample]
    start = time.perf_counter()
    sampled = generate(
        model, renderer, render_all(renderer, sample, "eval"), n_new, params.evaluate.batch_size, progress="generate"
    ).answers
    generated = (time.perf_counter() - start) * args.rows / len(sample)
    answers = (sampled * (args.rows // len(sampled) + 1))[: args.rows]
    start = time.perf_counter()
    score(names, answers, refs)
    scoring = time.perf_counter() - start
    evaluation = generated + scoring

    how = Resampling(args.resamples, params.evaluate.confidence_level, params.project.seed)
    start = time.perf_counter()
    per_row = {m: REGISTRY[m].rows(answers, refs) for m in names}
    scored = time.perf_counter() - start
    for m in names:
        interval(m, answers, refs, how, per_row[m])
    intervals = time.perf_counter() - start
    other = answers[1:] + answers[:1]  # a second "variant": the same answers, shifted by one row
    paired("rougeL", answers, other, refs, how, per_row["rougeL"], REGISTRY["rougeL"].rows(other, refs))
    confidence = time.perf_counter() - start

    words = sum(len(a.split()) for a in sampled) / len(sampled)
    print(
        f"model {args.model}; rows {args.rows} (generated {len(sample)}, {words:.1f} words per answer); "
        f"resamples {args.resamples}; torch threads {torch.get_num_threads()}"
    )
    print(
        f"evaluation of one variant: {evaluation:8.1f} s (generation {generated:.1f} s scaled from "
        f"{len(sample)} rows, scoring {scoring:.1f} s)"
    )
    print(
        f"confidence for it:         {confidence:8.1f} s (per-row scores {scored:.1f} s, 3 intervals "
        f"{intervals - scored:.1f} s, 1 paired comparison {confidence - intervals:.1f} s)"
    )
    print(f"ratio confidence / evaluation: {confidence / evaluation:.3f} (goal < 0.10)")

    prompts = render_all(renderer, rows[: args.batching_rows], "eval")
    speed = {}
    for batch in (1, params.evaluate.batch_size):
        start = time.perf_counter()
        out = generate(model, renderer, prompts, n_new, batch, progress=f"batch {batch}").answers
        seconds = time.perf_counter() - start
        # Tokens of the answers as evaluate keeps them (cut at the stop sequence): comparable across both runs.
        tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in out)
        speed[batch] = (tokens / seconds, out)
    one, many = speed[1], speed[params.evaluate.batch_size]
    same = sum(a == b for a, b in zip(one[1], many[1]))
    print(
        f"generation, {len(prompts)} prompts: one at a time {one[0]:.0f} tokens/s, batches of "
        f"{params.evaluate.batch_size} {many[0]:.0f} tokens/s: ratio {many[0] / one[0]:.1f}x (goal >= 4); "
        f"{same}/{len(prompts)} answers identical"
    )

    from report import command_line, markdown_table, write_section

    rows = [
        [
            "evaluation of one variant",
            f"{evaluation:.1f}",
            f"generation {generated:.1f} s (scaled from {len(sample)} rows), scoring {scoring:.1f} s",
        ],
        [
            "confidence for it",
            f"{confidence:.1f}",
            f"per-row scores {scored:.1f} s, 3 intervals {intervals - scored:.1f} s, "
            f"1 paired comparison {confidence - intervals:.1f} s",
        ],
    ]
    write_section(
        "evaluate",
        command_line("bench-evaluate"),
        f"Model `{Path(args.model).name}`; {args.rows:,} eval rows ({len(sample)} generated with evaluate's batched "
        f"greedy generation, time scaled to {args.rows:,}; {words:.1f} words per answer), the question-answering "
        f"metrics scored on all; then the per-row scores, three bootstrap intervals and one paired comparison with "
        f"{args.resamples:,} resamples; torch threads {torch.get_num_threads()}.\n\n"
        + markdown_table(["", "seconds", "of which"], rows)
        + f"\n\nRatio confidence / evaluation: **{confidence / evaluation:.3f}** (goal < 0.10).\n\n"
        f"Generation, {len(prompts)} prompts one at a time and in batches of {params.evaluate.batch_size} (left "
        f"padding, greedy): {one[0]:,.0f} vs {many[0]:,.0f} tokens/s, **{many[0] / one[0]:.1f}x** (goal 4x); "
        f"{same}/{len(prompts)} answers identical.",
        title="Evaluate: what confidence intervals cost; batched generation",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
