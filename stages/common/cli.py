"""The `main(argv) -> int` shared by every `python -m stages.<name>`: load params, run, map errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from stages.common.console import progress_as_lines
from stages.common.errors import STAGE_ERROR_ENV, ExitStatus, GateRefused, ProjectError, ServerUnreachable
from stages.common.launch import accelerate_command, is_main_process, launched


def project_environment(root: str | Path = ".") -> None:
    """Keep every tool's state inside the project and quiet, unless the user already chose otherwise."""
    root = Path(root).resolve()
    defaults = {
        "BENTOML_HOME": str(root / ".bentoml"),
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # its heartbeat hits "database is locked" on SQLite
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # first start migrates the DB
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # MLflow's default (7 retries, backoff 2) rides out 4 minutes of a dead tracking server per call; 3 says
        # so in ~15 s, and the stage's own retries (params `orchestration`) wait out a restart.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
        "DO_NOT_TRACK": "1",
        "BENTOML_DO_NOT_TRACK": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def stage_main(name: str, run, argv: list[str] | None = None, method: list[str] | None = None, precision=None) -> int:
    """`method`: the stage is a DVC foreach (one stage per method, `name@method`); its choices. `precision`
    (params -> precision) marks a training stage that params `orchestration.launch` may start through
    `accelerate launch`."""
    from stages.common.loader import load_params

    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=f"Run the `{name}` stage.")
    parser.add_argument("--params", default="params.yaml", help="project definition (default: params.yaml)")
    if method:
        parser.add_argument("--method", required=True, choices=method, help="which of the stage's methods to run")
    args = parser.parse_args(argv)
    extra = {"method": args.method} if method else {}
    name = f"{name}@{args.method}" if method else name
    progress_as_lines()  # before logging takes its stream: a log file gets lines, not carriage returns
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    project_environment()
    try:
        params = load_params(args.params)
        if precision is not None and params.orchestration.launch.launcher == "accelerate" and not launched():
            return relaunch(name, params, precision(params), sys.argv[1:] if argv is None else argv)
        result = run(params, params.paths, **extra)
    except (ProjectError, GateRefused) as exc:
        return said(name, exc, exc.exit_status)
    except Exception as exc:  # a server named by the environment that does not answer: say which, no traceback
        from stages.common.tracking import tracking_unreachable

        unreachable = exc if isinstance(exc, ServerUnreachable) else tracking_unreachable(exc)
        if unreachable is None:
            raise
        return said(name, unreachable, ExitStatus.SERVER_UNREACHABLE)
    if not is_main_process():
        return ExitStatus.OK
    if isinstance(result, dict) and result.get("summary"):
        print(f"[{name}] {result['summary']}")
    return ExitStatus.OK


def said(name: str, error: Exception, status: int) -> int:
    """A user's error: printed once, no traceback, and left where the flow's run record picks it up."""
    print(f"[{name}] {error}", file=sys.stderr)
    if os.environ.get(STAGE_ERROR_ENV):
        Path(os.environ[STAGE_ERROR_ENV]).write_text(str(error), encoding="utf-8")
    return status


def relaunch(name: str, params, precision: str, argv: list[str]) -> int:
    """The stage again, under `accelerate launch` with the processes of params `orchestration.launch`."""
    import subprocess

    from stages.common.models import resolve_device

    module = f"stages.{name.split('@')[0]}"
    command = accelerate_command(
        params.orchestration.launch, resolve_device(params.project.device), precision, module, argv
    )
    print(f"[{name}] {' '.join(command)}", flush=True)
    return subprocess.run(command).returncode  # noqa: S603 - an argv list, no shell: our own command
