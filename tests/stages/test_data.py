from pathlib import Path

from stages.data import first_sentence, qa_items
from stages.io import read_json, read_jsonl
from stages.scoring import normalize


def test_first_sentence():
    assert first_sentence("Return the sum.  More text.\n\nDetails.") == "Return the sum."
    assert first_sentence("Split the\npathname into parts. Then more.") == "Split the pathname into parts."


def test_qa_items_drop_signatures_and_duplicate_answers():
    rows = [{"name": "m.f", "doc": "Return a value of things."}, {"name": "m.g", "doc": "Return a value of things."},
            {"name": "ast.BoolOp", "doc": "BoolOp(boolop op, expr* values)"}]
    items = qa_items(rows, 140)
    assert [i["name"] for i in items] == ["m.f"]


def test_splits_are_disjoint_and_counted(prepared):
    out = Path(prepared.paths.processed)
    splits = {n: read_jsonl(out / f"{n}.jsonl") for n in ("sft", "dev", "eval")}
    assert len(splits["eval"]) == 16 and len(splits["dev"]) == 8 and len(splits["sft"]) > 1000
    names = [set(r["name"] for r in rows) for rows in splits.values()]
    answers = [set(normalize(r["answer"]) for r in rows) for rows in splits.values()]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not names[a] & names[b] and not answers[a] & answers[b]
    pref = read_jsonl(out / "preference.jsonl")
    assert len(pref) == 32 and all(r["chosen"] != r["rejected"] for r in pref)
    eval_questions = {r["question"] for r in splits["eval"]}
    assert not eval_questions & {r["question"] for r in pref}
    metrics = read_json(Path(prepared.paths.metrics) / "data.json")
    assert metrics["eval_rows"] == 16 and metrics["sft_rows"] == len(splits["sft"])
    general = {r["text"][:80] for r in read_jsonl(out / "general.jsonl")}
    corpus = "\n".join(r["text"] for r in read_jsonl(out / "corpus.jsonl"))
    assert general and not any(g in corpus for g in general), "the forgetting split is held out of pretraining"


def test_same_seed_same_splits(prepared, tmp_path):
    from stages import data

    paths = prepared.paths.model_copy(update={"processed": str(tmp_path / "p"), "metrics": str(tmp_path / "m")})
    data.run(prepared, paths)
    for name in ("sft", "eval", "preference"):
        assert (tmp_path / "p" / f"{name}.jsonl").read_text() == (Path(prepared.paths.processed) / f"{name}.jsonl").read_text()
