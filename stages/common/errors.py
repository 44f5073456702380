"""Exit statuses and the errors a user can act on, shared by every stage and the `lifecycle` command."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # unexpected failure: the traceback is in the log
    INVALID_PROJECT = 2  # params.yaml is invalid or contradictory
    GATE_REFUSED = 3  # a KPI gate refused the model: nothing was promoted
    SERVER_UNREACHABLE = 4  # a server the environment points at (MLflow tracking, Prefect API) did not answer
    WORKSPACE_BUSY = 5  # another lifecycle run holds this workspace: nothing was run
    THRESHOLD_CROSSED = 6  # `lifecycle monitor`: production crossed a threshold of params `monitor:`


MEANING = {
    ExitStatus.ERROR: "an unexpected failure (a bug, or the machine: the traceback above)",
    ExitStatus.INVALID_PROJECT: "the project definition is invalid",
    ExitStatus.GATE_REFUSED: "the KPI gates refused the model",
    ExitStatus.SERVER_UNREACHABLE: "a server did not answer",
    ExitStatus.WORKSPACE_BUSY: "another run holds the workspace",
    ExitStatus.THRESHOLD_CROSSED: "production crossed a monitor threshold",
}

# Set by the flow for each stage: the file where a stage writes the message of a user's error (its exit status
# 2-5), so the run record and `lifecycle status` can say why a run failed after the terminal has scrolled away.
STAGE_ERROR_ENV = "LIFECYCLE_STAGE_ERROR_FILE"


def meaning(status: int) -> str:
    return MEANING.get(status, MEANING[ExitStatus.ERROR]) if status != ExitStatus.OK else "success"


class ProjectError(Exception):
    """params.yaml (or a file it names) is wrong; carries every problem so the user fixes them in one go."""

    exit_status = ExitStatus.INVALID_PROJECT

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid project definition:\n" + "\n".join(f"  - {p}" for p in self.problems))


class GateRefused(Exception):
    """The evaluated model did not pass its KPI gates."""

    exit_status = ExitStatus.GATE_REFUSED

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("the KPI gates refused the model:\n" + "\n".join(f"  - {r}" for r in self.reasons))


class ServerUnreachable(Exception):
    """A server the environment names (MLFLOW_TRACKING_URI, PREFECT_API_URL) does not answer: say which, and what
    to do, instead of a client library's retry traceback."""

    exit_status = ExitStatus.SERVER_UNREACHABLE
