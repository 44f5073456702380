"""After deploy: the lifecycle as a loop. What `lifecycle schedule` runs on its cron, and the commands beside it.

    lifecycle snapshot          # refresh the sql / mlflow_traces sources' files (paths.snapshots)
    lifecycle prune-traces      # delete traces older than scope.residency.retention_days
    lifecycle monitor           # production against `monitor:` (stages/common/monitor.py); exit 6 when crossed
    lifecycle loop              # prune, snapshot, monitor, and run the pipeline only when there is evidence

The loop runs the pipeline when the snapshots hold at least `loop.min_new_rows` rows the last data stage did not
read, or when monitor flags input drift (`loop.retrain_on_drift`); a project without live sources runs on every
tick, as a plain cron would (DVC re-runs nothing that did not change). The registry's champion/challenger rule
then decides what serves; the run records what triggered it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, task

from flows.snapshot import reads_traces, snapshot
from stages.common.errors import ExitStatus


@task(name="prune-traces")
def prune_traces(root: str, params) -> int:
    """Traces (with their feedback) older than `scope.residency.retention_days`, deleted; how many."""
    days = params.scope.residency.retention_days
    if days is None:
        return 0
    from mlflow import MlflowClient

    from stages.common.tracking import configure

    configure(params.project.name)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(params.project.name)
    cutoff = int((time.time() - days * 86_400) * 1000)
    deleted = 0
    while True:  # the server deletes in batches
        n = client.delete_traces(experiment.experiment_id, max_timestamp_millis=cutoff, max_traces=1000)
        deleted += n
        if n < 1000:
            return deleted


@task(name="monitor")
def monitor(root: str, params) -> dict:
    from stages.common.monitor import run

    return run(params, root)


def decide(params, refreshed: dict, report: dict | None) -> str | None:
    """Why the pipeline should run now, or None. Pure."""
    if not refreshed:
        return "scheduled (the project has no live sources)"
    new = sum(r["untrained_rows"] for r in refreshed.values())
    if new >= params.loop.min_new_rows:
        return f"{new} new rows from live sources (loop.min_new_rows {params.loop.min_new_rows})"
    if params.loop.retrain_on_drift and report and report.get("drift", {}).get("drifted"):
        d = report["drift"]
        return f"input drift versus {d['versus']} (KS {d['ks_statistic']}, p {d['p_value']:.2g})"
    return None


@flow(name="lifecycle-loop", log_prints=True)
def loop(root: str = ".") -> dict:
    """Prune, snapshot, monitor; then the lifecycle flow if there is a reason. Returns what happened."""
    from flows.lifecycle import lifecycle
    from stages.common.loader import load_params

    root = str(Path(root).resolve())
    params = load_params(Path(root) / "params.yaml")
    pruned = prune_traces(root, params)
    refreshed = snapshot(root, params)
    report = (
        monitor(root, params)
        if reads_traces(params) and (Path(root) / params.paths.processed / "sft.jsonl").is_file()
        else None
    )
    why = decide(params, refreshed, report)
    outcome = {"pruned_traces": pruned, "snapshots": refreshed, "monitor": report, "trigger": why, "ran": False}
    if why is None:
        new = sum(r["untrained_rows"] for r in refreshed.values())
        print(f"lifecycle loop: no run: {new} new rows (< loop.min_new_rows {params.loop.min_new_rows}), no drift")
    else:
        print(f"lifecycle loop: running the pipeline: {why}")
        state = lifecycle(root, trigger=why, return_state=True)
        result = state.result(raise_on_failure=False)
        outcome["ran"] = True
        outcome["exit_status"] = int(getattr(result, "exit_status", ExitStatus.ERROR))
    (Path(root) / "reports").mkdir(exist_ok=True)
    (Path(root) / "reports" / "last_loop.json").write_text(json.dumps(outcome, indent=2, default=str), encoding="utf-8")
    return outcome
