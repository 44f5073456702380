"""scope: is the project defined? Validates the checklist in params.yaml and derives the plan.

    python -m stages.scope          # writes reports/scope.json, or exits 2 with every problem
    lifecycle validate              # the same, without DVC
"""

from __future__ import annotations

from stages.cli import stage_main
from stages.io import write_json
from stages.params import Params, Paths, allowed_techniques


def plan(params: Params) -> dict:
    """What the scope allows downstream stages to do; select and adapt read it from reports/scope.json."""
    s = params.scope
    techniques = allowed_techniques(s)
    hosting = ["self"] if s.privacy.personal_data else ["self", "saas"]
    return {
        "adapt_techniques": techniques["adapt"],
        "align_methods": techniques["align"],
        "why": techniques["why"],
        "candidate_hosting": hosting,
        "licences": s.licences,
        "languages": s.languages,
        "gpu_memory_gib": s.budget.gpu_memory_gib,
        "deployment_target": s.deployment_target.value,
        "needs_rag": s.data.knowledge_documents > 0 or s.live_data_source is not None,
    }


def run(params: Params, paths: Paths) -> dict:
    # load_params already validated the schema and the contradictions: reaching here means "defined".
    report = {
        "project": params.project.name,
        "verdict": "defined",
        "checklist": params.scope.model_dump(mode="json"),
        "plan": plan(params),
    }
    write_json(paths.scope_report, report)
    from stages.tracking import stage_run

    with stage_run("scope", params, params.scope.model_dump(mode="json")) as _:
        import mlflow

        mlflow.log_artifact(paths.scope_report)
        mlflow.set_tag("scope.verdict", "defined")
    report["summary"] = f"project '{params.project.name}' is defined; techniques allowed: {report['plan']['adapt_techniques']}"
    return report


def main(argv: list[str] | None = None) -> int:
    return stage_main("scope", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
