"""Project workspaces as a fresh clone has them, and the real `lifecycle` command run in them: what the
end-to-end, default, example, real-model and servers tests share (each runs the pipeline in its own copy)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

_IGNORE_NAMES = shutil.ignore_patterns(
    ".venv",
    ".git",
    "mlflow.db",
    "mlartifacts",
    "mlruns",
    ".prefect",
    ".bentoml",
    "dvc.lock",
    "processed",
    "pretrain",
    "sft",
    "reward",
    "aligned",
    "package",
    "metrics",
    "reports",
    ".checkpoints",
    ".cache",
    "index",
    "__pycache__",
    ".pytest_cache",
    "*.egg-info",
)


def COPY_IGNORE(folder: str, names: list[str]) -> set[str]:
    """What a fresh clone does not have: run outputs, tool state, and DVC's cache (whose run-cache would
    restore stage outputs without running the stages)."""
    ignored = set(_IGNORE_NAMES(folder, names))
    if Path(folder).name == ".dvc":
        ignored |= {"cache", "tmp"} & set(names)
    return ignored


def tiny_project(root: Path) -> Path:
    """A copy of the repository (as a fresh clone has it) with the tiny settings of tests/conftest.py, paths
    relative to the project: every stage runs, in seconds each."""
    from tests.conftest import tiny_params_dict

    shutil.copytree(REPO, root, ignore=COPY_IGNORE)
    (root / "models").mkdir(exist_ok=True)
    p = tiny_params_dict(Path("."))

    def relative(path: str) -> str:
        return str(Path(path).relative_to(REPO)) if Path(path).is_absolute() else path

    p["paths"]["sources"] = relative(p["paths"]["sources"])
    p["data"]["sources"] = {role: {**s, "path": relative(s["path"])} for role, s in p["data"]["sources"].items()}
    p["orchestration"]["retry_delay_seconds"] = [1]
    # A per-row primary KPI first (always met): a new version is compared with the champion row by row.
    p["scope"]["kpis"].insert(0, {"metric": "rougeL", "threshold": 0.0, "direction": "higher", "versus": "absolute"})
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)  # DVC works inside a git repository
    return root


def start(project: Path, env: dict, *args: str) -> subprocess.Popen:
    """`lifecycle <args>` in `project`, in its own process group, so that a hang is stopped with everything it
    started (Prefect's temporary server)."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "lifecycle"), *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: int = 2400) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)  # a hang guard, not a timing (~6 min a run normally)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def lifecycle(project: Path, *args: str) -> subprocess.CompletedProcess:
    """`lifecycle <args>` on the project's own embedded stores (whatever this shell points MLflow at aside)."""
    unset = ("MLFLOW_TRACKING_URI", "BENTOML_HOME", "PREFECT_HOME", "LIFECYCLE_MODEL_TAG")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return finish(start(project, env, *args))


def last_run(project: Path) -> dict:
    return json.loads((project / "reports" / "last_run.json").read_text())


def mlflow_client(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(
        tracking_uri=f"sqlite:///{project / 'mlflow.db'}", registry_uri=f"sqlite:///{project / 'mlflow.db'}"
    )


def edit_params(project: Path, change) -> None:
    path = project / "params.yaml"
    p = yaml.safe_load(path.read_text())
    change(p)
    path.write_text(yaml.safe_dump(p, sort_keys=False))
