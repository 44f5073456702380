from stages.common.io import read_json


def test_scope_writes_verdict_and_plan(prepared):
    report = read_json(prepared.paths.scope_report)
    assert report["verdict"] == "defined"
    assert report["plan"]["adapt_techniques"] == ["prompt", "lora", "qlora"]
    assert report["plan"]["candidate_hosting"] == ["self", "saas"]
    assert report["checklist"]["kpis"][0]["metric"] == "latency_ms"
    assert "kpis" not in report["plan"]


def test_personal_data_restricts_hosting(prepared):
    from stages.scope import plan

    private = prepared.model_copy(update={"scope": prepared.scope.model_copy(
        update={"privacy": prepared.scope.privacy.model_copy(update={"personal_data": True})})})
    assert plan(private)["candidate_hosting"] == ["self"]
