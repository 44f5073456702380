"""MLflow for every stage: one nested run per stage that actually ran, under the `lifecycle run` parent run.

The tracking server is MLflow's usual MLFLOW_TRACKING_URI; unset, it is `sqlite:///mlflow.db` in the project
root with artifacts in `mlartifacts/`, so nothing has to be started by hand.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

PARENT_RUN_ENV = "LIFECYCLE_PARENT_RUN_ID"  # set by the flow, inherited by the DVC stage subprocesses
DEFAULT_DB = "mlflow.db"


def configure(experiment: str):
    """Point MLflow at the project's store and experiment; returns the mlflow module (imported lazily)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(f"sqlite:///{Path(DEFAULT_DB).resolve()}")
    if mlflow.get_experiment_by_name(experiment) is None:
        location, uri = None, mlflow.get_tracking_uri()
        if uri.startswith("sqlite:///"):  # artifacts next to the database, not wherever the cwd happens to be
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        try:
            mlflow.create_experiment(experiment, artifact_location=location)
        except Exception:  # created concurrently by another process: fine, use it
            pass
    mlflow.set_experiment(experiment)
    return mlflow


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]  # MLflow's limit per param value
    return out


@contextmanager
def stage_run(stage: str, params, section: dict | None = None):
    """Start the stage's MLflow run (nested under the pipeline's run when there is one) and log its params."""
    mlflow = configure(params.project.name)
    parent = os.environ.get(PARENT_RUN_ENV) or None
    with mlflow.start_run(run_name=stage, parent_run_id=parent, nested=parent is not None,
                          tags={"lifecycle.stage": stage}) as run:
        if section:
            mlflow.log_params(flatten(section))
        yield run
