"""integrate: the knowledge documents as a searchable index, and how well it finds the passage a question needs.

    python -m stages.integrate      # writes models/index/ (a Chroma collection) and metrics/integrate.json

Documents (data/processed/knowledge.jsonl: Markdown, text and HTML already made clean text by `data`) are split
by headings, then paragraphs and sentences, into chunks of at most `integrate.chunk_tokens` tokens of the
embedding model with `overlap_tokens` carried over; each chunk starts with its section's heading, so that a
chunk says what it is about. The embedding model is exported to OpenVINO into the index (`embedder/`: what
evaluate, RAFT and the server embed queries with, the server without torch); chunks are embedded with it (batched,
progress bar) and stored in Chroma: embedded in models/index/ by default, or in a Chroma server
(`integrate.store.url`). Embeddings are cached by the chunk's content hash, so an added or edited document costs
only its own chunks.

Retrieval is measured on the eval rows that name their `source` (the section or document that answers them):
recall@1/5/10 and MRR for dense search and for hybrid search (BM25 from `bm25s` + dense, reciprocal-rank fusion),
and with `integrate.rerank_model` for that search re-ordered by a cross-encoder.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
from pathlib import Path

from stages.common.cli import stage_main
from stages.common.embeddings import export_embedder
from stages.common.errors import ProjectError
from stages.common.io import atomic_dir, read_jsonl, write_json
from stages.common.params import Params, Paths
from stages.common.retrieval import CANDIDATES, EMBEDDER, Embedder, Retriever, connect, reranker_model

log = logging.getLogger(__name__)

HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`\"'(])")
RECALL_AT = (1, 5, 10)
# Chroma's HNSW index: cosine distance, and a wider search than its default ef_search 10 (recall on hard data rises
# for ~no latency at these sizes: bench/integrate.py).
HNSW = {"hnsw:space": "cosine", "hnsw:search_ef": 100, "hnsw:construction_ef": 200}


def sections(doc: dict) -> list[tuple[str, str]]:
    """(heading, text) per Markdown section; text before the first heading belongs to the document's title."""
    text, found = doc["text"], list(HEADING.finditer(doc["text"]))
    out = [(doc["title"], text[: found[0].start()] if found else text)]
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        out.append((m.group(2).strip(), text[m.end() : end]))
    return [(heading, body.strip()) for heading, body in out if body.strip()]


def units(body: str) -> list[str]:
    """Paragraphs, and sentences within them: what a chunk boundary may fall between."""
    out = []
    for paragraph in re.split(r"\n\s*\n", body):
        paragraph = paragraph.strip()
        if paragraph:
            out += [s.strip() for s in SENTENCE_END.split(paragraph) if s.strip()]
    return out


def split(doc: dict, count, max_tokens: int, overlap_tokens: int) -> list[dict]:
    """The document's chunks: units packed up to `max_tokens` (the heading included), the last units of a chunk
    up to `overlap_tokens` repeated at the start of the next; a unit longer than a chunk is cut by words."""
    chunks = []
    for heading, body in sections(doc):
        budget = max_tokens - count(heading + ":")
        if budget < 8:
            raise ProjectError(
                [
                    f"`integrate.chunk_tokens` {max_tokens} leaves no room after the heading "
                    f"{heading!r} of {doc['source']}: raise it"
                ]
            )
        pieces = []
        for unit in units(body):
            pieces += [unit] if count(unit) <= budget else _cut(unit, count, budget)
        current, size = [], 0
        for piece in pieces:
            n = count(piece)
            if current and size + n > budget:
                chunks.append(_chunk(doc, heading, current))
                carried, size = [], 0
                for prev in reversed(current):  # overlap: the previous chunk's tail, whole units only
                    if size + count(prev) > overlap_tokens or size + count(prev) + n > budget:
                        break
                    carried.insert(0, prev)
                    size += count(prev)
                current = carried
            current.append(piece)
            size += n
        if current:
            chunks.append(_chunk(doc, heading, current))
    return chunks


def _cut(unit: str, count, budget: int) -> list[str]:
    words, out, current = unit.split(), [], []
    for word in words:
        if current and count(" ".join(current + [word])) > budget:
            out.append(" ".join(current))
            current = []
        current.append(word)
    return out + ([" ".join(current)] if current else [])


def _chunk(doc: dict, heading: str, pieces: list[str]) -> dict:
    text = f"{heading}: {' '.join(pieces)}"
    digest = hashlib.sha256(f"{doc['source']}\n{text}".encode()).hexdigest()[:24]
    return {"id": digest, "text": text, "section": heading, "title": doc["title"], "source": doc["source"]}


def token_counter(model):
    """Tokens of the embedding model in a text (what `chunk_tokens` counts)."""

    def count(text: str) -> int:  # verbose=False: counting a long section is not feeding it to the model
        return len(model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    return count


class EmbeddingCache:
    """Embeddings by chunk id (a content hash) for one embedding model, kept between runs beside the index
    (not a DVC output: DVC deletes a stage's outputs before it runs)."""

    def __init__(self, path: Path):
        import numpy as np

        self.path, self.vectors = path, {}
        if path.is_file():
            data = np.load(path)
            self.vectors = dict(zip(data["ids"].tolist(), data["vectors"]))

    def save(self, keep: list[str]) -> None:
        import numpy as np

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp.npz")
        np.savez(tmp, ids=np.array(keep), vectors=np.stack([self.vectors[i] for i in keep]))
        tmp.replace(self.path)


def embed(chunks: list[dict], model, cache: EmbeddingCache, batch_size: int) -> tuple[list, int]:
    """Vectors for every chunk; only the chunks the cache lacks are embedded. Returns (vectors, embedded now)."""
    from tqdm.auto import tqdm

    todo = [c for c in chunks if c["id"] not in cache.vectors]
    for start in tqdm(range(0, len(todo), batch_size), desc="embedding chunks", unit="batch", disable=not todo):
        batch = todo[start : start + batch_size]
        cache.vectors.update(zip((c["id"] for c in batch), model.encode([c["text"] for c in batch], batch_size)))
    return [cache.vectors[c["id"]] for c in chunks], len(todo)


def open_store(params: Params, folder: Path | None):
    """The Chroma client: embedded in `folder`, or on the server `integrate.store.url`."""
    try:
        return connect(folder, params.integrate.store.url)
    except ConnectionError as exc:
        raise ProjectError(
            [
                f"`integrate.store.url`: {exc}; start it (`chroma run --host ... --port ...`) or set "
                "the url to null for the embedded store"
            ]
        ) from None


def write_collection(client, name: str, chunks: list[dict], vectors: list) -> None:
    """Make the collection hold exactly these chunks: new ones added, gone ones deleted, in the client's batches."""
    collection = client.get_or_create_collection(name, metadata=HNSW, embedding_function=None)
    wanted = {c["id"] for c in chunks}
    held = set(collection.get(include=[])["ids"])
    gone = sorted(held - wanted)
    step = client.get_max_batch_size()
    for i in range(0, len(gone), step):
        collection.delete(ids=gone[i : i + step])
    new = [(c, v) for c, v in zip(chunks, vectors) if c["id"] not in held]
    for i in range(0, len(new), step):
        batch = new[i : i + step]
        collection.add(
            ids=[c["id"] for c, _ in batch],
            embeddings=[v.tolist() for _, v in batch],
            documents=[c["text"] for c, _ in batch],
            metadatas=[{k: c[k] for k in ("section", "title", "source")} for c, _ in batch],
        )


def retrieval_metrics(ranked: list[list[str]], relevant: list[set[str]]) -> dict:
    """recall@k (some relevant chunk among the first k) and MRR@10, over the questions."""
    n = len(ranked)
    out = {
        f"recall@{k}": round(sum(bool(set(r[:k]) & rel) for r, rel in zip(ranked, relevant)) / n, 4) for k in RECALL_AT
    }
    reciprocal = [
        next((1 / i for i, c in enumerate(r[: max(RECALL_AT)], start=1) if c in rel), 0.0)
        for r, rel in zip(ranked, relevant)
    ]
    out["mrr"] = round(sum(reciprocal) / n, 4)
    return out


def not_reached(params: Params, paths: Paths, why: str) -> None:
    """The escalation ladder did not (yet) climb to retrieval: an index that says so, with no chunks, so evaluate
    leaves the `_rag` variants out and DVC sees `integrate` as changed (see adapt.not_reached)."""
    with atomic_dir(paths.index) as out:
        write_json(out / "lifecycle.json", {"chunks": 0, "not_reached": why})
    write_json(Path(paths.metrics) / "integrate.json", {"documents": 0, "chunks": 0, "not_reached": why})


def run(params: Params, paths: Paths) -> dict:
    from stages.common.tracking import flatten, log_splits, stage_run

    p = params.integrate
    docs = read_jsonl(Path(paths.processed) / "knowledge.jsonl")
    if not docs:  # no knowledge source: nothing to retrieve from, and no variant will retrieve
        with atomic_dir(paths.index) as out:
            write_json(out / "lifecycle.json", {"chunks": 0})
        write_json(Path(paths.metrics) / "integrate.json", {"documents": 0, "chunks": 0})
        return {"metrics": {"documents": 0}, "summary": "no knowledge documents (no `knowledge` source): no index"}
    with stage_run("integrate", params, p.model_dump(mode="json")) as _:
        import mlflow

        log_splits(paths.processed, ["knowledge", "eval"])
        server = open_store(params, None) if p.store.url else None  # unreachable: fail before any work
        exported = Path(tempfile.mkdtemp(prefix="lifecycle-embedder-"))
        try:
            # The embedding model compiled for OpenVINO embeds the chunks here and every query after (evaluate,
            # RAFT, the server): the same vectors everywhere, and no torch in the serving image.
            model = Embedder(export_embedder(p.embedding_model, exported / EMBEDDER))
            count = token_counter(model)
            chunks = [c for d in docs for c in split(d, count, p.chunk_tokens, p.overlap_tokens)]
            chunks = list({c["id"]: c for c in chunks}.values())  # the same text twice in one document: once
            cache = EmbeddingCache(
                Path(paths.index).parent / ".cache" / f"integrate-openvino-{_slug(p.embedding_model)}.npz"
            )
            vectors, embedded = embed(chunks, model, cache, p.batch_size)
            cache.save([c["id"] for c in chunks])
            eval_path = Path(paths.processed) / "eval.jsonl"
            with atomic_dir(paths.index) as out:
                shutil.copytree(exported / EMBEDDER, out / EMBEDDER)
                client = server or open_store(params, out)
                write_collection(client, p.store.collection, chunks, vectors)
                _write_index_card(out, params, chunks)
                measured = measure(client, p, chunks, model, eval_path)
                del client  # Chroma keeps its files open until the client goes
        finally:
            shutil.rmtree(exported, ignore_errors=True)
        metrics = {
            "documents": len(docs),
            "chunks": len(chunks),
            "embedded": embedded,
            "reused": len(chunks) - embedded,
            "max_chunk_tokens": max(count(c["text"]) for c in chunks),
            **measured,
        }
        write_json(Path(paths.metrics) / "integrate.json", metrics)
        mlflow.log_metrics(
            {k.replace("@", "_at_"): float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float))}
        )
    return {
        "metrics": metrics,
        "summary": f"{len(chunks)} chunks from {len(docs)} documents ({embedded} embedded now); " + _summary(measured),
    }


def measure(client, p, chunks: list[dict], model, eval_path: Path) -> dict:
    """Retrieval quality on the eval rows that name their `source`; only the count (0) when none does."""
    rows = [r for r in read_jsonl(eval_path) if r.get("source")] if eval_path.is_file() else []
    by_section: dict[str, set[str]] = {}
    for c in chunks:
        by_section.setdefault(c["section"], set()).add(c["id"])
        by_section.setdefault(c["title"], set()).add(c["id"])
    rows = [r for r in rows if r["source"] in by_section]
    if not rows:
        return {"retrieval_eval_rows": 0}
    reranker = reranker_model(p.rerank_model) if p.rerank_model else None
    ranked = Retriever(client, p.store.collection, model, p.search, p.top_k, reranker, p.rerank_depth).rankings(
        [r["prompt"] for r in rows], CANDIDATES
    )
    relevant = [by_section[r["source"]] for r in rows]
    return {
        "retrieval_eval_rows": len(rows),
        "search": p.search,
        **{name: retrieval_metrics(r, relevant) for name, r in ranked.items()},
    }


def _write_index_card(folder: Path, params: Params, chunks: list[dict]) -> None:
    p = params.integrate
    write_json(
        folder / "lifecycle.json",
        {
            "embedding_model": p.embedding_model,
            "collection": p.store.collection,
            "url": p.store.url,
            "chunks": len(chunks),
            "search": p.search,
            "top_k": p.top_k,
            "rerank_model": p.rerank_model,
            "rerank_depth": p.rerank_depth,
        },
    )


def _slug(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", ref)[-80:]


def _summary(measured: dict) -> str:
    if not measured.get("retrieval_eval_rows"):
        return "no eval row names its source: retrieval not measured"
    return (
        "; ".join(
            f"{name} recall@1/5/10 {m['recall@1']}/{m['recall@5']}/{m['recall@10']}, MRR {m['mrr']}"
            for name, m in measured.items()
            if isinstance(m, dict)
        )
        + f" on {measured['retrieval_eval_rows']} eval questions"
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("integrate", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
