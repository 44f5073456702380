"""Every answered request as an MLflow trace, and users' feedback as assessments on it (params `serve.tracing`).

    MLFLOW_TRACKING_URI=http://mlflow:5000 lifecycle serve     # traces go to the project's experiment there
    curl -s localhost:3000/v1/feedback -H 'content-type: application/json' \
         -d '{"trace_id": "tr-...", "rating": "down", "correction": "Serialize obj to a JSON formatted str."}'

A trace holds the prompt as sent and as rendered, the answer, the model (registered name, version, alias at
packaging, variant, precision), the retrieved sources, the tokens, the latency and the API key's label (never
the key). `redacted` replaces personal data (stages/common/pii.py, the data stage's scanner, carried in the
bento) by its type before anything leaves the process; `full` logs the text as sent; `off` logs nothing.

Logging never holds up an answer: the span is made in memory and MLflow's exporter sends it from its own threads
(MLFLOW_ENABLE_ASYNC_TRACE_LOGGING). A probe asks the tracking server's /health every PROBE_SECONDS; while it does
not answer, requests are answered untraced (no trace id), counted as dropped in /metrics and said once in the log.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import urllib.request
from types import SimpleNamespace

import bentoml

if __package__:  # run from the repository (serving.tracing)
    from stages.common import pii
else:  # in a bento: copied beside the service
    import pii

log = logging.getLogger("lifecycle.tracing")

PROBE_SECONDS = 5.0


@functools.cache
def counters() -> SimpleNamespace:
    """The tracer's Prometheus metrics, made by the first Tracer, not at import: building a bento imports this
    module a second time (as `tracing`), and a metric registered twice in one process is an error."""
    return SimpleNamespace(
        traces=bentoml.metrics.Counter(
            name="lifecycle_traces",
            documentation="requests traced to MLflow (logged) or answered untraced because the tracking server was "
            "down (dropped)",
            labelnames=["outcome"],
        ),
        tracking_up=bentoml.metrics.Gauge(
            name="lifecycle_tracking_server_up",
            documentation="1 while the MLflow tracking server answers its /health",
        ),
        feedback=bentoml.metrics.Counter(
            name="lifecycle_feedback", documentation="feedback recorded on traces, by rating", labelnames=["rating"]
        ),
    )


# The served model's trace tags (what `lifecycle monitor` and the feedback role filter on).
TAG_PREFIX = "lifecycle."
RATING = "rating"  # the user's vote, as a feedback assessment: 1-5 (up = 5, down = 1)
CORRECTION = "correction"  # the user's corrected answer, as an expectation assessment
VOTES = {"up": 5, "down": 1}
TOKEN_USAGE = "mlflow.chat.tokenUsage"  # mlflow.tracing.constant.SpanAttributeKey.CHAT_USAGE  # noqa: S105 - an MLflow span attribute name, not a secret


class Unknown(Exception):
    """No trace of this id that this service's model made: not one this server made, nor one the tracking server
    holds in this experiment under this model (a trace elsewhere is not named: the answer gives nothing away)."""


class NotYours(Exception):
    """A trace of this model made for another caller: only its caller (or a reviewer) may assess it."""


class RateLimit:
    """Feedback's own limit per key: at most `per_minute` calls per caller in any 60 seconds (a sliding window);
    `wait(caller)` is 0 when this call may go on (and counts it), else the seconds until one may."""

    def __init__(self, per_minute: int, clock=None):
        import time
        from collections import defaultdict, deque

        self.per_minute, self.clock = per_minute, clock or time.monotonic
        self.calls: dict[str, deque] = defaultdict(deque)

    def wait(self, caller: str) -> float:
        now, calls = self.clock(), self.calls[caller]
        while calls and now - calls[0] >= 60:
            calls.popleft()
        if len(calls) >= self.per_minute:
            return 60 - (now - calls[0])
        calls.append(now)
        return 0.0


class Tracer:
    def __init__(self, mode: str, experiment: str, model: dict, phone_region: str = "US") -> None:
        self.mode, self.model, self.region = mode, {k: str(v) for k, v in model.items()}, phone_region
        self.counters = counters()
        self.up = mode != "off"
        self.experiment_id: str | None = None
        self.recent: dict[str, float] = {}  # trace ids this process made: feedback may come before they are sent
        if mode == "off":
            return
        # A dead server must not cost minutes per export (MLflow's default: 7 retries, 120 s timeouts).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "true")
        self.experiment = experiment
        self.stopped = threading.Event()
        try:
            self.uri = self._uri()
        except Exception as exc:  # noqa: BLE001 - tracing never stops the server from serving
            # A bento carries MLflow's tracing SDK, which writes to a tracking server, not to a local store.
            log.warning(
                "tracing is off: no usable MLflow tracking URI (%s: %s); set MLFLOW_TRACKING_URI to a tracking "
                "server to trace requests",
                type(exc).__name__,
                exc,
            )
            self.mode, self.up = "off", False
            return
        self.up = self._reachable()
        self.counters.tracking_up.set(int(self.up))
        if self.up:
            self._experiment()
        else:
            log.warning("MLflow tracking server %s does not answer: requests are answered untraced", self.uri)
        threading.Thread(target=self._probe, name="tracking-probe", daemon=True).start()

    # --- the tracking server ------------------------------------------------------------------------------------

    @staticmethod
    def _uri() -> str:
        import mlflow

        return mlflow.get_tracking_uri()

    def _reachable(self) -> bool:
        if not self.uri.startswith(("http://", "https://")):
            return True  # a database the process writes itself: no server to lose
        try:
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=2) as answer:  # noqa: S310 - http(s) of a server we run or the user configured
                return 200 <= answer.status < 300
        except OSError:
            return False

    def _experiment(self) -> None:
        import mlflow

        try:
            found = mlflow.get_experiment_by_name(self.experiment)
            self.experiment_id = found.experiment_id if found else mlflow.create_experiment(self.experiment)
        except Exception as exc:  # noqa: BLE001 - tracing is best effort: the server answers either way
            log.warning("MLflow experiment %r not available (%s): requests are answered untraced", self.experiment, exc)
            self.experiment_id = None

    def _probe(self) -> None:
        while not self.stopped.wait(PROBE_SECONDS):
            up = self._reachable()
            if up != self.up:
                log.warning(
                    "MLflow tracking server %s %s",
                    self.uri,
                    "answers again: tracing resumed" if up else "does not answer: requests are answered untraced",
                )
                if up and self.experiment_id is None:
                    self._experiment()
            self.up = up
            self.counters.tracking_up.set(int(up))

    def stop(self) -> None:
        if hasattr(self, "stopped"):
            self.stopped.set()

    # --- traces ---------------------------------------------------------------------------------------------------

    def clean(self, text: str) -> str:
        return pii.redact(text, pii.find_pii(text, self.region)) if self.mode == "redacted" else text

    def start(self, endpoint: str, prompt: str, caller: str):
        """A span for one request, or None (tracing off, the server down). Costs no network."""
        if self.mode == "off":
            return None
        if not (self.up and self.experiment_id):
            self.counters.traces.labels(outcome="dropped").inc()
            return None
        import mlflow

        span = mlflow.start_span_no_context(
            name=endpoint,
            span_type="LLM",
            inputs={"prompt": self.clean(prompt)},
            experiment_id=self.experiment_id,
            tags={f"{TAG_PREFIX}{k}": v for k, v in {**self.model, "caller": caller, "endpoint": endpoint}.items()},
        )
        self.recent[span.trace_id] = time.time()
        if len(self.recent) > 10_000:  # the newest are the ones feedback comes for
            for old in sorted(self.recent, key=self.recent.get)[:5_000]:
                del self.recent[old]
        return span

    def finish(self, span, rendered: str, answer: str, sources: list, usage: dict, latency_ms: float, status="OK"):
        if span is None:
            return
        attributes = {
            "rendered_prompt": self.clean(rendered),
            "sources": [f"{s.get('source', '')}#{s.get('section', '')}" for s in sources],
            "latency_ms": round(latency_ms, 2),
        }
        if usage:  # MLflow's own key and names: the Traces page shows them in its Tokens column
            attributes[TOKEN_USAGE] = {
                "input_tokens": usage["prompt_tokens"],
                "output_tokens": usage["completion_tokens"],
                "total_tokens": usage["total_tokens"],
            }
        span.set_attributes(attributes)
        span.set_outputs({"answer": self.clean(answer)})
        span.end(status=status)
        self.counters.traces.labels(outcome="logged").inc()

    # --- feedback -------------------------------------------------------------------------------------------------

    def feedback(
        self,
        trace_id: str,
        rating: int,
        correction: str | None,
        comment: str | None,
        caller: str,
        reviewer: bool = False,
    ) -> None:
        """The caller's rating (and correction) as assessments on the trace, the caller's label as their source.
        Only on a trace of this experiment and model (else Unknown), made for this caller unless they review
        (else NotYours); one rating and one correction per caller and trace: a later one overrides the earlier.
        Blocking (network): the service calls it in a thread."""
        import mlflow
        from mlflow.entities import AssessmentSource

        if trace_id in self.recent:
            mlflow.flush_trace_async_logging()  # ours, maybe not sent yet: the assessment needs the trace there
        trace = mlflow.get_trace(trace_id, silent=True)
        if trace is None or not self.ours(trace.info):
            raise Unknown(trace_id)
        if trace.info.tags.get(f"{TAG_PREFIX}caller") != caller and not reviewer:
            raise NotYours(trace_id)
        earlier = {
            a.name: a
            for a in trace.info.assessments or []
            if a.source and a.source.source_id == caller and a.valid is not False
        }
        source = AssessmentSource(source_type="HUMAN", source_id=caller)
        rationale = self.clean(comment) if comment else None
        if RATING in earlier:  # the earlier vote stays in the history, marked overridden
            mlflow.override_feedback(
                trace_id=trace_id,
                assessment_id=earlier[RATING].assessment_id,
                value=rating,
                rationale=rationale,
                source=source,
            )
        else:
            mlflow.log_feedback(trace_id=trace_id, name=RATING, value=rating, source=source, rationale=rationale)
        if correction:
            if CORRECTION in earlier:  # an expectation has no override: the newer one replaces it
                mlflow.delete_assessment(trace_id=trace_id, assessment_id=earlier[CORRECTION].assessment_id)
            mlflow.log_expectation(trace_id=trace_id, name=CORRECTION, value=self.clean(correction), source=source)
        self.counters.feedback.labels(rating=str(rating)).inc()

    def ours(self, info) -> bool:
        """A trace of this service's experiment and model (another project's, or another model's, is not)."""
        return info.experiment_id == self.experiment_id and info.tags.get(f"{TAG_PREFIX}model") == self.model.get(
            "model"
        )
