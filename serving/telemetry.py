"""The service's Prometheus metrics, on BentoML's /metrics beside its own request metrics (ours: `lifecycle_*`).

    curl -s localhost:3000/metrics | grep ^lifecycle_

Requests, latency and refusals are counted in one place, the `Metered` middleware, from the status each answer
went out with, so no endpoint and no error path counts for itself; the engine reports batches, tokens and the
queue through the counters the service hands it.
"""

from __future__ import annotations

import time

import bentoml

REQUESTS = bentoml.metrics.Counter(
    name="lifecycle_requests",
    documentation="requests answered, by endpoint and status",
    labelnames=["endpoint", "status"],
)
LATENCY = bentoml.metrics.Histogram(
    name="lifecycle_request_seconds",
    documentation="request latency (a stream's: until its last event)",
    labelnames=["endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TOKENS = bentoml.metrics.Counter(name="lifecycle_generated_tokens", documentation="tokens generated")
BATCH = bentoml.metrics.Histogram(
    name="lifecycle_batch_size",
    documentation="requests decoding together when a request joins",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
REJECTED = bentoml.metrics.Counter(
    name="lifecycle_rejected_requests",
    documentation="requests refused: queue_full (429), timeout (504), unauthorized (401), invalid (400, 404)",
    labelnames=["reason"],
)
WAITING = bentoml.metrics.Gauge(name="lifecycle_queue_waiting", documentation="requests waiting to be generated")

# A refusal's reason, by the status it was answered with (protocol.refusal decides the status).
REASONS = {400: "invalid", 404: "invalid", 401: "unauthorized", 429: "queue_full", 504: "timeout"}


class Metered:
    """ASGI middleware: each request to one of `endpoints` counted by its answer's status and timed; a refusal
    counted by its reason. Other paths (probes, BentoML's pages, unknown ones) stay out of the labels."""

    def __init__(self, app, endpoints: frozenset[str] = frozenset()) -> None:
        self.app, self.endpoints = app, endpoints

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.endpoints:
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # an exception before any answer: the server's own 500

        async def watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            REQUESTS.labels(endpoint=scope["path"], status=str(status)).inc()
            LATENCY.labels(endpoint=scope["path"]).observe(time.perf_counter() - start)
            if status in REASONS:
                REJECTED.labels(reason=REASONS[status]).inc()
