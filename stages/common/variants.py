"""The variants evaluate measures and package ships: the baselines, `sft`, `aligned_<method>`, and with a
knowledge index each one's retrieval-augmented twin (`<name>_rag`), each as how to load it and how to prompt it."""

from __future__ import annotations

from pathlib import Path

from stages.common.io import read_json
from stages.common.params import Paths

BASELINES = ("baseline_zero_shot", "baseline_prompted", "baseline_rag")
# The untuned model's shippable forms: the prompting rung's (its searched prompt) and the retrieval rung's.
UNTUNED = ("baseline_prompted", "baseline_rag")


RAG = "_rag"  # a variant's retrieval-augmented twin: the same model, the retrieved chunks in its prompt


def rung(variant: str) -> str:
    """The ladder rung a variant stands on (cheapest first: prompting, retrieval, fine-tuning, alignment); a tuned
    model's `_rag` twin adds retrieval to its rung."""
    model = variant.removesuffix(RAG)
    if variant in BASELINES:
        return {"baseline_zero_shot": "none", "baseline_prompted": "prompting", "baseline_rag": "retrieval"}[variant]
    base = "alignment" if model.startswith("aligned_") else "fine-tuning"
    return base + (" + retrieval" if variant.endswith(RAG) else "")


def has_index(paths: Paths) -> bool:
    card = Path(paths.index) / "lifecycle.json"
    return card.is_file() and bool(read_json(card).get("chunks"))


def variants(paths: Paths, selection: dict, prompt: dict, methods: list[str]) -> dict[str, dict]:
    """name -> how to load it and how to prompt it: the baselines, `sft`, `aligned_<method>` for each of `methods`
    (`align.methods`; a folder of a method no longer listed is left out). With a knowledge index, the zero-shot
    baseline (as `baseline_rag`) and every tuned variant also answer with the retrieved chunks in the prompt
    (`<name>_rag`)."""
    base = selection["selected"]["ref"]
    out = {
        "baseline_zero_shot": {"ref": base, "adapter": None, "examples": []},
        "baseline_prompted": {"ref": base, "adapter": None, "examples": prompt["examples"]},
    }
    sft = read_json(Path(paths.sft) / "lifecycle.json")
    if sft["trained"]:
        out["sft"] = (
            {"ref": base, "adapter": paths.sft, "examples": []}
            if sft["adapter"]
            else {"ref": paths.sft, "adapter": None, "examples": []}
        )
    for method in methods:
        folder = Path(paths.aligned) / method
        if read_json(folder / "lifecycle.json")["model"]:
            out[f"aligned_{method}"] = {"ref": str(folder), "adapter": None, "examples": []}
    if not has_index(paths):
        return out
    ordered = {n: out[n] for n in BASELINES[:2]} | {"baseline_rag": {**out["baseline_zero_shot"], "rag": True}}
    for name in (n for n in out if n not in BASELINES):
        ordered |= {name: out[name], name + RAG: {**out[name], "rag": True}}
    return ordered
