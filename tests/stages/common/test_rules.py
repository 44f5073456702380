"""The checklist's rules: each one broken by a params file, its message naming the key; phase rules; warnings."""

from __future__ import annotations

import json

import pytest

from stages.common import rules
from stages.common.errors import ProjectError
from stages.common.loader import load_params
from tests.conftest import default_params, write_params
from tests.stages.common.test_loader import problems_for

GPT = {"name": "gpt", "catalog": "gpt-4o-mini"}
NON_COMMERCIAL = {"name": "nc", "catalog": "c4ai-command-r-v01"}


def personal(p):
    p["scope"]["privacy"]["personal_data"] = True


def release(p):
    p["scope"]["phase"] = "release"


def add_candidate(entry, licence: str | None = None):
    def edit(p):
        p["select"]["candidates"].append(entry)
        if licence:
            p["scope"]["licences"].append(licence)

    return edit


def setting(path: str, value):
    def edit(p):
        *parents, last = path.split(".")
        node = p
        for part in parents:
            node = node[part]
        node[last] = value

    return edit


# (why, the edits that break it, what the message must say: the key first)
BROKEN = [
    (
        "personal data, SaaS deployment",
        [personal, setting("scope.deployment_target", "saas")],
        "`scope.deployment_target` is saas",
    ),
    (
        "personal data, SaaS candidate",
        [personal, add_candidate(GPT, "proprietary"), setting("select.rank_by", "rougeL")],
        "`select.candidates.gpt` is SaaS-hosted",
    ),
    (
        "personal data, SaaS judge",
        [personal, setting("evaluate.judge", {"model": "x/judge", "hosting": "saas"})],
        "`evaluate.judge` is SaaS-hosted",
    ),
    (
        "residency, cloud target without a region",
        [setting("scope.residency.region", "eu"), setting("scope.deployment_target", "cloud")],
        "`scope.residency.deployment_region`: the data must stay in 'eu'",
    ),
    (
        "residency, cloud target elsewhere",
        [
            setting("scope.residency.region", "eu"),
            setting("scope.residency.deployment_region", "us-east-1"),
            setting("scope.deployment_target", "cloud"),
        ],
        "`scope.residency.deployment_region` 'us-east-1' is outside the residency region 'eu'",
    ),
    (
        "a technique the inventory cannot support",
        [setting("adapt.technique", "full")],
        "`adapt.technique` is full but the data supports only",
    ),
    (
        "a language no candidate covers",
        [setting("scope.languages", ["en", "ja"])],
        "`scope.languages` lists 'ja' but no candidate",
    ),
    ("no KPIs", [release, setting("scope.kpis", [])], "`scope.kpis`"),
    (
        "JSON output without a schema",
        [setting("scope.output_format", {"type": "json", "json_schema": None})],
        "`scope.output_format` is json but `json_schema` is not set",
    ),
    (
        "a schema for plain output",
        [setting("scope.output_format", {"type": "plain", "json_schema": "x.json"})],
        "`scope.output_format.json_schema` is set but the output format is plain",
    ),
    (
        "a training GPU without memory",
        [setting("scope.hardware.training", {"gpu": "nvidia-l4", "gpu_memory_gib": 0, "count": 1})],
        "`scope.hardware.training.gpu_memory_gib` is 0 but a GPU is declared",
    ),
    (
        "GPU memory without a count",
        [setting("scope.hardware.serving", {"gpu": "nvidia-l4", "gpu_memory_gib": 24, "count": 0})],
        "`scope.hardware.serving.count` is 0",
    ),
    (
        "serving GPUs the hardware lacks",
        [setting("serve.resources.gpu", 1)],
        "`serve.resources.gpu` asks for 1 GPUs, `scope.hardware.serving.count` has 0",
    ),
    (
        "QLoRA without a training GPU",
        [setting("adapt.technique", "qlora")],
        "`adapt.technique` is qlora, which needs a GPU, but `scope.hardware.training.gpu_memory_gib` is 0",
    ),
    (
        "answer perplexity cannot rank an API",
        [add_candidate(GPT, "proprietary")],
        "`select.rank_by` answer_perplexity needs the log-probabilities",
    ),
    (
        "an unknown catalog id",
        [add_candidate({"name": "x", "catalog": "gpt-17"})],
        "`select.candidates.2`: Value error, unknown catalog id 'gpt-17'",
    ),
    (
        "a catalog and a path and an endpoint",
        [
            add_candidate(
                {
                    "name": "x",
                    "path": "models",
                    "licence": "mit",
                    "languages": ["en"],
                    "endpoint": {"base_url": "http://127.0.0.1:1/v1", "api_key_env": "K", "model": "m"},
                }
            )
        ],
        "an `endpoint` candidate is prompted through its API",
    ),
    (
        "an MVP without a deployment target",
        [setting("scope.phase", "mvp"), setting("scope.deployment_target", None)],
        "`scope.deployment_target` is null but phase mvp ships a model",
    ),
    (
        "a non-commercial licence in an MVP",
        [setting("scope.phase", "mvp"), add_candidate(NON_COMMERCIAL, "cc-by-nc-4.0")],
        "`select.candidates.nc`: its licence cc-by-nc-4.0 forbids commercial use",
    ),
    (
        "a release without a forgetting check",
        [release, setting("evaluate.max_forgetting", None)],
        "`evaluate.max_forgetting`: a release must show",
    ),
    (
        "a release that only reports personal data",
        [release, personal, setting("scope.privacy.on_pii", "report")],
        "`scope.privacy.on_pii` is report: a release with personal data must redact or fail",
    ),
    (
        "a release keeping personal data for ever",
        [release, personal, setting("scope.residency.retention_days", None)],
        "`scope.residency.retention_days`: a release holding personal data",
    ),
    (
        "the moved GPU budget",
        [setting("scope.budget.gpu_memory_gib", 24)],
        "`scope.budget.gpu_memory_gib` has moved to `scope.hardware.training.gpu_memory_gib`",
    ),
    ("an unknown phase", [setting("scope.phase", "beta")], "`scope.phase`"),
]


@pytest.mark.parametrize("why,edits,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_each_rule_names_its_key(tmp_path, why, edits, message):
    p = default_params()
    for edit in edits:
        edit(p)
    problems = problems_for(tmp_path, p)
    assert any(message in m for m in problems), problems


def test_every_problem_is_reported_at_once(tmp_path):
    p = default_params()
    for edit in (
        personal,
        setting("scope.deployment_target", "saas"),
        setting("scope.languages", ["en", "ja"]),
        setting("serve.resources.gpu", 2),
        setting("adapt.technique", "full"),
    ):
        edit(p)
    problems = problems_for(tmp_path, p)
    for key in ("`scope.deployment_target`", "`scope.languages`", "`serve.resources.gpu`", "`adapt.technique`"):
        assert any(key in m for m in problems), (key, problems)


def test_risky_but_legal_choices_are_warnings(tmp_path):
    p = default_params()
    p["scope"]["ui"] = "chat"
    p["scope"]["privacy"]["personal_data"] = True
    p["scope"]["residency"]["retention_days"] = None
    p["scope"]["serving"]["p95_latency_ms"] = 300
    p["scope"]["kpis"] = [k for k in p["scope"]["kpis"] if k["metric"] != "latency_ms"]
    p["scope"]["budget"]["monthly_serving_usd"] = 100
    p["scope"]["serving"]["requests_per_month"] = 0
    warnings = rules.warnings(load_params(write_params(tmp_path, p)))
    for key in (
        "`scope.ui` is chat",
        "`scope.residency.retention_days` is not set",
        "`scope.serving.p95_latency_ms` is 300",
        "`scope.budget.monthly_serving_usd` is set",
    ):
        assert any(w.startswith(key) for w in warnings), (key, warnings)


def test_phase_rules_tighten_and_need_the_real_eval_rows(tmp_path):
    """The same project in each phase: the MVP needs 50 eval rows, a release 300 without a `confidence: ci` KPI."""
    from stages.scope import check

    p = default_params()
    p["data"]["holdout"]["eval"] = 40
    p["scope"]["kpis"] = [{**k, "confidence": "point"} for k in p["scope"]["kpis"]]
    for phase, broken in (
        ("rnd", []),
        ("poc", []),
        ("mvp", ["`data.holdout.eval`"]),
        ("release", ["`data.holdout.eval`", "`scope.kpis`: a release gates with confidence"]),
    ):
        p["scope"]["phase"] = phase
        params = load_params(write_params(tmp_path, p))
        if not broken:
            report = check(params)
            assert report["phase_rules"]["phase"] == phase and all(r["passed"] for r in report["phase_rules"]["rules"])
            continue
        with pytest.raises(ProjectError) as err:
            check(params)
        for key in broken:
            assert any(m.startswith(key) for m in err.value.problems), (phase, err.value.problems)
        assert "40 rows" in str(err.value)


def test_the_scope_report_carries_the_plan_and_the_phase(processed):
    report = json.loads(open(processed.paths.scope_report).read())
    plan = report["plan"]
    assert [s["step"] for s in plan["steps"]] == ["prompt", "rag", "lora", "dpo", "rlhf", "deploy"]
    assert plan["where"]["training"] == "CPU only" and plan["candidates"] == {
        "tiny": "admissible",
        "tinier": "admissible",
    }
    assert report["phase_rules"]["phase"] == "poc" and report["phase_rules"]["rules"] == []


def test_a_holdout_that_swallows_the_sft_data_names_data_holdout(tmp_path):
    """The refusal names the key that caused it: the SFT rows left after the eval and dev splits are too few."""
    from stages.scope import check
    from tests.conftest import tiny_params_dict

    p = tiny_params_dict(tmp_path)
    p["data"]["holdout"] = {"eval": 0.6, "dev": 0.35}
    with pytest.raises(ProjectError) as err:
        check(load_params(write_params(tmp_path, p)))
    [problem] = [m for m in err.value.problems if m.startswith("`adapt.technique`")]
    assert "`data.holdout` keeps" in problem and "found in the data" in problem
    p["data"]["holdout"] = {"eval": 16, "dev": 8}  # the tiny project's own split: the same data supports lora
    assert "lora" in check(load_params(write_params(tmp_path, p)))["plan"]["adapt_techniques"]
