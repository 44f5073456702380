"""The packaged bento served for real by `bentoml serve` on 127.0.0.1, stopped by PID: the OpenAI API through the
official client, bad input, API keys, load past the queue, metrics, serve parity with evaluate, SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict | bytes, headers: dict | None = None, full: bool = False):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, text, head = resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as err:
        status, text, head = err.code, err.read().decode(), err.headers
    try:
        text = json.loads(text)
    except ValueError:
        pass
    return (status, text, head) if full else (status, text)


def _get(url: str, headers: dict | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@contextlib.contextmanager
def serving(bento: str, env: dict | None = None, command: list[str] | None = None, cwd=None):
    """`bentoml serve` of a bento (or `command`, given the port) on a free 127.0.0.1 port until ready; its base
    URL and process; stopped by PID after."""
    port = _free_port()
    bentoml = str(Path(sys.executable).parent / "bentoml")
    # The bento alone says what to load and how to serve; `env` adds an operator's settings.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("LIFECYCLE_", "BENTO_CLOUD"))}, **(env or {})}
    command = (
        command + ["--port", str(port)]
        if command
        else [bentoml, "serve", bento, "--host", "127.0.0.1", "--port", str(port)]
    )
    log = tempfile.TemporaryFile()  # a file, not a pipe: a busy server's access log would fill a pipe and block
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # bounded: up to ~60 s to become ready
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(
                    f"{Path(command[0]).name} {command[1]} exited with {proc.returncode}: {log.read().decode()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        else:
            pytest.fail("bentoml serve did not become ready in 60 s")
        yield base, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker processes
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server(packaged):
    with serving(packaged["package"]["bento"]) as (base, _):
        yield base


def _model_id(base: str) -> str:
    status, body = _get(f"{base}/v1/models")
    assert status == 200, body
    return json.loads(body)["data"][0]["id"]


def test_generate_answers_and_bounds_inputs(server, packaged):
    status, body = _post(f"{server}/generate", {"prompt": "What does `json.dumps` do?", "max_new_tokens": 8})
    assert status == 200, body
    assert isinstance(body["answer"], str) and "\n" not in body["answer"]
    assert body["model"] == packaged["package"]["bentoml_model"] and body["latency_ms"] > 0
    retrieves = packaged["package"]["variant"].endswith("_rag")  # the tiny KPI (latency) may pick either kind
    assert bool(body["sources"]) == retrieves, "passages exactly when the shipped variant retrieves"

    status, _ = _post(f"{server}/generate", {"prompt": "x", "max_new_tokens": 0})
    assert status == 400
    status, _ = _post(f"{server}/generate", {"prompt": "x" * 5000})
    assert status == 400
    status, _ = _post(f"{server}/generate", {"prompt": ""})
    assert status == 400


def test_every_answer_carries_its_trace_and_takes_feedback_on_it(server, packaged):
    """The bento traces into the tests' MLflow store (MLFLOW_TRACKING_URI): the id in a header and the body, the
    feedback strictly validated, an unknown trace a 404, a known one's rating and correction on the trace."""
    import mlflow

    status, body, head = _post(f"{server}/generate", {"prompt": "What does `json.dumps` do?"}, full=True)
    assert status == 200 and body["trace_id"] == head["X-Trace-Id"] and body["trace_id"].startswith("tr-")
    status, chat, head = _post(
        f"{server}/v1/chat/completions",
        {"messages": [{"role": "user", "content": "What does `os.sep` hold?"}]},
        full=True,
    )
    assert status == 200 and chat["trace_id"] == head["X-Trace-Id"] != body["trace_id"]
    stream = urllib.request.Request(
        f"{server}/v1/completions",
        data=json.dumps({"prompt": "What does `heapq.heappop` do?", "stream": True}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(stream, timeout=60) as resp:
        assert resp.headers["X-Trace-Id"].startswith("tr-") and b"[DONE]" in resp.read()

    feedback = f"{server}/v1/feedback"
    for bad, field in [
        ({"trace_id": body["trace_id"], "rating": 7}, "rating"),
        ({"trace_id": "not-a-trace", "rating": "up"}, "trace_id"),
        ({"trace_id": body["trace_id"], "rating": "up", "extra": 1}, "extra"),
    ]:
        status, refused = _post(feedback, bad)
        assert status == 400 and refused["error"]["param"] == field, refused
    status, refused = _post(feedback, {"trace_id": "tr-" + "0" * 32, "rating": "up"})
    assert status == 404 and refused["error"]["code"] == "trace_not_found"
    status, done = _post(feedback, {"trace_id": chat["trace_id"], "rating": "down", "correction": "The separator."})
    assert status == 200 and done["recorded"] == ["rating", "correction"] and done["rating"] == 1
    trace = mlflow.get_trace(chat["trace_id"])
    assert {a.name for a in trace.info.assessments} == {"rating", "correction"}
    assert trace.info.tags["lifecycle.caller"] == "anonymous"
    assert trace.info.tags["lifecycle.precision"] == packaged["package"]["precision"]
    assert trace.info.tags["lifecycle.engine"] == "openvino"
    assert trace.data.spans[0].inputs == {"prompt": "What does `os.sep` hold?"}
    assert trace.data.spans[0].outputs == {"answer": chat["choices"][0]["message"]["content"]}


def test_generate_refuses_an_unknown_field_in_the_same_shape_as_v1(server):
    """One error path: /generate refuses what /v1 refuses (an unknown field, an out-of-range or malformed body)
    with 400 and OpenAI's error body naming the field, where BentoML alone answered 200 and ignored the field."""
    status, body = _post(f"{server}/generate", {"prompt": "What does `json.dumps` do?", "max_tokens": 8})
    assert status == 400, body
    assert body == {
        "error": {
            "message": "max_tokens: unknown field (this server does not support it)",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "extra_forbidden",
        }
    }
    v1_status, v1 = _post(f"{server}/v1/completions", {"prompt": "What does `json.dumps` do?", "max_new_tokens": 8})
    assert v1_status == 400 and v1["error"]["param"] == "max_new_tokens" and v1["error"].keys() == body["error"].keys()

    status, body = _post(f"{server}/generate", {"prompt": "x", "max_new_tokens": 0})
    assert (
        status == 400 and body["error"]["param"] == "max_new_tokens" and body["error"]["code"] == "greater_than_equal"
    )
    status, body = _post(f"{server}/generate", b"{not json")
    assert status == 400 and body["error"]["code"] == "json_invalid", body
    status, body = _post(f"{server}/generate", {"prompt": "What does `json.dumps` do?", "fields": {"x": 1}})
    assert status == 400 and body["error"]["param"] == "fields.x", body


def test_the_openai_client_chats_completes_and_streams_unchanged(server, packaged):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    [model] = client.models.list().data
    question = "What does `json.dumps` do?"
    chat = client.chat.completions.create(
        model=model.id, messages=[{"role": "user", "content": question}], max_tokens=8
    )
    answer = chat.choices[0].message.content
    assert isinstance(answer, str) and chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens >= 1 and chat.usage.prompt_tokens > 0
    assert isinstance(chat.model_extra["sources"], list), "the retrieved passages ride along as an extra field"

    completion = client.completions.create(model=model.id, prompt=question, max_tokens=8)
    assert completion.choices[0].text == answer, "one renderer: a chat's user turn is a completion's prompt"

    stream = client.chat.completions.create(
        model=model.id,
        messages=[{"role": "user", "content": question}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        chat.choices[0].finish_reason
    ]
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1

    streamed = client.completions.create(model=model.id, prompt=question, max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == answer

    history = client.chat.completions.create(
        model=model.id,
        max_tokens=8,
        messages=[
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": question},
        ],
    )
    assert isinstance(history.choices[0].message.content, str)


def test_bad_requests_are_refused_naming_the_field(server, prepared):
    chat = f"{server}/v1/chat/completions"
    model = _model_id(server)
    ok = {"model": model, "messages": [{"role": "user", "content": "What does `json.dumps` do?"}], "max_tokens": 4}
    for change, param in [
        ({"temperature": 9}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"stop": ["a"] * 5}, "stop"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ]:
        status, body = _post(chat, {**ok, **change})
        assert status == 400, (change, body)
        assert body["error"]["param"] == param and param in body["error"]["message"], (change, body)
        assert body["error"]["type"] == "invalid_request_error"

    status, body = _post(
        chat, {**ok, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    )
    assert status == 400 and body["error"]["param"] == "messages" and "last message" in body["error"]["message"]
    status, body = _post(chat, {**ok, "model": "gpt-4o"})
    assert status == 404 and body["error"]["code"] == "model_not_found" and model in body["error"]["message"]
    status, body = _post(chat, b"{not json")
    assert status == 400, body

    # Longer than the model's context, shorter than the character bound: refused unless asked to cut.
    context = json.loads((Path(prepared.paths.package) / "model" / "prompt.json").read_text())["context"]
    long = " ".join(["what does the heapq module do with lists"] * 90)
    completions = f"{server}/v1/completions"
    status, body = _post(completions, {"model": model, "prompt": long, "max_tokens": 4})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    assert f"context of {context} tokens" in body["error"]["message"] and body["error"]["param"] == "prompt"
    status, body = _post(completions, {"model": model, "prompt": long, "max_tokens": 4, "truncate_prompt": True})
    assert status == 200 and body["usage"]["prompt_tokens"] + 4 <= context, body


def test_served_greedy_answers_equal_what_evaluate_recorded(server, packaged, prepared):
    """Serve parity: the eval questions, sent concurrently (so batched), answered as evaluate answered them."""
    from concurrent.futures import ThreadPoolExecutor

    from stages.common.io import read_jsonl

    rows = read_jsonl(Path(prepared.paths.processed) / "eval.jsonl")
    recorded = [
        r[packaged["package"]["eval_answers"]]
        for r in read_jsonl(Path(prepared.paths.eval_report).with_name("eval_answers.jsonl"))
    ]
    model = _model_id(server)

    def ask(row):
        fields = {k: v for k, v in row.items() if isinstance(v, str) and k not in ("prompt", "completion")}
        status, body = _post(f"{server}/v1/completions", {"model": model, "prompt": row["prompt"], "fields": fields})
        assert status == 200, body
        return body["choices"][0]["text"]

    with ThreadPoolExecutor(8) as pool:
        served = list(pool.map(ask, rows))
    assert served == recorded
    status, metrics = _get(f"{server}/metrics")
    batches = [line for line in metrics.splitlines() if line.startswith("lifecycle_batch_size_count")]
    assert batches and float(batches[0].split()[-1]) >= 1


def test_metrics_count_requests_tokens_batches_and_refusals(server):
    _post(f"{server}/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": 9})
    _post(f"{server}/v1/completions", {"prompt": "What does `heapq.heappush` do?", "max_tokens": 4})
    status, text = _get(f"{server}/metrics")
    assert status == 200
    for name in (
        "lifecycle_requests_total",
        "lifecycle_request_seconds_bucket",
        "lifecycle_generated_tokens_total",
        "lifecycle_batch_size_bucket",
        'lifecycle_rejected_requests_total{reason="invalid"}',
        "lifecycle_queue_waiting",
    ):
        assert name in text, name
    served = [
        line
        for line in text.splitlines()
        if line.startswith("lifecycle_requests_total")
        and 'endpoint="/v1/completions"' in line
        and 'status="200"' in line
    ]
    assert served and float(served[0].split()[-1]) >= 1


def test_with_tracing_off_nothing_is_traced_and_feedback_is_refused(packaged):
    # After the module server's tests: a server starting wipes the metrics the running one wrote (one multiproc dir)
    with serving(packaged["package"]["bento"], env={"LIFECYCLE_SERVE_TRACING": "off"}) as (base, _):
        status, body, head = _post(f"{base}/generate", {"prompt": "What does `json.dumps` do?"}, full=True)
        assert status == 200 and body["trace_id"] is None and "X-Trace-Id" not in head
        status, refused = _post(f"{base}/v1/feedback", {"trace_id": "tr-" + "0" * 32, "rating": "up"})
        assert status == 400 and refused["error"]["code"] == "tracing_off"


def test_api_keys_and_load_past_the_queue(packaged):
    """With keys: 401 without the right one. Past a queue of 2: 429 with Retry-After, never a 5xx, and the server
    is healthy and answering afterwards. An idle engine waits 300 ms for company, the company waiting in the queue,
    so the third of the clients sent at once is past the bound however fast the engine answers."""
    env = {
        "LIFECYCLE_API_KEYS": "k-one, k-two",
        "LIFECYCLE_SERVE_MAX_QUEUE": "2",
        "LIFECYCLE_SERVE_BATCH_WAIT_MS": "300",
    }
    with serving(packaged["package"]["bento"], env=env) as (base, _):
        url = f"{base}/v1/completions"
        body = {"prompt": "What does `heapq.heappush` do?", "max_tokens": 64}
        assert _post(url, body)[0] == 401
        status, refused, head = _post(url, body, {"Authorization": "Bearer wrong"}, full=True)
        assert status == 401 and refused["error"]["code"] == "invalid_api_key" and head["WWW-Authenticate"] == "Bearer"
        assert "k-one" not in json.dumps(refused)
        assert _post(url, body, {"Authorization": "Bearer k-two"})[0] == 200
        assert _post(f"{base}/generate", {"prompt": "hi"})[0] == 401
        assert _get(f"{base}/readyz")[0] == 200 and _get(f"{base}/metrics")[0] == 200, "probes need no key"

        start, results = threading.Barrier(48), []

        def client(k: int):  # the OpenAI endpoint and the typed one, alternately
            start.wait()
            target, payload = (
                (url, body) if k % 2 else (f"{base}/generate", {"prompt": body["prompt"], "max_new_tokens": 64})
            )
            results.append((target, *_post(target, payload, {"Authorization": "Bearer k-one"}, full=True)))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(48)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        statuses = [r[1] for r in results]
        assert len(statuses) == 48 and set(statuses) <= {200, 429}, statuses
        assert statuses.count(429) >= 1 and statuses.count(200) >= 2, statuses
        assert all(
            int(head["Retry-After"]) >= 1 and answer["error"]["code"] == "queue_full"
            for target, status, answer, head in results
            if status == 429 and target == url
        )
        assert _get(f"{base}/readyz")[0] == 200 and _get(f"{base}/livez")[0] == 200
        assert _post(url, body, {"Authorization": "Bearer k-one"})[0] == 200
        assert 'lifecycle_rejected_requests_total{reason="queue_full"}' in _get(f"{base}/metrics")[1]


def test_a_request_past_the_timeout_gets_504_and_the_server_goes_on(packaged):
    with serving(packaged["package"]["bento"], env={"LIFECYCLE_SERVE_REQUEST_TIMEOUT_S": "0.001"}) as (base, _):
        status, body = _post(f"{base}/v1/completions", {"prompt": "What does `heapq.heappush` do?"})
        assert status == 504 and body["error"]["code"] == "timeout" and "0.001 s" in body["error"]["message"]
        status, body = _post(f"{base}/generate", {"prompt": "hi"})
        assert status == 504 and body["error"]["code"] == "timeout" and "0.001 s" in body["error"]["message"]
        assert _get(f"{base}/readyz")[0] == 200
        assert 'lifecycle_rejected_requests_total{reason="timeout"} 2.0' in _get(f"{base}/metrics")[1]


def test_sigterm_to_lifecycle_serve_stops_the_server_and_frees_the_port(packaged, tiny_root):
    from mlflow import MlflowClient

    from stages.common.loader import load_params

    lifecycle = str(Path(sys.executable).parent / "lifecycle")
    with serving("", command=[lifecycle, "serve"], cwd=tiny_root) as (base, proc):
        assert _post(f"{base}/generate", {"prompt": "hi", "max_new_tokens": 2})[0] == 200
        os.kill(proc.pid, signal.SIGTERM)  # the process a process manager started, not its group
        proc.wait(timeout=30)
        port = int(base.rsplit(":", 1)[1])
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "nothing answers on the port any more"
        for _ in range(40):  # bounded: the workers may take a moment after the main process
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.25)
        else:
            pytest.fail("a process of `lifecycle serve` outlived SIGTERM")
    name = load_params(tiny_root / "params.yaml").project.name
    tags = MlflowClient().get_model_version_by_alias(name, "champion").tags
    assert json.loads(tags["lifecycle.deploy.local"])["bento"] == packaged["package"]["bento"]


def test_service_refuses_to_start_without_a_packaged_model(monkeypatch):
    monkeypatch.delenv("LIFECYCLE_MODEL_TAG", raising=False)
    code = "import sys; sys.path.insert(0, 'serving'); import service"
    env = {k: v for k, v in os.environ.items() if k != "LIFECYCLE_MODEL_TAG"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2]
    )
    assert out.returncode != 0 and "no packaged model" in out.stderr


def test_the_service_run_from_the_repository_serves_a_model_as_it_was_packaged(packaged, prepared):
    """No bento, no packaged_model.json: `bentoml serve serving.service:Lifecycle` with the model's tag takes the
    settings the model was packaged with (its serve.json), so the request bound is the project's max_new_tokens."""
    bentoml = str(Path(sys.executable).parent / "bentoml")
    command = [bentoml, "serve", "serving.service:Lifecycle", "--host", "127.0.0.1"]
    env = {"LIFECYCLE_MODEL_TAG": packaged["package"]["bentoml_model"]}
    limit = prepared.serve.max_new_tokens
    with serving("", env=env, command=command, cwd=Path(__file__).resolve().parents[2]) as (base, _):
        status, body = _post(f"{base}/generate", {"prompt": "What does `json.dumps` do?", "max_new_tokens": 4})
        assert status == 200 and body["model"] == packaged["package"]["bentoml_model"], body
        status, body = _post(f"{base}/v1/completions", {"prompt": "hi", "max_tokens": limit + 1})
        assert status == 400 and f"less than or equal to {limit}" in body["error"]["message"], body


def test_a_retrieval_bento_answers_with_its_sources(packaged_rag):
    """The +rag variant's bento retrieves from the index it ships, for each request, and names what it used."""
    with serving(packaged_rag["package"]["bento"]) as (base, _):
        status, body = _post(f"{base}/generate", {"prompt": "What does `heapq.heappush` do?", "max_new_tokens": 8})
        status_v1, chat = _post(
            f"{base}/v1/chat/completions",
            {"messages": [{"role": "user", "content": "What does `heapq.heappush` do?"}], "max_tokens": 8},
        )
    assert status == 200, body
    assert len(body["sources"]) == 2, "integrate.top_k passages"
    assert body["sources"][0]["section"] == "heapq.heappush", "the best passage is the function's own section"
    assert all(s["source"].endswith("api-heapq.md") and s["text"] for s in body["sources"])
    assert status_v1 == 200 and chat["sources"] == body["sources"]


def test_an_api_candidate_is_measured_through_an_openai_compatible_server(server, prepared, tmp_path, monkeypatch):
    """select's API candidates against this project's own service: the key variable checked before anything is
    sent, the dev split answered zero- and few-shot, the cost priced from the catalog, ranked with the local ones."""
    from stages import select
    from stages.common.errors import ProjectError
    from stages.common.io import read_json, read_jsonl
    from stages.common.params import Candidate

    def params_with(base_url: str):
        api = Candidate(
            name="served",
            catalog="gpt-4o-mini",
            hosting="self",  # priced as gpt-4o-mini, hosted here
            endpoint={
                "base_url": base_url,
                "api_key_env": "LIFECYCLE_TEST_API_KEY",
                "model": _model_id(server),
                "render": False,
            },
        )
        return prepared.model_copy(
            update={
                "select": prepared.select.model_copy(
                    update={"candidates": [prepared.select.candidates[0], api], "rank_by": "token_f1"}
                ),
                "scope": prepared.scope.model_copy(update={"licences": [*prepared.scope.licences, "proprietary"]}),
            }
        )

    paths = prepared.paths.model_copy(update={"selection": str(tmp_path / "selection.json")})
    monkeypatch.delenv("LIFECYCLE_TEST_API_KEY", raising=False)
    with socket.socket() as listener:  # an endpoint that would see any connection
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        with pytest.raises(ProjectError, match="the environment variable LIFECYCLE_TEST_API_KEY is not set"):
            select.run(params_with(f"http://127.0.0.1:{listener.getsockname()[1]}/v1"), paths)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected: nothing was sent
    assert not (tmp_path / "selection.json").exists()

    monkeypatch.setenv("LIFECYCLE_TEST_API_KEY", "unused-by-an-open-server")
    select.run(params_with(f"{server}/v1"), paths)
    dev = read_jsonl(Path(prepared.paths.processed) / "dev.jsonl")
    selection = read_json(paths.selection)
    row = next(r for r in selection["candidates"] if r["name"] == "served")
    assert row["kind"] == "api" and row["status"] == "ranked" and row["rank"] in (1, 2)
    for prompt in ("zero_shot", "few_shot"):
        m = row["metrics"][prompt]
        assert (
            set(m) >= {"token_f1", "rougeL", "latency_ms", "cost_per_1k_requests_usd"} and "answer_perplexity" not in m
        )
        tokens = m["tokens"]
        assert tokens["prompt"] > 0 and tokens["completion"] >= len(dev), "the server counted every answer"
        assert m["cost_per_1k_requests_usd"] == pytest.approx(
            (tokens["prompt"] * 0.15 + tokens["completion"] * 0.60) / 1e6 / len(dev) * 1000, abs=1e-4
        )
    assert row["metrics"]["few_shot"]["tokens"]["prompt"] > row["metrics"]["zero_shot"]["tokens"]["prompt"], (
        "the few-shot examples went as earlier turns"
    )
    assert selection["selected"]["name"] == prepared.select.candidates[0].name, "an API candidate is never tuned"
    from stages.select import explain

    assert "served" in explain(selection) and "api" in explain(selection)
