"""Search the knowledge index the `integrate` stage built: the one retriever of evaluate, RAFT and the server.

An index folder (paths.index, or `index/` inside a packaged model) holds `lifecycle.json`, the index card: the
embedding model, the Chroma collection and where it lives (embedded in the folder, or a server `url`), the search
(dense, or hybrid: BM25 + dense with reciprocal-rank fusion), an optional cross-encoder reranking the first
results, and `top_k`; and `embedder/`, the embedding model exported to OpenVINO, which embedded the chunks and
embeds every query. `Retriever.open(folder)` needs nothing else, and nothing of torch, so `package` copies this
module into the bento beside the service, as it does prompting.py; it imports nothing from the project for that
reason.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

CARD = "lifecycle.json"
EMBEDDER = "embedder"  # the index folder's exported embedding model (Embedder)
RRF_K = 60  # reciprocal-rank fusion's constant (Cormack et al. 2009); the usual choice
CANDIDATES = 50  # how deep each retriever's ranking goes into the fusion
# f32 with no dynamic quantization, as the generation engine's DETERMINISTIC: a text's vector does not depend on
# whether the CPU has bf16, and a text embedded alone always gets the same vector.
EXACT = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


class Embedder:
    """An embedding model exported to OpenVINO (stages/common/embeddings.py `export_embedder`) on its CPU runtime:
    the chunks' and the queries' vectors, with torch nowhere (the serving image carries none)."""

    def __init__(self, folder: str | Path):
        import openvino as ov
        from transformers import AutoTokenizer

        folder = Path(folder)
        card = json.loads((folder / "embedder.json").read_text(encoding="utf-8"))
        self.source, self.max_seq_length, self.inputs = card["source"], card["max_seq_length"], card["inputs"]
        self.dimension = card["dimension"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = ov.Core().compile_model(folder / "model.xml", "CPU", EXACT)

    def encode(self, texts: list[str], batch_size: int = 64):
        """Unit-length vectors, one row per text (numpy). Texts past `max_seq_length` tokens are cut, as
        sentence-transformers cuts them."""
        import numpy as np

        out = [np.zeros((0, self.dimension), dtype=np.float32)]
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="np",
            )
            out.append(self.model({k: tokens[k] for k in self.inputs})[0])
        return np.concatenate(out)


def reranker_model(ref: str):
    """A sentence-transformers CrossEncoder from a local folder or a hub id."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(ref, device="cpu")


def connect(folder: Path | None, url: str | None):
    """A Chroma client: embedded in `folder`, or the server at `url`; an unreachable server is a ConnectionError
    naming the URL."""
    import chromadb

    if not url:
        return chromadb.PersistentClient(path=str(folder))
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        client = chromadb.HttpClient(host=parsed.hostname, port=parsed.port or 8000, ssl=parsed.scheme == "https")
        client.heartbeat()
    except Exception as exc:
        raise ConnectionError(f"the Chroma server at {url} is unreachable ({exc})") from None
    return client


def fuse(*ranked: list[str]) -> list[str]:
    """Reciprocal-rank fusion: each list adds 1 / (RRF_K + rank) to an id's score."""
    score: dict[str, float] = {}
    for ids in ranked:
        for rank, i in enumerate(ids, start=1):
            score[i] = score.get(i, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(score, key=lambda i: -score[i])


class Retriever:
    """The chunks of one collection, searchable by meaning (the store's HNSW index) and by words (BM25)."""

    def __init__(
        self,
        client,
        collection: str,
        embedder,
        search: str = "hybrid",
        top_k: int = 3,
        reranker=None,
        rerank_depth: int = 20,
    ):
        import bm25s

        self.client, self.embedder, self.search_kind, self.top_k = client, embedder, search, top_k
        self.reranker, self.rerank_depth = reranker, rerank_depth
        self.working_copy = None  # Retriever.open's copy of an embedded index (a TemporaryDirectory)
        self.collection = client.get_collection(collection, embedding_function=None)
        held = self.collection.get(include=["documents", "metadatas"])
        self.chunks = {
            i: {"id": i, "text": t, **(m or {})} for i, t, m in zip(held["ids"], held["documents"], held["metadatas"])
        }
        self.order = list(self.chunks)
        # BM25 over the same chunks, rebuilt at open (seconds for 100k chunks); Chroma keeps no lexical index.
        self.bm25 = bm25s.BM25()
        self.bm25.index(
            bm25s.tokenize([self.chunks[i]["text"] for i in self.order], stopwords="en", show_progress=False),
            show_progress=False,
        )

    @classmethod
    def open(cls, folder: str | Path, embedder=None) -> Retriever:
        """The retriever an index folder describes (its card); `embedder` reuses an already loaded model. The
        folder itself is only read."""
        folder = Path(folder)
        card = json.loads((folder / CARD).read_text(encoding="utf-8"))
        if not card.get("chunks"):
            raise ValueError(f"{folder}: the index is empty (the project has no knowledge documents)")
        work = None
        if not card.get("url"):
            # Chroma writes to the folder it opens (its SQLite journal), and the folder is a DVC output or the
            # model store's packaged copy: search a working copy, removed with the retriever.
            work = tempfile.TemporaryDirectory(prefix="lifecycle-index-")
            # The embedder is only read: opened where it is.
            shutil.copytree(folder, work.name, dirs_exist_ok=True, ignore=shutil.ignore_patterns(EMBEDDER))
        reranker = None
        if card.get("rerank_model"):
            ref = card["rerank_model"]  # a folder shipped inside the index is named relative to it
            reranker = reranker_model(str(folder / ref) if (folder / ref).is_dir() else ref)
        retriever = cls(
            connect(Path(work.name) if work else None, card.get("url")),
            card["collection"],
            embedder or Embedder(folder / EMBEDDER),
            card["search"],
            card["top_k"],
            reranker,
            card.get("rerank_depth", 20),
        )
        retriever.working_copy = work
        return retriever

    def _queries(self, queries: list[str]):
        tok, limit = self.embedder.tokenizer, self.embedder.max_seq_length
        too_long = sum(len(tok(q, verbose=False)["input_ids"]) > limit for q in queries)
        if too_long:  # sentence-transformers truncates them: they are searched on their first `limit` tokens
            log.warning(
                "%d of %d queries are longer than the embedding model's %d tokens: truncated for the search",
                too_long,
                len(queries),
                limit,
            )
        # One at a time: a padded batch changes a vector in its 8th digit (measured: up to 5e-8), which could swap
        # two near-tied passages between evaluate (all eval questions) and the server (whatever arrived together).
        return self.embedder.encode(queries, batch_size=1)

    def rankings(self, queries: list[str], depth: int = CANDIDATES) -> dict[str, list[list[str]]]:
        """Chunk ids best first per query, every way: dense (the store's nearest neighbours), hybrid (BM25 + dense,
        RRF) and, with a reranker, `rerank` (the card's search re-ordered by it)."""
        import bm25s

        depth = min(depth, len(self.order))
        dense = self.collection.query(
            query_embeddings=[v.tolist() for v in self._queries(queries)], n_results=depth, include=[]
        )["ids"]
        found, _ = self.bm25.retrieve(
            bm25s.tokenize(queries, stopwords="en", show_progress=False), k=depth, show_progress=False
        )
        lexical = [[self.order[i] for i in row] for row in found.tolist()]
        out = {"dense": dense, "hybrid": [fuse(d, s) for d, s in zip(dense, lexical)]}
        if self.reranker is not None:
            out["rerank"] = [self.rerank(q, ids) for q, ids in zip(queries, out[self.search_kind])]
        return out

    def rerank(self, query: str, ids: list[str]) -> list[str]:
        """The first `rerank_depth` ids re-ordered by the cross-encoder's score of (query, chunk); the rest after."""
        head = ids[: self.rerank_depth]
        scores = self.reranker.predict([(query, self.chunks[i]["text"]) for i in head], show_progress_bar=False)
        score = dict(zip(head, scores))
        return sorted(head, key=lambda i: -score[i]) + ids[len(head) :]

    def search(self, queries: list[str]) -> list[list[dict]]:
        """The best `top_k` chunks per query, by the card's search (reranked when it has a reranker): {id, text,
        section, title, source}."""
        ranked = self.rankings(queries)["rerank" if self.reranker is not None else self.search_kind]
        return [[self.chunks[i] for i in ids[: self.top_k]] for ids in ranked]
