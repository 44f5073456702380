"""The escalation ladder's decisions (pure) and the rungs a project climbs."""

from __future__ import annotations

from pathlib import Path

from flows.ladder import above, after_rung, checked_after, rungs
from stages.common.params import Technique

CLIMBED = ["prompting", "fine-tuning", "alignment"]


def test_the_first_passing_rung_stops_the_climb():
    step = after_rung(CLIMBED, "prompting", True, [])
    assert step.stop and step.not_run == ["fine-tuning", "alignment"]
    assert step.why == "prompting passed the gates, the cheapest rung that does; fine-tuning, alignment not run"
    step = after_rung(CLIMBED, "fine-tuning", True, [])
    assert step.stop and step.not_run == ["alignment"]


def test_a_failing_rung_climbs_on_and_names_what_failed():
    step = after_rung(CLIMBED, "prompting", False, ["rougeL: +0.008 vs the 0.05 margin"])
    assert not step.stop and step.not_run == []
    assert step.why == "prompting failed the gates (rougeL: +0.008 vs the 0.05 margin): climbing to fine-tuning"


def test_the_top_rung_ends_the_climb_passed_or_not():
    assert after_rung(CLIMBED, "alignment", True, []) == after_rung(CLIMBED, "alignment", True, [])
    passed = after_rung(CLIMBED, "alignment", True, [])
    assert (
        passed.stop and passed.not_run == [] and passed.why == "alignment passed the gates, the cheapest rung that does"
    )
    failed = after_rung(CLIMBED, "alignment", False, ["latency"])
    assert failed.stop and failed.not_run == [] and failed.why.startswith("no rung passed the gates")
    only = after_rung(["prompting"], "prompting", False, ["x"])
    assert only.stop and "no rung passed" in only.why


def _with(tiny, stop=True, technique=None, methods=None):
    update = {"ladder": tiny.ladder.model_copy(update={"stop_when_passed": stop})}
    if technique:
        update["adapt"] = tiny.adapt.model_copy(update={"technique": technique})
    if methods is not None:
        update["align"] = tiny.align.model_copy(update={"methods": methods})
    return tiny.model_copy(update=update)


def test_rungs_follow_the_project_and_the_top_one_is_left_to_evaluate(tiny):
    assert checked_after(_with(tiny, stop=False)) == {}, "ladder off: every rung runs, no checks in between"
    params = _with(tiny)
    assert rungs(params) == [
        ("prompting", "prompt_search"),
        ("retrieval", "integrate"),
        ("fine-tuning", "adapt"),
        ("alignment", "align"),
    ]
    assert checked_after(params) == {"prompt_search": "prompting", "integrate": "retrieval", "adapt": "fine-tuning"}
    assert above(params, "retrieval") == [("fine-tuning", "adapt"), ("alignment", "align")]
    no_dpo = _with(tiny, methods=[])
    assert checked_after(no_dpo) == {"prompt_search": "prompting", "integrate": "retrieval"}
    assert above(no_dpo, "prompting") == [("retrieval", "integrate"), ("fine-tuning", "adapt")]
    no_knowledge = no_dpo.model_copy(
        update={
            "data": no_dpo.data.model_copy(
                update={"sources": no_dpo.data.sources.model_copy(update={"knowledge": None})}
            )
        }
    )
    assert rungs(no_knowledge) == [("prompting", "prompt_search"), ("fine-tuning", "adapt")], "nothing to retrieve"
    assert checked_after(no_knowledge) == {"integrate": "prompting"}, "after the (empty) index evaluate depends on"
    prompting_only = _with(tiny, technique=Technique.prompt, methods=[])
    assert rungs(prompting_only)[-1] == ("retrieval", "integrate") and checked_after(prompting_only) == {
        "prompt_search": "prompting"
    }


def test_the_flow_reaches_each_rung_after_the_one_below():
    """The flow runs stages in dvc.yaml's order: each rung's stage comes after the rung below it."""
    from flows.ladder import RUNGS, stage_name
    from flows.lifecycle import stage_order

    ending = [stage for _, stage in RUNGS]
    order = [stage_name(s) for s in stage_order(Path(__file__).parents[2]) if stage_name(s) in ending]
    assert list(dict.fromkeys(order)) == ending


def test_a_climb_judges_each_rung_once_and_skips_what_is_above_a_pass(tiny):
    """The flow's walk through dvc.yaml's stages with a verdict per rung: retrieval fails, fine-tuning passes."""
    from flows.ladder import Climb
    from flows.lifecycle import stage_order

    climb = Climb(_with(tiny))
    verdicts = {"prompting": False, "retrieval": False, "fine-tuning": True}
    ran, judged = [], []
    for stage in stage_order():
        if climb.skips(stage):
            continue
        ran.append(stage)
        rung = climb.ended_by(stage)
        if rung:
            judged.append((rung.rung, rung.check, rung.higher))
            climb.judged(rung, {"passed": verdicts.get(rung.rung, True), "failed": ["rougeL"]})
    assert [r for r, _, _ in judged] == ["prompting", "retrieval", "fine-tuning"], "each rung once, in order"
    assert judged[-1] == ("fine-tuning", True, ["reward", "align"]), "judged before alignment, which is not reached"
    assert "reward" not in ran and not any(s.startswith("align") for s in ran), "the rung above a pass never runs"
    assert ran[-2:] == ["evaluate", "package"], "the pipeline's evaluate and package still run"
    assert climb.record["winner"] == "fine-tuning" and climb.record["not_run"] == ["alignment"]
    assert [r["rung"] for r in climb.record["rungs"]] == ["prompting", "retrieval", "fine-tuning"]
