"""What the `lifecycle` commands say to people: the summary `lifecycle run` and `lifecycle status` print (and the
MLflow parent run carries as its description), the data table and plan of `lifecycle validate`, the stage table
of `lifecycle status`, the versions of `lifecycle models`, the snapshots of `lifecycle snapshot`. Rendering only:
it reads the reports the stages wrote, or what a command hands it, and never runs anything.

    lifecycle status      # the stage table, the servers in use, the last run and its summary
"""

from __future__ import annotations

import json
from pathlib import Path

from flows.ladder import stage_name
from stages.common.errors import ExitStatus, meaning

LAST_RUN = Path("reports/last_run.json")  # what the last run did (by hand or on a schedule); `lifecycle status`


def read_json_if_any(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def summary(root: Path, paths) -> str:
    """What a reviewer wants after a run: verdict, choice and why, baseline vs tuned, gates, versions, next commands.

    Only what the last run produced or found up to date (reports/last_run.json): a run that failed at a stage
    says FAILED, where and why, and shows no table an earlier run left behind."""
    last = read_json_if_any(root / LAST_RUN) or {}
    done = {stage_name(s) for s in last.get("ran", []) + last.get("skipped", [])} if last else None

    def produced(stage: str, path: Path):
        return read_json_if_any(path) if done is None or stage in done else None

    lines = []
    status = last.get("exit_status", ExitStatus.OK)
    if status not in (ExitStatus.OK, ExitStatus.GATE_REFUSED):
        lines.append(f"FAILED     at `{last.get('failed_stage')}`: {meaning(status)} (exit status {status})")
        lines.append("           the stage's own message says what to change (`lifecycle status` prints it again)")
    scope = produced("scope", root / paths.scope_report)
    if scope:
        lines.append(
            f"scope      {scope['verdict']} ({scope['plan'].get('phase', 'rnd')} rules): allowed techniques "
            f"{scope['plan']['adapt_techniques']}, alignment {scope['plan']['align_methods']}"
        )
    selection = produced("select", root / paths.selection)
    if selection:
        lines.append(f"select     {selection['selected']['name']}: {selection['selected']['why']}")
        for c in selection["candidates"]:
            if c["status"] == "rejected":
                lines.append(f"           rejected {c['name']}: {'; '.join(c['reasons'])}")
        if "api_alternative" in selection:
            alt = selection["api_alternative"]
            lines.append(
                f"           API alternative {alt['name']}: {alt['why']}"
                + (
                    f" (${alt['cost_per_1k_requests_usd']:g} per 1k requests)"
                    if alt.get("cost_per_1k_requests_usd") is not None
                    else ""
                )
            )
        lines.append("           (lifecycle select --explain: every candidate, filter and figure)")
    retrieval = produced("integrate", root / paths.metrics / "integrate.json")
    if retrieval and retrieval.get("retrieval_eval_rows"):
        lines.append(
            f"integrate  {retrieval['chunks']} chunks from {retrieval['documents']} documents; on "
            f"{retrieval['retrieval_eval_rows']} eval questions "
            + "; ".join(
                f"{how} recall@1 {m['recall@1']} @10 {m['recall@10']} MRR {m['mrr']}"
                for how, m in retrieval.items()
                if isinstance(m, dict)
            )
        )
    reward = produced("reward", root / paths.metrics / "reward.json")
    if reward and reward.get("trained"):
        lines.append(
            f"reward     held-out pairwise accuracy {reward['heldout_accuracy']} on {reward['heldout_pairs']} "
            f"pairs (chance {reward['chance_accuracy']}, untrained {reward['heldout_accuracy_untrained']})"
        )
    report = produced("evaluate", root / paths.eval_metrics)
    if report:
        from stages.common.confidence import cell

        variants = report["variants"]
        metrics = list(next(iter(variants.values())))
        lines.append("evaluate   " + f"{'variant':<20}" + "".join(f"{m:>26}" for m in metrics))
        for name, values in variants.items():
            mark = " *" if name == report["candidate"] else ""
            lines.append("           " + f"{name + mark:<20}" + "".join(f"{cell(values[m]):>26}" for m in metrics))
        lines.append(f"           [{report['confidence_level']:.0%} bootstrap confidence intervals]")
        choice = report.get("choice")
        if choice:  # why this variant and not a costlier or a simpler one
            lines.append(f"candidate  {report['candidate']} (the {report['rung']} rung): {choice['why']}")
        verdict = "PASSED" if report["gates"]["passed"] else "FAILED"
        lines.append(
            f"gates      {verdict} for {report['candidate']} (* above; baselines: {', '.join(report['baselines'])})"
        )
        lines += [f"           {r}" for r in report["gates"]["reasons"]]
    if last.get("ladder"):
        lines += ladder_lines(last["ladder"])
    spent = last.get("cost")
    if spent:
        flag = "OVER BUDGET" if spent["over_budget"] else "within budget"
        lines.append(
            f"cost       {spent['wall_hours']:.3f} h wall, training stages {spent['training_hours']:.3f} h of "
            f"{spent['budget_training_hours']} h ({flag}), {spent['gpu_hours']:.3f} GPU-hours"
        )
    package = produced("package", root / paths.package / "package.json")
    if package and report and report["gates"]["passed"]:
        lines.append(
            f"package    MLflow model {package['registered_model']} version {package['version']} "
            f"(@{package['alias']}), bento {package['bento']}"
        )
        if package.get("why"):
            lines.append(f"           {package['alias']}: {package['why']}")
        engine = (report.get("engines") or {}).get(report["candidate"])
        if engine:  # what generated its answers in evaluate, and serves them
            lines.append(f"           engine {engine['engine']}: {engine['why']}")
        if report.get("serving"):  # evaluate chose a serving precision among `package.quantize`
            lines.append(f"           served at {report['serving']['precision']}: {report['serving']['why']}")
    from stages.common.tracking import tracking_uri

    uri = tracking_uri()
    review = (
        f"open {uri}"
        if uri.startswith(("http://", "https://"))
        else "mlflow ui --backend-store-uri sqlite:///mlflow.db"
    )
    if status not in (ExitStatus.OK, ExitStatus.GATE_REFUSED):
        lines.append(f"next       {'lifecycle run':<50}# after the fix: the failed stage and what follows re-run")
        return "\n".join(lines)
    lines += [
        f"next       {review:<50}# review runs and the registry",
        f"           {'lifecycle serve':<50}# serve the bento on 127.0.0.1:3000",
        f"           open {paths.eval_report}",
    ]
    return "\n".join(lines)


def ladder_lines(ladder: dict) -> list[str]:
    """The escalation ladder of the last run: each rung's verdict in climbing order, and where it stopped."""
    climbed = [f"{r['rung']} {'PASSED' if r['passed'] else 'FAILED'} ({r['candidate']})" for r in ladder["rungs"]]
    climbed += [f"{rung} not run" for rung in ladder["not_run"]]
    return [f"ladder     {' -> '.join(climbed)}", f"           {ladder['why']}"]


def plan_lines(report: dict) -> list[str]:
    """reports/scope.json's plan and phase rules, for people."""
    plan, rules = report["plan"], report["phase_rules"]
    lines = [f"phase {rules['phase']}: " + ("its rules" if rules["rules"] else "no rules beyond the checklist's")]
    lines += [f"  {'ok  ' if r['passed'] else 'FAIL'} {r['rule']}" for r in rules["rules"]]
    lines.append("\nplan (from the rows found):")
    lines += [f"  {i}. {step['step']:<14} {step['why']}" for i, step in enumerate(plan["steps"], 1)]
    where = plan["where"]
    lines.append(
        f"\nwhere: training on {where['training']}; serving on {where['serving']}; deployment "
        f"{where['deployment'] or 'not decided'}; data stays in {where['residency']}"
        + (f" ({where['deployment_region']})" if where["deployment_region"] else "")
        + f"; candidate hosting allowed: {', '.join(plan['candidate_hosting'])}"
    )
    lines.append("candidates:")
    lines += [
        f"  {name:<24} {verdict if isinstance(verdict, str) else 'excluded: ' + '; '.join(verdict)}"
        for name, verdict in plan["candidates"].items()
    ]
    return lines


def validation(params_file, project: str, report: dict) -> str:
    """`lifecycle validate`: each role's rows found, kept and dropped (why, the first examples), the warnings, the
    plan."""
    lines = [
        f"{params_file}: project '{project}' is defined\n",
        f"{'role':<11}{'rows found':>11}{'kept':>8}  dropped (why)                      source",
    ]
    for role, r in report["data"].items():
        why = ", ".join(f"{n} {reason}" for reason, n in r["rows_dropped"].items()) or "-"
        lines.append(f"{role:<11}{r['rows_found']:>11}{r['rows_kept']:>8}  {why:<34} {r['source']}")
        lines += [f"{'':<32}{example}" for example in r["first_dropped"][:3]]
    lines += [f"\nwarning: {warning}" for warning in report["warnings"]]
    return "\n".join(lines) + "\n\n" + "\n".join(plan_lines(report))


def run_lines(result, seconds: float) -> list[str]:
    """`lifecycle run`, before the summary: the snapshots refreshed, what ran and what was up to date, stage times."""
    lines = [""]
    if result.snapshots:
        lines.append(
            "snapshots: "
            + ", ".join(f"{role} {r['rows']} rows ({r['untrained_rows']} new)" for role, r in result.snapshots.items())
        )
    lines.append(
        f"lifecycle run ({result.trigger}): {seconds:.1f} s; ran "
        + (str(result.ran) if result.ran else "nothing" if result.failed_stage else "nothing (all up to date)")
        + f"; up to date {result.skipped or 'none'}"
        + (
            f"; not run (escalation ladder) {result.ladder['stages_not_run']}"
            if result.ladder and result.ladder["stages_not_run"]
            else ""
        )
    )
    if result.seconds:
        lines.append("stage seconds: " + ", ".join(f"{k} {v}" for k, v in result.seconds.items()))
    return lines


def status_lines(stages: list[str], changed: dict, servers: list[tuple[str, str]], last: dict | None) -> list[str]:
    """`lifecycle status`, before the summary: each stage up to date or what changed, the servers in use, the last
    run (and its error)."""
    lines = [
        f"{stage:<10} {'changed: ' + json.dumps(changed[stage]) if stage in changed else 'up to date'}"
        for stage in stages
    ]
    lines.append("")
    lines += [f"{tool:<10} {where}" for tool, where in servers]
    if last:
        lines.append(
            f"\nlast run: exit status {last['exit_status']}, ran {last['ran'] or 'nothing'} "
            f"in {last['total_seconds']} s (MLflow run {last['parent_run_id']})"
        )
        if last.get("error"):
            lines.append(last["error"])
    return lines


def models_table(rows: list[dict]) -> str:
    """`lifecycle models`: each registered version, its aliases, when, its variant and headline metric."""
    lines = [f"{'version':>7}  {'aliases':<22} {'created':<17} {'variant':<20} headline metric"]
    for r in rows:
        metric = r["tags"].get("lifecycle.primary_metric", "")
        lines.append(
            f"{r['version']:>7}  {','.join(r['aliases']) or '-':<22} {r['created']:<17} "
            f"{r['tags'].get('lifecycle.variant', '-'):<20} {metric} {r['tags'].get('eval.' + metric, '')}"
        )
    return "\n".join(lines)


def snapshot_lines(refreshed: dict, snapshots: Path) -> list[str]:
    """`lifecycle snapshot`: each live source's rows, where, and how many no run has trained on."""
    if not refreshed:
        return ["no live sources (`sql:` or `mlflow_traces:` under data.sources): nothing to refresh"]
    return [
        f"{role}: {r['rows']} rows in {snapshots / (role + '.jsonl')}, "
        f"{r['untrained_rows']} not yet trained on" + ("" if r["changed"] else " (unchanged)")
        for role, r in refreshed.items()
    ]


def pending_lines(rows: list[dict], trust: str) -> list[str]:
    """`lifecycle review`: each correction waiting for a verdict, beside what was served."""
    if not rows:
        return [f"no correction waits for review (trust: {trust})"]

    def cut(text: str, n: int = 100) -> str:
        text = " ".join(str(text or "").split())
        return text if len(text) <= n else text[: n - 1] + "…"

    lines = [f"{len(rows)} corrections wait for review (trust: {trust}; only approved ones train the next model):"]
    for r in rows:
        lines += [
            "",
            f"{r['trace_id']}  from {r['caller']}  {r['time'][:19]}",
            f"  asked:     {cut(r['prompt'])}",
            f"  served:    {cut(r['served'])}",
            f"  corrected: {cut(r['correction'])}",
        ]
    lines += ["", "lifecycle review --approve TRACE_ID... --reviewer NAME   (or --reject, with --why)"]
    return lines
