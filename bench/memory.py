"""The memory estimate (stages/common/memory.py, what select's memory filter uses) against the peak measured on
this CPU for a real model folder: LoRA training steps and batched greedy generation.

    python bench/memory.py models/weights/smollm2-135m --batch 4 --seq 320 --lora-r 16   # the SmolLM2 example's
                                                                                       # adapt settings
    python bench/memory.py models/pretrain/tiny-m                                      # any local folder

Each technique in turn in one fresh process: the peak resident memory (VmHWM) above the process's size just before
the model is loaded, the peak reset in between (/proc/self/clear_refs). glibc would keep freed blocks in its heap
(the peak would then measure the allocator, not the model), so large blocks are mmapped and trimmed. ru_maxrss
would not do: it carries the forking parent's peak across exec. tests/stages/common/test_memory.py runs the same
measurement on a 20.8M-parameter model built from a config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# argv: the model (a JSON Llama config, or a folder to load), batch, seq, lora r, the techniques (comma-separated).
MEASURE = """
import gc, json, sys, torch, peft
from transformers import AutoModelForCausalLM, LlamaConfig
source, batch, seq, r, techniques = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5].split(",")

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))

def load():
    if source.startswith("{"):
        return AutoModelForCausalLM.from_config(LlamaConfig(**json.loads(source)), attn_implementation="sdpa")
    return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="sdpa")

out = {}
for technique in techniques:
    torch.manual_seed(0)
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")   # VmHWM := VmRSS
    before = status("VmRSS")
    model = load()
    x = torch.randint(0, model.config.vocab_size, (batch, seq))
    parameters = sum(p.numel() for p in model.parameters())
    if technique == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(r=r, target_modules="all-linear"))
    if technique == "inference":
        with torch.no_grad():
            model.generate(x[:, :seq - 8], attention_mask=torch.ones_like(x[:, :seq - 8]), max_new_tokens=8,
                           min_new_tokens=8, do_sample=False, pad_token_id=0)
        trainable = 0
    else:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(2):
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        del opt
    out[technique] = {"peak": status("VmHWM") - before, "parameters": parameters, "trainable": trainable}
    del model, x
print(json.dumps(out))
"""


def measure(source: str, batch: int, seq: int, r: int, techniques: list[str]) -> dict:
    """{technique: {"peak" (bytes), "parameters", "trainable"}} measured in a fresh process."""
    from bench.report import in_fresh_process

    args = [source, str(batch), str(seq), str(r), ",".join(techniques)]
    return in_fresh_process(MEASURE, args, timeout=3600, OMP_NUM_THREADS="1")


def main(argv: list[str] | None = None) -> int:
    from report import command_line, markdown_table, write_section
    from transformers import AutoConfig

    from stages.common.memory import GIB, estimate, shape_of
    from stages.common.models import count_parameters

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a local model folder")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=320)
    ap.add_argument("--lora-r", type=int, default=16)
    args = ap.parse_args(argv)
    shape = shape_of(AutoConfig.from_pretrained(args.model), count_parameters(args.model))
    measured = measure(args.model, args.batch, args.seq, args.lora_r, ["lora", "inference"])
    rows = []
    for technique, m in measured.items():
        e = estimate(shape, technique, "fp32", args.batch, args.seq, lora_r=args.lora_r)
        rows.append([technique, f"{e.total / GIB:.3f}", f"{m['peak'] / GIB:.3f}", f"{m['peak'] / e.total:.2f}"])
    what = (
        f"`{args.model}`: {shape.parameters:,} parameters, fp32, batch {args.batch} x {args.seq} tokens, "
        f"LoRA r {args.lora_r} on every linear layer; peak resident memory above the process before loading."
    )
    table = markdown_table(["technique", "estimate GiB", "measured GiB", "measured / estimate"], rows)
    print(what + "\n\n" + table)
    write_section(
        f"memory-{Path(args.model).name}",
        command_line(None),
        what + "\n\n" + table,
        title=f"The memory estimate against the measured peak: {Path(args.model).name}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
