"""The BentoML service for the packaged model: an OpenAI-compatible API, the typed `generate` endpoint, batching.

    lifecycle serve                              # the champion's bento on 127.0.0.1:3000
    curl -s localhost:3000/v1/chat/completions -H 'content-type: application/json' \
         -d '{"model": "help-desk", "messages": [{"role": "user", "content": "What does `json.dumps` do?"}]}'

    from openai import OpenAI                    # any OpenAI client, LangChain's included
    OpenAI(base_url="http://127.0.0.1:3000/v1", api_key="-").chat.completions.create(model="help-desk", messages=[...])

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream: true` as server-sent events),
GET /v1/models, POST /generate, POST /v1/feedback; BentoML's /readyz, /livez and /metrics (Prometheus). Every
answer is an MLflow trace (tracing.py, params `serve.tracing`): its id comes back in the X-Trace-Id header and the
`trace_id` field, and POST /v1/feedback records a user's rating and correction on it. Every request goes
through the packaged prompt renderer (a chat's last user message is the template's `prompt`, earlier turns its
history, a system message its system prompt; a completion's `prompt` likewise), so what is served is what
evaluate measured; answers are greedy unless the request sets a temperature. A retrieval variant (`_rag`)
retrieves for each request and lists the passages it was given as `sources`, an extra field of the response.

It loads only what the package stage put into the bento: the model in BentoML's model store and the serving
settings (settings.py), the renderer (prompting.py and the model folder's prompt.json) and the retriever
(retrieval.py and the folder's index/). Never params.yaml, never a hub. The wire protocol and the one error path
every endpoint answers through are protocol.py's; the metrics telemetry.py's; the optional API keys auth.py's.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml

if __package__:  # run from the repository (serving.service)
    from serving import auth, engine, protocol, settings, telemetry, tracing
else:  # in a bento: the service's modules lie side by side
    import auth
    import engine
    import protocol
    import settings
    import telemetry
    import tracing

with bentoml.importing():  # torch only in torch_engine: an image serving on OpenVINO carries none
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    if __package__:
        from stages.common import generation, precision, prompting, retrieval
    else:  # the generation engine, the renderer, the precisions and the retriever, copied beside this file
        import generation
        import precision
        import prompting
        import retrieval

SERVE = settings.SERVE
ENDPOINTS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/models", "/generate", "/v1/feedback"}
)  # what is metered
TRACE_HEADER = "X-Trace-Id"


def _resources(serve: dict) -> dict:
    """params `serve.resources` as BentoML's: no GPU entries when none is asked for."""
    return {k: v for k, v in serve.get("resources", {}).items() if v not in (None, 0, "")}


class Gathered:
    """`search(list)` for concurrent requests, gathered: while one batch runs in its thread, the requests that arrive
    wait and go together, up to `max_batch` (one query at a time, embedding and searching in turn, capped a bento
    that retrieves at a few requests/s however fast the engine; evaluate searches its rows in one batch too)."""

    def __init__(self, search, max_batch: int):
        self.search, self.max_batch = search, max_batch
        self.pending: list[tuple[str, asyncio.Future]] = []
        self.draining = False
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="retrieve")

    async def __call__(self, query: str):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((query, future))
        if not self.draining:
            self.draining = True
            loop.create_task(self.drain())
        return await future

    async def drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                try:
                    found = await loop.run_in_executor(self.thread, self.search, [q for q, _ in batch])
                except Exception as exc:  # every request of the batch gets the error
                    found = [exc] * len(batch)
                for (_, future), result in zip(batch, found):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.draining = False


@bentoml.service(
    name="lifecycle",
    workers=1,
    resources=_resources(SERVE),
    # Our queue bounds the load (429) and our timeout answers 504 first; BentoML's are the backstop.
    traffic={"timeout": SERVE["request_timeout_s"] + 30},
)
@bentoml.asgi_app(protocol.openai_api, path="/v1")
class Lifecycle:
    model_ref = bentoml.models.BentoModel(settings.TAG)

    def __init__(self) -> None:
        path = Path(self.model_ref.path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        info = (
            json.loads((path / "lifecycle.json").read_text(encoding="utf-8"))
            if (path / "lifecycle.json").is_file()
            else {}
        )
        # The engine and the precision evaluate answered with (metrics/eval.json `engines`, `serving`).
        self.precision = info.get("precision", precision.FULL)
        self.engine_name = info.get("engine", generation.TRANSFORMERS)
        config = GenerationConfig.from_pretrained(path) if (path / "generation_config.json").is_file() else None
        if self.engine_name == generation.OPENVINO:
            # The GGUF file at the chosen precision, as it is: nothing is converted or quantized at start-up.
            backend = generation.OpenVINOEngine(
                path / info["file"],
                SERVE["max_batch_size"],
                SERVE.get("fast_math", False),
                generation.repetition_penalty(config),
            )
            context = AutoConfig.from_pretrained(path)
        else:
            backend, context = self.torch_engine(path)
        self.renderer = prompting.Renderer.load(path, self.tokenizer, prompting.context_length(context))
        self.model_id = info.get("project") or self.model_ref.tag.name
        # The shipped index (a _rag variant): searched on a working copy, the model store's stays as packaged.
        self.retriever = (
            retrieval.Retriever.open(path / "index") if (path / "index" / retrieval.CARD).is_file() else None
        )
        self.retrieve = Gathered(self.retriever.search, SERVE["max_batch_size"]) if self.retriever else None
        model = {
            "model": settings.REGISTERED.get("registered_model", self.model_id),
            "version": settings.REGISTERED.get("version", ""),
            "alias": settings.REGISTERED.get("alias", ""),
            "variant": info.get("variant", ""),
            "precision": self.precision,
            "engine": self.engine_name,
        }
        self.tracer = tracing.Tracer(
            SERVE.get("tracing", "off"), info.get("project") or self.model_id, model, info.get("phone_region", "US")
        )
        self.feedback_thread = ThreadPoolExecutor(1, thread_name_prefix="feedback")
        feedback = SERVE.get("feedback", {})
        self.reviewers = set(feedback.get("reviewers", []))
        self.feedback_limit = tracing.RateLimit(feedback.get("per_minute", 30))
        stops = [] if self.renderer.chat else self.renderer.fmt.stop
        self.engine = engine.Engine(
            generation.Generator(
                backend, self.tokenizer, self.renderer.cut, stops, generation.eos_ids(config, self.tokenizer)
            ),
            max_batch_size=SERVE["max_batch_size"],
            batch_wait_ms=SERVE["batch_wait_ms"],
            max_queue=SERVE["max_queue"],
            counters=engine.Counters(
                batch=telemetry.BATCH.observe, tokens=telemetry.TOKENS.inc, waiting=telemetry.WAITING.set
            ),
        )

    def torch_engine(self, path: Path):
        """The transformers engine (the fallback for architectures OpenVINO's GGUF route does not take): the model
        in torch, at the precision evaluate chose, by the function it used (precision.py)."""
        import torch
        from transformers import AutoModelForCausalLM

        cuda = torch.cuda.is_available()
        cpus = SERVE["resources"].get("cpu")
        if not cuda and cpus:
            # As many compute threads as the CPUs the service asked for (the HTTP layer needs the rest). torch's
            # default, every core, decoded batches of 16 at 77 requests/s on this 2-core machine, one thread at 138.
            torch.set_num_threads(max(1, int(float(cpus))))
        # On a GPU in the precision it was packaged in; on a CPU in float32 (bf16 is emulated there, ~10x slower).
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto" if cuda else torch.float32)
        model = precision.quantize(model.to("cuda" if cuda else "cpu").eval(), self.precision)
        return generation.TransformersEngine(model, self.tokenizer), model

    @bentoml.on_shutdown
    def remove_index_copy(self) -> None:
        if self.retriever and self.retriever.working_copy:
            self.retriever.working_copy.cleanup()
        self.tracer.stop()

    # --- shared by every endpoint -------------------------------------------------------------------------------

    async def prepare(self, record: dict, max_new_tokens: int, truncate: bool, param: str) -> tuple[list[int], list]:
        """The prompt's tokens (retrieval, then the packaged renderer) and the passages it holds."""
        found = []
        if self.retrieve:
            found = await self.retrieve(record["prompt"])
        record = {**record, "context": [c["text"] for c in found]}
        try:
            text = self.renderer.prompt(record, max_new_tokens=max_new_tokens)
        except KeyError as exc:
            raise protocol.ApiError(
                400, f"the prompt template needs the field {exc} (send it in `fields`)", param="fields"
            ) from None
        except prompting.PromptTooLong as exc:
            if not truncate:
                raise protocol.ApiError(
                    400,
                    f"{exc}; or send `truncate_prompt: true` to keep its last tokens",
                    param=param,
                    code="context_length_exceeded",
                ) from None
            # The question is at the end: keep the last tokens that fit beside the answer.
            text = self.renderer.render({**record, "context": []}, [])
            return self.renderer.encode(text)[-(self.renderer.context - max_new_tokens) :], []
        # Only the passages that fit into the prompt were used (the renderer drops the least relevant first).
        used = [c for c in found if " ".join(c["text"].split()) in text]
        return self.renderer.encode(text), used

    def job(self, ids: list[int], req: protocol.Decoding, max_new_tokens: int) -> engine.Job:
        sampling = (
            engine.Sampling(req.temperature, req.top_p, req.top_k, req.seed)
            if req.temperature > 0
            else engine.Sampling(seed=req.seed)
        )
        return engine.Job(ids, max_new_tokens, sampling, req.stops, asyncio.Queue() if req.stream else None)

    def check_model(self, name: str | None) -> None:
        if name not in (None, "", self.model_id, str(self.model_ref.tag)):
            raise protocol.ApiError(
                404,
                f"model {name!r} is not served here; this server serves {self.model_id!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    async def traced(self, span, waiter, ids: list[int], used: list, start: float) -> engine.Result:
        """The engine's answer, and the request's trace finished with it (a failed or abandoned one too)."""
        if span is None:
            return await waiter
        rendered = self.tokenizer.decode(ids)
        try:
            result = await waiter
        except BaseException:
            self.tracer.finish(span, rendered, "", used, {}, (time.perf_counter() - start) * 1000, status="ERROR")
            raise
        usage = protocol.usage(result)
        self.tracer.finish(span, rendered, result.text, used, usage, (time.perf_counter() - start) * 1000)
        return result

    async def openai_answer(
        self, req: protocol.ChatRequest | protocol.CompletionRequest, max_new_tokens, param: str, request: Request
    ):
        """One OpenAI request: the JSON answer or the event stream; a refusal through the one error path."""
        shape = protocol.Chat if isinstance(req, protocol.ChatRequest) else protocol.Completion
        start = time.perf_counter()
        try:
            record = req.record()
            self.check_model(req.model)
            n_new = max_new_tokens or self.renderer.fmt.max_new_tokens
            ids, used = await self.prepare(record, n_new, req.truncate_prompt, param)
            job = self.job(ids, req, n_new)
            waiter = self.engine.enqueue(job, SERVE["request_timeout_s"])  # raises QueueFull before a stream begins
            span = self.tracer.start(request.url.path, record["prompt"], auth.caller(request.scope))
            waiter = self.traced(span, waiter, ids, used, start)
            headers = {TRACE_HEADER: span.trace_id} if span else None
            sources = [protocol.Source.of(c).model_dump() for c in used]
            if req.stream:
                usage = bool((req.stream_options or {}).get("include_usage"))
                events = protocol.events(job, waiter, shape, self.model_id, sources, usage)
                return StreamingResponse(events, media_type="text/event-stream", headers=headers)
            body = shape.whole(self.model_id, await waiter, sources)
            return JSONResponse({**body, "trace_id": span.trace_id} if span else body, headers=headers)
        except protocol.REFUSED as exc:
            return protocol.refusal(exc).response()

    # --- endpoints ----------------------------------------------------------------------------------------------

    @protocol.openai_api.get("/models")
    async def models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model_id,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "genai-lifecycle",
                    "bento_model": str(self.model_ref.tag),
                }
            ],
        }

    @protocol.openai_api.post("/chat/completions")
    async def chat_completions(self, req: protocol.ChatRequest, request: Request):
        return await self.openai_answer(req, req.max_completion_tokens or req.max_tokens, "messages", request)

    @protocol.openai_api.post("/completions")
    async def completions(self, req: protocol.CompletionRequest, request: Request):
        return await self.openai_answer(req, req.max_tokens, "prompt", request)

    @protocol.openai_api.post("/feedback")
    async def feedback(self, req: protocol.FeedbackRequest, request: Request):
        """A user's rating (and correction, comment) of an answer, recorded on its trace."""
        try:
            if self.tracer.mode == "off":
                raise protocol.ApiError(
                    400,
                    "this server does not trace requests (serve.tracing: off), so it takes no feedback",
                    code="tracing_off",
                )
            if not self.tracer.up:
                raise protocol.ApiError(
                    503,
                    "the MLflow tracking server does not answer: send the feedback again later",
                    "server_error",
                    code="tracking_unavailable",
                    headers={"Retry-After": "30"},
                )
            caller = auth.caller(request.scope)
            if wait := self.feedback_limit.wait(caller):
                raise protocol.ApiError(
                    429,
                    f"too much feedback from {caller}: at most {self.feedback_limit.per_minute} a minute",
                    "rate_limit_error",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(1, round(wait)))},
                )
            rating = tracing.VOTES.get(req.rating, req.rating)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                self.feedback_thread,
                self.tracer.feedback,
                req.trace_id,
                rating,
                req.correction,
                req.comment,
                caller,
                caller in self.reviewers,
            )
        except tracing.Unknown:
            return protocol.ApiError(
                404,
                f"no trace {req.trace_id!r}: send the trace_id of an answer this service gave",
                param="trace_id",
                code="trace_not_found",
            ).response()
        except tracing.NotYours:
            return protocol.ApiError(
                403,
                f"trace {req.trace_id!r} answered another caller: only its caller or a reviewer "
                "(serve.feedback.reviewers) may give feedback on it",
                "permission_error",
                param="trace_id",
                code="not_your_trace",
            ).response()
        except protocol.REFUSED as exc:
            return protocol.refusal(exc).response()
        recorded = ["rating"] + (["correction"] if req.correction else []) + (["comment"] if req.comment else [])
        return {"object": "feedback", "trace_id": req.trace_id, "rating": rating, "recorded": recorded}

    @bentoml.api
    async def generate(self, req: protocol.GenerateRequest, /, ctx: bentoml.Context) -> protocol.Answer:
        """The typed endpoint: greedy, the packaged renderer, the retrieved sources."""
        start = time.perf_counter()
        try:
            ids, used = await self.prepare({**req.fields, "prompt": req.prompt}, req.max_new_tokens, False, "prompt")
            job = self.job(ids, protocol.Decoding(), req.max_new_tokens)
            waiter = self.engine.enqueue(job, SERVE["request_timeout_s"])
            span = self.tracer.start("/generate", req.prompt, auth.caller(ctx.request.scope))
            result = await self.traced(span, waiter, ids, used, start)
        except protocol.REFUSED as exc:
            refused = protocol.refusal(exc)
            # BentoML sends a Response as it is, but takes an API's status and headers from its context (ctx)
            ctx.response.status_code = refused.status
            for name, value in (refused.headers or {}).items():
                ctx.response.headers[name] = value
            return refused.response()
        if span:
            ctx.response.headers[TRACE_HEADER] = span.trace_id
        return protocol.Answer(
            answer=result.text,
            model=str(self.model_ref.tag),
            finish_reason=result.finish_reason,
            latency_ms=round((time.perf_counter() - start) * 1000, 2),
            sources=[protocol.Source.of(c) for c in used],
            trace_id=span.trace_id if span else None,
        )


# Outermost first: every answer metered (a 401 too), then the key check, then BentoML's own validation
# answers of /generate reshaped into the one error shape.
Lifecycle.add_asgi_middleware(telemetry.Metered, endpoints=ENDPOINTS)
Lifecycle.add_asgi_middleware(auth.ApiKeys)
Lifecycle.add_asgi_middleware(protocol.BentoValidation, paths=frozenset({"/generate"}))
