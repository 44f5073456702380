"""scope: is the project defined? Validates the checklist in params.yaml, opens every data source, derives the plan.

    python -m stages.scope          # writes reports/scope.json, or exits 2 with every problem
    lifecycle validate              # the same checks and report, without DVC

The plan (which techniques the data supports) uses the rows actually found, not only what `scope.data`
declares; a declared count above the real one is a warning naming both numbers.
"""

from __future__ import annotations

import logging

from stages.common.cli import stage_main
from stages.common.io import write_json
from stages.common.params import Params, Paths, allowed_techniques, technique_problems
from stages.common.sources import holdout_size, load_all

log = logging.getLogger(__name__)


def plan(params: Params, counts: dict | None = None) -> dict:
    """What the scope allows downstream stages to do: from `scope.data`, or the real `counts` when given."""
    s = params.scope
    techniques = allowed_techniques(s, counts)
    hosting = ["self"] if s.privacy.personal_data else ["self", "saas"]
    knowledge = counts["knowledge_documents"] if counts else s.data.knowledge_documents
    return {
        "adapt_techniques": techniques["adapt"],
        "align_methods": techniques["align"],
        "why": techniques["why"],
        "candidate_hosting": hosting,
        "licences": s.licences,
        "languages": s.languages,
        "gpu_memory_gib": s.budget.gpu_memory_gib,
        "deployment_target": s.deployment_target.value,
        "needs_rag": knowledge > 0 or s.live_data_source is not None,
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
    counts = {"sft_pairs": max(sft, 0),
              "preference_pairs": len(loaded["preference"].records) if "preference" in loaded else 0,
              "knowledge_documents": len(loaded["knowledge"].records) if "knowledge" in loaded else 0}
    declared = params.scope.data
    warnings = [f"`scope.data.{k}` declares {getattr(declared, k)}, the data has {n}"
                for k, n in counts.items() if getattr(declared, k) > n]
    return {"roles": roles, "counts": counts, "warnings": warnings}


def check(params: Params) -> dict:
    """The whole scope verdict: the data as found, the plan from it, and what the plan forbids."""
    from stages.common.errors import ProjectError

    data = inspect_data(params)
    derived = plan(params, data["counts"])
    problems = technique_problems(params, allowed_techniques(params.scope, data["counts"]))
    if problems:
        raise ProjectError(problems)
    return {"project": params.project.name, "verdict": "defined", "checklist": params.scope.model_dump(mode="json"),
            "plan": derived, "data": data["roles"], "warnings": data["warnings"]}


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
    report["summary"] = (f"project '{params.project.name}' is defined; techniques allowed: "
                         f"{report['plan']['adapt_techniques']}" + (f"; {len(report['warnings'])} warnings"
                                                                   if report["warnings"] else ""))
    return report


def main(argv: list[str] | None = None) -> int:
    return stage_main("scope", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
