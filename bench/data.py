"""The `data` stage against a bare `datasets` load + map of the same files: throughput ratio and peak memory.

    make bench-data                  # or: .venv/bin/python bench/data.py [--sft 100000 --preference 20000 --repeats 3]

Generates SFT rows (prompt/completion) and preference rows (prompt/chosen/rejected) as JSONL, words drawn with the
frequencies of the shipped stdlib text (see word_stream), then, alternating
in fresh subprocesses so that neither profits from the other's warm caches:
  stage     `stages.data.run` on them: read and check every row, deduplicate, hold out eval/dev, remove leaked rows,
            look for near-duplicates, write the splits and the card, log to MLflow (the store created beforehand)
  datasets  `datasets.load_dataset("json")` of both files + `.map` of a strip over every field (a fresh cache)
Each side times its own work after its imports. Prints the medians, the ratio datasets_seconds / stage_seconds
(the stage's throughput relative to datasets; goal >= 0.5) and each side's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def word_stream() -> list[str]:
    """Every word of the default project's pretraining text, in order: sampling from it gives English-like word
    frequencies (a few very common words, a long tail), so n-gram overlaps between rows are as rare or as
    common as in real text, not those of a toy vocabulary where every trigram repeats."""
    import re

    text = (REPO / "data" / "stdlib" / "corpus.jsonl").read_text(encoding="utf-8")
    return re.findall(r"[A-Za-z]+", " ".join(json.loads(line)["text"] for line in text.splitlines()))


WORDS: list[str] = []


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi))).capitalize() + "."


def make_files(folder: Path, n_sft: int, n_pref: int) -> None:
    WORDS[:] = word_stream()
    rng = random.Random(0)
    sft = [{"prompt": f"#{i}: " + sentence(rng, 8, 50), "completion": sentence(rng, 4, 30)} for i in range(n_sft)]
    sft += rng.sample(sft, n_sft // 100)  # 1% exact duplicates, as real exports have
    pref = [
        {"prompt": f"#{i}: " + sentence(rng, 8, 50), "chosen": sentence(rng, 4, 30), "rejected": sentence(rng, 4, 30)}
        for i in range(n_pref)
    ]
    for name, rows in (("sft.jsonl", sft), ("preference.jsonl", pref)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


STAGE = """
import json, resource, sys, time
import mlflow  # imported before timing, like datasets on the other side
from stages.common.loader import load_params
from stages import data
params = load_params(sys.argv[1])
start = time.perf_counter()
data.run(params, params.paths)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

DATASETS = """
import json, resource, sys, time
import datasets
datasets.disable_progress_bars()
folder = sys.argv[1]
start = time.perf_counter()
for name in ("sft", "preference"):
    ds = datasets.load_dataset("json", data_files=f"{folder}/{name}.jsonl", split="train")
    ds = ds.map(lambda row: {k: v.strip() for k, v in row.items()})
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(code: str, arg: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code, arg], cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"benchmark step failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sft", type=int, default=100_000)
    parser.add_argument("--preference", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    data_dir = work / "data"
    data_dir.mkdir()
    make_files(data_dir, args.sft, args.preference)
    p = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    p["paths"] = {k: str(work / v) for k, v in p["paths"].items()}
    p["paths"]["sources"] = str(data_dir)
    p["data"]["sources"] = {
        "sft": {"path": str(data_dir / "sft.jsonl")},
        "preference": {"path": str(data_dir / "preference.jsonl")},
    }
    p["data"]["holdout"] = {"eval": 1000, "dev": 500}
    p["pretrain"]["models"] = []
    p["select"]["candidates"] = [{"name": "any", "path": str(work), "licence": "apache-2.0", "languages": ["en"]}]
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(p, sort_keys=False), encoding="utf-8")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    measure(STAGE, str(params_file), env)  # warm-up: creates the MLflow store once, as a project's first run does

    stage, bare = [], []
    for i in range(args.repeats):
        cache_env = {**env, "HF_DATASETS_CACHE": str(work / f"hf-cache-{i}")}  # no arrow cache carried over
        order = [("stage", STAGE, str(params_file)), ("datasets", DATASETS, str(data_dir))]
        for name, code, arg in order if i % 2 == 0 else order[::-1]:
            (stage if name == "stage" else bare).append(measure(code, arg, cache_env))
    t_stage = statistics.median(r["seconds"] for r in stage)
    t_bare = statistics.median(r["seconds"] for r in bare)
    rows = args.sft + args.sft // 100 + args.preference
    print(
        f"rows: {args.sft} sft (+{args.sft // 100} duplicates) + {args.preference} preference = {rows}; "
        f"{args.repeats} alternating runs, medians"
    )
    print(f"{'':<10}{'seconds':>10}{'rows/s':>12}{'peak MiB':>11}")
    for name, runs, t in (("stage", stage, t_stage), ("datasets", bare, t_bare)):
        print(f"{name:<10}{t:>10.2f}{rows / t:>12,.0f}{max(r['peak_mib'] for r in runs):>11.0f}")
    print(f"throughput ratio stage / datasets: {t_bare / t_stage:.2f}  (goal >= 0.5)")

    from report import command_line, markdown_table, write_section

    sides = (
        (
            "`data` stage (read and check every row, dedupe, hold out, leakage, near-duplicates, write, MLflow)",
            stage,
            t_stage,
        ),
        ("`datasets` load + map", bare, t_bare),
    )
    table = [
        [name, f"{t:.2f}", f"{rows / t:,.0f}", f"{max(r['peak_mib'] for r in runs):.0f}"] for name, runs, t in sides
    ]
    write_section(
        "data",
        command_line("bench-data", argv),
        f"The `data` stage on {args.sft:,} generated SFT rows (+{args.sft // 100:,} duplicates) and "
        f'{args.preference:,} preference rows next to a bare `datasets.load_dataset("json")` + `.map` of the same '
        f"files, alternating, {args.repeats} times, in fresh processes:\n\n"
        + markdown_table(["", "seconds (median)", "rows/s", "peak RSS (MiB)"], table)
        + f"\n\nThroughput ratio **{t_bare / t_stage:.2f}** (goal 0.5).",
        title="Data: the `data` stage against `datasets`",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
