"""The BentoML service for the packaged model: an OpenAI-compatible API, the typed `generate` endpoint, batching.

    lifecycle serve                              # the champion's bento on 127.0.0.1:3000
    curl -s localhost:3000/v1/chat/completions -H 'content-type: application/json' \
         -d '{"model": "help-desk", "messages": [{"role": "user", "content": "What does `json.dumps` do?"}]}'

    from openai import OpenAI                    # any OpenAI client, LangChain's included
    OpenAI(base_url="http://127.0.0.1:3000/v1", api_key="-").chat.completions.create(model="help-desk", messages=[...])

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream: true` as server-sent events),
GET /v1/models, POST /generate; BentoML's /readyz, /livez and /metrics (Prometheus). Every request goes
through the packaged prompt renderer (a chat's last user message is the template's `prompt`, earlier turns its
history, a system message its system prompt; a completion's `prompt` likewise), so what is served is what
evaluate measured; answers are greedy unless the request sets a temperature. A retrieval variant (`_rag`)
retrieves for each request and lists the passages it was given as `sources`, an extra field of the response.

It loads only what the package stage put into the bento: the model in BentoML's model store, whose tag travels
in packaged_model.json with the serving settings (params `serve:`; a `LIFECYCLE_SERVE_<SETTING>` environment
variable overrides one, e.g. LIFECYCLE_SERVE_MAX_QUEUE=4), the renderer (prompting.py and the model folder's
prompt.json) and the retriever (retrieval.py and the folder's index/). Never params.yaml, never a hub.

API keys, optional: LIFECYCLE_API_KEYS (comma-separated) or LIFECYCLE_API_KEYS_FILE (one per line); with
either set, every endpoint but health and metrics needs `Authorization: Bearer <key>` (else 401).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Literal

import bentoml
from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import BaseModel, ConfigDict, Field

MODEL_TAG_ENV = "LIFECYCLE_MODEL_TAG"
PACKAGED_MODEL = Path(__file__).with_name("packaged_model.json")
MAX_PROMPT_CHARS = 4000
# params `serve:` defaults, for the service run from the repository with LIFECYCLE_MODEL_TAG (no packaged_model.json).
DEFAULTS = {
    "max_batch_size": 16,
    "batch_wait_ms": 5,
    "max_queue": 64,
    "request_timeout_s": 60,
    "max_new_tokens": 256,
    "resources": {"cpu": "1"},
}
OPEN_PATHS = {"/readyz", "/livez", "/healthz", "/metrics"}  # probes and scrapers need no key


def packaged() -> dict:
    """The tag of the model this bento serves and its serving settings, from packaged_model.json."""
    info = json.loads(PACKAGED_MODEL.read_text(encoding="utf-8")) if PACKAGED_MODEL.is_file() else {}
    tag = os.environ.get(MODEL_TAG_ENV) or info.get("tag")
    if not tag:
        raise RuntimeError(
            f"no packaged model: {PACKAGED_MODEL.name} is missing and {MODEL_TAG_ENV} is not set; "
            "serve the bento that `lifecycle run` built (`lifecycle serve`)"
        )
    settings = {**DEFAULTS, **info.get("serve", {})}
    for key, value in settings.items():
        override = os.environ.get(f"LIFECYCLE_SERVE_{key.upper()}")
        if override is not None and not isinstance(value, dict):
            settings[key] = type(value)(override)
    return {"tag": tag, "serve": settings}


PACKAGED = packaged()
SETTINGS = PACKAGED["serve"]
MAX_NEW_TOKENS = SETTINGS["max_new_tokens"]


def api_keys() -> set[str]:
    keys = os.environ.get("LIFECYCLE_API_KEYS", "")
    if os.environ.get("LIFECYCLE_API_KEYS_FILE"):
        keys += "," + Path(os.environ["LIFECYCLE_API_KEYS_FILE"]).read_text(encoding="utf-8").replace("\n", ",")
    return {k.strip() for k in keys.split(",") if k.strip()}


with bentoml.importing():
    import torch
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # in a bento: the renderer, retriever and engine, copied beside this file
        import engine
        import prompting
        import retrieval
    except ImportError:  # run from the repository
        from serving import engine
        from stages.common import prompting, retrieval


# --- metrics (Prometheus, on BentoML's /metrics beside its own request metrics) ---------------------------------

REQUESTS = bentoml.metrics.Counter(
    name="lifecycle_requests",
    documentation="requests answered, by endpoint and status",
    labelnames=["endpoint", "status"],
)
LATENCY = bentoml.metrics.Histogram(
    name="lifecycle_request_seconds",
    documentation="request latency",
    labelnames=["endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TOKENS = bentoml.metrics.Counter(name="lifecycle_generated_tokens", documentation="tokens generated")
BATCH = bentoml.metrics.Histogram(
    name="lifecycle_batch_size", documentation="requests generated together", buckets=(1, 2, 4, 8, 16, 32, 64)
)
REJECTED = bentoml.metrics.Counter(
    name="lifecycle_rejected_requests",
    documentation="requests refused: queue_full (429), timeout (504), unauthorized (401), invalid (400)",
    labelnames=["reason"],
)
WAITING = bentoml.metrics.Gauge(name="lifecycle_queue_waiting", documentation="requests waiting to be generated")


# --- the OpenAI protocol --------------------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a 400 naming it, never silently ignored


class Decoding(Strict):
    model: str | None = None
    max_tokens: Annotated[int, Ge(1), Le(MAX_NEW_TOKENS)] | None = None
    temperature: Annotated[float, Ge(0), Le(2)] = 0.0  # 0: greedy, as evaluate measured
    top_p: Annotated[float, Field(gt=0), Le(1)] = 1.0
    top_k: Annotated[int, Ge(0), Le(1000)] = 0  # 0: off
    seed: int | None = None
    stop: (
        Annotated[str, MinLen(1), MaxLen(64)] | Annotated[list[Annotated[str, MinLen(1), MaxLen(64)]], MaxLen(4)] | None
    ) = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: dict[Literal["include_usage"], bool] | None = None
    presence_penalty: Annotated[float, Ge(0), Le(0)] = 0  # accepted for clients that always send them; only 0
    frequency_penalty: Annotated[float, Ge(0), Le(0)] = 0
    user: str | None = None
    # Extensions: the prompt template's other fields; cutting an over-long prompt instead of refusing it.
    fields: dict[str, str] = {}
    truncate_prompt: bool = False


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, MaxLen(MAX_PROMPT_CHARS)] | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Decoding):
    messages: Annotated[list[Message], MinLen(1)]
    max_completion_tokens: Annotated[int, Ge(1), Le(MAX_NEW_TOKENS)] | None = None


class CompletionRequest(Decoding):
    prompt: (
        Annotated[str, MinLen(1), MaxLen(MAX_PROMPT_CHARS)]
        | Annotated[list[Annotated[str, MinLen(1), MaxLen(MAX_PROMPT_CHARS)]], MinLen(1), MaxLen(1)]
    )


class BadRequest(Exception):
    def __init__(self, param: str, message: str, status: int = 400, code: str = "invalid_value"):
        self.param, self.message, self.status, self.code = param, message, status, code
        super().__init__(message)


def error(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status, headers=headers
    )


openai_api = FastAPI(title="OpenAI-compatible API")


def _field(loc) -> str | None:
    """A validation error's location as the request's field path: `messages.0.role`, not pydantic's union and
    validator names."""
    parts = [str(p) for p in loc[1:] if not any(c in str(p) for c in "[-") and str(p) not in ("str", "int", "float")]
    return ".".join(parts) or None


@openai_api.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """OpenAI's shape, status 400 (FastAPI would answer 422), naming the first bad field and what is wrong."""
    errors = exc.errors()
    REJECTED.labels(reason="invalid").inc()
    REQUESTS.labels(endpoint=request.url.path, status="400").inc()
    if errors[0]["type"] == "json_invalid":
        return error(
            400,
            f"the request body is not valid JSON: {errors[0].get('ctx', {}).get('error', '')}",
            "invalid_request_error",
            None,
            "json_invalid",
        )
    param = _field(errors[0]["loc"])
    same = [e for e in errors if _field(e["loc"]) == param]  # a union field fails once per alternative
    reasons = dict.fromkeys(
        "unknown field (this server does not support it)" if e["type"] == "extra_forbidden" else e["msg"] for e in same
    )
    return error(
        400,
        f"{param}: {'; '.join(reasons)}" if param else "; ".join(reasons),
        "invalid_request_error",
        param,
        errors[0]["type"],
    )


class Source(BaseModel):
    source: str = Field(description="the knowledge document")
    section: str = Field(description="its section the passage comes from")
    text: str = Field(description="the passage put into the prompt")

    @classmethod
    def of(cls, chunk: dict) -> Source:
        """A retrieved chunk (retrieval.Retriever.search) as a response's source."""
        return cls(source=chunk.get("source", ""), section=chunk.get("section", ""), text=chunk["text"])


class Answer(BaseModel):
    answer: str
    model: str
    latency_ms: float
    finish_reason: str = "stop"
    sources: list[Source] = Field(default=[], description="the retrieved passages the answer was given (RAG)")


class ApiKeys:
    """ASGI middleware: with keys configured, `Authorization: Bearer <key>` on everything but OPEN_PATHS."""

    def __init__(self, app) -> None:
        self.app, self.keys = app, api_keys()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"").decode(errors="replace")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if token and any(hmac.compare_digest(token, k) for k in self.keys):
            return await self.app(scope, receive, send)
        REJECTED.labels(reason="unauthorized").inc()
        response = error(
            401,
            "a valid API key is required: send `Authorization: Bearer <key>`",
            "authentication_error",
            code="invalid_api_key" if token else "missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def _resources(settings: dict) -> dict:
    """params `serve.resources` as BentoML's: no GPU entries when none is asked for."""
    return {k: v for k, v in settings.get("resources", {}).items() if v not in (None, 0, "")}


@bentoml.service(
    name="lifecycle",
    workers=1,
    resources=_resources(SETTINGS),
    # Our queue bounds the load (429) and our timeout answers 504 first; BentoML's are the backstop.
    traffic={"timeout": SETTINGS["request_timeout_s"] + 30},
)
@bentoml.asgi_app(openai_api, path="/v1")
class Lifecycle:
    model_ref = bentoml.models.BentoModel(PACKAGED["tag"])

    def __init__(self) -> None:
        path = Path(self.model_ref.path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        cuda = torch.cuda.is_available()
        cpus = SETTINGS["resources"].get("cpu")
        if not cuda and cpus:
            # As many compute threads as the CPUs the service asked for (the HTTP layer needs the rest). torch's
            # default, every core, decoded batches of 16 at 77 requests/s on this 2-core machine, one thread at 138.
            torch.set_num_threads(max(1, int(float(cpus))))
        # On a GPU in the precision it was packaged in; on a CPU in float32 (bf16 is emulated there, ~10x slower).
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype="auto" if cuda else torch.float32)
        self.model = self.model.to("cuda" if cuda else "cpu").eval()
        self.renderer = prompting.Renderer.load(path, self.tokenizer)
        info = (
            json.loads((path / "lifecycle.json").read_text(encoding="utf-8"))
            if (path / "lifecycle.json").is_file()
            else {}
        )
        self.model_id = info.get("project") or self.model_ref.tag.name
        # The shipped index (a _rag variant): searched on a working copy, the model store's stays as packaged.
        self.retriever = (
            retrieval.Retriever.open(path / "index") if (path / "index" / retrieval.CARD).is_file() else None
        )
        self.retrieval_thread = ThreadPoolExecutor(1, thread_name_prefix="retrieve")
        stops = [] if self.renderer.chat else self.renderer.fmt.stop
        self.engine = engine.Engine(
            self.model,
            self.tokenizer,
            self.renderer.cut,
            stops,
            max_batch_size=SETTINGS["max_batch_size"],
            batch_wait_ms=SETTINGS["batch_wait_ms"],
            max_queue=SETTINGS["max_queue"],
            counters=engine.Counters(batch=BATCH.observe, tokens=TOKENS.inc, waiting=WAITING.set),
        )

    @bentoml.on_shutdown
    def remove_index_copy(self) -> None:
        if self.retriever and self.retriever.working_copy:
            self.retriever.working_copy.cleanup()

    # --- shared by every endpoint -------------------------------------------------------------------------------

    async def prepare(self, record: dict, max_new_tokens: int, truncate: bool, param: str) -> tuple[list[int], list]:
        """The prompt's tokens (retrieval, then the packaged renderer) and the passages it holds."""
        found = []
        if self.retriever:
            loop = asyncio.get_running_loop()
            found = (await loop.run_in_executor(self.retrieval_thread, self.retriever.search, [record["prompt"]]))[0]
        record = {**record, "context": [c["text"] for c in found]}
        try:
            text = self.renderer.prompt(record, max_new_tokens=max_new_tokens)
        except KeyError as exc:
            raise BadRequest("fields", f"the prompt template needs the field {exc} (send it in `fields`)") from None
        except prompting.PromptTooLong as exc:
            if not truncate:
                raise BadRequest(
                    param,
                    f"{exc}; or send `truncate_prompt: true` to keep its last tokens",
                    code="context_length_exceeded",
                ) from None
            # The question is at the end: keep the last tokens that fit beside the answer.
            text = self.renderer.render({**record, "context": []}, [])
            return self.renderer.encode(text)[-(self.renderer.context - max_new_tokens) :], []
        # Only the passages that fit into the prompt were used (the renderer drops the least relevant first).
        used = [c for c in found if " ".join(c["text"].split()) in text]
        return self.renderer.encode(text), used

    def job(self, ids: list[int], req: Decoding, max_new_tokens: int, stream: bool) -> engine.Job:
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        sampling = (
            engine.Sampling(req.temperature, req.top_p, req.top_k, req.seed)
            if req.temperature > 0
            else engine.Sampling(seed=req.seed)
        )
        return engine.Job(ids, max_new_tokens, sampling, stop, asyncio.Queue() if stream else None)

    def check_model(self, name: str | None) -> None:
        if name not in (None, "", self.model_id, str(self.model_ref.tag)):
            raise BadRequest(
                "model",
                f"model {name!r} is not served here; this server serves {self.model_id!r} (GET /v1/models)",
                status=404,
                code="model_not_found",
            )

    async def openai_answer(
        self, endpoint: str, req: Decoding, make_record, max_new_tokens: int | None, param: str, shape
    ):
        """Run one OpenAI request (`make_record()` gives the renderer's record): the JSON answer, or the event
        stream; errors in OpenAI's shape."""
        start = time.perf_counter()
        status = "200"
        try:
            record = make_record()
            self.check_model(req.model)
            n_new = max_new_tokens or self.renderer.fmt.max_new_tokens
            ids, used = await self.prepare(record, n_new, req.truncate_prompt, param)
            job = self.job(ids, req, n_new, req.stream)
            timeout = SETTINGS["request_timeout_s"]
            waiter = self.engine.enqueue(job, timeout)  # raises QueueFull before a stream begins
            sources = [Source.of(c).model_dump() for c in used]
            if req.stream:
                include_usage = bool((req.stream_options or {}).get("include_usage"))
                return StreamingResponse(
                    self.events(job, waiter, shape, sources, include_usage), media_type="text/event-stream"
                )
            result = await waiter
            return JSONResponse(shape.whole(self, result, sources))
        except BadRequest as exc:
            status = str(exc.status)
            REJECTED.labels(reason="invalid").inc()
            return error(exc.status, exc.message, "invalid_request_error", exc.param, exc.code)
        except engine.QueueFull as exc:
            status = "429"
            REJECTED.labels(reason="queue_full").inc()
            return error(
                429, str(exc), "rate_limit_error", code="queue_full", headers={"Retry-After": str(exc.retry_after)}
            )
        except engine.Timeout as exc:
            status = "504"
            REJECTED.labels(reason="timeout").inc()
            return error(504, str(exc), "timeout", code="timeout")
        finally:
            REQUESTS.labels(endpoint=endpoint, status=status).inc()
            LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - start)

    async def events(self, job: engine.Job, waiter, shape, sources: list, include_usage: bool):
        """Server-sent events: a chunk per text delta, the finish reason, usage if asked, then [DONE]."""
        stream_id = f"{'chatcmpl' if shape is Chat else 'cmpl'}-{uuid.uuid4().hex}"

        def sse(obj) -> str:
            return f"data: {json.dumps({'id': stream_id, **obj} if 'choices' in obj else obj)}\n\n"

        waiter = asyncio.ensure_future(waiter)
        try:
            yield sse(shape.chunk(self, None, None, sources))
            while True:
                getter = asyncio.ensure_future(job.stream.get())
                done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield sse(shape.chunk(self, getter.result(), None))
                    continue
                getter.cancel()
                break
            while not job.stream.empty():
                yield sse(shape.chunk(self, job.stream.get_nowait(), None))
            try:
                result = waiter.result()
            except engine.Timeout as exc:
                REJECTED.labels(reason="timeout").inc()
                yield sse({"error": {"message": str(exc), "type": "timeout", "param": None, "code": "timeout"}})
                return
            rest = result.text[len(job.sent) :] if result.text.startswith(job.sent) else ""
            if rest:
                yield sse(shape.chunk(self, rest, None))
            yield sse(shape.chunk(self, None, result.finish_reason))
            if include_usage:
                yield sse({**shape.chunk(self, None, None), "choices": [], "usage": usage(result)})
            yield "data: [DONE]\n\n"
        finally:
            waiter.cancel()  # a client that went away stops its generation

    # --- endpoints ----------------------------------------------------------------------------------------------

    @openai_api.get("/models")
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

    @openai_api.post("/chat/completions")
    async def chat_completions(self, req: ChatRequest):
        return await self.openai_answer(
            "/v1/chat/completions",
            req,
            lambda: chat_record(req),
            req.max_completion_tokens or req.max_tokens,
            "messages",
            Chat,
        )

    @openai_api.post("/completions")
    async def completions(self, req: CompletionRequest):
        prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
        return await self.openai_answer(
            "/v1/completions", req, lambda: {**req.fields, "prompt": prompt}, req.max_tokens, "prompt", Completion
        )

    @bentoml.api
    async def generate(
        self,
        prompt: Annotated[str, MinLen(1), MaxLen(MAX_PROMPT_CHARS)] = "What does `json.dumps` do?",
        fields: Annotated[dict[str, str], Field(description="other fields the prompt template names")] = {},  # noqa: B006
        max_new_tokens: Annotated[int, Ge(1), Le(MAX_NEW_TOKENS)] = 40,
    ) -> Answer:
        """The typed endpoint: greedy, the packaged renderer, the retrieved sources."""
        start, status = time.perf_counter(), "200"
        try:
            ids, used = await self.prepare({**fields, "prompt": prompt}, max_new_tokens, False, "prompt")
            result = await self.engine.enqueue(
                self.job(ids, Decoding(), max_new_tokens, False), SETTINGS["request_timeout_s"]
            )
        except BadRequest as exc:
            status = "400"
            REJECTED.labels(reason="invalid").inc()
            raise bentoml.exceptions.InvalidArgument(exc.message) from None
        except engine.QueueFull as exc:
            status = "429"
            REJECTED.labels(reason="queue_full").inc()
            raise bentoml.exceptions.BentoMLException(str(exc), error_code=HTTPStatus.TOO_MANY_REQUESTS) from None
        except engine.Timeout as exc:
            status = "504"
            REJECTED.labels(reason="timeout").inc()
            raise bentoml.exceptions.BentoMLException(str(exc), error_code=HTTPStatus.GATEWAY_TIMEOUT) from None
        finally:
            REQUESTS.labels(endpoint="/generate", status=status).inc()
            LATENCY.labels(endpoint="/generate").observe(time.perf_counter() - start)
        return Answer(
            answer=result.text,
            model=str(self.model_ref.tag),
            finish_reason=result.finish_reason,
            latency_ms=round((time.perf_counter() - start) * 1000, 2),
            sources=[Source.of(c) for c in used],
        )


Lifecycle.add_asgi_middleware(ApiKeys)


def chat_record(req: ChatRequest) -> dict:
    """Messages to the renderer's record: system (and developer) messages its system prompt, the last user
    message its `prompt`, the turns between them its history, which must alternate user and assistant."""
    system = "\n".join(m.text for m in req.messages if m.role in ("system", "developer")) or None
    turns = [m for m in req.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise BadRequest("messages", "the last message must be the user's")
    for i, m in enumerate(turns[:-1]):
        if m.role != ("user" if i % 2 == 0 else "assistant"):
            raise BadRequest(
                f"messages.{req.messages.index(m)}",
                "turns before the last must alternate user, assistant (starting with user)",
            )
    history = [{"role": m.role, "content": m.text} for m in turns[:-1]]
    return {**req.fields, "prompt": turns[-1].text, "system": system, "history": history}


def usage(result) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


class Chat:
    """The chat completion's shapes: the whole answer and a stream chunk."""

    @staticmethod
    def whole(svc, result, sources) -> dict:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": svc.model_id,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": result.finish_reason,
                    "message": {"role": "assistant", "content": result.text},
                }
            ],
            "usage": usage(result),
            "sources": sources,
        }

    @staticmethod
    def chunk(svc, delta: str | None, finish: str | None, sources: list | None = None) -> dict:
        body = {"role": "assistant", "content": ""} if sources is not None else ({"content": delta} if delta else {})
        out = {
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": svc.model_id,
            "choices": [{"index": 0, "delta": body, "finish_reason": finish}],
        }
        return {**out, "sources": sources} if sources is not None else out


class Completion:
    @staticmethod
    def whole(svc, result, sources) -> dict:
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": svc.model_id,
            "choices": [{"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": usage(result),
            "sources": sources,
        }

    @staticmethod
    def chunk(svc, delta: str | None, finish: str | None, sources: list | None = None) -> dict:
        out = {
            "object": "text_completion",
            "created": int(time.time()),
            "model": svc.model_id,
            "choices": [{"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}],
        }
        return {**out, "sources": sources} if sources is not None else out
