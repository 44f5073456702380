"""MLflow for every stage: one nested run per stage that actually ran, under the `lifecycle run` parent run.

The tracking server is MLflow's usual MLFLOW_TRACKING_URI; unset, it is `sqlite:///mlflow.db` in the project
root with artifacts in `mlartifacts/`, so nothing has to be started by hand.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from stages.common.errors import ServerUnreachable

PARENT_RUN_ENV = "LIFECYCLE_PARENT_RUN_ID"  # set by the flow, inherited by the DVC stage subprocesses
RUNG_ENV = "LIFECYCLE_LADDER_RUNG"  # set by the flow while `evaluate` judges one rung of the escalation ladder
DEFAULT_DB = "mlflow.db"

log = logging.getLogger(__name__)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_DB).resolve()}"


def answers(url: str, timeout: float) -> str | None:
    """None when `url` answers 2xx, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) of a server we run or the user configured
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def check_tracking(timeout: float = 5.0) -> None:
    """An MLflow tracking *server* (http[s]) must answer its /health before any stage runs; a database URI needs
    no server of ours."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        require_health(
            "MLflow tracking",
            uri,
            "MLFLOW_TRACKING_URI",
            "Start it (`mlflow server --backend-store-uri postgresql://... --host ...`), or unset MLFLOW_TRACKING_URI "
            "to track into sqlite:///mlflow.db in the project.",
            timeout,
        )


def require_health(what: str, url: str, variable: str, advice: str, timeout: float) -> None:
    """A ServerUnreachable naming the server, the variable that points at it and what to do, unless `url`'s
    /health answers."""
    why = answers(url.rstrip("/") + "/health", timeout)
    if why:
        raise ServerUnreachable(f"the {what} server {url} ({variable}) is not reachable: {why}. {advice}")


def tracking_unreachable(exc: BaseException) -> ServerUnreachable | None:
    """An exception from MLflow that is the tracking server not answering, as a ServerUnreachable; else None.
    MLflow wraps connection errors in its own exception after its retries: ask the server, not the message."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, (MlflowException, OSError)) and "ConnectionError" not in type(exc).__name__:
        return None
    try:
        check_tracking()
    except ServerUnreachable as unreachable:
        return unreachable
    return None


def configure(experiment: str):
    """Point MLflow at the project's store and experiment; returns the mlflow module (imported lazily)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(tracking_uri())
    location, uri = None, mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):  # artifacts next to the database, not wherever the cwd happens to be
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is None:
        try:
            mlflow.create_experiment(experiment, artifact_location=location)
        except Exception:  # noqa: S110 - created concurrently by another process: fine, use it
            pass
    elif location and existing.artifact_location != location:
        follow_the_workspace(uri, existing, location)
    exp = mlflow.set_experiment(experiment)
    if "mlflow.experimentKind" not in exp.tags:
        # The MLflow 3 UI opens an experiment of unknown kind on its (empty) traces page; ours is model training.
        mlflow.set_experiment_tag("mlflow.experimentKind", "custom_model_development")
    return mlflow


def follow_the_workspace(uri: str, experiment, location: str) -> None:
    """The embedded store of a workspace that was copied or moved: MLflow keeps the experiment's artifact location
    as the absolute path it was created with, so new runs would write into the old folder. It becomes the
    `mlartifacts/` beside this database (MLflow has no API for it: the store's own table); runs already logged
    keep theirs."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    with engine.begin() as db:
        db.execute(
            sqlalchemy.text("UPDATE experiments SET artifact_location = :new WHERE experiment_id = :id"),
            {"new": location, "id": int(experiment.experiment_id)},
        )
    engine.dispose()
    log.info(
        "the workspace moved: experiment %s now stores artifacts in %s (was %s)",
        experiment.name,
        location,
        experiment.artifact_location,
    )


# Which split a stage trained, tuned or evaluated on, as MLflow's dataset contexts.
SPLIT_CONTEXT = {
    "sft": "training",
    "preference": "training",
    "corpus": "training",
    "dev": "validation",
    "eval": "evaluation",
    "general": "evaluation",
    "knowledge": "retrieval",
}


def log_splits(processed: str | Path, roles, snapshot: bool = False) -> None:
    """Log data/processed splits as MLflow datasets (name, source file, content digest) of the active run, so the
    runs table's Dataset column says what each run used. Metadata only: the files are DVC's to version, and
    loading 100k rows into pandas for MLflow's own digest would double the data stage's memory."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from stages.common.launch import is_main_process

    if not is_main_process():
        return
    for role in roles:
        path = Path(processed) / f"{role}.jsonl"
        if not path.is_file() or path.stat().st_size == 0:
            continue
        digest = sha256(path)[:10]
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": two equal local-file sources
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(path.resolve()))
        if snapshot:  # a live source's rows as read (stages/common/live.py)
            mlflow.log_input(MetaDataset(source, name=f"{role} snapshot", digest=digest), context="snapshot")
        else:
            mlflow.log_input(MetaDataset(source, name=role, digest=digest), context=SPLIT_CONTEXT.get(role, role))


def sha256(path: Path) -> str:
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def git_commit(root: str | Path = ".") -> str:
    """The checkout's commit, marked when the working tree has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607 - the user's git from PATH
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = ["git", "status", "--porcelain"]  # noqa: S607 - the user's git from PATH
        dirty = subprocess.run(status, cwd=root, capture_output=True, text=True).stdout  # noqa: S603 - an argv list, no shell
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return commit + (" (uncommitted changes)" if dirty.strip() else "")


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested sections as dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_flat_params(section: dict, prefix: str = "") -> None:
    """A (nested) params section as the active run's params, dotted keys: two runs compare in the runs table."""
    import mlflow

    mlflow.log_params({k: str(v)[:500] for k, v in flatten(section, prefix).items()})  # MLflow's limit per value


@contextmanager
def stage_run(stage: str, params, section: dict | None = None):
    """Start the stage's MLflow run (nested under the pipeline's run when there is one) and log its params. Under
    `accelerate launch`, only the main process tracks (the others yield None)."""
    from stages.common.launch import is_main_process

    if not is_main_process():
        yield None
        return
    mlflow = configure(params.project.name)
    parent = os.environ.get(PARENT_RUN_ENV) or None
    tags, name = {"lifecycle.stage": stage}, stage
    if os.environ.get(RUNG_ENV):  # this evaluate judges one rung of the escalation ladder
        tags["lifecycle.ladder_rung"] = os.environ[RUNG_ENV]
        name = f"{stage}@{os.environ[RUNG_ENV]}"
    with mlflow.start_run(run_name=name, parent_run_id=parent, nested=parent is not None, tags=tags) as run:
        if section:
            log_flat_params(section)
        yield run
