"""The packaged bento served for real by `bentoml serve` on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@contextlib.contextmanager
def serving(bento: str):
    """`bentoml serve` of a bento on a free 127.0.0.1 port until ready; its base URL; stopped by PID after."""
    port = _free_port()
    bentoml = str(Path(sys.executable).parent / "bentoml")
    env = {k: v for k, v in os.environ.items() if k != "LIFECYCLE_MODEL_TAG"}  # the bento alone says what to load
    proc = subprocess.Popen([bentoml, "serve", bento, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # bounded: up to ~60 s to become ready
            if proc.poll() is not None:
                pytest.fail(f"bentoml serve exited with {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        else:
            pytest.fail("bentoml serve did not become ready in 60 s")
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker processes
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def server(packaged):
    with serving(packaged["package"]["bento"]) as base:
        yield base


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


def test_service_refuses_to_start_without_a_packaged_model(monkeypatch):
    monkeypatch.delenv("LIFECYCLE_MODEL_TAG", raising=False)
    code = ("import sys; sys.path.insert(0, 'serving'); import service")
    env = {k: v for k, v in os.environ.items() if k != "LIFECYCLE_MODEL_TAG"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode != 0 and "no packaged model" in out.stderr


def test_a_retrieval_bento_answers_with_its_sources(packaged_rag):
    """The +rag variant's bento retrieves from the index it ships, for each request, and names what it used."""
    with serving(packaged_rag["package"]["bento"]) as base:
        status, body = _post(f"{base}/generate", {"prompt": "What does `heapq.heappush` do?", "max_new_tokens": 8})
    assert status == 200, body
    assert len(body["sources"]) == 2, "integrate.top_k passages"
    assert body["sources"][0]["section"] == "heapq.heappush", "the best passage is the function's own section"
    assert all(s["source"].endswith("api-heapq.md") and s["text"] for s in body["sources"])
