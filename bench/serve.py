"""Serving benchmark: the champion's bento under concurrent clients, next to one sequential client and next to a
naive one-request-at-a-time transformers server on the same model, in one run.

    make bench-serve              # after `make run`; or: .venv/bin/python bench/serve.py [--requests 96]

1. Our server (`bentoml serve` of the champion's bento, on the engine it ships: OpenVINO's continuous batching): one client sending requests one
   after another, then 16 concurrent clients. Throughput (requests/s), p50/p95 latency, errors.
2. The naive server (below, bench only): stdlib HTTPServer, one request at a time, `model.generate` per request on
   the float32 weights, the same renderer and retrieval, greedy, the same stop sequences and max_new_tokens.
3. The engine alone, in this process (no HTTP): the same requests in batches of 1, then of up to 16, with one
   torch thread as the service runs it: how much of the gap is the model's compute and how much the HTTP layer.
4. Our server again with `serve.tracing: off`: one sequential client, so the p50 with tracing (the bento's setting,
   a trace per request into the project's MLflow) over the p50 without is what tracing costs a request.
Targets (the serving issue): 16 clients >= 4x one sequential client; >= 1.5x the naive server; zero errors.
Target (the loop issue): p50 with tracing / p50 without <= 1.1x.
The questions are the eval split's, so both servers do the same work. Read the ratios: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, float]:
    start = time.perf_counter()
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError:
        status = 0
    return status, time.perf_counter() - start


def load(url: str, bodies: list[dict], clients: int) -> dict:
    """`clients` threads sending `bodies` (each once); throughput, latency percentiles, errors."""
    import numpy as np

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda b: post(url, b), bodies))
    elapsed = time.perf_counter() - start
    latencies = [s for _, s in results]
    return {
        "clients": clients,
        "requests": len(bodies),
        "rps": len(bodies) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)) * 1000,
        "p95_ms": float(np.percentile(latencies, 95)) * 1000,
        "errors": sum(1 for status, _ in results if status != 200),
    }


def wait_ready(url: str, proc: subprocess.Popen | None = None, seconds: int = 120) -> None:
    for _ in range(seconds * 2):
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer in {seconds} s")


def naive_server(weights_dir: Path, model_dir: Path, port: int) -> HTTPServer:
    """One request at a time, one `generate` each: what a hand-written transformers endpoint usually is. It loads the
    float32 weights (`weights_dir`: the package stage's folder; the bento may carry only the engine's file) and does
    the same retrieval as the bento when the shipped variant retrieves."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.common.prompting import Renderer
    from stages.common.retrieval import CARD, Retriever

    tokenizer = AutoTokenizer.from_pretrained(weights_dir)
    model = AutoModelForCausalLM.from_pretrained(weights_dir).eval()
    renderer = Renderer.load(model_dir, tokenizer)
    stops = [] if renderer.chat else [s for s in renderer.fmt.stop if s]
    retriever = Retriever.open(model_dir / "index") if (model_dir / "index" / CARD).is_file() else None

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            n = body.get("max_tokens") or renderer.fmt.max_new_tokens
            found = retriever.search([body["prompt"]])[0] if retriever else []
            record = {"prompt": body["prompt"], "context": [c["text"] for c in found]}
            ids = tokenizer(
                renderer.prompt(record, max_new_tokens=n),
                return_tensors="pt",
                add_special_tokens=not renderer.chat,
            )
            with torch.no_grad():
                out = model.generate(
                    **ids,
                    max_new_tokens=n,
                    do_sample=False,
                    pad_token_id=tokenizer.eos_token_id,
                    stop_strings=stops or None,
                    tokenizer=tokenizer,
                )
            text = renderer.cut(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
            data = json.dumps({"choices": [{"text": text}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    class Server(HTTPServer):
        request_queue_size = 128  # the clients wait in the listen backlog, none refused (the default is 5)

    return Server(("127.0.0.1", port), Handler)


def engine_alone(model_dir: Path, questions: list[str], batch: int) -> float:
    """Requests/s of the service's engine (the one the bento ships) without HTTP, `batch` at a time at most."""
    import asyncio

    from transformers import AutoTokenizer, GenerationConfig

    from serving import engine
    from stages.common import generation
    from stages.common.prompting import Renderer

    shipped = json.loads((model_dir / "lifecycle.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = GenerationConfig.from_pretrained(model_dir)
    if shipped.get("engine") == generation.OPENVINO:
        backend = generation.OpenVINOEngine(
            model_dir / shipped["file"], batch, False, generation.repetition_penalty(config)
        )
    else:
        import torch
        from transformers import AutoModelForCausalLM

        from stages.common import precision

        torch.set_num_threads(1)  # as the service does with serve.resources.cpu "1"
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        backend = generation.TransformersEngine(precision.quantize(model, shipped.get("precision", "full")), tokenizer)
    renderer = Renderer.load(model_dir, tokenizer)
    ids = [renderer.encode(renderer.prompt({"prompt": q})) for q in questions]
    stops = [] if renderer.chat else renderer.fmt.stop
    eng = engine.Engine(
        generation.Generator(backend, tokenizer, renderer.cut, stops, generation.eos_ids(config, tokenizer)),
        max_batch_size=batch,
        max_queue=len(ids),
    )

    async def answer_all():
        await asyncio.gather(*[eng.enqueue(engine.Job(i, renderer.fmt.max_new_tokens), 600) for i in ids])

    asyncio.run(answer_all())  # warm-up
    start = time.perf_counter()
    asyncio.run(answer_all())
    return len(ids) / (time.perf_counter() - start)


def parity(url: str, model_dir: Path, n: int) -> tuple[int, int]:
    """The first `n` eval questions sent concurrently (so batched) to /v1/completions: how many answers equal what
    evaluate recorded for the packaged variant (greedy: they should all)."""
    from stages.common.io import read_jsonl

    shipped = json.loads((model_dir / "lifecycle.json").read_text())
    variant = shipped["variant"] + ("" if shipped.get("precision", "full") == "full" else f"@{shipped['precision']}")
    rows = read_jsonl(REPO / "data/processed/eval.jsonl")[:n]
    recorded = [r[variant] for r in read_jsonl(REPO / "reports/eval_answers.jsonl")[:n]]

    def ask(row: dict) -> str:
        fields = {k: v for k, v in row.items() if isinstance(v, str) and k not in ("prompt", "completion")}
        body = json.dumps({"prompt": row["prompt"], "fields": fields}).encode()
        req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())["choices"][0]["text"]

    with ThreadPoolExecutor(8) as pool:
        served = list(pool.map(ask, rows))
    return sum(a == b for a, b in zip(served, recorded)), len(rows)


def champion_bento(bento: str | None = None) -> tuple[str, Path, Path]:
    """The champion's bento (or `bento`), its model folder in BentoML's store and the package stage's folder (the
    float32 weights the naive server loads)."""
    import bentoml
    from mlflow import MlflowClient

    from stages.common.cli import project_environment
    from stages.common.loader import load_params
    from stages.common.tracking import configure

    project_environment(REPO)
    params = load_params(REPO / "params.yaml")
    configure(params.project.name)
    bento = bento or MlflowClient().get_model_version_by_alias(params.project.name, "champion").tags["lifecycle.bento"]
    model_tag = json.loads((Path(bentoml.bentos.get(bento).path) / "src" / "packaged_model.json").read_text())["tag"]
    return bento, Path(bentoml.models.get(model_tag).path), REPO / params.paths.package / "model"


@contextlib.contextmanager
def ours(bento: str, env: dict):
    """`bentoml serve` of the bento on a free port, warmed up; its /v1/completions URL; stopped by PID after."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "bentoml"), "serve", bento, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/readyz", proc)
        load(f"{base}/v1/completions", [{"prompt": "What does `json.dumps` do?"}] * 8, 4)  # warm-up
        yield f"{base}/v1/completions"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=96, help="requests per measurement")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="override one of the bento's `serve:` settings, e.g. --set max_batch_size=16",
    )
    parser.add_argument("--bento", help="a bento of the project other than the champion's (e.g. a challenger)")
    parser.add_argument(
        "--parity", type=int, default=20, help="eval questions whose served answers are compared with evaluate's"
    )
    args = parser.parse_args()
    os.chdir(REPO)
    from stages.common.io import read_jsonl

    bento, model_dir, weights_dir = champion_bento(args.bento)
    shipped = json.loads((model_dir / "lifecycle.json").read_text())
    questions = [r["prompt"] for r in read_jsonl(REPO / "data/processed/eval.jsonl")]
    bodies = [{"prompt": questions[i % len(questions)]} for i in range(args.requests)]
    print(
        f"bento {bento} ({shipped.get('engine', 'transformers')} engine, {shipped.get('precision', 'full')}); "
        f"{args.requests} requests per run (eval questions, greedy, the packaged max_new_tokens)"
        + (f"; settings {', '.join(args.set)}" if args.set else "")
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    for setting in args.set:
        key, value = setting.split("=", 1)
        env[f"LIFECYCLE_SERVE_{key.upper()}"] = value
    rows = {}
    with ours(bento, env) as url:
        same, asked = parity(url, model_dir, args.parity)
        print(f"served greedy answers equal to evaluate's: {same}/{asked}")
        rows["ours, 1 sequential client"] = load(url, bodies, 1)
        rows[f"ours, {args.clients} concurrent clients"] = load(url, bodies, args.clients)
    with ours(bento, {**env, "LIFECYCLE_SERVE_TRACING": "off"}) as url:
        untraced = load(url, bodies, 1)

    port = free_port()
    naive = naive_server(weights_dir, model_dir, port)
    thread = threading.Thread(target=naive.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}/"
        load(url, bodies[:8], 4)
        rows[f"naive, {args.clients} concurrent clients"] = load(url, bodies, args.clients)
    finally:
        naive.shutdown()

    questions_sent = [body["prompt"] for body in bodies]
    alone = {size: engine_alone(model_dir, questions_sent, size) for size in (1, args.clients)}

    one, many, base_naive = rows.values()
    tracing = env.get("LIFECYCLE_SERVE_TRACING", "the bento's")
    rows["ours, 1 sequential client, tracing off"] = untraced
    print(f"\n{'server, clients':<42} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7}")
    for name, r in rows.items():
        print(f"{name:<42} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['errors']:>7}")
    overhead = one["p50_ms"] / untraced["p50_ms"]
    print(f"\n{args.clients} concurrent / 1 sequential (ours): {many['rps'] / one['rps']:.2f}x (target >= 4)")
    print(f"ours / naive at {args.clients} concurrent clients: {many['rps'] / base_naive['rps']:.2f}x (target >= 1.5)")
    print(f"errors: ours {one['errors'] + many['errors']} (target 0), naive {base_naive['errors']}")
    print(f"p50 with tracing ({tracing}) / without, 1 sequential client: {overhead:.3f}x (target <= 1.1)")
    print(
        f"the engine alone, no HTTP: {alone[1]:.1f} requests/s one at a time, {alone[args.clients]:.1f} in batches "
        f"of up to {args.clients}: {alone[args.clients] / alone[1]:.2f}x"
    )

    from report import command_line, markdown_table, write_section

    table = markdown_table(
        ["server, clients", "requests/s", "p50 ms", "p95 ms", "errors"],
        [
            [name, f"{r['rps']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", r["errors"]]
            for name, r in rows.items()
        ],
    )
    write_section(
        "serve",
        command_line("bench-serve"),
        f"Bento `{bento}` ({shipped.get('engine', 'transformers')} engine, precision "
        f"{shipped.get('precision', 'full')}); {args.requests} eval questions per run, greedy, the packaged "
        "max_new_tokens"
        + (f"; settings {', '.join(args.set)}" if args.set else "")
        + ". `naive`: a `bench/`-only server, one request at a time, `model.generate` per request on the float32 "
        "weights, with the same retrieval.\n\n"
        + table
        + f"\n\n- {args.clients} concurrent clients / 1 sequential client (ours): **{many['rps'] / one['rps']:.2f}x** "
        "(target 4x).\n"
        f"- Ours / naive at {args.clients} concurrent clients: **{many['rps'] / base_naive['rps']:.2f}x** "
        "(target 1.5x).\n"
        f"- Errors: ours {one['errors'] + many['errors']} (target 0), naive {base_naive['errors']}.\n"
        f"- Served greedy answers equal to what `evaluate` recorded: {same}/{asked} eval questions.\n"
        f"- Tracing: p50 with a trace per request ({tracing} setting) / p50 with `serve.tracing: off`, one "
        f"sequential client: **{overhead:.3f}x** (target <= 1.1x).\n"
        f"- The engine alone, no HTTP, in the same run: {alone[1]:.1f} requests/s one at a time, "
        f"{alone[args.clients]:.1f} in batches of up to {args.clients} ({alone[args.clients] / alone[1]:.2f}x).",
        title="Serve: the champion's bento under concurrent clients",
    )


if __name__ == "__main__":
    main()
