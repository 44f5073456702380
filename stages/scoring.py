"""Answer quality metrics shared by select and evaluate: ROUGE-L F1, corpus BLEU, exact match."""

from __future__ import annotations

import re
import string


def normalize(text: str) -> str:
    text = text.lower().strip()
    text = text.strip(string.punctuation + " ")
    return re.sub(r"\s+", " ", text)


def exact_match(predictions: list[str], references: list[str]) -> float:
    hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True))
    return hits / max(len(references), 1)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / max(len(scores), 1)


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU on sacrebleu's 0-100 scale."""
    import sacrebleu

    return sacrebleu.corpus_bleu(predictions, [references]).score


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    return {
        "rougeL": round(rouge_l(predictions, references), 4),
        "bleu": round(bleu(predictions, references), 4),
        "exact_match": round(exact_match(predictions, references), 4),
    }
