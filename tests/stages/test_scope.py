from stages.common.io import read_json


def test_scope_writes_verdict_plan_and_what_the_data_holds(prepared):
    report = read_json(prepared.paths.scope_report)
    assert report["verdict"] == "defined"
    assert report["plan"]["adapt_techniques"] == ["prompt", "prompt_tuning", "lora", "qlora"]
    assert report["plan"]["candidate_hosting"] == ["self", "saas"]
    assert "found in the data" in report["plan"]["why"]
    assert report["checklist"]["kpis"][0]["metric"] == "latency_ms"
    assert "kpis" not in report["plan"]
    assert report["data"]["sft"]["rows_found"] == 1904 and report["data"]["corpus"]["rows_dropped"] == {"duplicate": 2}


def test_declared_counts_above_the_data_are_warnings_and_the_plan_uses_real_counts(prepared):
    from stages.scope import check

    data = prepared.scope.data.model_copy(update={"sft_pairs": 50_000, "preference_pairs": 9000})
    params = prepared.model_copy(update={"scope": prepared.scope.model_copy(update={"data": data})})
    report = check(params)
    assert any("`scope.data.sft_pairs` declares 50000, the data has 1880" in w for w in report["warnings"])
    assert "full" not in report["plan"]["adapt_techniques"], "50k declared, 1880 found: no full fine-tuning"


def test_personal_data_restricts_hosting(prepared):
    from stages.scope import plan

    private = prepared.model_copy(
        update={
            "scope": prepared.scope.model_copy(
                update={"privacy": prepared.scope.privacy.model_copy(update={"personal_data": True})}
            )
        }
    )
    assert plan(private)["candidate_hosting"] == ["self"]
