"""Query latency of the planner on Qdrant Edge: ``python benchmarks/query.py [--store DIR]``.

Prints figures, asserts nothing. Builds (or reuses) a Qdrant Edge collection of
``--passages`` passages of random unit-norm 128-d token vectors, 100-160 tokens
each, 5 sentence units each, and lexical vectors of a text of Zipf-distributed
words (a 50k-word vocabulary, so postings are as skewed as in real text), written
through the repository. Then times top-``k`` search at passage and sentence
granularity with ``--candidates`` candidates from each first stage (pooled, lexical,
hybrid, engine MaxSim): with the query already encoded (random unit-norm
``[Q]``/``[Q']`` vectors, and 8 words drawn from the same vocabulary for the lexical
branch), and with a real encoder (the 128-d packaged model) on text queries. Prints p50/p95 of the
wall time and the median of each step (encode, candidates, fetch, rerank), then the
same with a warm :class:`~agrame_vdb.planner.TokenCache`. Random vectors and words
make the first stage's recall meaningless: only the latency is measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agrame_vdb import CollectionSchema, LexicalSpec, StoredPassage, Unit, connect
from agrame_vdb.planner import Planner, SearchResponse, TokenCache

COLLECTION = "bench_query"
DIM = 128
VOCAB = 50_000


def zipf_words(rng: np.random.Generator, n: int) -> list[str]:
    return [f"t{r}" for r in rng.zipf(1.1, size=n) % VOCAB]


def make_passage(rng: np.random.Generator, i: int) -> StoredPassage:
    n = int(rng.integers(100, 161))
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    words = zipf_words(rng, n - 3)  # token t + 2 is word t ([CLS] [D] ... [SEP])
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    cuts = np.sort(rng.choice(np.arange(1, n - 3), size=4, replace=False)).tolist()
    bounds = [0, *cuts, n - 3]
    units = tuple(
        Unit("sentence", j, ((starts[a], starts[b - 1] + len(words[b - 1])),), ((a + 2, b + 2),))
        for j, (a, b) in enumerate(zip(bounds, bounds[1:]))
    )
    return StoredPassage.create(
        f"doc-{i // 4}", i % 4, x, units=units, text=" ".join(words), metadata={"lang": ("en", "fr")[i % 2], "year": 2000 + i % 20}
    )


def build(repo, n: int) -> None:
    existing = repo.count(COLLECTION) if COLLECTION in repo.list_collections() else 0
    if existing and repo.open_collection(COLLECTION).lexical is None:
        print(f"{COLLECTION} has no lexical vectors (an older run's): building it again")
        repo.drop_collection(COLLECTION)
        existing = 0
    if existing >= n:
        print(f"reusing {existing} passages in {COLLECTION}")
        return
    repo.create_collection(CollectionSchema(COLLECTION, dim=DIM, indexed_fields={"lang": "keyword", "year": "integer"},
                                            lexical=LexicalSpec()))
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for lo in range(0, n, 500):
        repo.upsert(COLLECTION, [make_passage(rng, i) for i in range(lo, min(n, lo + 500))])
        print(f"\r  wrote {min(n, lo + 500)}/{n} passages ({time.perf_counter() - start:.0f} s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    t = time.perf_counter()
    repo.optimize(COLLECTION)
    print(f"built {n} passages in {time.perf_counter() - start:.0f} s (optimize {time.perf_counter() - t:.0f} s)")


def random_queries(n: int, seed: int = 1, dim: int = DIM) -> np.ndarray:
    """``n`` random unit-norm ``[Q]``/``[Q']`` query pairs: ``[n, 2, 32, dim]`` float32."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, 2, 32, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def random_texts(n: int, seed: int = 2) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(zipf_words(rng, 8)) for _ in range(n)]


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


def report(label: str, walls: list[tuple[float, float]], responses: list[SearchResponse]) -> None:
    """Wall-time p50/p95, the process's CPU time p50 (what a quiet machine would take
    for single-threaded work: less sensitive to other jobs), and the median steps."""
    t = [r.timings for r in responses]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    wall, cpu = [w for w, _ in walls], [c for _, c in walls]
    print(
        f"{label:<44} p50 {pct(wall, 50):6.1f}  p95 {pct(wall, 95):6.1f}  cpu p50 {pct(cpu, 50):6.1f} ms | "
        f"encode {med([x.encode_ms for x in t]):5.1f}  candidates {med([x.candidates_ms for x in t]):5.1f}  "
        f"fetch {med([x.fetch_ms for x in t]):5.1f}  rerank {med([x.rerank_ms for x in t]):5.1f}  "
        f"(fetched {med([x.n_fetched for x in t]):.0f}, cached {med([x.cache_hits for x in t]):.0f}; "
        f"load {os.getloadavg()[0]:.1f})"
    )


def run_vectors(planner: Planner, queries: np.ndarray, granularity: str, k: int, warmup: int = 3, texts: list[str] | None = None,
                **kw) -> tuple[list[tuple[float, float]], list[SearchResponse]]:
    words = texts or [None] * len(queries)
    for b in range(warmup):
        planner.search_vectors(queries[b, 0], queries[b, 1], granularity=granularity, k=k, query_text=words[b], **kw)
    walls, responses = [], []
    for b in range(warmup, len(queries)):
        t, c = time.perf_counter(), time.process_time()
        r = planner.search_vectors(queries[b, 0], queries[b, 1], granularity=granularity, k=k, query_text=words[b], **kw)
        walls.append(((time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3))
        responses.append(r)
    return walls, responses


def run_text(planner: Planner, texts: list[str], granularity: str, k: int, warmup: int = 3) -> tuple[list[tuple[float, float]], list[SearchResponse]]:
    for text in texts[:warmup]:
        planner.search(text, granularity, k)
    walls, responses = [], []
    for text in texts[warmup:]:
        t, c = time.perf_counter(), time.process_time()
        r = planner.search(text, granularity, k)
        walls.append(((time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3))
        responses.append(r)
    return walls, responses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", type=Path, default=Path(tempfile.gettempdir()) / "agrame-bench-query",
        help="Qdrant Edge directory (reused when it already holds the collection)",
    )
    parser.add_argument("--passages", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=40, help="timed queries per case (after 3 warm-up ones)")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: on a shared 2-core machine, 2 threads spin-wait on each other)")
    parser.add_argument("--cache-mb", type=int, default=1024, help="TokenCache size for the warm-cache case (0: skip it)")
    parser.add_argument("--no-encoder", action="store_true", help="skip the cases with query encoding")
    parser.add_argument(
        "--warmup", type=int, default=0,
        help="other random queries run before any timing (a long-running server's steady state: the store's "
        "pages mapped; the default 0 times a fresh process, whose first reads of each page cost more)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{os.cpu_count()} CPUs (shared with other jobs: expect noise), torch threads {args.threads}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")

    repo = connect(f"qdrant-edge://{args.store}")
    try:
        build(repo, args.passages)
        n_total = repo.count(COLLECTION)
        print(f"{n_total} passages; top-{args.k} of {args.candidates} candidates; {args.queries} queries per case\n")
        queries = random_queries(args.queries + 3)
        texts = random_texts(args.queries + 3)
        planner = Planner(repo, COLLECTION, device="cpu", candidates=args.candidates, first_stage="pooled")
        if args.warmup:
            start = time.perf_counter()
            run_vectors(planner, random_queries(args.warmup, seed=99), "sentence", args.k, warmup=args.warmup)
            print(f"warm-up: {args.warmup} other queries in {time.perf_counter() - start:.0f} s\n")

        print("query encoding excluded (random [Q]/[Q'] vectors; 8 random words for the lexical branch):")
        for g in ("passage", "sentence"):
            report(f"  {g}, pooled", *run_vectors(planner, queries, g, args.k))
        n = args.candidates
        report(f"  sentence, lexical {n}", *run_vectors(planner, queries, "sentence", args.k, texts=texts, first_stage="lexical"))
        report(f"  sentence, hybrid {n}+{n} fused to {n}", *run_vectors(planner, queries, "sentence", args.k, texts=texts, first_stage="hybrid"))
        report(f"  passage, hybrid {n}+{n} fused to {n}", *run_vectors(planner, queries, "passage", args.k, texts=texts, first_stage="hybrid"))
        report("  sentence, hybrid, filter lang=en", *run_vectors(planner, queries, "sentence", args.k, texts=texts, first_stage="hybrid", filter={"lang": "en"}))
        report("  sentence, engine MaxSim 200 of 800 pooled", *run_vectors(planner, queries, "sentence", args.k, first_stage="maxsim", prefetch=800))
        report("  sentence, engine MaxSim 50 of 200 pooled", *run_vectors(planner, queries, "sentence", args.k, first_stage="maxsim", candidates=50, prefetch=200))
        report("  sentence, filter lang=en", *run_vectors(planner, queries, "sentence", args.k, filter={"lang": "en"}))
        report("  sentence, with matched tokens", *run_vectors(planner, queries, "sentence", args.k, matches=True))
        bf16 = Planner(repo, COLLECTION, device="cpu", candidates=args.candidates, dtype="bfloat16", first_stage="pooled")
        report("  sentence, bfloat16 scoring", *run_vectors(bf16, queries, "sentence", args.k))

        if args.cache_mb:
            cache = TokenCache(args.cache_mb << 20)
            cached = Planner(repo, COLLECTION, device="cpu", candidates=args.candidates, cache=cache, first_stage="pooled")
            run_vectors(cached, queries, "sentence", args.k, warmup=0)  # fills the cache with these queries' candidates
            print(f"\nwarm TokenCache ({args.cache_mb} MiB; the same queries again, {len(cache)} passages cached):")
            for g in ("passage", "sentence"):
                report(f"  {g}", *run_vectors(cached, queries, g, args.k))

        if not args.no_encoder:
            from agrame_vdb.encoder import MultiVectorEncoder

            # the store's vectors are 128-d: the 128-d packaged model (the same MiniLM as the default,
            # so the same encoding cost, with its [Q]/[Q'] markers)
            encoder = MultiVectorEncoder.load("minilm-frozen-128", device="cpu")
            texts = [f"what does passage {i} say about topic {i % 7} and its history?" for i in range(args.queries + 3)]
            with_encoder = Planner(repo, COLLECTION, encoder, device="cpu", candidates=args.candidates)
            print(f"\nquery encoding included (minilm-frozen-128, [Q] and [Q'] in one pass for sentences; "
                  f"first stage {with_encoder.first_stage}, the default):")
            for g in ("passage", "sentence"):
                report(f"  {g}", *run_text(with_encoder, texts, g, args.k))
            batch = texts[:16]
            t = time.perf_counter()
            responses = with_encoder.search_batch(batch, "sentence", args.k)
            wall = (time.perf_counter() - t) * 1e3
            print(f"  sentence, one batch of {len(batch)}: {wall:.0f} ms, {wall / len(batch):.1f} ms per query "
                  f"(fetch of the union: {responses[0].timings.n_fetched} passages)")
    finally:
        repo.close()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (1 min)")


if __name__ == "__main__":
    main()
