"""The wire protocol of the service: OpenAI's requests and responses (and the typed /generate's), their validation,
and the one error path every endpoint answers through.

    curl -s localhost:3000/v1/chat/completions -H 'content-type: application/json' \
         -d '{"messages": [{"role": "user", "content": "What does `json.dumps` do?"}], "logit_bias": {}}'
    # 400 {"error": {"message": "logit_bias: unknown field (this server does not support it)",
    #                "type": "invalid_request_error", "param": "logit_bias", "code": "extra_forbidden"}}

Requests are strict: an unknown field or an out-of-range value is refused naming the field, never ignored. What
can go wrong in a request (`refusal`: a bad field, a prompt that does not fit, a full queue, a timeout) maps to an
HTTP status and OpenAI's error body in one place, for /v1/* and /generate alike; telemetry counts the status.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Annotated, Literal

from annotated_types import Ge, Le, MaxLen, MinLen
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

if __package__:  # run from the repository (serving.protocol)
    from serving import engine, settings
else:  # in a bento: the service's modules lie side by side
    import engine
    import settings

MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS = settings.SERVE["max_new_tokens"]  # params `serve.max_new_tokens`: the most a request may ask for


# --- requests -------------------------------------------------------------------------------------------------


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

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


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

    def record(self) -> dict:
        """The renderer's record: system (and developer) messages its system prompt, the last user message its
        `prompt`, the turns between them its history, which must alternate user and assistant."""
        system = "\n".join(m.text for m in self.messages if m.role in ("system", "developer")) or None
        turns = [m for m in self.messages if m.role in ("user", "assistant")]
        if not turns or turns[-1].role != "user":
            raise ApiError(400, "the last message must be the user's", param="messages")
        for i, m in enumerate(turns[:-1]):
            if m.role != ("user" if i % 2 == 0 else "assistant"):
                raise ApiError(
                    400,
                    "turns before the last must alternate user, assistant (starting with user)",
                    param=f"messages.{self.messages.index(m)}",
                )
        history = [{"role": m.role, "content": m.text} for m in turns[:-1]]
        return {**self.fields, "prompt": turns[-1].text, "system": system, "history": history}


class CompletionRequest(Decoding):
    prompt: (
        Annotated[str, MinLen(1), MaxLen(MAX_PROMPT_CHARS)]
        | Annotated[list[Annotated[str, MinLen(1), MaxLen(MAX_PROMPT_CHARS)]], MinLen(1), MaxLen(1)]
    )

    def record(self) -> dict:
        return {**self.fields, "prompt": self.prompt if isinstance(self.prompt, str) else self.prompt[0]}


class GenerateRequest(Strict):
    """/generate's body: greedy, the packaged renderer, the retrieved sources."""

    prompt: Annotated[str, MinLen(1), MaxLen(MAX_PROMPT_CHARS)] = "What does `json.dumps` do?"
    fields: dict[str, str] = Field(default={}, description="other fields the prompt template names")
    max_new_tokens: Annotated[int, Ge(1), Le(MAX_NEW_TOKENS)] = 40


class FeedbackRequest(Strict):
    """POST /v1/feedback: a user's verdict on one answer, by the trace id its response carried."""

    trace_id: Annotated[str, Field(pattern=r"^tr-[0-9a-f]{32}$")] = Field(
        description="the `trace_id` field (or X-Trace-Id header) of the answer's response"
    )
    rating: Literal["up", "down"] | Annotated[int, Ge(1), Le(5)] = Field(description="up/down, or 1 (bad) to 5")
    correction: Annotated[str, MinLen(1), MaxLen(MAX_PROMPT_CHARS)] | None = Field(
        default=None, description="the answer it should have been: it becomes a training row"
    )
    comment: Annotated[str, MaxLen(2000)] | None = None


# --- responses ------------------------------------------------------------------------------------------------


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
    trace_id: str | None = Field(default=None, description="the request's MLflow trace: send feedback on it")


def usage(result: engine.Result) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


class Chat:
    """The chat completion's shapes: the whole answer and a stream chunk."""

    prefix = "chatcmpl"

    @staticmethod
    def whole(model: str, result: engine.Result, sources: list) -> dict:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
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
    def chunk(model: str, delta: str | None, finish: str | None, sources: list | None = None) -> dict:
        body = {"role": "assistant", "content": ""} if sources is not None else ({"content": delta} if delta else {})
        out = {
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": body, "finish_reason": finish}],
        }
        return {**out, "sources": sources} if sources is not None else out


class Completion:
    prefix = "cmpl"

    @staticmethod
    def whole(model: str, result: engine.Result, sources: list) -> dict:
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": usage(result),
            "sources": sources,
        }

    @staticmethod
    def chunk(model: str, delta: str | None, finish: str | None, sources: list | None = None) -> dict:
        out = {
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}],
        }
        return {**out, "sources": sources} if sources is not None else out


async def events(job: engine.Job, waiter, shape: type[Chat | Completion], model: str, sources: list, usage_too: bool):
    """Server-sent events: a chunk per text delta, the finish reason, usage if asked, then [DONE]. A timeout after
    the stream began (its 200 already sent) is an error event in the one error shape."""
    stream_id = f"{shape.prefix}-{uuid.uuid4().hex}"

    def sse(obj) -> str:
        return f"data: {json.dumps({'id': stream_id, **obj} if 'choices' in obj else obj)}\n\n"

    waiter = asyncio.ensure_future(waiter)
    try:
        yield sse(shape.chunk(model, None, None, sources))
        while True:
            getter = asyncio.ensure_future(job.stream.get())
            done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield sse(shape.chunk(model, getter.result(), None))
                continue
            getter.cancel()
            break
        while not job.stream.empty():
            yield sse(shape.chunk(model, job.stream.get_nowait(), None))
        try:
            result = waiter.result()
        except engine.Timeout as exc:
            yield sse(refusal(exc).body())
            return
        rest = result.text[len(job.sent) :] if result.text.startswith(job.sent) else ""
        if rest:
            yield sse(shape.chunk(model, rest, None))
        yield sse(shape.chunk(model, None, result.finish_reason))
        if usage_too:
            yield sse({**shape.chunk(model, None, None), "choices": [], "usage": usage(result)})
        yield "data: [DONE]\n\n"
    finally:
        waiter.cancel()  # a client that went away stops its generation


# --- the one error path ---------------------------------------------------------------------------------------


class ApiError(Exception):
    """A refusal in OpenAI's shape: the HTTP status, the error's type and code, the request field it names."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = "invalid_value",
        headers: dict | None = None,
    ):
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers
        super().__init__(message)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# What an endpoint may raise that the client is told about; anything else is the server's fault (500), never
# blamed on the request.
REFUSED = (ApiError, engine.QueueFull, engine.Timeout)


def refusal(exc: Exception) -> ApiError:
    """The one mapping from what went wrong to the status and body the client gets, for every endpoint."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):  # FastAPI's errors are located in the request: ("body", field, ...)
        return invalid([{**e, "loc": tuple(e["loc"])[1:]} for e in exc.errors()])
    if isinstance(exc, engine.QueueFull):
        return ApiError(
            429, str(exc), "rate_limit_error", code="queue_full", headers={"Retry-After": str(exc.retry_after)}
        )
    if isinstance(exc, engine.Timeout):
        return ApiError(504, str(exc), "timeout", code="timeout")
    raise TypeError(f"{type(exc).__name__} is not a refusal") from exc


def invalid(errors: list[dict]) -> ApiError:
    """Pydantic's errors (located in the body) as a 400 naming the first bad field and what is wrong with it."""
    if errors[0]["type"] == "json_invalid":
        reason = errors[0].get("ctx", {}).get("error") or errors[0].get("msg", "")
        return ApiError(400, f"the request body is not valid JSON: {reason}", code="json_invalid")
    param = _field(errors[0]["loc"])
    same = [e for e in errors if _field(e["loc"]) == param]  # a union field fails once per alternative
    reasons = dict.fromkeys(
        "unknown field (this server does not support it)" if e["type"] == "extra_forbidden" else e["msg"] for e in same
    )
    message = f"{param}: {'; '.join(reasons)}" if param else "; ".join(reasons)
    return ApiError(400, message, param=param, code=errors[0]["type"])


def _field(loc) -> str | None:
    """A validation error's location as the request's field path: `messages.0.role`, not pydantic's union and
    validator names."""
    parts = [str(p) for p in loc if not any(c in str(p) for c in "[-") and str(p) not in ("str", "int", "float")]
    return ".".join(parts) or None


# --- the HTTP faces of the error path -------------------------------------------------------------------------

openai_api = FastAPI(title="OpenAI-compatible API")


@openai_api.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body FastAPI refused (it would answer 422): the 400 of the one error path."""
    return refusal(exc).response()


class BentoValidation:
    """ASGI middleware: BentoML validates the typed endpoints' bodies itself and answers a bad one with its own
    400 body (`{"error": "1 validation error for ...", "detail": [pydantic's errors]}`); this gives it the one
    error shape, so /generate refuses as /v1 does. Only such a 400 is read; every other answer passes as sent."""

    def __init__(self, app, paths: frozenset[str] = frozenset()) -> None:
        self.app, self.paths = app, paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        held: list[dict] = []  # a 400's start and body, until its last part

        async def reshape(message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 400:
                held.append(message)
                return
            if not held:
                return await send(message)
            held.append(message)
            if message.get("more_body"):
                return
            body = b"".join(m.get("body", b"") for m in held[1:])
            try:
                sent = json.loads(body)
            except ValueError:
                sent = None
            if isinstance(sent, dict) and isinstance(sent.get("error"), str) and sent.get("detail"):
                return await invalid(sent["detail"]).response()(scope, receive, send)
            for m in held:  # not BentoML's validation answer (ours already has the shape): as it was
                await send(m)

        await self.app(scope, receive, reshape)
