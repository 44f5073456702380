"""`lifecycle`: run, validate, inspect, serve, deploy and schedule the project's lifecycle.

    lifecycle run                       # the whole pipeline (Prefect flow over the DVC stages), then a summary
    lifecycle validate                  # check params.yaml (the scope stage's checks) and print the plan
    lifecycle status                    # which stages are out of date, and the last run's summary
    lifecycle catalog [--json]          # the model catalog (real models, figures with their sources)
    lifecycle select --explain          # the last selection: every candidate, each filter's verdict, the figures
    lifecycle serve [--port 3000]       # serve the champion's bento on 127.0.0.1 (deploy --target local)
    lifecycle deploy --target local|docker|bentocloud|k8s|gguf|llamacpp   # the champion to where it runs
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
import sys
import time
from dataclasses import fields
from pathlib import Path

from flows.report import (
    LAST_RUN,
    models_table,
    read_json_if_any,
    run_lines,
    snapshot_lines,
    status_lines,
    summary,
    validation,
)
from flows.workspace import WorkspaceBusy
from stages.common.cli import project_environment
from stages.common.errors import ExitStatus, ProjectError, ServerUnreachable


def cmd_validate(args) -> int:
    """The scope stage's checks without DVC: params, every data source opened, the plan from the real counts."""
    from stages.common.loader import load_params
    from stages.scope import check

    params = load_params(args.params)
    print(validation(args.params, params.project.name, check(params)))
    return ExitStatus.OK


def cmd_run(args) -> int:
    from stages.common.loader import load_params

    root = Path.cwd()
    params = load_params(root / "params.yaml")  # invalid: exit 2 here, before Prefect, DVC or any model
    from flows import servers, workspace
    from stages.common.tracking import check_tracking

    # Refused in a second, before Prefect starts; the flow itself takes the lock (a worker's run has no CLI).
    if params.orchestration.on_busy == "fail" and workspace.is_busy(root):
        raise workspace.WorkspaceBusy(root, workspace.holder(root))
    servers.check_prefect()
    check_tracking()
    from flows.lifecycle import lifecycle

    start = time.perf_counter()
    state = lifecycle(str(root), return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):  # WorkspaceBusy, ServerUnreachable, ProjectError: main() says them
        raise result
    print("\n".join(run_lines(result, time.perf_counter() - start)))
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
    from stages.common.loader import load_params
    from stages.select import explain

    params = load_params(args.params, files=False)
    selection = read_json_if_any(Path(params.paths.selection))
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
    from stages.common.loader import load_params

    root = Path.cwd()
    params = load_params(root / "params.yaml", files=False)
    with Repo(str(root)) as repo:
        changed = repo.status()
    stages = stage_order(root)
    print("\n".join(status_lines(stages, changed, servers.in_use(root), read_json_if_any(root / LAST_RUN))))
    print()
    print(summary(root, params.paths))
    return ExitStatus.OK


def _registry(params):
    from mlflow import MlflowClient

    from stages.common.tracking import configure

    configure(params.project.name)
    return MlflowClient()


def cmd_deploy(args) -> int:
    """The champion's bento to a target (flows/deploy/); `lifecycle serve` is `deploy --target local`."""
    from flows import deploy
    from stages.common.loader import load_params

    params = load_params("params.yaml", files=False)
    # `serve` has only --host and --port: the options of other targets are None there
    options = deploy.Options(**{f.name: getattr(args, f.name, None) for f in fields(deploy.Options)})
    try:
        done = deploy.deploy(args.target, params, _registry(params), options)
    except deploy.DeployRefused as exc:
        print(f"deploy --target {args.target} refused: {exc}", file=sys.stderr)
        return ExitStatus.ERROR
    print("\n".join(done.said), flush=True)
    if done.server:  # local, llamacpp
        print(" ".join(done.server), flush=True)
        # exec, not a child: SIGTERM from a process manager (or Ctrl-C) reaches the server itself, which
        # stops its workers and frees the port; a parent that died first would leave them serving.
        os.execv(done.server[0], done.server)
    return ExitStatus.OK


def cmd_serve(args) -> int:
    args.target = "local"
    return cmd_deploy(args)


def cmd_models(args) -> int:
    from stages.common.loader import load_params
    from stages.common.registry import versions

    params = load_params("params.yaml", files=False)
    client = _registry(params)
    rows = (
        versions(client, params.project.name)
        if client.search_registered_models(f"name = '{params.project.name}'")
        else []
    )
    if not rows:
        print(f"no registered versions of {params.project.name!r} yet; run `lifecycle run`")
        return ExitStatus.OK
    print(models_table(rows))
    return ExitStatus.OK


def cmd_promote(args) -> int:
    from mlflow.exceptions import MlflowException

    from stages.common.loader import load_params
    from stages.common.registry import promote

    params = load_params("params.yaml", files=False)
    try:
        previous = promote(_registry(params), params.project.name, args.version, args.reason)
    except MlflowException as exc:
        print(f"cannot promote {params.project.name} v{args.version}: {exc.message}", file=sys.stderr)
        return ExitStatus.ERROR
    print(f"{params.project.name} v{args.version} is champion (was v{previous}); reason recorded: {args.reason}")
    return ExitStatus.OK


def cmd_rollback(args) -> int:
    from stages.common.loader import load_params
    from stages.common.registry import rollback

    params = load_params("params.yaml", files=False)
    try:
        old, new = rollback(_registry(params), params.project.name, args.reason)
    except LookupError as exc:
        print(exc.args[0], file=sys.stderr)
        return ExitStatus.ERROR
    print(f"{params.project.name}: champion rolled back from v{old} to v{new}; reason recorded: {args.reason}")
    return ExitStatus.OK


def scheduled_deployment(cron: str, name: str, root: str):
    """The loop flow (flows/loop.py: prune, snapshot, monitor, the pipeline when there is evidence) as a Prefect
    deployment on a cron schedule (Prefect's ordinary mechanism)."""
    from flows.loop import loop

    return loop.to_deployment(name=name, schedules=[cron_schedule(cron)], parameters={"root": root})


def _tracking_answers() -> None:
    """The after-deploy commands read and write traces: a tracking server that is down is exit 4, said once."""
    from stages.common.tracking import check_tracking

    check_tracking()


def cmd_snapshot(args) -> int:
    from flows.snapshot import snapshot
    from stages.common.loader import load_params

    params = load_params(Path.cwd() / "params.yaml")
    _tracking_answers()
    refreshed = snapshot.fn(str(Path.cwd()), params)
    print("\n".join(snapshot_lines(refreshed, Path(params.paths.snapshots))))
    return ExitStatus.OK


def cmd_prune_traces(args) -> int:
    from flows.loop import prune_traces
    from stages.common.loader import load_params

    params = load_params(Path.cwd() / "params.yaml")
    _tracking_answers()
    days = params.scope.residency.retention_days
    if days is None:
        print("scope.residency.retention_days is not set: traces are kept")
        return ExitStatus.OK
    print(f"deleted {prune_traces.fn(str(Path.cwd()), params)} traces older than {days} days")
    return ExitStatus.OK


def cmd_monitor(args) -> int:
    from stages.common.loader import load_params
    from stages.common.monitor import run

    params = load_params(Path.cwd() / "params.yaml")
    _tracking_answers()
    report = run(params, Path.cwd())
    print(Path("reports/monitor.md").read_text(encoding="utf-8"))
    return ExitStatus.THRESHOLD_CROSSED if report["crossed"] else ExitStatus.OK


def cmd_loop(args) -> int:
    from flows.loop import loop

    _tracking_answers()
    outcome = loop(str(Path.cwd()))
    if outcome["ran"]:
        return outcome["exit_status"]
    return ExitStatus.THRESHOLD_CROSSED if (outcome["monitor"] or {}).get("crossed") else ExitStatus.OK


def cron_schedule(cron: str):
    """A Prefect cron schedule, or ProjectError naming the bad --cron."""
    from prefect.schedules import Cron

    try:
        return Cron(cron)
    except ValueError as exc:
        raise ProjectError([f'--cron {cron!r} is not a valid cron expression ({exc}); e.g. "0 3 * * *"']) from None


def cmd_schedule(args) -> int:
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import servers

    deployment = scheduled_deployment(args.cron, args.name, str(Path.cwd()))
    with servers.scheduling_prefect(args.port) as (url, started):
        if started:
            print(
                f"started a local Prefect server on {url} (UI: {url.removesuffix('/api')}); "
                "set PREFECT_API_URL to use your own"
            )
        with temporary_settings({PREFECT_API_URL: url}):
            print(f"serving deployment 'lifecycle-loop/{args.name}' on cron '{args.cron}' (Ctrl-C to stop)")
            serve(deployment)
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
    from flows.deploy import TARGETS

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
    d = sub.add_parser(
        "deploy", help="deploy the champion: local, docker, bentocloud, k8s manifests, a GGUF file or llama.cpp"
    )
    d.add_argument("--target", required=True, choices=TARGETS)
    d.add_argument("--host", default="127.0.0.1", help="local, llamacpp: the address to listen on")
    d.add_argument("--port", type=int, default=3000, help="local, llamacpp: the port")
    d.add_argument("--out", help="k8s, gguf: the folder written to (default deploy/k8s, deploy/gguf)")
    d.add_argument("--gguf-type", default="Q8_0", help="gguf: F32, F16, Q8_0, Q5_0 or Q4_0")
    d.add_argument(
        "--format", choices=["plain", "kustomize"], default="plain", help="k8s: kustomize adds a kustomization.yaml"
    )
    d.set_defaults(func=cmd_deploy)
    sub.add_parser("models", help="registered versions, aliases, headline metrics").set_defaults(func=cmd_models)
    pr = sub.add_parser("promote", help="make a registered version the champion by hand")
    pr.add_argument("version", type=int)
    pr.add_argument("--reason", required=True, help="why (recorded as a tag on the version)")
    pr.set_defaults(func=cmd_promote)
    rb = sub.add_parser("rollback", help="give champion back to the version that held it before")
    rb.add_argument("--reason", required=True, help="why (recorded as a tag on both versions)")
    rb.set_defaults(func=cmd_rollback)
    sub.add_parser(
        "snapshot", help="refresh the files of the sql / mlflow_traces sources (paths.snapshots)"
    ).set_defaults(func=cmd_snapshot)
    sub.add_parser("prune-traces", help="delete traces older than scope.residency.retention_days").set_defaults(
        func=cmd_prune_traces
    )
    sub.add_parser(
        "monitor", help="production traces against `monitor:`: reports/monitor.md, exit 6 when a threshold is crossed"
    ).set_defaults(func=cmd_monitor)
    sub.add_parser(
        "loop", help="prune, snapshot, monitor, and run the pipeline only on new rows or drift (what schedule runs)"
    ).set_defaults(func=cmd_loop)
    c = sub.add_parser("schedule", help="serve the loop flow on a cron schedule")
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
