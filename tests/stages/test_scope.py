import json
from pathlib import Path

import pytest

from stages.common.io import read_json

SFT, SFT_REPEATED, PREFERENCE, CORPUS, CORPUS_REPEATED, GENERAL = 130, 2, 105, 10, 2, 5


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The tiny project on a small data set whose counts the test knows: SFT rows and corpus texts, a few of each
    repeated, preference pairs, general texts, and the tiny project's one knowledge page. No model."""
    from stages.common.loader import load_params
    from tests.conftest import tiny_params_dict, write_params

    root = tmp_path_factory.mktemp("scope-small")
    data = root / "data"
    data.mkdir()

    def jsonl(name: str, rows: list[dict]) -> str:
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(data / name)

    sft = [
        {"prompt": f"What does `mod{i}.func` do?", "completion": f"Return the value number {i}.", "function": f"m{i}"}
        for i in range(SFT)
    ]
    preference = [
        {"prompt": f"What does `mod{i}.func` do?", "chosen": f"Return value {i}.", "rejected": "Open a socket."}
        for i in range(PREFERENCE)
    ]
    corpus = [{"text": f"mod{i}.func()\nReturn the value number {i} of the list."} for i in range(CORPUS)]
    p = tiny_params_dict(root)
    p["paths"]["sources"] = str(data)  # sources live under it (DVC tracks that folder)
    sources = p["data"]["sources"]
    (data / "knowledge").mkdir()
    page = Path(sources["knowledge"]["path"])
    (data / "knowledge" / page.name).write_text(page.read_text())
    sources["knowledge"]["path"] = str(data / "knowledge")
    sources["sft"]["path"] = jsonl("sft.jsonl", sft + sft[:SFT_REPEATED])
    sources["preference"]["path"] = jsonl("preference.jsonl", preference)
    sources["corpus"]["path"] = jsonl("corpus.jsonl", corpus + corpus[:CORPUS_REPEATED])
    sources["general"]["path"] = jsonl("general.jsonl", [{"text": f"General text number {i}."} for i in range(GENERAL)])
    return load_params(write_params(root, p))


def test_scope_writes_verdict_plan_and_what_the_data_holds(small):
    from stages import scope

    scope.run(small, small.paths)
    report = read_json(small.paths.scope_report)
    assert report["verdict"] == "defined"
    assert report["plan"]["adapt_techniques"] == ["prompt", "prompt_tuning", "lora", "qlora"]
    assert report["plan"]["candidate_hosting"] == ["self", "saas"]
    assert "found in the data" in report["plan"]["why"]
    assert report["checklist"]["kpis"][0]["metric"] == "latency_ms"
    assert "kpis" not in report["plan"]
    sft = report["data"]["sft"]
    assert sft["rows_found"] == SFT + SFT_REPEATED and sft["rows_kept"] == SFT
    assert sft["rows_dropped"] == {"duplicate": SFT_REPEATED}
    assert report["data"]["preference"]["rows_kept"] == PREFERENCE and report["data"]["general"]["rows_kept"] == GENERAL
    assert report["data"]["corpus"]["rows_found"] == CORPUS + CORPUS_REPEATED
    assert report["data"]["corpus"]["rows_dropped"] == {"duplicate": CORPUS_REPEATED}


def test_declared_counts_above_the_data_are_warnings_and_the_plan_uses_real_counts(small):
    from stages.scope import check

    holdout = int(small.data.holdout.eval + small.data.holdout.dev)  # rows held out of the sft source
    data = small.scope.data.model_copy(update={"sft_pairs": 50_000, "preference_pairs": 9000})
    params = small.model_copy(update={"scope": small.scope.model_copy(update={"data": data})})
    report = check(params)
    assert any(f"`scope.data.sft_pairs` declares 50000, the data has {SFT - holdout}" in w for w in report["warnings"])
    assert any(
        f"`scope.data.preference_pairs` declares 9000, the data has {PREFERENCE}" in w for w in report["warnings"]
    )
    assert "full" not in report["plan"]["adapt_techniques"], "50k declared, a hundred found: no full fine-tuning"


def test_personal_data_restricts_hosting(tiny):
    from stages.scope import plan

    private = tiny.model_copy(
        update={
            "scope": tiny.scope.model_copy(
                update={"privacy": tiny.scope.privacy.model_copy(update={"personal_data": True})}
            )
        }
    )
    assert plan(private)["candidate_hosting"] == ["self"]
    assert plan(tiny)["candidate_hosting"] == ["self", "saas"]
