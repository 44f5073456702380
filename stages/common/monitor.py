"""Is production still what the model was trained for? The served model's traces over a window, against params
`monitor:` (and `scope.serving.p95_latency_ms`).

    lifecycle monitor                  # reports/monitor.md + reports/monitor.png, an MLflow run; exit 6 when crossed

Measured on the window's traces (serving/tracing.py): request volume; latency p50/p95; guardrail breaches per 100
answers (evaluate.guardrails, the checks evaluate ran); the approval rate of rated answers with its Wilson interval
(scipy); the out-of-domain share: a prompt whose nearest training prompt (MiniLM, cosine distance) is farther than
the eval split's prompts are at their 95th percentile; and input drift: the two-sample Kolmogorov-Smirnov test
(scipy) of those nearest-training distances between the window and the one before it (or, when that one has too
few requests, the eval split, which is what the model was judged on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from stages.common.io import read_jsonl, write_text
from stages.common.live import RATING
from stages.common.params import MlflowTraces

OOD_QUANTILE = 0.95  # the eval split's nearest-training distance at this quantile is the out-of-domain line


@dataclass
class Window:
    start_ms: int
    end_ms: int
    prompts: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    ratings: list[float] = field(default_factory=list)


def traces(experiment: str, start_ms: int, end_ms: int) -> Window:
    """The served model's traces with start_ms <= time < end_ms."""
    import mlflow

    window = Window(start_ms, end_ms)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return window
    for trace in mlflow.search_traces(
        experiment_ids=[found.experiment_id],
        filter_string=f"trace.timestamp_ms >= {start_ms} AND trace.timestamp_ms < {end_ms}",
        return_type="list",
        flush=True,
    ):
        root = trace.data.spans[0] if trace.data.spans else None
        if root is None or not isinstance(root.inputs, dict) or "prompt" not in root.inputs:
            continue  # not one of the server's request traces
        window.prompts.append(str(root.inputs["prompt"]))
        window.answers.append(str((root.outputs or {}).get("answer", "")))
        window.latency_ms.append(float(root.attributes.get("latency_ms") or trace.info.execution_duration or 0))
        for a in trace.info.assessments or []:
            if a.name == RATING and a.feedback is not None and getattr(a, "valid", True) is not False:
                window.ratings.append(float(a.feedback.value))
    return window


def nearest_distances(embedder, train, prompts: list[str]):
    """Each prompt's cosine distance to its nearest training prompt (`train`: their normalized embeddings)."""
    import numpy as np

    if not prompts:
        return np.array([])
    b = embedder.encode(prompts, normalize_embeddings=True, batch_size=64, show_progress_bar=False)
    return 1.0 - (b @ train.T).max(axis=1)


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def measure(params, processed: str | Path, now_ms: int | None = None) -> dict:
    """The window's figures and the thresholds it crosses (a pure read of traces and the processed splits)."""
    import numpy as np
    from scipy.stats import ks_2samp

    from stages.common.embeddings import embedding_model
    from stages.common.guardrails import breaches, resolve

    m = params.monitor
    now_ms = now_ms or int(time.time() * 1000)
    span = int(m.window_days * 86_400_000)
    current = traces(params.project.name, now_ms - span, now_ms)
    previous = traces(params.project.name, now_ms - 2 * span, now_ms - span)
    report = {"window_days": m.window_days, "requests": len(current.prompts), "crossed": [], "judged": False}
    if len(current.prompts) < m.min_requests:
        report["why"] = (
            f"{len(current.prompts)} requests in the window, fewer than `monitor.min_requests` {m.min_requests}"
        )
        return report
    report["judged"] = True
    lat = np.array(current.latency_ms)
    report["latency_ms"] = {
        "p50": round(float(np.percentile(lat, 50)), 1),
        "p95": round(float(np.percentile(lat, 95)), 1),
    }
    limit = params.scope.serving.p95_latency_ms
    if limit is not None and report["latency_ms"]["p95"] > limit:
        report["crossed"].append(f"latency p95 {report['latency_ms']['p95']} ms > scope.serving.p95_latency_ms {limit}")
    rules, labels = resolve(params), params.scope.labels
    broken = sum(bool(breaches(a, rules, labels)) for a in current.answers)
    report["guardrail_breaches_per_100"] = round(100 * broken / len(current.answers), 2)
    if report["guardrail_breaches_per_100"] > m.max_guardrail_breaches_per_100:
        report["crossed"].append(
            f"guardrail breaches {report['guardrail_breaches_per_100']} per 100 > {m.max_guardrail_breaches_per_100}"
        )
    rated = len(current.ratings)
    feedback = params.data.sources.feedback
    min_rating = (feedback.mlflow_traces if feedback else MlflowTraces()).min_rating
    if rated:
        approved = sum(r >= min_rating for r in current.ratings)
        low, high = wilson(approved, rated)
        report["approval"] = {"rated": rated, "rate": round(approved / rated, 4), "ci": [round(low, 4), round(high, 4)]}
        if high < m.min_approval:
            report["crossed"].append(f"approval {approved}/{rated}, interval up to {high:.3f} < {m.min_approval}")
    embedder = embedding_model(params.evaluate.embedding_model)
    prompts = [r["prompt"] for r in read_jsonl(Path(processed) / "sft.jsonl")]
    train = embedder.encode(prompts, normalize_embeddings=True, batch_size=64, show_progress_bar=False)
    held = [r["prompt"] for r in read_jsonl(Path(processed) / "eval.jsonl")]
    reference = nearest_distances(embedder, train, held)
    line = float(np.quantile(reference, OOD_QUANTILE))
    now_d = nearest_distances(embedder, train, current.prompts)
    report["out_of_domain"] = {"share": round(float((now_d > line).mean()), 4), "distance_line": round(line, 4)}
    if report["out_of_domain"]["share"] > m.max_out_of_domain:
        report["crossed"].append(f"out-of-domain share {report['out_of_domain']['share']} > {m.max_out_of_domain}")
    before = (
        ("the previous window", nearest_distances(embedder, train, previous.prompts))
        if len(previous.prompts) >= m.min_requests
        else ("the eval split", reference)
    )
    test = ks_2samp(before[1], now_d)
    report["drift"] = {
        "versus": before[0],
        "ks_statistic": round(float(test.statistic), 4),
        "p_value": float(test.pvalue),
        "drifted": bool(test.pvalue < m.drift_p_value),
    }
    if report["drift"]["drifted"]:
        report["crossed"].append(
            f"input drift versus {before[0]}: KS {test.statistic:.3f}, p {test.pvalue:.2g} < {m.drift_p_value}"
        )
    report["_plot"] = {"latency": lat.tolist(), "reference": before[1].tolist(), "now": now_d.tolist(), "line": line}
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = report["_plot"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.hist(data["latency"], bins=30, color="#4c72b0")
    left.set(title="latency of the window's requests", xlabel="ms", ylabel="requests")
    right.hist(data["reference"], bins=30, alpha=0.6, density=True, label=report["drift"]["versus"])
    right.hist(data["now"], bins=30, alpha=0.6, density=True, label="this window")
    right.axvline(data["line"], color="black", linestyle="--", label="out-of-domain line")
    right.set(title="distance to the nearest training prompt (MiniLM)", xlabel="cosine distance")
    right.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def markdown(report: dict, project: str) -> str:
    lines = [
        f"# Monitor: {project}",
        "",
        f"Window: the last {report['window_days']} days; {report['requests']} requests.",
    ]
    if not report["judged"]:
        return "\n".join(lines + ["", f"Nothing judged: {report['why']}.", ""])
    lat, ood, drift = report["latency_ms"], report["out_of_domain"], report["drift"]
    approval = report.get("approval")
    lines += [
        "",
        "| measure | value |",
        "|---|---|",
        f"| latency p50 / p95 | {lat['p50']} / {lat['p95']} ms |",
        f"| guardrail breaches per 100 answers | {report['guardrail_breaches_per_100']} |",
        "| approval (rated answers, 95 % Wilson interval) | "
        + (
            f"{approval['rate']} [{approval['ci'][0]}, {approval['ci'][1]}] of {approval['rated']} |"
            if approval
            else "no ratings |"
        ),
        f"| out of domain (nearest training prompt farther than {ood['distance_line']}) | {ood['share']} |",
        f"| input drift versus {drift['versus']} (KS) | statistic {drift['ks_statistic']}, p {drift['p_value']:.3g} |",
        "",
        "![latency and distances](monitor.png)",
        "",
        "## Verdict",
        "",
    ]
    lines += [f"- CROSSED: {c}" for c in report["crossed"]] or ["Every threshold in `monitor:` holds."]
    return "\n".join(lines) + "\n"


def run(params, root: str | Path = ".", now_ms: int | None = None) -> dict:
    """Measure, write reports/monitor.md (+ .png), log an MLflow run `monitor`; the report."""
    from stages.common.tracking import configure

    root = Path(root)
    report = measure(params, root / params.paths.processed, now_ms)
    reports = root / "reports"
    reports.mkdir(exist_ok=True)
    if report["judged"]:
        plot(report, reports / "monitor.png")
    write_text(reports / "monitor.md", markdown(report, params.project.name))
    mlflow = configure(params.project.name)
    with mlflow.start_run(run_name="monitor", tags={"lifecycle.kind": "monitor"}):
        figures = {"requests": report["requests"]}
        if report["judged"]:
            figures |= {
                "latency_p50_ms": report["latency_ms"]["p50"],
                "latency_p95_ms": report["latency_ms"]["p95"],
                "guardrail_breaches_per_100": report["guardrail_breaches_per_100"],
                "out_of_domain_share": report["out_of_domain"]["share"],
                "drift_ks_statistic": report["drift"]["ks_statistic"],
                "drift_p_value": report["drift"]["p_value"],
            }
            if "approval" in report:
                figures["approval_rate"] = report["approval"]["rate"]
        mlflow.log_metrics({f"monitor.{k}": v for k, v in figures.items()})
        mlflow.set_tag("monitor.crossed", "; ".join(report["crossed"]) or "none")
        mlflow.log_artifact(str(reports / "monitor.md"))
        if report["judged"]:
            mlflow.log_artifact(str(reports / "monitor.png"))
    report.pop("_plot", None)
    return report
