"""scope: is the project defined? Validates the checklist in params.yaml, opens every data source, derives the plan.

    python -m stages.scope          # writes reports/scope.json, or exits 2 with every problem
    lifecycle validate              # the same checks and report, without DVC

The plan (which techniques the data supports) uses the rows actually found, not only what `scope.data`
declares; a declared count above the real one is a warning naming both numbers.
"""

from __future__ import annotations

import logging

from stages.common import rules
from stages.common.candidates import candidate_problems
from stages.common.cli import stage_main
from stages.common.errors import ProjectError
from stages.common.io import write_json
from stages.common.params import DataInventory, Params, Paths
from stages.common.rules import allowed_techniques, technique_problems
from stages.common.sources import holdout_size, load_all

log = logging.getLogger(__name__)


def plan(params: Params, counts: dict | None = None) -> dict:
    """What the scope allows downstream stages to do: from `scope.data`, or the real `counts` when given."""
    s = params.scope
    techniques = allowed_techniques(s, counts)
    hosting = ["self"] if s.privacy.personal_data else ["self", "saas"]
    knowledge = counts["knowledge_documents"] if counts else s.data.knowledge_documents
    needs_rag = knowledge > 0 or s.live_data_source is not None
    steps = [
        {
            "step": "prompt",
            "why": "zero- and few-shot on the dev split: the cheapest answer, and the baseline "
            "every tuned variant must beat",
        }
    ]
    if needs_rag:
        steps.append(
            {
                "step": "rag",
                "why": f"{knowledge} knowledge documents"
                + (f" and the live source {s.live_data_source!r}" if s.live_data_source else "")
                + ": answers grounded in them, measured against the same model without retrieval",
            }
        )
    if params.adapt.technique.value != "prompt":
        steps.append({"step": params.adapt.technique.value, "why": techniques["why"]})
    steps += [
        {"step": m.value, "why": "preference pairs teach what a good answer is beyond the reference"}
        for m in params.align.methods
    ]
    if s.deployment_target is not None:
        steps.append(
            {
                "step": "deploy",
                "why": f"to {s.deployment_target.value}"
                + (f" in {s.residency.deployment_region}" if s.residency.deployment_region else ""),
            }
        )
    hw = s.hardware

    def machine(m) -> str:
        return f"{m.count} x {m.gpu or 'GPU'} ({m.gpu_memory_gib:g} GiB each)" if m.count else "CPU only"

    return {
        "phase": s.phase.value,
        "steps": steps,
        "adapt_techniques": techniques["adapt"],
        "align_methods": techniques["align"],
        "why": techniques["why"],
        "candidate_hosting": hosting,
        "where": {
            "training": machine(hw.training),
            "serving": machine(hw.serving),
            "deployment": s.deployment_target.value if s.deployment_target else None,
            "residency": s.residency.region,
            "deployment_region": s.residency.deployment_region,
        },
        "candidates": {c.name: candidate_problems(c, params) or "admissible" for c in params.select.candidates},
        "licences": s.licences,
        "languages": s.languages,
        "gpu_memory_gib": hw.training.gpu_memory_gib,
        "deployment_target": s.deployment_target.value if s.deployment_target else None,
        "needs_rag": needs_rag,
    }


def inspect_data(params: Params) -> dict:
    """Open every declared source (structural problems raise ProjectError, all at once): per-role rows found,
    kept and dropped with reasons, the real counts, and warnings where `scope.data` declares more."""
    loaded = load_all(params)
    roles = {role: d.summary() for role, d in loaded.items()}
    total = sft = len(loaded["sft"].records) if "sft" in loaded else 0
    for role in ("eval", "dev"):  # held out of sft later, by the data stage
        if role not in loaded:
            sft -= holdout_size(getattr(params.data.holdout, role), total)
    evals = (
        len(loaded["eval"].records)
        if "eval" in loaded
        else holdout_size(params.data.holdout.eval, total)
        if "sft" in loaded
        else 0
    )
    counts = {
        "sft_pairs": max(sft, 0),
        "sft_held_out": total - max(sft, 0),  # rows of the sft source that `data.holdout` keeps for eval/dev
        "eval_rows": evals,
        "preference_pairs": len(loaded["preference"].records) if "preference" in loaded else 0,
        "knowledge_documents": len(loaded["knowledge"].records) if "knowledge" in loaded else 0,
    }
    declared = params.scope.data
    warnings = [
        f"`scope.data.{k}` declares {getattr(declared, k)}, the data has {n}"
        for k, n in counts.items()
        if k in DataInventory.model_fields and getattr(declared, k) > n
    ]
    return {"roles": roles, "counts": counts, "warnings": warnings}


def check(params: Params) -> dict:
    """The whole scope verdict: the data as found, the plan from it, what the plan and the phase forbid; every
    problem at once."""
    data = inspect_data(params)
    derived = plan(params, data["counts"])
    problems = technique_problems(params, allowed_techniques(params.scope, data["counts"]))
    problems += rules.phase_problems(params, data["counts"])
    if problems:
        raise ProjectError(problems)
    return {
        "project": params.project.name,
        "verdict": "defined",
        "checklist": params.scope.model_dump(mode="json"),
        "plan": derived,
        "phase_rules": rules.phase_report(params, data["counts"]),
        "data": data["roles"],
        "warnings": rules.warnings(params) + data["warnings"],
    }


def run(params: Params, paths: Paths) -> dict:
    report = check(params)
    for w in report["warnings"]:
        log.warning(w)
    write_json(paths.scope_report, report)
    from stages.common.tracking import stage_run

    with stage_run("scope", params, params.scope.model_dump(mode="json")) as _:
        import mlflow

        mlflow.log_artifact(paths.scope_report)
        mlflow.set_tag("scope.verdict", "defined")
        mlflow.log_metrics({f"data.{role}.rows_kept": r["rows_kept"] for role, r in report["data"].items()})
    report["summary"] = (
        f"project '{params.project.name}' is defined; techniques allowed: "
        f"{report['plan']['adapt_techniques']}"
        + (f"; {len(report['warnings'])} warnings" if report["warnings"] else "")
    )
    return report


def main(argv: list[str] | None = None) -> int:
    return stage_main("scope", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
