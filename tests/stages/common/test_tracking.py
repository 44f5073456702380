"""The embedded MLflow store (stages/common/tracking.py) in a workspace that is copied: runs in the copy write
nothing outside it. Real MLflow, SQLite store (one slow test, ~15 s)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import mlflow
from stages.common.tracking import configure

configure("moved")
with mlflow.start_run() as run:
    mlflow.log_text("hello", "note.txt")
    print(mlflow.get_artifact_uri())
"""


def run_in(folder: Path) -> str:
    """One tracked run with an artifact, in a fresh process whose working directory is `folder`."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3])
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.slow  # two fresh processes create and migrate an MLflow SQLite store: ~15 s
def test_a_copied_workspace_writes_its_artifacts_into_the_copy(tmp_path):
    first, copy = tmp_path / "first", tmp_path / "copy"
    first.mkdir()
    assert run_in(first).startswith((first / "mlartifacts").as_uri())
    shutil.copytree(first, copy)
    shutil.rmtree(first)  # anything the copy still wrote there would bring the folder back
    uri = run_in(copy)
    assert uri.startswith((copy / "mlartifacts").as_uri()), uri
    assert not first.exists(), "the copy wrote into the folder it was copied from"
    assert len(list((copy / "mlartifacts").rglob("note.txt"))) == 2, "the first run's artifact came with the copy"
