"""The lifecycle flow: Prefect runs the DVC pipeline one stage per task, MLflow records it under one parent run.

    lifecycle run                      # = this flow, on Prefect's embedded server unless PREFECT_API_URL is set
    lifecycle schedule --cron "0 3 * * *"

The stage order comes from dvc.yaml (never listed here). Each task is `dvc repro --single-item <stage>`, run
in-process (no extra interpreter start per stage); DVC skips what did not change, so a no-op run runs nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, task
from prefect.logging import get_run_logger
from prefect.states import Failed

from flows.report import LAST_RUN
from flows.workspace import WorkspaceBusy
from stages.common.errors import STAGE_ERROR_ENV, ExitStatus, ProjectError, ServerUnreachable, meaning
from stages.common.io import write_json
from stages.common.tracking import PARENT_RUN_ENV, RUNG_ENV


class StageFailed(Exception):
    def __init__(self, stage: str, exit_status: int, message: str):
        self.stage, self.exit_status = stage, exit_status
        super().__init__(f"stage `{stage}` failed (exit status {exit_status}): {message}")


# A verdict, not a crash: the stage said what is wrong; Prefect marks it failed without a traceback or a retry.
USER_ERRORS = (
    ExitStatus.INVALID_PROJECT,
    ExitStatus.GATE_REFUSED,
    ExitStatus.SERVER_UNREACHABLE,
    ExitStatus.WORKSPACE_BUSY,
)


@dataclass
class RunResult:
    exit_status: int = ExitStatus.OK
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    failed_stage: str | None = None
    error: str | None = None
    parent_run_id: str | None = None
    total_seconds: float = 0.0
    cost: dict = field(default_factory=dict)
    ladder: dict | None = None  # with ladder.stop_when_passed: each rung's verdict, the winner, what did not run
    trigger: str = "by hand"  # why this run happened: `lifecycle loop` says what evidence started it
    snapshots: dict = field(default_factory=dict)  # the live sources refreshed before the stages (rows per role)


TRAINING_STAGES = ("pretrain", "adapt", "reward", "align")  # DVC addresses without a foreach item


def cost(seconds: dict[str, float], training_budget_hours: float, gpus: int = 0) -> dict:
    """What a run spent against `scope.budget`: wall hours in all, in the training stages, and GPU-hours (the
    training hours times the GPUs the stages see; 0 on a CPU)."""
    training = sum(v for k, v in seconds.items() if k.split("@")[0] in TRAINING_STAGES) / 3600
    return {
        "wall_hours": round(sum(seconds.values()) / 3600, 6),
        "training_hours": round(training, 6),
        "gpu_hours": round(training * gpus, 6),
        "budget_training_hours": training_budget_hours,
        "over_budget": training > training_budget_hours,
    }


def over_budget_message(spent: dict, stage: str) -> str:
    return (
        f"over budget: the training stages took {spent['training_hours']:.4g} h of the "
        f"{spent['budget_training_hours']} h in `scope.budget.training_hours`; `{stage}` was not started "
        "(`scope.budget.enforce: true`). Raise the budget or shrink the training steps."
    )


def stage_order(root: str | Path = ".") -> list[str]:
    """Stage names in execution order from dvc.yaml's DAG; stages with no path between them keep their
    dvc.yaml order (so `scope` runs first and fails fast). DVC's graph points from a stage to its deps."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = list(repo.index.stages)
        declared = {stage: i for i, stage in enumerate(stages)}
        upstream_first = repo.index.graph.reverse(copy=True)
        ordered = nx.lexicographical_topological_sort(upstream_first, key=lambda stage: declared[stage])
        # The name, not `addressing` (relative to the working directory): every stage is in the root dvc.yaml.
        return [stage.name for stage in ordered]


def _exit_status_of(exc: BaseException) -> int:
    """The stage command's own exit status, from DVC's 'failed to run: ..., exited with N'."""
    while exc is not None:
        match = re.search(r"exited with (\d+)", str(exc))
        if match:
            return int(match.group(1))
        exc = exc.__cause__ or exc.__context__
    return ExitStatus.ERROR


def _command_failed(exc: BaseException) -> bool:
    """The stage's command ran and exited non-zero (as opposed to DVC itself failing)."""
    from dvc.stage.exceptions import StageCmdFailedError

    while exc is not None:
        if isinstance(exc, StageCmdFailedError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _retry_unless_user_error(task, task_run, state) -> bool:
    """Retry crashes (OOM, a flaky disk), never a verdict: invalid params (2) or a refused gate (3) stay so."""
    if not state.is_failed():
        return False
    try:
        state.result()
    except StageFailed as exc:
        return exc.exit_status not in USER_ERRORS
    except Exception:
        return True
    return False


@contextmanager
def restored_on_failure(repo, stage: str):
    """DVC deletes a stage's outputs before running its command, so a failed stage would leave the workspace
    worse than before. On failure: cached outputs come back from DVC's cache (`dvc checkout <stage>`, the last
    good version in dvc.lock); uncached ones (metrics, reports), which no cache holds, from a copy made here."""
    [target] = [s for s in repo.index.stages if s.addressing == stage]
    kept = Path(tempfile.mkdtemp(prefix=f"lifecycle-{stage}-"))
    uncached = [Path(out.fs_path) for out in target.outs if not out.use_cache and Path(out.fs_path).exists()]
    for i, path in enumerate(uncached):
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, kept / str(i))
    try:
        yield
    except BaseException:
        try:
            repo.checkout(targets=[stage], force=True)
        except Exception:  # noqa: S110 - never ran successfully: nothing in the cache to restore
            pass
        for i, path in enumerate(uncached):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                shutil.copytree(kept / str(i), path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(kept / str(i), path)
        raise
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def mark_not_reached(root: str, params, rung: str, stages: list[str]) -> None:
    """The outputs of the stages above the rung under evaluation say "not reached" (stages.<stage>.not_reached)."""
    import contextlib
    import importlib

    from flows.ladder import not_reached_reason

    with contextlib.chdir(root):  # params paths are relative to the project
        for stage in stages:
            module = importlib.import_module(f"stages.{stage}")
            module.not_reached(params, params.paths, not_reached_reason(rung, stage))


def rung_verdict(root: str, params) -> dict:
    report = json.loads((Path(root) / params.paths.eval_metrics).read_text(encoding="utf-8"))
    return {"candidate": report["candidate"], "passed": report["gates"]["passed"], "failed": report["gates"]["failed"]}


class _Forward(logging.Handler):
    def __init__(self, logger):
        super().__init__()
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        self.logger.log(record.levelno, record.getMessage().strip("\n"))


@contextmanager
def dvc_logs_to(logger):
    """DVC prints each line through its own console handlers and once more through the root logger Prefect sets
    up; send each line once, to the task run's logger (the console and the Prefect UI)."""
    dvc_logger = logging.getLogger("dvc")
    handlers, propagate = dvc_logger.handlers[:], dvc_logger.propagate
    dvc_logger.handlers, dvc_logger.propagate = [_Forward(logger)], False
    try:
        yield
    finally:
        dvc_logger.handlers, dvc_logger.propagate = handlers, propagate


@task
def run_stage(stage: str, root: str) -> bool:
    """`dvc repro --single-item <stage>`; True when the stage ran, False when DVC found it up to date. A failed
    stage leaves the outputs of its last good run in place."""
    from dvc.repo import Repo

    logger = get_run_logger()
    message = Path(tempfile.mkdtemp(prefix="lifecycle-stage-")) / "error.txt"
    os.environ[STAGE_ERROR_ENV] = str(message)  # stage_main writes a user's error there: the run record keeps it
    try:
        with dvc_logs_to(logger), Repo(root) as repo, restored_on_failure(repo, stage):
            # No "git add dvc.lock / enable auto staging" hint after every stage: committing dvc.lock is the
            # team's step after a run (docs/commands.md), not the pipeline's.
            repo.scm_context.quiet = True
            ran = repo.reproduce(stage, single_item=True)
    except Exception as exc:  # DVC wraps the command's failure; keep its exit status for the CLI
        status = _exit_status_of(exc)
        said = message.read_text(encoding="utf-8").strip() if message.is_file() else ""
        error = StageFailed(stage, status, said or str(exc))
        if status in USER_ERRORS and said:  # printed once already, by the stage: a failed state, no traceback
            # The state's message is logged by Prefect: a short one, the stage said the rest.
            return Failed(message=f"stage `{stage}`: {meaning(status)} (exit status {status})", data=error)
        if _command_failed(exc):  # its own output above says what went wrong: DVC's exception chain is noise
            raise error from None
        raise error from exc
    finally:
        os.environ.pop(STAGE_ERROR_ENV, None)
        shutil.rmtree(message.parent, ignore_errors=True)
    logger.info("%s: %s", stage, "ran" if ran else "up to date, skipped")
    return bool(ran)


def visible_gpus(device: str) -> int:
    """How many GPUs the stages train on: CUDA devices when `project.device` resolves to cuda, else 0."""
    from stages.common.models import resolve_device

    try:
        if resolve_device(device) != "cuda":
            return 0
    except RuntimeError:  # cuda asked, none visible: the stages say so themselves
        return 0
    import torch

    return torch.cuda.device_count()


def verdict(root: Path, params, result: RunResult) -> str:
    """One phrase for the run's outcome: the gate verdict and the registry alias, or where it failed."""
    if result.exit_status not in (ExitStatus.OK, ExitStatus.GATE_REFUSED):
        return f"failed at {result.failed_stage}"
    report = root / params.paths.eval_metrics
    if not report.is_file():
        return "no evaluation"
    report = json.loads(report.read_text(encoding="utf-8"))
    if not report["gates"]["passed"]:
        return f"gates FAILED for {report['candidate']}"
    package = root / params.paths.package / "package.json"
    shipped = json.loads(package.read_text(encoding="utf-8")) if package.is_file() else None
    rung = f" (ladder: {result.ladder['winner']})" if result.ladder and result.ladder["winner"] else ""
    return f"gates PASSED: {report['candidate']}{rung}" + (
        f" v{shipped['version']} @{shipped['alias']}" if shipped else ""
    )


def describe_run(mlflow, root: Path, params, result: RunResult) -> None:
    """Make the parent run readable from the MLflow runs table: a name that says when and what, the summary
    `lifecycle run` prints as its description, lineage and verdict as tags, the splits as datasets."""
    from flows.report import summary
    from stages.common.tracking import git_commit, log_splits, sha256

    ran = ", ".join(result.ran) if result.ran else "nothing ran"
    outcome = verdict(root, params, result)
    mlflow.set_tags(
        {
            "mlflow.runName": f"{time.strftime('%m-%d %H:%M')} {ran}: {outcome}",
            "mlflow.note.content": f"```\n{summary(root, params.paths)}\n```",
            "lifecycle.verdict": outcome,
            "lifecycle.git_commit": git_commit(root),
            "lifecycle.params_sha256": sha256(root / "params.yaml"),
        }
    )
    if result.ladder:
        mlflow.set_tags(
            {
                "lifecycle.ladder.winner": result.ladder["winner"] or "none",
                "lifecycle.ladder.not_run": ",".join(result.ladder["not_run"]) or "none",
                "lifecycle.ladder.why": result.ladder["why"],
            }
        )
    report = root / params.paths.eval_metrics
    choice = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
    if choice.get("choice"):  # which rung's variant is the candidate, and why not a simpler or a costlier one
        mlflow.set_tags(
            {"lifecycle.candidate.rung": choice["rung"], "lifecycle.candidate.why": choice["choice"]["why"]}
        )
    log_splits(root / params.paths.processed, ["sft", "preference", "dev", "eval"])


def run_tracked(stage: str, name: str, root: str, orchestration, result: RunResult, rung: str | None = None) -> None:
    """One stage as a Prefect task, its time and whether it ran recorded under `name` (evaluate@<rung> for a
    ladder check); a rung under evaluation is a tag on the stage's MLflow run."""
    options = dict(
        name=stage,
        task_run_name=name,
        retries=orchestration.retries,
        retry_delay_seconds=orchestration.retry_delay_seconds,
        timeout_seconds=orchestration.timeout_seconds,
        retry_condition_fn=_retry_unless_user_error,
    )
    start = time.perf_counter()
    if rung:
        os.environ[RUNG_ENV] = rung
    try:
        state = run_stage.with_options(**options)(stage, root, return_state=True)
    finally:
        os.environ.pop(RUNG_ENV, None)
    ran = state.result(raise_on_failure=False)
    if state.is_failed():
        if isinstance(ran, StageFailed):
            raise ran
        # a crash Prefect caught (a task timeout, an error in DVC itself): its traceback is in the log above
        raise StageFailed(stage, ExitStatus.ERROR, f"{type(ran).__name__}: {ran}" if ran else state.message)
    result.seconds[name] = round(time.perf_counter() - start, 2)
    (result.ran if ran else result.skipped).append(name)


@flow(name="lifecycle", log_prints=True)
def lifecycle(root: str = ".", trigger: str = "by hand") -> RunResult:
    """Every dvc.yaml stage in order, each a Prefect task with the retries/timeout of params `orchestration`;
    the workspace held for the whole run (a second run is refused, or waits, before any stage)."""
    from flows.workspace import workspace_lock
    from stages.common.loader import load_params
    from stages.common.tracking import check_tracking

    root = str(Path(root).resolve())
    try:
        params = load_params(Path(root) / "params.yaml")
        check_tracking()  # a tracking server that is down: say so now, not after the first stage's retries
        orchestration = params.orchestration
        with workspace_lock(root, wait=orchestration.on_busy == "wait", timeout=orchestration.wait_timeout_seconds):
            result = pipeline(root, params, trigger)
    except (ProjectError, ServerUnreachable, WorkspaceBusy) as exc:  # said in one message, no traceback
        return Failed(message=str(exc), data=exc)  # a worker's run has no CLI: the state says it
    if result.exit_status != ExitStatus.OK:
        # Prefect shows the run red, MLflow marked the parent run FAILED; the CLI reads the RunResult.
        return Failed(message=f"failed at `{result.failed_stage}`: {meaning(result.exit_status)}", data=result)
    return result


def pipeline(root: str, params, trigger: str = "by hand") -> RunResult:
    """The body of the flow: the live sources refreshed, then the stages in order under one MLflow parent run."""
    from flows.snapshot import snapshot
    from stages.common.tracking import tracking_unreachable

    result = RunResult(trigger=trigger)
    result.snapshots = snapshot(root, params)
    try:
        return tracked_pipeline(root, params, result)
    except Exception as exc:
        # The tracking server went away mid-run: the parent run could not be closed. Say so, keep what ran.
        unreachable = tracking_unreachable(exc)
        if unreachable is None:
            raise
        if result.exit_status == ExitStatus.OK:
            result.exit_status, result.failed_stage = ExitStatus.SERVER_UNREACHABLE, result.failed_stage or "tracking"
        result.error = (result.error + "; " if result.error else "") + str(unreachable)
        write_json(Path(root) / LAST_RUN, asdict(result))
        return result


def tracked_pipeline(root: str, params, result: RunResult) -> RunResult:
    from stages.common.tracking import configure, log_flat_params

    orchestration = params.orchestration
    # DVC runs `python -m stages.<name>`: make that the interpreter running this flow.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    # evaluate depends on the folder of the align@<method> outputs, which no stage makes when `align.methods` is [].
    (Path(root) / params.paths.aligned).mkdir(parents=True, exist_ok=True)
    flow_start = time.perf_counter()
    mlflow = configure(params.project.name)
    budget = params.scope.budget
    gpus = visible_gpus(params.project.device)
    tags = {"lifecycle.kind": "pipeline", "lifecycle.trigger": result.trigger}
    tags |= {f"lifecycle.snapshot.{role}.rows": str(r["rows"]) for role, r in result.snapshots.items()}
    with mlflow.start_run(run_name="lifecycle", tags=tags) as parent:
        result.parent_run_id = parent.info.run_id
        # The whole project definition, flattened: runs of two params.yaml versions compare column by column.
        log_flat_params(params.model_dump(mode="json"))
        os.environ[PARENT_RUN_ENV] = parent.info.run_id  # the stage subprocesses nest their runs under it
        try:
            from flows.ladder import Climb, stage_name

            climb = Climb(params)
            result.ladder = climb.record
            for stage in stage_order(root):
                if climb.skips(stage):
                    continue
                spent = cost(result.seconds, budget.training_hours, gpus)
                if budget.enforce and stage_name(stage) in TRAINING_STAGES and spent["over_budget"]:
                    result.exit_status, result.failed_stage = ExitStatus.INVALID_PROJECT, stage
                    result.error = over_budget_message(spent, stage)
                    break
                try:
                    run_tracked(stage, stage, root, orchestration, result)
                    judged = climb.ended_by(stage)
                    if judged and judged.check:  # a rung below the top: evaluated with the rungs above not reached
                        mark_not_reached(root, params, judged.rung, judged.higher)
                        run_tracked("evaluate", f"evaluate@{judged.rung}", root, orchestration, result, judged.rung)
                except StageFailed as exc:
                    result.exit_status, result.failed_stage, result.error = exc.exit_status, exc.stage, str(exc)
                    break
                if judged:
                    climb.judged(judged, rung_verdict(root, params))
        finally:
            os.environ.pop(PARENT_RUN_ENV, None)
            result.total_seconds = round(time.perf_counter() - flow_start, 2)
            result.cost = cost(result.seconds, budget.training_hours, gpus)
            write_json(Path(root) / LAST_RUN, asdict(result))  # first: the record survives a tracking outage
            mlflow.set_tags({"stages.ran": ",".join(result.ran) or "none", "exit_status": int(result.exit_status)})
            # MLflow metric names allow no "@": evaluate@prompting is logged as seconds.evaluate.prompting
            mlflow.log_metrics({f"seconds.{k.replace('@', '.')}": v for k, v in result.seconds.items()})
            if result.exit_status != ExitStatus.OK:
                mlflow.set_tag("failed_stage", result.failed_stage)
            mlflow.log_metrics({f"cost.{k}": float(v) for k, v in result.cost.items()})
            describe_run(mlflow, Path(root), params, result)
        if result.exit_status != ExitStatus.OK:
            mlflow.end_run(status="FAILED")
    return result
