"""Reviewing production corrections before they train the next model (`data.sources.feedback.mlflow_traces.trust:
reviewed`, the default): each pending correction beside the answer that was served, and a reviewer's verdict
recorded on its trace as an MLflow assessment (`review`: approved | rejected, the reviewer as its source), which the
next snapshot reads. The MLflow UI's assessment form records the same.

    lifecycle review                                             # the corrections waiting for a verdict
    lifecycle review --approve tr-1a2b... --reviewer jane        # they train the next model
    lifecycle review --reject tr-3c4d... --reviewer jane --why "advertises a product"
"""

from __future__ import annotations

from stages.common.errors import ProjectError
from stages.common.live import REVIEW, feedback_row


def feedback_source(params):
    traces = params.data.sources.feedback.mlflow_traces if params.data.sources.feedback else None
    if traces is None:
        raise ProjectError(
            ["`data.sources.feedback.mlflow_traces` is not set: the project takes no production feedback to review"]
        )
    return traces


def pending(params) -> list[dict]:
    """The corrections of the project's traces that no reviewer has judged, oldest first (feedback rows)."""
    from stages.common.live import read_traces

    traces = feedback_source(params)
    rows = read_traces(params.project.name, traces)
    return [r for r in rows if r["correction"] and r["review"] is None]


def record(params, trace_ids: list[str], verdict: str, reviewer: str, why: str | None = None) -> None:
    """`verdict` (approved | rejected) on each trace, by `reviewer`; a trace without feedback of this project's
    experiment is refused before anything is recorded."""
    import mlflow
    from mlflow.entities import AssessmentSource

    traces = feedback_source(params)
    experiment = mlflow.get_experiment_by_name(traces.experiment or params.project.name)
    problems = []
    for trace_id in trace_ids:
        trace = mlflow.get_trace(trace_id, silent=True)
        if trace is None or experiment is None or trace.info.experiment_id != experiment.experiment_id:
            problems.append(f"{trace_id}: no trace of this project (`lifecycle review` lists the pending ones)")
        elif feedback_row(trace) is None:
            problems.append(f"{trace_id}: no feedback on this trace to review")
    if problems:
        raise ProjectError(problems)
    source = AssessmentSource(source_type="HUMAN", source_id=reviewer)
    for trace_id in trace_ids:
        mlflow.log_feedback(trace_id=trace_id, name=REVIEW, value=verdict, source=source, rationale=why)
