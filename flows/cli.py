"""`lifecycle`: run, validate, inspect, serve, deploy and schedule the project's lifecycle.

    lifecycle run                       # the whole pipeline (Prefect flow over the DVC stages), then a summary
    lifecycle validate                  # check params.yaml (the scope stage's checks) and print the plan
    lifecycle status                    # which stages are out of date, and the last run's summary
    lifecycle catalog [--json]          # the model catalog (real models, figures with their sources)
    lifecycle select --explain          # the last selection: every candidate, each filter's verdict, the figures
    lifecycle serve [--port 3000]       # serve the champion's bento on 127.0.0.1 (deploy --target local)
    lifecycle deploy --target local|docker|bentocloud|k8s   # the champion's bento to where it runs
    lifecycle models                    # registered versions, their aliases and headline metrics
    lifecycle promote VERSION --reason "..."   # make a version the champion by hand
    lifecycle rollback --reason "..."   # give champion back to the version that held it before
    lifecycle schedule --cron "0 3 * * *"   # run on a schedule (Prefect deployment served by this process)
    lifecycle deploy-flow --pool NAME   # the lifecycle as a deployment on a Prefect work pool (a team's workers)
    lifecycle work-pool-template --gpus 1 --image IMG   # a Kubernetes work pool's base job template (JSON)

Exit status: 0 success, 2 invalid project definition, 3 a gate refused the model, 4 a server named by the
environment did not answer, 5 another run holds the workspace, anything else a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from flows.workspace import WorkspaceBusy
from stages.common.cli import project_environment
from stages.common.errors import ExitStatus, ProjectError, ServerUnreachable


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def summary(root: Path, paths) -> str:
    """What a reviewer wants after a run: verdict, choice and why, baseline vs tuned, gates, versions, next commands."""
    lines = []
    scope = _read(root / paths.scope_report)
    if scope:
        lines.append(
            f"scope      {scope['verdict']} ({scope['plan'].get('phase', 'rnd')} rules): allowed techniques "
            f"{scope['plan']['adapt_techniques']}, alignment {scope['plan']['align_methods']}"
        )
    selection = _read(root / paths.selection)
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
    retrieval = _read(root / paths.metrics / "integrate.json")
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
    reward = _read(root / paths.metrics / "reward.json")
    if reward and reward.get("trained"):
        lines.append(
            f"reward     held-out pairwise accuracy {reward['heldout_accuracy']} on {reward['heldout_pairs']} "
            f"pairs (chance {reward['chance_accuracy']}, untrained {reward['heldout_accuracy_untrained']})"
        )
    report = _read(root / paths.eval_metrics)
    if report:
        from stages.evaluate import cell

        variants = report["variants"]
        metrics = list(next(iter(variants.values())))
        lines.append("evaluate   " + f"{'variant':<20}" + "".join(f"{m:>26}" for m in metrics))
        for name, values in variants.items():
            mark = " *" if name == report["candidate"] else ""
            lines.append("           " + f"{name + mark:<20}" + "".join(f"{cell(values[m]):>26}" for m in metrics))
        lines.append(f"           [{report['confidence_level']:.0%} bootstrap confidence intervals]")
        pays = report.get("retrieval_pays")
        if pays:  # the best variant retrieved: did retrieval beat the same model without it?
            lines.append(
                f"retrieval  {pays['rag']} vs {pays['model']} on {pays['metric']} {pays['difference']:+} "
                f"[{pays['ci_low']:+}, {pays['ci_high']:+}]: "
                + (
                    "better with confidence, ships with its index"
                    if pays["pays"]
                    else f"not better with confidence, {pays['model']} ships"
                )
            )
        verdict = "PASSED" if report["gates"]["passed"] else "FAILED"
        lines.append(
            f"gates      {verdict} for {report['candidate']} (* above; baselines: {', '.join(report['baselines'])})"
        )
        lines += [f"           {r}" for r in report["gates"]["reasons"]]
    from flows.lifecycle import LAST_RUN

    last = _read(root / LAST_RUN) or {}
    if last.get("ladder"):
        lines += ladder_lines(last["ladder"])
    spent = last.get("cost")
    if spent:
        flag = "OVER BUDGET" if spent["over_budget"] else "within budget"
        lines.append(
            f"cost       {spent['wall_hours']:.3f} h wall, training stages {spent['training_hours']:.3f} h of "
            f"{spent['budget_training_hours']} h ({flag}), {spent['gpu_hours']:.3f} GPU-hours"
        )
    package = _read(root / paths.package / "package.json")
    if package and report and report["gates"]["passed"]:
        lines.append(
            f"package    MLflow model {package['registered_model']} version {package['version']} "
            f"(@{package['alias']}), bento {package['bento']}"
        )
        if package.get("why"):
            lines.append(f"           {package['alias']}: {package['why']}")
    from stages.common.tracking import tracking_uri

    uri = tracking_uri()
    review = (
        f"open {uri}"
        if uri.startswith(("http://", "https://"))
        else "mlflow ui --backend-store-uri sqlite:///mlflow.db"
    )
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


def cmd_validate(args) -> int:
    """The scope stage's checks without DVC: params, every data source opened, the plan from the real counts."""
    from stages.common.params import load_params
    from stages.scope import check

    params = load_params(args.params)
    report = check(params)
    print(f"{args.params}: project '{params.project.name}' is defined\n")
    print(f"{'role':<11}{'rows found':>11}{'kept':>8}  dropped (why)                      source")
    for role, r in report["data"].items():
        why = ", ".join(f"{n} {reason}" for reason, n in r["rows_dropped"].items()) or "-"
        print(f"{role:<11}{r['rows_found']:>11}{r['rows_kept']:>8}  {why:<34} {r['source']}")
        for example in r["first_dropped"][:3]:
            print(f"{'':<32}{example}")
    for warning in report["warnings"]:
        print(f"\nwarning: {warning}")
    print("\n" + "\n".join(plan_lines(report)))
    return ExitStatus.OK


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


def cmd_run(args) -> int:
    from stages.common.params import load_params

    root = Path.cwd()
    params = load_params(root / "params.yaml")  # invalid: exit 2 here, before Prefect, DVC or any model
    from flows import servers, workspace
    from stages.common.tracking import check_tracking

    # Refused in a second, before Prefect starts; the flow itself takes the lock (a worker's run has no CLI).
    if params.orchestration.on_busy == "fail" and workspace.is_busy(root):
        raise workspace.WorkspaceBusy(root, workspace.holder(root))
    servers.check_prefect()
    check_tracking()
    from flows.lifecycle import StageFailed, lifecycle

    start = time.perf_counter()
    state = lifecycle(str(root), return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, StageFailed) and hasattr(outcome, "result"):
        result = outcome.result
    elif isinstance(outcome, BaseException):  # WorkspaceBusy, ServerUnreachable: main() says them; else a bug
        raise outcome
    else:
        result = outcome
    print()
    print(
        f"lifecycle run: {time.perf_counter() - start:.1f} s; ran {result.ran or 'nothing (all up to date)'}; "
        f"up to date {result.skipped or 'none'}"
        + (
            f"; not run (escalation ladder) {result.ladder['stages_not_run']}"
            if result.ladder and result.ladder["stages_not_run"]
            else ""
        )
    )
    if result.seconds:
        print("stage seconds: " + ", ".join(f"{k} {v}" for k, v in result.seconds.items()))
    if result.exit_status == ExitStatus.GATE_REFUSED:
        print("\nThe KPI gates refused the model: no registry alias, no bento. See reports/eval.md.", file=sys.stderr)
    elif result.exit_status != ExitStatus.OK:
        print(f"\n{result.error}", file=sys.stderr)
    print(summary(root, params.paths))
    return result.exit_status


def cmd_catalog(args) -> int:
    """The model catalog: a table, or the entries as JSON (`--json`)."""
    from stages.common import catalog

    entries = list(catalog.models().values())
    if args.kind:
        entries = [m for m in entries if m.kind == args.kind]
    if args.json:
        print(json.dumps([m.model_dump(mode="json") for m in entries], indent=2))
    else:
        print(catalog.table(entries))
        print(
            f"\n{len(entries)} models; figures as published (sources in {catalog.CATALOG.name}), checked "
            f"{catalog.load().checked}. Use one: select.candidates: [{{name: NAME, catalog: ID}}]"
        )
    return ExitStatus.OK


def cmd_select(args) -> int:
    """The last selection (models/selection.json) as a table."""
    from stages.common.params import load_params
    from stages.select import explain

    params = load_params(args.params)
    selection = _read(Path(params.paths.selection))
    if selection is None:
        raise ProjectError([f"{params.paths.selection}: no selection yet; run `lifecycle run` (or dvc repro select)"])
    print(
        explain(selection)
        if args.explain
        else f"selected {selection['selected']['name']}: "
        f"{selection['selected']['why']}\n(--explain: every candidate, filter and figure)"
    )
    return ExitStatus.OK


def cmd_status(args) -> int:
    from dvc.repo import Repo

    from flows import servers
    from flows.lifecycle import stage_order
    from stages.common.params import load_params

    root = Path.cwd()
    params = load_params(root / "params.yaml")
    with Repo(str(root)) as repo:
        changed = repo.status()
    for stage in stage_order(root):
        print(f"{stage:<10} {'changed: ' + json.dumps(changed[stage]) if stage in changed else 'up to date'}")
    from flows.lifecycle import LAST_RUN

    print()
    for tool, where in servers.in_use(root):
        print(f"{tool:<10} {where}")
    last = _read(root / LAST_RUN)
    if last:
        print(
            f"\nlast run: exit status {last['exit_status']}, ran {last['ran'] or 'nothing'} "
            f"in {last['total_seconds']} s (MLflow run {last['parent_run_id']})"
        )
    print()
    print(summary(root, params.paths))
    return ExitStatus.OK


def _registry(params):
    from mlflow import MlflowClient

    from stages.common.tracking import configure

    configure(params.project.name)
    return MlflowClient()


def cmd_deploy(args) -> int:
    """The champion's bento to a target (flows/deploy.py); `lifecycle serve` is `deploy --target local`."""
    from flows import deploy
    from stages.common.params import load_params

    params = load_params("params.yaml")
    client = _registry(params)
    name = params.project.name
    try:
        deploy.check_scope(params, args.target)
        version, bento = deploy.champion(client, name)
        if args.target == "local":
            command = deploy.local_command(bento, args.host, args.port)
            deploy.record(client, name, version, "local", {"bento": bento, "address": f"{args.host}:{args.port}"})
            print(f"serving {name} v{version.version} (@champion) on http://{args.host}:{args.port}", flush=True)
            print(" ".join(command), flush=True)
            # exec, not a child: SIGTERM from a process manager (or Ctrl-C) reaches the server itself, which
            # stops its workers and frees the port; a parent that died first would leave them serving.
            os.execv(command[0], command)
        elif args.target == "docker":
            detail = deploy.docker(params, bento, version)
        elif args.target == "bentocloud":
            detail = deploy.bentocloud(params, bento, version)
        else:
            detail = deploy.k8s(params, bento, version, Path(args.out))
    except deploy.DeployRefused as exc:
        print(f"deploy --target {args.target} refused: {exc}", file=sys.stderr)
        return ExitStatus.ERROR
    deploy.record(client, name, version, args.target, {"bento": bento, **detail})
    print(
        f"{name} v{version.version} (@champion) deployed to {args.target}: "
        + ", ".join(f"{k} {v}" for k, v in detail.items())
    )
    if args.target == "k8s":
        print(
            f"apply with: kubectl apply -f {args.out}  (image {detail['image']}: build it with "
            f"`lifecycle deploy --target docker` and push it to your registry)"
        )
    return ExitStatus.OK


def cmd_serve(args) -> int:
    args.target = "local"
    return cmd_deploy(args)


def cmd_models(args) -> int:
    from stages.common.params import load_params
    from stages.common.registry import versions

    params = load_params("params.yaml")
    client = _registry(params)
    rows = (
        versions(client, params.project.name)
        if client.search_registered_models(f"name = '{params.project.name}'")
        else []
    )
    if not rows:
        print(f"no registered versions of {params.project.name!r} yet; run `lifecycle run`")
        return ExitStatus.OK
    print(f"{'version':>7}  {'aliases':<22} {'created':<17} {'variant':<20} headline metric")
    for r in rows:
        metric = r["tags"].get("lifecycle.primary_metric", "")
        print(
            f"{r['version']:>7}  {','.join(r['aliases']) or '-':<22} {r['created']:<17} "
            f"{r['tags'].get('lifecycle.variant', '-'):<20} {metric} {r['tags'].get('eval.' + metric, '')}"
        )
    return ExitStatus.OK


def cmd_promote(args) -> int:
    from mlflow.exceptions import MlflowException

    from stages.common.params import load_params
    from stages.common.registry import promote

    params = load_params("params.yaml")
    try:
        previous = promote(_registry(params), params.project.name, args.version, args.reason)
    except MlflowException as exc:
        print(f"cannot promote {params.project.name} v{args.version}: {exc.message}", file=sys.stderr)
        return ExitStatus.ERROR
    print(f"{params.project.name} v{args.version} is champion (was v{previous}); reason recorded: {args.reason}")
    return ExitStatus.OK


def cmd_rollback(args) -> int:
    from stages.common.params import load_params
    from stages.common.registry import rollback

    params = load_params("params.yaml")
    try:
        old, new = rollback(_registry(params), params.project.name, args.reason)
    except LookupError as exc:
        print(exc.args[0], file=sys.stderr)
        return ExitStatus.ERROR
    print(f"{params.project.name}: champion rolled back from v{old} to v{new}; reason recorded: {args.reason}")
    return ExitStatus.OK


def scheduled_deployment(cron: str, name: str, root: str):
    """The lifecycle flow as a Prefect deployment on a cron schedule (Prefect's ordinary mechanism)."""
    from flows.lifecycle import lifecycle

    return lifecycle.to_deployment(name=name, schedules=[cron_schedule(cron)], parameters={"root": root})


def cron_schedule(cron: str):
    """A Prefect cron schedule, or ProjectError naming the bad --cron."""
    from prefect.schedules import Cron

    try:
        return Cron(cron)
    except ValueError as exc:
        raise ProjectError([f'--cron {cron!r} is not a valid cron expression ({exc}); e.g. "0 3 * * *"']) from None


def start_prefect_server(port: int) -> tuple[subprocess.Popen, str]:
    """A local Prefect server with its scheduler service: the ephemeral server `lifecycle run` uses does not
    run the scheduler, so a schedule on it would never fire."""
    import urllib.request

    url = f"http://127.0.0.1:{port}/api"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    for _ in range(240):  # bounded: up to ~2 min for the first start (it migrates the database)
        if proc.poll() is not None:
            raise RuntimeError(f"`prefect server start` exited with {proc.returncode}; is port {port} free?")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"the Prefect server on {url} did not become healthy in 2 minutes")


def cmd_schedule(args) -> int:
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deployment = scheduled_deployment(args.cron, args.name, str(Path.cwd()))
    server, url = None, os.environ.get("PREFECT_API_URL")
    if not url:
        server, url = start_prefect_server(args.port)
        print(
            f"started a local Prefect server on {url} (UI: {url.removesuffix('/api')}); "
            "set PREFECT_API_URL to use your own"
        )
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            print(f"serving deployment 'lifecycle/{args.name}' on cron '{args.cron}' (Ctrl-C to stop)")
            serve(deployment)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    return ExitStatus.OK


def cmd_deploy_flow(args) -> int:
    """The lifecycle flow as a deployment on a work pool of the Prefect server in PREFECT_API_URL."""
    from flows import servers

    if not servers.prefect_api():
        raise ProjectError(
            [
                "deploy-flow registers on a Prefect server: set PREFECT_API_URL (e.g. "
                "http://prefect.internal:4200/api); `lifecycle schedule` serves without one"
            ]
        )
    servers.check_prefect()
    schedule = cron_schedule(args.cron) if args.cron else None
    deployment_id = servers.deploy_flow(args.source, args.pool, args.name, schedule)
    print(
        f"deployment 'lifecycle/{args.name}' ({deployment_id}) on work pool '{args.pool}' at "
        f"{servers.prefect_api()}" + (f", cron '{args.cron}'" if args.cron else "")
    )
    print(
        f"start a worker where the project runs:  prefect worker start --pool {args.pool}\n"
        f"trigger a run:                          prefect deployment run 'lifecycle/{args.name}'"
    )
    return ExitStatus.OK


def cmd_work_pool_template(args) -> int:
    from flows import servers
    from stages.common.io import write_json

    template = servers.kubernetes_base_job_template(args.image, args.gpus, args.gpu_resource, args.namespace)
    write_json(args.out, template)
    print(
        f"wrote {args.out}: Prefect's Kubernetes job template, image {args.image}, {args.gpus} x "
        f"{args.gpu_resource} per flow run\n"
        f"create the pool:  prefect work-pool create {args.pool} --type kubernetes --base-job-template {args.out}\n"
        f"then:             lifecycle deploy-flow --pool {args.pool} --source <your git URL>"
    )
    return ExitStatus.OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lifecycle", description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the whole pipeline (Prefect flow over the DVC stages)").set_defaults(func=cmd_run)
    v = sub.add_parser("validate", help="check params.yaml and print the derived plan")
    v.add_argument("--params", default="params.yaml")
    v.set_defaults(func=cmd_validate)
    sub.add_parser("status", help="what is out of date, and the last run's summary").set_defaults(func=cmd_status)
    cat = sub.add_parser("catalog", help="the model catalog candidates can name (`catalog: <id>`)")
    cat.add_argument("--json", action="store_true", help="the entries as JSON, sources included")
    cat.add_argument("--kind", choices=["open", "api"], help="only open-weight or only API models")
    cat.set_defaults(func=cmd_catalog)
    sel = sub.add_parser("select", help="the last model selection: --explain prints every candidate and filter")
    sel.add_argument("--explain", action="store_true", help="the whole table: filters, figures, rank")
    sel.add_argument("--params", default="params.yaml")
    sel.set_defaults(func=cmd_select)
    s = sub.add_parser("serve", help="serve the champion's bento here (deploy --target local)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=3000)
    s.set_defaults(func=cmd_serve)
    d = sub.add_parser("deploy", help="deploy the champion's bento: local, docker, bentocloud or k8s manifests")
    d.add_argument("--target", required=True, choices=["local", "docker", "bentocloud", "k8s"])
    d.add_argument("--host", default="127.0.0.1", help="local: the address to listen on")
    d.add_argument("--port", type=int, default=3000, help="local: the port")
    d.add_argument("--out", default="deploy/k8s", help="k8s: the folder the manifests are written to")
    d.set_defaults(func=cmd_deploy)
    sub.add_parser("models", help="registered versions, aliases, headline metrics").set_defaults(func=cmd_models)
    pr = sub.add_parser("promote", help="make a registered version the champion by hand")
    pr.add_argument("version", type=int)
    pr.add_argument("--reason", required=True, help="why (recorded as a tag on the version)")
    pr.set_defaults(func=cmd_promote)
    rb = sub.add_parser("rollback", help="give champion back to the version that held it before")
    rb.add_argument("--reason", required=True, help="why (recorded as a tag on both versions)")
    rb.set_defaults(func=cmd_rollback)
    c = sub.add_parser("schedule", help="serve the flow on a cron schedule")
    c.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * *"')
    c.add_argument("--name", default="scheduled")
    c.add_argument(
        "--port",
        type=int,
        default=4200,
        help="port of the local Prefect server started when PREFECT_API_URL is unset (default 4200)",
    )
    c.set_defaults(func=cmd_schedule)
    df = sub.add_parser("deploy-flow", help="register the lifecycle as a deployment on a Prefect work pool")
    df.add_argument("--pool", required=True, help="the work pool whose workers run it")
    df.add_argument("--name", default="lifecycle", help="deployment name (default: lifecycle)")
    df.add_argument(
        "--source", default=".", help="where workers find the project: this folder (default) or the team's git URL"
    )
    df.add_argument("--cron", help='optional schedule, e.g. "0 3 * * *"')
    df.set_defaults(func=cmd_deploy_flow)
    wp = sub.add_parser("work-pool-template", help="a Kubernetes work pool's base job template with GPU requests")
    wp.add_argument("--image", required=True, help="the image the flow-run pods start (the project installed)")
    wp.add_argument("--gpus", type=int, default=1, help="GPUs per flow-run pod (default 1)")
    wp.add_argument("--gpu-resource", default="nvidia.com/gpu", help="the cluster's GPU resource name")
    wp.add_argument("--namespace", default="default")
    wp.add_argument("--pool", default="gpu", help="the pool name used in the printed commands")
    wp.add_argument("--out", default="deploy/prefect-k8s-base-job-template.json")
    wp.set_defaults(func=cmd_work_pool_template)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    project_environment(Path.cwd())
    try:
        return int(args.func(args))
    except (ProjectError, ServerUnreachable, WorkspaceBusy) as exc:
        print(exc, file=sys.stderr)
        return exc.exit_status


if __name__ == "__main__":
    raise SystemExit(main())
