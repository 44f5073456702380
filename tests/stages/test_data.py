"""The data stage: any team's files in TRL's formats, mapped by `fields:`, split without leakage; bad input is an
error naming the file, line and field, and writes nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from stages.common.errors import ProjectError
from stages.common.io import read_json, read_jsonl
from stages.common.loader import load_params
from stages.common.records import normalize
from tests.conftest import tiny_params_dict, write_params


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def qa_rows(n: int, offset: int = 0) -> list[dict]:
    return [
        {"prompt": f"Question number {i} about topic {i % 7}?", "completion": f"Answer {i} is plain."}
        for i in range(offset, offset + n)
    ]


def project(root: Path, sources: dict, **data) -> object:
    """The tiny project with its data replaced by `sources` (files under root/data); models/ and metrics/ hold
    earlier results that a failing data stage must leave untouched."""
    p = tiny_params_dict(root)
    p["paths"]["sources"] = str(root / "data")
    p["data"]["sources"] = sources
    p["data"].update(data)
    if "general" not in sources:
        p["evaluate"]["max_forgetting"] = None  # the forgetting gate needs general text
    if "knowledge" not in sources:
        p["adapt"]["raft"] = False  # RAFT retrieves from the knowledge
    p["pretrain"]["models"] = []
    p["align"]["methods"] = []
    p["select"]["candidates"] = [{"name": "x", "path": str(root), "licence": "apache-2.0", "languages": ["en"]}]
    for folder in ("models", "metrics"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "models" / "earlier.bin").write_bytes(b"weights")
    (root / "metrics" / "data.json").write_text('{"rows": "earlier"}')
    return load_params(write_params(root, p))


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for folder in ("models", "metrics", "data/processed"):
        for f in sorted((root / folder).rglob("*")) if (root / folder).exists() else []:
            if f.is_file():
                h.update(str(f).encode() + f.read_bytes())
    return h.hexdigest()


def fails_cleanly(params, root: Path) -> str:
    """Run the data stage, expect a ProjectError, check nothing under models/, metrics/ or processed changed."""
    from stages import data

    before = digest(root)
    with pytest.raises(ProjectError) as err:
        data.run(params, params.paths)
    assert digest(root) == before, "a failed data stage changed models/, metrics/ or the processed splits"
    return str(err.value)


# --- the default project ----------------------------------------------------------------------------------------


def test_default_splits_are_held_out_and_counted(prepared):
    out = Path(prepared.paths.processed)
    splits = {n: read_jsonl(out / f"{n}.jsonl") for n in ("sft", "dev", "eval", "preference", "corpus", "general")}
    assert len(splits["eval"]) == 16 and len(splits["dev"]) == 8 and len(splits["sft"]) > 1000
    prompts = [{normalize(r["prompt"]) for r in splits[n]} for n in ("sft", "dev", "eval")]
    assert not prompts[0] & prompts[1] and not prompts[0] & prompts[2] and not prompts[1] & prompts[2]
    assert not prompts[2] & {normalize(r["prompt"]) for r in splits["preference"]}, "eval prompts left preference"
    assert all(r["references"] and r["prompt"] for r in splits["eval"])
    metrics = read_json(Path(prepared.paths.metrics) / "data.json")
    assert metrics["rows"]["eval"] == 16 and metrics["rows"]["sft"] == len(splits["sft"])
    assert metrics["held_out_from_sft"] == ["dev", "eval"]
    assert metrics["exact_duplicates_removed"]["preference"] > 0, "the shipped pairs include eval questions"
    corpus = "\n".join(r["text"] for r in splits["corpus"])
    assert splits["general"] and not any(g["text"][:80] in corpus for g in splits["general"])
    assert "## Leakage" in (out / "card.md").read_text()


def test_same_seed_same_splits(prepared, tmp_path):
    from stages import data

    paths = prepared.paths.model_copy(update={"processed": str(tmp_path / "p"), "metrics": str(tmp_path / "m")})
    data.run(prepared, paths)
    for name in ("sft", "eval", "preference"):
        assert (tmp_path / "p" / f"{name}.jsonl").read_text() == (
            Path(prepared.paths.processed) / f"{name}.jsonl"
        ).read_text()


# --- formats, fields, splits ------------------------------------------------------------------------------------


def test_alpaca_fields_csv_parquet_and_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stages.common.sources import load_all

    d = tmp_path / "data"
    write_jsonl(
        d / "alpaca.jsonl",
        [
            {"instruction": "Translate", "input": "hallo", "output": "hello"},
            {"instruction": "Sum 2 and 2", "input": "", "output": "4"},
        ],
    )
    (d / "eval.csv").write_text('question,answer\nWhat is 1+1?,2\n"Is it, quoted?",yes\n', encoding="utf-8")
    pq.write_table(
        pa.table({"prompt": ["p1", "p2"], "chosen": ["good", "fine"], "rejected": ["bad", "fine"]}), d / "pref.parquet"
    )
    write_jsonl(
        d / "dev.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "Hello."},
                ]
            }
        ],
    )
    (d / "docs").mkdir()
    (d / "docs" / "a.md").write_text("# Install\n\nRun pip.\n")
    (d / "docs" / "b.html").write_text(
        "<html><title>Guide</title><body><script>x()</script><p>Read me.</p></body></html>"
    )
    params = project(
        tmp_path,
        {
            "sft": {"path": str(d / "alpaca.jsonl"), "fields": {"instruction": "prompt", "output": "completion"}},
            "eval": {"path": str(d / "eval.csv"), "fields": {"question": "prompt", "answer": "completion"}},
            "dev": {"path": str(d / "dev.jsonl")},
            "preference": {"path": str(d / "pref.parquet")},
            "knowledge": {"path": str(d / "docs")},
        },
    )
    loaded = load_all(params)
    assert loaded["sft"].records[0] == {"prompt": "Translate\n\nhallo", "completion": "hello"}
    assert loaded["sft"].records[1]["prompt"] == "Sum 2 and 2"
    assert loaded["eval"].records[1] == {"prompt": "Is it, quoted?", "references": ["yes"]}
    assert loaded["dev"].records[0] == {"prompt": "Hi?", "references": ["Hello."], "system": "Be brief."}
    assert len(loaded["preference"].records) == 1 and loaded["preference"].dropped == {"chosen == rejected": 1}
    docs = {r["title"]: r["text"] for r in loaded["knowledge"].records}
    assert docs == {"Install": "# Install\n\nRun pip.", "Guide": "Read me."}


def pdf(text: str, title: str) -> bytes:
    """A one-page PDF with `text` in its text layer and `title` in its metadata, written by hand (PDF 1.4)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Title ({title}) >>".encode(),
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_pdf_documents_and_unreadable_ones_are_skipped_by_name(tmp_path):
    from stages.common.sources import load_all

    d = tmp_path / "data"
    write_jsonl(d / "sft.jsonl", qa_rows(4))
    (d / "docs").mkdir()
    (d / "docs" / "manual.pdf").write_bytes(pdf("Restart the router before calling support.", "Router manual"))
    (d / "docs" / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a PDF")
    (d / "docs" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (d / "docs" / "empty.md").write_text("  \n")
    loaded = load_all(
        project(tmp_path, {"sft": {"path": str(d / "sft.jsonl")}, "knowledge": {"path": str(d / "docs")}})
    )
    knowledge = loaded["knowledge"]
    assert [(r["title"], r["text"]) for r in knowledge.records] == [
        ("Router manual", "Restart the router before calling support.")
    ]
    assert knowledge.dropped == {"unreadable": 2, "empty field `text`": 1}
    assert any(e.startswith(str(d / "docs" / "broken.pdf") + ": unreadable (") for e in knowledge.examples)
    assert any(
        e.startswith(str(d / "docs" / "latin1.txt") + ": unreadable (UnicodeDecodeError") for e in knowledge.examples
    )

    (d / "docs" / "manual.pdf").unlink()
    with pytest.raises(
        ProjectError, match=r"`data.sources.knowledge` .*nothing usable is left of 3 rows; .*broken.pdf"
    ):
        load_all(project(tmp_path, {"sft": {"path": str(d / "sft.jsonl")}, "knowledge": {"path": str(d / "docs")}}))


def test_holdout_keeps_groups_together_and_removes_leaks(tmp_path):
    from stages import data

    d = tmp_path / "data"
    rows = [{**r, "ticket": f"T{i // 4}"} for i, r in enumerate(qa_rows(200))]
    rows.append({**rows[5], "completion": "A second answer to the same question."})  # same prompt, other answer
    write_jsonl(d / "sft.jsonl", rows)
    write_jsonl(
        d / "pref.jsonl", [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": "No."} for r in rows[:60]]
    )
    params = project(
        tmp_path,
        {"sft": {"path": str(d / "sft.jsonl")}, "preference": {"path": str(d / "pref.jsonl")}},
        holdout={"eval": 0.1, "dev": 12, "group_by": "ticket"},
    )
    data.run(params, params.paths)
    out = Path(params.paths.processed)
    splits = {n: read_jsonl(out / f"{n}.jsonl") for n in ("sft", "eval", "dev", "preference")}
    assert 20 <= len(splits["eval"]) < 24 and 12 <= len(splits["dev"]) < 16, "whole groups of 4 rows"
    ticket = {r["prompt"]: r["ticket"] for r in rows}
    groups = {n: {ticket[r["prompt"]] for r in splits[n]} for n in ("sft", "eval", "dev")}
    assert not groups["sft"] & groups["eval"] and not groups["sft"] & groups["dev"]
    held = {r["prompt"] for r in splits["eval"] + splits["dev"]}
    assert not held & {r["prompt"] for r in splits["sft"] + splits["preference"]}
    metrics = read_json(Path(params.paths.metrics) / "data.json")
    assert metrics["exact_duplicates_removed"]["preference"] == 60 - len(splits["preference"]) > 0


def test_near_duplicates_are_reported_not_removed(tmp_path):
    from stages import data

    d = tmp_path / "data"
    evals = [{"prompt": "How do I reset the password of my account on the web portal?", "completion": "Use reset."}]
    sft = qa_rows(30) + [
        {"prompt": "How do I reset the password of my account on the web portal today?", "completion": "Use reset."}
    ]
    write_jsonl(d / "sft.jsonl", sft)
    write_jsonl(d / "eval.jsonl", evals)
    write_jsonl(d / "dev.jsonl", qa_rows(3, offset=100))
    params = project(
        tmp_path,
        {
            "sft": {"path": str(d / "sft.jsonl")},
            "eval": {"path": str(d / "eval.jsonl")},
            "dev": {"path": str(d / "dev.jsonl")},
        },
        near_duplicate_threshold=0.5,
    )
    data.run(params, params.paths)
    assert read_json(Path(params.paths.metrics) / "data.json")["near_duplicates"] == 1
    assert len(read_jsonl(Path(params.paths.processed) / "sft.jsonl")) == 31
    assert "web portal today" in (Path(params.paths.processed) / "card.md").read_text()


def test_unusable_rows_are_dropped_with_reasons(tmp_path):
    from stages.common.sources import load_all

    d = tmp_path / "data"
    rows = qa_rows(5) + [
        {"prompt": "  ", "completion": "x"},
        qa_rows(1)[0],
        {"prompt": "long " * 300, "completion": "y"},
    ]
    write_jsonl(d / "sft.jsonl", rows)
    params = project(tmp_path, {"sft": {"path": str(d / "sft.jsonl")}}, holdout={"eval": 1, "dev": 1}, max_length=100)
    sft = load_all(params)["sft"]
    assert sft.found == 8 and len(sft.records) == 5
    assert dict(sft.dropped) == {"empty field `prompt`": 1, "duplicate": 1, "over max_length": 1}
    assert sft.examples[0].endswith("sft.jsonl:6: empty field `prompt`")
    assert sft.examples[2].endswith("sft.jsonl:8: over max_length (301 > 100 tokens)")


# --- bad input: an error naming file, line and field; nothing written -------------------------------------------


def test_malformed_jsonl_line(tmp_path):
    d = tmp_path / "data"
    f = write_jsonl(d / "sft.jsonl", qa_rows(3))
    f.write_text(f.read_text() + '{"prompt": "unclosed\n')
    message = fails_cleanly(project(tmp_path, {"sft": {"path": str(f)}}), tmp_path)
    assert f"{f}:4: not valid JSON" in message


def test_missing_mapped_field(tmp_path):
    d = tmp_path / "data"
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}, {"instruction": "e"}]
    f = write_jsonl(d / "sft.jsonl", rows)
    params = project(tmp_path, {"sft": {"path": str(f), "fields": {"instruction": "prompt", "output": "completion"}}})
    message = fails_cleanly(params, tmp_path)
    assert f"{f}:3: no column `output` (mapped by `fields:` to completion)" in message


def test_unmapped_field_names_the_mapping_to_write(tmp_path):
    f = write_jsonl(tmp_path / "data" / "sft.jsonl", [{"question": "a", "answer": "b"}])
    message = fails_cleanly(project(tmp_path, {"sft": {"path": str(f)}}), tmp_path)
    assert f"{f}:1: no field `prompt`" in message and "data.sources.sft.fields" in message


def test_csv_that_is_not_utf8(tmp_path):
    f = tmp_path / "data" / "sft.csv"
    f.parent.mkdir(parents=True)
    f.write_bytes("prompt,completion\nfine,ok\nCaf\u00e9 menu?,Coffee.\n".encode("latin-1"))
    message = fails_cleanly(project(tmp_path, {"sft": {"path": str(f)}}), tmp_path)
    assert f"{f}:3: not UTF-8" in message and "iconv" in message


def test_empty_file(tmp_path):
    f = tmp_path / "data" / "sft.jsonl"
    f.parent.mkdir(parents=True)
    f.write_text("")
    message = fails_cleanly(project(tmp_path, {"sft": {"path": str(f)}}), tmp_path)
    assert f"{f}: empty file" in message


def test_eval_row_without_a_reference(tmp_path):
    d = tmp_path / "data"
    sft = write_jsonl(d / "sft.jsonl", qa_rows(20))
    ev = write_jsonl(d / "eval.jsonl", [{"prompt": "a?", "completion": "b"}, {"prompt": "c?"}])
    params = project(tmp_path, {"sft": {"path": str(sft)}, "eval": {"path": str(ev)}}, holdout={"dev": 2})
    message = fails_cleanly(params, tmp_path)
    assert f"{ev}:2: an eval row without a reference" in message and "`completion`" in message


def test_classification_answers_outside_the_labels(tmp_path):
    d = tmp_path / "data"
    rows = [{"text": f"ticket {i}", "label": ["billing", "bug"][i % 2]} for i in range(20)]
    rows[7]["label"] = "refund"
    f = write_jsonl(d / "tickets.jsonl", rows)
    root = tmp_path
    params = project(root, {"sft": {"path": str(f), "fields": {"text": "prompt", "label": "completion"}}})
    p = params.model_dump(mode="json")
    p["scope"].update(task="classification", labels=["billing", "bug"])
    p["scope"]["kpis"] = [{"metric": "accuracy", "threshold": 0.5, "direction": "higher"}]
    p["select"]["rank_by"] = "answer_perplexity"
    params = load_params(write_params(root, p))
    message = fails_cleanly(params, root)
    assert f"{f}:8: answer 'refund' is not one of `scope.labels`" in message


def test_hub_dataset_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = project(tmp_path, {"sft": {"dataset": "tatsu-lab/alpaca", "split": "train", "revision": "main"}})
    message = fails_cleanly(params, tmp_path)
    assert "'tatsu-lab/alpaca'" in message and "HF_HUB_OFFLINE" in message


def test_group_by_field_that_does_not_exist(tmp_path):
    f = write_jsonl(tmp_path / "data" / "sft.jsonl", qa_rows(10))
    params = project(tmp_path, {"sft": {"path": str(f)}}, holdout={"eval": 2, "dev": 2, "group_by": "customer"})
    message = fails_cleanly(params, tmp_path)
    assert f"{f}:1: no field `customer` (`data.holdout.group_by`)" in message


def test_every_role_problem_at_once(tmp_path):
    d = tmp_path / "data"
    sft = d / "sft.jsonl"
    sft.parent.mkdir(parents=True)
    sft.write_text("")
    ev = write_jsonl(d / "eval.jsonl", [{"prompt": "c?"}])
    params = project(tmp_path, {"sft": {"path": str(sft)}, "eval": {"path": str(ev)}}, holdout={"dev": 2})
    message = fails_cleanly(params, tmp_path)
    assert "empty file" in message and "without a reference" in message


def test_source_outside_the_sources_folder_is_named(tmp_path):
    f = write_jsonl(tmp_path / "elsewhere" / "sft.jsonl", qa_rows(10))
    with pytest.raises(ProjectError, match="outside `paths.sources`"):
        project(tmp_path, {"sft": {"path": str(f)}})


# --- several columns into one field -----------------------------------------------------------------------------


def with_fields(params, role: str, fields: dict) -> object:
    """`params` with `role`'s `fields:` replaced past params validation, as a caller that skips the params rules
    would hand them to the data stage."""
    sources = params.data.sources
    source = getattr(sources, role).model_copy(update={"fields": fields})
    data = params.data.model_copy(update={"sources": sources.model_copy(update={role: source})})
    return params.model_copy(update={"data": data})


TWO_REFERENCES = (
    "question,gold,gold_alt\n"
    "What does abs do?,Return the absolute value of a number.,Gives the magnitude of x without its sign.\n"
    "What does len do?,Return the length of an object.,Counts how many items a container holds.\n"
    "What does ord do?,,Gives the number of a character.\n"
)


def test_two_reference_columns_are_both_references_and_both_are_scored(tmp_path):
    from stages import data
    from stages.common.metrics import score

    d = tmp_path / "data"
    sft, dev = write_jsonl(d / "sft.jsonl", qa_rows(30)), write_jsonl(d / "dev.jsonl", qa_rows(3, offset=100))
    (d / "eval.csv").write_text(TWO_REFERENCES, encoding="utf-8")
    fields = {"question": "prompt", "gold": "references", "gold_alt": "references"}
    params = project(
        tmp_path,
        {"sft": {"path": str(sft)}, "dev": {"path": str(dev)}, "eval": {"path": str(d / "eval.csv"), "fields": fields}},
    )
    data.run(params, params.paths)
    rows = read_jsonl(Path(params.paths.processed) / "eval.jsonl")
    refs = [r["references"] for r in rows]
    assert refs == [
        ["Return the absolute value of a number.", "Gives the magnitude of x without its sign."],
        ["Return the length of an object.", "Counts how many items a container holds."],
        ["Gives the number of a character."],  # the empty `gold` cell is no reference
    ], "both columns, in column order"
    # Answers that each match one of the two references: scored against both, every row is matched.
    answers = [refs[0][1], refs[1][0], refs[2][0]]  # alt, gold, alt
    both = score(["rougeL"], answers, refs)["rougeL"]
    gold_only = score(["rougeL"], answers, [r[:1] for r in refs])["rougeL"]
    alt_only = score(["rougeL"], answers, [r[-1:] for r in refs])["rougeL"]
    assert both == 1.0 and both > gold_only and both > alt_only


def test_two_columns_into_completion_are_an_error_naming_both_and_write_nothing(tmp_path):
    d = tmp_path / "data"
    sft, dev = write_jsonl(d / "sft.jsonl", qa_rows(30)), write_jsonl(d / "dev.jsonl", qa_rows(3, offset=100))
    ev = d / "eval.csv"
    ev.write_text(TWO_REFERENCES, encoding="utf-8")
    params = project(
        tmp_path,
        {
            "sft": {"path": str(sft)},
            "dev": {"path": str(dev)},
            "eval": {"path": str(ev), "fields": {"question": "prompt", "gold": "completion"}},
        },
    )
    params = with_fields(params, "eval", {"question": "prompt", "gold": "completion", "gold_alt": "completion"})
    message = fails_cleanly(params, tmp_path)
    assert f"`data.sources.eval.fields` ({ev}) maps both `gold` and `gold_alt` to `completion`" in message
    assert "`fields: {gold: references, gold_alt: references}`" in message, "says what to write instead"


def test_a_mapped_column_onto_a_column_of_that_name_is_an_error_once(tmp_path):
    rows = [{"question": f"q{i}?", "prompt": f"old prompt {i}", "completion": f"a{i}"} for i in range(20)]
    f = write_jsonl(tmp_path / "data" / "sft.jsonl", rows)
    params = project(
        tmp_path, {"sft": {"path": str(f), "fields": {"question": "prompt"}}}, holdout={"eval": 2, "dev": 2}
    )
    message = fails_cleanly(params, tmp_path)
    assert (
        f"{f}:1 (and every row with the same columns): `data.sources.sft.fields` maps `question` to `prompt`, and "
        "the row also has a column named `prompt`" in message
    )
    assert message.count("maps `question`") == 1, "one message for the file, not one per row"
    assert "`prompt: original_prompt`" in message


def test_references_gather_every_answer_in_order_skipping_empty_and_repeated(tmp_path):
    from stages.common.sources import load_all

    d = tmp_path / "data"
    sft = write_jsonl(d / "sft.jsonl", qa_rows(30))
    ev = write_jsonl(
        d / "eval.jsonl",
        [
            {"q": "a?", "main": "A.", "gold": ["B.", "C."], "alt": "D."},  # a list cell is flattened
            {"q": "b?", "main": "A.", "alt": "E."},  # no `gold` on this row: skipped
            {"q": "c?", "main": "", "gold": "F.", "alt": "F."},  # empty and repeated answers: once
        ],
    )
    dev = write_jsonl(
        d / "dev.jsonl",
        [
            {"prompt": "d?", "completion": "G.", "references": ["G.", "H."]},
            {
                "messages": [{"role": "user", "content": "e?"}, {"role": "assistant", "content": "I."}],
                "reference": "J.",
            },
        ],
    )
    fields = {"q": "prompt", "main": "reference", "gold": "references", "alt": "references"}
    params = project(
        tmp_path, {"sft": {"path": str(sft)}, "eval": {"path": str(ev), "fields": fields}, "dev": {"path": str(dev)}}
    )
    loaded = load_all(params)
    assert [r["references"] for r in loaded["eval"].records] == [["A.", "B.", "C.", "D."], ["A.", "E."], ["F."]]
    assert [r["references"] for r in loaded["dev"].records] == [["G.", "H."], ["I.", "J."]]


def test_reference_columns_all_missing_on_a_row_name_them(tmp_path):
    d = tmp_path / "data"
    sft = write_jsonl(d / "sft.jsonl", qa_rows(30))
    ev = write_jsonl(d / "eval.jsonl", [{"q": "a?", "gold": "A."}, {"q": "b?"}])
    fields = {"q": "prompt", "gold": "references", "alt": "references"}
    params = project(
        tmp_path, {"sft": {"path": str(sft)}, "eval": {"path": str(ev), "fields": fields}}, holdout={"dev": 2}
    )
    message = fails_cleanly(params, tmp_path)
    assert f"{ev}:2: no column `gold`, `alt` (mapped by `fields:` to references, references)" in message


# --- personal data ---------------------------------------------------------------------------------------------

PII = {
    "email": "jane.doe@example.org",
    "phone": "+44 20 7946 0958",
    "iban": "DE89 3704 0044 0532 0130 00",
    "card": "4111 1111 1111 1111",
    "ip": "203.0.113.42",
}


def personal_project(root: Path, on_pii: str):
    d = root / "data"
    rows = qa_rows(60)
    rows[3]["prompt"] = f"My card {PII['card']} was charged twice, mail me at {PII['email']}?"
    rows[7]["completion"] = f"Call {PII['phone']} and quote IBAN {PII['iban']}."
    evals = [{"prompt": f"Login from {PII['ip']} failed, why?", "completion": "Check the firewall."}] + qa_rows(9, 500)
    write_jsonl(d / "sft.jsonl", rows)
    write_jsonl(d / "eval.jsonl", evals)
    write_jsonl(d / "dev.jsonl", qa_rows(5, offset=900))
    (d / "kb").mkdir(parents=True)
    (d / "kb" / "contacts.md").write_text(f"# Contacts\n\nEscalations go to {PII['email']}.\n")
    params = project(
        root,
        {
            "sft": {"path": str(d / "sft.jsonl")},
            "eval": {"path": str(d / "eval.jsonl")},
            "dev": {"path": str(d / "dev.jsonl")},
            "knowledge": {"path": str(d / "kb")},
        },
    )
    scope = params.scope.model_copy(
        update={"privacy": params.scope.privacy.model_copy(update={"personal_data": True, "on_pii": on_pii})}
    )
    return params.model_copy(update={"scope": scope})


def processed_text(params) -> str:
    return "".join(p.read_text() for p in Path(params.paths.processed).glob("*.jsonl"))


def test_personal_data_is_redacted_in_every_role_and_counted_by_type(tmp_path):
    from stages import data
    from stages.common.pii import find_pii

    params = personal_project(tmp_path, "redact")
    data.run(params, params.paths)
    text = processed_text(params)
    assert not any(value in text for value in PII.values()) and not find_pii(text, "US")
    assert all(f"[{t.upper()}]" in text for t in PII), "each value replaced by its type"
    found = read_json(Path(params.paths.metrics) / "data.json")["pii"]
    assert found["sft"] == {"email": 1, "phone": 1, "iban": 1, "card": 1, "ip": 0, "records": 2}
    assert found["eval"]["ip"] == 1 and found["knowledge"]["email"] == 1 and found["dev"]["records"] == 0
    card = (Path(params.paths.processed) / "card.md").read_text()
    assert "## Personal data" in card and "**** **** **** 1111" in card
    assert not any(value in card for value in PII.values()), "the card shows masked examples only"


def test_personal_data_fails_naming_the_file_and_record_and_writes_nothing(tmp_path):
    message = fails_cleanly(personal_project(tmp_path, "fail"), tmp_path)
    assert "`scope.privacy.on_pii` is fail" in message and "sft.jsonl: record 4: card **** **** **** 1111" in message
    assert PII["card"] not in message and PII["email"] not in message


def test_personal_data_reported_only_stays_and_is_counted(tmp_path):
    from stages import data

    params = personal_project(tmp_path, "report")
    data.run(params, params.paths)
    assert PII["iban"] in processed_text(params)
    assert read_json(Path(params.paths.metrics) / "data.json")["pii"]["sft"]["records"] == 2
    assert "reported only" in (Path(params.paths.processed) / "card.md").read_text()


def test_no_scan_when_the_scope_declares_no_personal_data(tmp_path):
    from stages import data

    params = personal_project(tmp_path, "fail")
    params = params.model_copy(
        update={
            "scope": params.scope.model_copy(
                update={"privacy": params.scope.privacy.model_copy(update={"personal_data": False})}
            )
        }
    )
    data.run(params, params.paths)
    assert "pii" not in read_json(Path(params.paths.metrics) / "data.json")
