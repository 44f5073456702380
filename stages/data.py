"""data: build the processed splits from the shipped raw text (data/raw, see data/snapshot_stdlib.py).

    python -m stages.data           # writes data/processed/*.jsonl, metrics/data.json

Every question is about one stdlib function; a function is in exactly one split and no answer text appears in
two splits, so the eval questions are held out of SFT and DPO. The pretraining corpus holds the docstrings of
every function (a foundation model has read the docs; tuning teaches the one-line answer, not the facts); the
`general` split, paragraphs of Python's reference topics, measures forgetting.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

from stages.cli import stage_main
from stages.io import read_jsonl, write_json, write_jsonl, write_text
from stages.params import Params, Paths
from stages.scoring import normalize

log = logging.getLogger(__name__)

SPLITS = ("sft", "dev", "eval", "preference", "general", "corpus")


def first_sentence(doc: str) -> str:
    """The docstring's summary: its first paragraph up to the first full stop."""
    paragraph = re.split(r"\n\s*\n", doc.strip())[0]
    paragraph = re.sub(r"\s+", " ", paragraph)
    match = re.search(r"^(.+?[.!?])(\s|$)", paragraph)
    return (match.group(1) if match else paragraph).strip()


def _is_summary(answer: str) -> bool:
    """A sentence, not a signature line (`BoolOp(boolop op, ...)`) or a lead-in to a list (`...:`)."""
    return answer[0].isupper() and answer.endswith(".") and not re.match(r"^[\w.]+\(", answer)


def qa_items(docstrings: list[dict], max_answer_chars: int) -> list[dict]:
    """One question per function, deduplicated by question and by answer (aliases share summaries)."""
    items, questions, answers = [], set(), set()
    for row in docstrings:
        answer = first_sentence(row["doc"])
        if not 15 <= len(answer) <= max_answer_chars or not _is_summary(answer):
            continue
        question = f"What does `{row['name']}` do?"
        key_q, key_a = normalize(question), normalize(answer)
        if key_q in questions or key_a in answers:
            continue
        questions.add(key_q)
        answers.add(key_a)
        items.append({"name": row["name"], "question": question, "answer": answer})
    return items


def preference_pairs(items: list[dict], size: int, rng: random.Random) -> list[dict]:
    """chosen = the true summary; rejected = the summary of a function from another module (fluent but wrong)."""
    pairs = []
    pool = items[:]
    for item in rng.sample(items, min(size, len(items))):
        module = item["name"].rsplit(".", 1)[0]
        while True:
            other = rng.choice(pool)
            if other["name"].rsplit(".", 1)[0] != module:
                break
        pairs.append({"question": item["question"], "chosen": item["answer"], "rejected": other["answer"]})
    return pairs


def run(params: Params, paths: Paths) -> dict:
    p = params.data
    raw = Path(paths.raw)
    docstrings = read_jsonl(raw / "docstrings.jsonl")
    reference = read_jsonl(raw / "reference.jsonl")
    rng = random.Random(params.project.seed)

    items = qa_items(docstrings, p.max_answer_chars)
    rng.shuffle(items)
    need = p.eval_size + p.dev_size + 1
    if len(items) < need:
        from stages.errors import ProjectError

        raise ProjectError([f"`data.eval_size` + `data.dev_size` need {need} questions but {raw} yields {len(items)}"])
    splits = {
        "eval": items[:p.eval_size],
        "dev": items[p.eval_size:p.eval_size + p.dev_size],
        "sft": items[p.eval_size + p.dev_size:],
    }
    splits["preference"] = preference_pairs(splits["sft"], p.preference_size, rng)

    # Pretraining reads the docstrings (the facts the help desk is about); the reference topics are the
    # knowledge base for retrieval, and a sample of them is the general text of the forgetting check.
    splits["corpus"] = [{"text": f"{d['name']}{d['signature']}\n{d['doc']}"} for d in docstrings]
    topics = reference[:]
    rng.shuffle(topics)
    general = topics[:max(1, round(len(topics) * p.general_fraction))]
    # Cut into paragraphs (perplexity on short, comparable texts); any paragraph that the pretraining corpus
    # also holds (reference topics quote docstrings) is dropped.
    corpus_text = "\n".join(r["text"] for r in splits["corpus"])
    splits["general"] = [{"topic": t["topic"], "text": para.strip()}
                         for t in general for para in re.split(r"\n\s*\n", t["text"])
                         if len(para.strip()) > 80 and para.strip() not in corpus_text]

    _check_no_leakage(splits)
    out = Path(paths.processed)
    for name in SPLITS:
        write_jsonl(out / f"{name}.jsonl", splits[name])

    metrics = {f"{name}_rows": len(splits[name]) for name in SPLITS}
    for name in ("sft", "dev", "eval"):
        metrics[f"{name}_mean_answer_chars"] = round(sum(len(r["answer"]) for r in splits[name]) / len(splits[name]), 1)
    metrics["corpus_chars"] = sum(len(r["text"]) for r in splits["corpus"])
    metrics["questions_dropped"] = len(docstrings) - len(items)

    declared = params.scope.data
    warnings = []
    if len(splits["sft"]) < declared.sft_pairs:
        warnings.append(f"scope.data.sft_pairs declares {declared.sft_pairs}, the data has {len(splits['sft'])}")
    if len(splits["preference"]) < declared.preference_pairs:
        warnings.append(f"scope.data.preference_pairs declares {declared.preference_pairs}, "
                        f"the data has {len(splits['preference'])}")
    for w in warnings:
        log.warning(w)
    write_json(Path(paths.metrics) / "data.json", metrics)
    write_text(out / "card.md", _card(metrics, warnings))

    from stages.tracking import stage_run

    with stage_run("data", params, params.data.model_dump()) as _:
        import mlflow

        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(out / "card.md"))
    return {"metrics": metrics, "summary": f"sft {len(splits['sft'])}, dev {len(splits['dev'])}, "
                                           f"eval {len(splits['eval'])}, preference {len(splits['preference'])}"}


def _check_no_leakage(splits: dict) -> None:
    seen: dict[str, str] = {}
    for name in ("sft", "dev", "eval"):
        for row in splits[name]:
            for key in (normalize(row["question"]), normalize(row["answer"])):
                if seen.setdefault(key, name) != name:
                    raise AssertionError(f"leak between {seen[key]} and {name}: {key!r}")


def _card(metrics: dict, warnings: list[str]) -> str:
    lines = ["# Data card: stdlib help desk", "",
             "Source: docstrings of public stdlib functions and Python's reference topics "
             "(`data/raw/`, made by `data/snapshot_stdlib.py`).", "",
             "| split | rows |", "|---|---|"]
    lines += [f"| {k.removesuffix('_rows')} | {v} |" for k, v in metrics.items() if k.endswith("_rows")]
    lines += ["", "Each function is in one split only; no answer text is shared between splits."]
    if warnings:
        lines += ["", "## Warnings", *[f"- {w}" for w in warnings]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return stage_main("data", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
