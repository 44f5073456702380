"""The live sources' snapshots, refreshed: the task `lifecycle run` starts with and `lifecycle loop` runs on its cron
(its own module, so the flow and the loop both import it and neither imports the other).

    lifecycle snapshot          # refresh the sql / mlflow_traces sources' files (paths.snapshots)
"""

from __future__ import annotations

from pathlib import Path

from prefect import task


@task(name="snapshot")  # no retries: a missing URL variable or a bad query is the user's to fix
def snapshot(root: str, params) -> dict[str, dict]:
    """The live sources refreshed; per role: rows, rows the last data stage did not read, changed or not."""
    from stages.common.live import refresh
    from stages.common.tracking import configure

    if reads_traces(params):
        configure(params.project.name)
    refreshed = refresh(params, Path(root))
    read = Path(root) / params.paths.processed / "snapshots"
    for role, done in refreshed.items():
        trained = read / f"{role}.jsonl"
        old = set(trained.read_text(encoding="utf-8").splitlines()) if trained.is_file() else set()
        now = (Path(root) / params.paths.snapshots / f"{role}.jsonl").read_text(encoding="utf-8").splitlines()
        done["untrained_rows"] = len(set(now) - old)
    return refreshed


def reads_traces(params) -> bool:
    """The project learns from the served model's traces (a `feedback` source)."""
    return params.data.sources.feedback is not None
