"""The embedding model exported to OpenVINO (stages/common/retrieval.py): what integrate indexes with and every search
queries with, the server's without torch. Exported once for the module (MiniLM from its PyPI package, ~5 s)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from stages.common.embeddings import PACKAGED_EMBEDDER, embedding_model, export_embedder
from stages.common.retrieval import Embedder, Retriever

TEXTS = [
    "How do I reset my password?",
    "heapq.heappush: push the value item onto the heap, maintaining the heap invariant.",
    "x",
    "Refunds for annual plans are prorated to the day.",
]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return Embedder(export_embedder(PACKAGED_EMBEDDER, tmp_path_factory.mktemp("embedder") / "embedder"))


def test_the_exported_model_gives_the_sentence_transformers_vectors(embedder):
    vectors = embedder.encode(TEXTS)
    expected = embedding_model(PACKAGED_EMBEDDER).encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    assert vectors.shape == expected.shape == (len(TEXTS), embedder.dimension)
    assert np.abs(vectors - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6), "unit length: cosine is a dot product"


def test_a_padded_batch_changes_a_vector_by_rounding_only_and_a_query_none(embedder):
    batched = embedder.encode(TEXTS, batch_size=len(TEXTS))
    alone = np.concatenate([embedder.encode([t]) for t in TEXTS])
    assert np.abs(alone - batched).max() < 1e-6
    assert embedder.encode([]).shape == (0, embedder.dimension)
    # The retriever's queries: a question's vector is the same whatever arrived with it (the server gathers them).
    retriever = SimpleNamespace(embedder=embedder)
    together = Retriever._queries(retriever, TEXTS)
    assert np.array_equal(together, np.concatenate([Retriever._queries(retriever, [t]) for t in TEXTS]))


def test_a_text_past_the_models_length_is_cut_as_sentence_transformers_cuts_it(embedder):
    long = " ".join(["priority queue"] * embedder.max_seq_length)
    ids = embedder.tokenizer(long, truncation=True, max_length=embedder.max_seq_length)["input_ids"]
    cut = embedder.tokenizer.decode(ids, skip_special_tokens=True)
    assert np.abs(embedder.encode([long]) - embedder.encode([cut])).max() < 1e-5
