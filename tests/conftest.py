"""Shared fixtures: a tiny project (one tiny model, a few training steps) that the stage tests build up in order.

Every tool's state lives in a temporary folder: MLflow (SQLite), BentoML's store, Prefect's home, HF caches.
Nothing reaches a hub (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.recording import recorded  # each stage below runs on a view that records the params keys it reads

REPO = Path(__file__).resolve().parents[1]
STATE = Path(tempfile.mkdtemp(prefix="lifecycle-tests-"))
os.environ.update(
    {
        "MLFLOW_TRACKING_URI": f"sqlite:///{STATE / 'mlflow.db'}",
        "BENTOML_HOME": str(STATE / "bentoml"),
        "PREFECT_HOME": str(STATE / "prefect"),
        "HF_HOME": str(STATE / "hf"),
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each (the stages and servers they start inherit it),
    # else each worker's torch and OpenMP spin on both cores and the two slow each other down many times over.
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})


# The session fixtures that train the tiny project's models or run a pipeline stage on them (tens of seconds to
# minutes, shared by every test that takes one). A test that takes one, directly or through another fixture, is
# marked `slow` (as is, by hand, a test measured over ~10 s); `make test-fast` runs the pure and small tests:
# `pytest -m "not e2e and not servers and not slow"`.
PIPELINE_FIXTURES = frozenset(
    {
        "prepared",
        "selected",
        "prompted",
        "indexed",
        "adapted",
        "rewarded",
        "aligned",
        "packaged",
        "packaged_rag",
        "separable",
    }
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if pipeline(item):  # the closure: fixtures of fixtures too
            item.add_marker(pytest.mark.slow)
    # The longest first (`make test` passes --no-loadscope-reorder, so the workers take groups in this order): the
    # pipeline's group on one worker while the other starts the end-to-end runs, then whatever is left.
    items.sort(key=lambda item: -1 if pipeline(item) else FIRST.get(module_of(item.nodeid), len(FIRST)))
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(GROUPS):
        groups = {item.nodeid: "pipeline" if pipeline(item) else module_of(item.nodeid) for item in items}
        part = Path(f"{os.environ[GROUPS]}.{os.environ['PYTEST_XDIST_WORKER']}")
        part.write_text(json.dumps(groups))
        part.replace(os.environ[GROUPS])  # whole or not at all: both workers write the same


# The modules of minutes each (`make test --durations` prints them), begun first beside the pipeline's group, the
# longest first: the servers test (one test of 7-14 minutes) last made a run end on one busy worker and one idle.
FIRST = {
    m: i
    for i, m in enumerate(
        ["tests/test_servers.py", "tests/test_e2e.py", "tests/test_real_model.py", "tests/test_examples.py"]
    )
}
# Under pytest-xdist (`make test`, --dist loadgroup) the workers write each test's group here and the scheduler
# below reads it: the tests of the session's pipeline share one worker, so its models are trained once; any other
# test goes with its module (its module fixtures). xdist's own `xdist_group` marks do not group under pytest 9
# (xdist 3.8 renames `item._nodeid`, which pytest 9 no longer reads), hence this.
GROUPS = "LIFECYCLE_TEST_GROUPS"
if not os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ[GROUPS] = str(STATE / "groups.json")  # the workers, started later, inherit it


def module_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # the workers wrote it while collecting, before the first call
                self.groups = json.loads(Path(os.environ[GROUPS]).read_text())
            return self.groups.get(nodeid, module_of(nodeid))

    return ByGroup(config, log)


def pipeline(item) -> bool:
    return bool(PIPELINE_FIXTURES.intersection(getattr(item, "fixturenames", ())))


TINY_EXAMPLE = REPO / "examples" / "stdlib-helpdesk-tiny" / "params.yaml"
# The lifecycle's stages in dvc.yaml's order, typed once: what the tests hold the DAG to.
STAGES = [
    "scope",
    "data",
    "pretrain",
    "select",
    "prompt_search",
    "integrate",
    "adapt",
    "reward",
    "align",
    "evaluate",
    "package",
]


def stages_run(methods: list[str]) -> list[str]:
    """The stages a full run goes through: one `align@<method>` per `align.methods` entry (a DVC foreach)."""
    at = STAGES.index("align")
    return [*STAGES[:at], *(f"align@{m}" for m in methods), *STAGES[at + 1 :]]


def default_params() -> dict:
    """The tiny help desk (examples/stdlib-helpdesk-tiny): the default's data and prompt on models trained here in
    seconds, which every fixture below shrinks further."""
    return yaml.safe_load(TINY_EXAMPLE.read_text())


def tiny_params_dict(root: Path) -> dict:
    """The tiny example shrunk to seconds: one tiny model, small splits, a few steps, easy KPIs."""
    p = copy.deepcopy(default_params())
    p["paths"] = {k: str(root / v) for k, v in p["paths"].items()}
    p["paths"]["sources"] = str(REPO / "data" / "stdlib")
    p["data"]["sources"] = {role: {**s, "path": str(REPO / s["path"])} for role, s in p["data"]["sources"].items()}
    p["project"]["device"] = "cpu"
    # One API page as the knowledge: an index of a dozen small chunks, embedded in seconds.
    p["data"]["sources"]["knowledge"]["path"] = str(REPO / "data" / "stdlib" / "knowledge" / "api-heapq.md")
    p["integrate"].update(chunk_tokens=24, overlap_tokens=0, top_k=2)
    p["scope"]["data"]["knowledge_documents"] = 1
    p["data"]["holdout"] = {"eval": 16, "dev": 8}
    p["scope"]["phase"] = "poc"  # 16 eval rows: too few for an MVP's KPIs
    p["pretrain"].update(
        vocab_size=400,
        seq_len=64,
        batch_size=8,
        models=[
            {"name": "tiny", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "steps": 30},
            {
                "name": "tinier",
                "hidden_size": 16,
                "num_layers": 1,
                "num_heads": 2,
                "intermediate_size": 32,
                "steps": 10,
            },
        ],
    )
    p["select"]["candidates"] = [
        {"name": n, "path": str(root / "models" / "pretrain" / n), "licence": "apache-2.0", "languages": ["en"]}
        for n in ("tiny", "tinier")
    ]
    p["select"]["max_new_tokens"] = 8
    p["prompt_search"]["shots"] = [0, 1]
    p["adapt"]["trainer"].update(
        max_steps=8, per_device_train_batch_size=8, logging_steps=2, save_steps=4, learning_rate=1e-2, max_length=256
    )  # RAFT rows carry two chunks
    p["adapt"]["raft"] = {"enabled": True, "oracle_fraction": 0.8}  # the tiny project trains with RAFT
    p["align"]["dpo"]["trainer"].update(max_steps=3, per_device_train_batch_size=4, logging_steps=1, max_length=64)
    p["align"]["rlhf"].update(max_completion_length=8, num_generations=4)
    p["align"]["rlhf"]["reward_model"]["trainer"].update(
        max_steps=4, per_device_train_batch_size=8, logging_steps=1, max_length=64
    )
    p["align"]["rlhf"]["trainer"].update(max_steps=2, per_device_train_batch_size=8, logging_steps=1)
    p["evaluate"].update(max_new_tokens=8, batch_size=16)
    # The tiny project may ship int8 whatever it loses (a tiny model's answers move): F16 or Q8_0, whichever decodes
    # faster here, and the server tests serve that GGUF file; nf4 needs a GPU and is skipped with its reason.
    p["package"].update(quantize=["int8", "nf4"], max_quality_loss=1.0)
    p["scope"]["kpis"] = [{"metric": "latency_ms", "threshold": 60000, "direction": "lower", "versus": "absolute"}]
    return p


def write_params(root: Path, p: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-project")


@pytest.fixture(scope="session")
def tiny(tiny_root):
    """Validated Params of the tiny project."""
    from stages.common.loader import load_params

    return load_params(write_params(tiny_root, tiny_params_dict(tiny_root)))


@pytest.fixture(scope="session")
def processed(tiny):
    """scope + data run on the tiny project: its report and processed splits, no model (seconds)."""
    from stages import data, scope

    scope.run(recorded(tiny, "scope"), tiny.paths)
    data.run(recorded(tiny, "data"), tiny.paths)
    return tiny


@pytest.fixture(scope="session")
def prepared(processed):
    """+ pretrain: the tiny project's two from-scratch candidates, trained."""
    from stages import pretrain

    pretrain.run(recorded(processed, "pretrain"), processed.paths)
    return processed


@pytest.fixture(scope="session")
def untrained_lm(tmp_path_factory) -> str:
    """A folder with a tiny Llama as initialised (seeded, never trained) and a BPE tokenizer of the shipped corpus,
    built in a second: for a test that needs a model to run, not one that has learned."""
    from types import SimpleNamespace

    import torch

    from stages.common.io import read_jsonl
    from stages.pretrain import build_model, train_tokenizer

    folder = tmp_path_factory.mktemp("untrained-lm")
    texts = [r["text"] for r in read_jsonl(REPO / "data" / "stdlib" / "corpus.jsonl")[:300]]
    tok = train_tokenizer(texts, 400)
    torch.manual_seed(0)
    spec = SimpleNamespace(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)  # "tiny"'s shape
    build_model(spec, len(tok), 64, tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def selected(prepared):
    from stages import select

    return select.run(recorded(prepared, "select"), prepared.paths)


@pytest.fixture(scope="session")
def prompted(prepared, selected):
    from stages import prompt_search

    return prompt_search.run(recorded(prepared, "prompt_search"), prepared.paths)


@pytest.fixture(scope="session")
def indexed(prepared):
    """integrate: the knowledge index (RAFT and the +rag variants retrieve from it)."""
    from stages import integrate

    return integrate.run(recorded(prepared, "integrate"), prepared.paths)


@pytest.fixture(scope="session")
def adapted(prepared, selected, indexed):
    from stages import adapt

    return adapt.run(recorded(prepared, "adapt"), prepared.paths)


@pytest.fixture(scope="session")
def rewarded(prepared, adapted):
    """reward: the reward model on the preference pairs."""
    from stages import reward

    return reward.run(recorded(prepared, "reward"), prepared.paths)


@pytest.fixture(scope="session")
def aligned(prepared, rewarded):
    """align@<method> for every `align.methods` entry (dpo and rlhf, as the default project)."""
    from stages import align

    return {
        m.value: align.run(recorded(prepared, f"align@{m.value}"), prepared.paths, m.value)
        for m in prepared.align.methods
    }


@pytest.fixture(scope="session")
def packaged(prepared, prompted, aligned):
    """evaluate (easy KPI: passes) then package: an MLflow version and a bento exist."""
    from stages import evaluate, package

    evaluate.run(recorded(prepared, "evaluate"), prepared.paths)
    return package.run(recorded(prepared, "package"), prepared.paths)


@pytest.fixture(scope="session")
def packaged_rag(packaged, prepared, tiny_root):
    """package once more, as if evaluate had chosen the candidate's +rag twin: a bento that retrieves."""
    from stages import package
    from stages.common.io import read_json, write_json

    report = read_json(prepared.paths.eval_metrics)
    twin = report["candidate"] if report["candidate"].endswith("_rag") else report["candidate"] + "_rag"
    write_json(tiny_root / "eval-rag.json", {**report, "candidate": twin, "serving": None})  # at full precision
    paths = prepared.paths.model_copy(
        update={"eval_metrics": str(tiny_root / "eval-rag.json"), "package": str(tiny_root / "models" / "package-rag")}
    )
    return {**package.run(prepared, paths), "paths": paths}


@pytest.fixture(scope="session")
def separable(prepared, adapted, tmp_path_factory):
    """The tiny project with preference pairs a model can tell apart, in a way a policy can act on: the chosen
    answer is the first two words of the rejected one (shorter is better; a policy shortens its answer by ending
    it sooner). Its own processed folder, reward model and aligned models; the reward model trained (30 steps)."""
    import shutil

    from stages import reward
    from stages.common.io import read_jsonl, write_jsonl

    root = tmp_path_factory.mktemp("separable")
    shutil.copytree(prepared.paths.processed, root / "processed")
    rows = read_jsonl(root / "processed" / "preference.jsonl")
    write_jsonl(
        root / "processed" / "preference.jsonl",
        [{**r, "chosen": " ".join(r["chosen"].split()[:2]), "rejected": r["chosen"]} for r in rows],
    )
    paths = prepared.paths.model_copy(
        update={
            "processed": str(root / "processed"),
            "reward": str(root / "reward"),
            "aligned": str(root / "aligned"),
            "metrics": str(root / "metrics"),
        }
    )
    rlhf = prepared.align.rlhf
    reward_model = rlhf.reward_model.model_copy(
        update={
            "trainer": rlhf.reward_model.trainer.model_copy(
                update={"max_steps": 30, "learning_rate": 3e-3, "max_length": 96}
            )
        }
    )
    params = prepared.model_copy(
        update={
            "align": prepared.align.model_copy(update={"rlhf": rlhf.model_copy(update={"reward_model": reward_model})})
        }
    )
    return {"params": params, "paths": paths, "reward": reward.run(params, paths)}


# --- real server processes on 127.0.0.1, started and stopped (by PID) by the tests that need them ---------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class Server:
    """A server process in its own process group: `stop()` ends it and everything it started (workers)."""

    def __init__(self, command: list[str], health: str, env: dict | None = None, cwd=None, log=None):
        import subprocess

        self.command, self.health = command, health
        self.log = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, tries: int = 240) -> Server:
        import time

        for _ in range(tries):  # bounded: 0.5 s apart (a first start migrates its database)
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command[:3]} exited with {self.proc.returncode}")
            if healthy(self.health):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.command[:3]} not healthy on {self.health} after {tries / 2:.0f} s")

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def venv_bin(name: str) -> str:
    import sys

    return str(Path(sys.executable).parent / name)


@pytest.fixture
def postgres_database():
    with new_postgres_database() as name:
        yield name


@contextmanager
def new_postgres_database(prefix: str = "lifecycle_test"):
    """A fresh database on the PostgreSQL this machine runs (127.0.0.1:5432, trust auth), dropped afterwards."""
    import uuid

    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def mlflow_server(database: str, artifacts: Path, port: int, log: Path | None = None) -> Server:
    """`mlflow server` on PostgreSQL, artifacts proxied by the server into a local folder (as a team runs it:
    clients never write to the server's disk themselves)."""
    return Server(
        [
            venv_bin("mlflow"),
            "server",
            "--backend-store-uri",
            f"postgresql://postgres@127.0.0.1:5432/{database}",
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        f"http://127.0.0.1:{port}/health",
        log=log,
        # No MLflow jobs (GenAI scorers, prompt optimisation) here: without this the server starts a job runner and
        # seven huey consumers, ~25 s of CPU at every start, and the servers test starts it four times.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )


def prefect_server(database: str, home: Path, port: int, log: Path | None = None) -> Server:
    return Server(
        [venv_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}/api/health",
        log=log,
        env={
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": "",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
        },
    )


def pytest_sessionfinish(session, exitstatus):
    """Prefect stops the temporary servers the in-process flow tests started at interpreter exit, when pytest has
    closed the streams its log line goes to (a "Logging error" traceback): stop them while the streams are open."""
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()
