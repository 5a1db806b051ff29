"""Disk bytes per token of a Qdrant Edge store and of a qdrant-client local-mode store:
``python benchmarks/storage.py [--passages 2000] [--engines edge,local] [--token-pooling 1,2,3]``.

Prints figures, asserts nothing. For each storage dtype (float32, float16, int8,
binary) it builds a collection of N passages of 100-160 random unit-norm 128-d tokens
(5 sentence units each), written through the repository in batches of 250, then
``optimize()``-d and closed, and prints the allocated disk bytes per token (what
``st_blocks`` says: preallocated but unwritten parts of sparse files do not count).

Qdrant Edge (``qdrant-edge://``):

- ``total``; ``less wal`` (the total without the WAL); ``segments`` (the engine's segments: vectors, payload, indexes);
  ``wal`` (the engine's write-ahead log, a fixed-size ring: a cost per collection,
  not per token); ``copy .bin`` and ``copy sqlite`` (the token copy's data file and
  its SQLite index, with its -wal/-shm); ``other`` (the schema, the shard's config);
  ``apparent``: the total of the files' sizes (``st_size``), preallocated parts
  counted (the WAL's and the segments' 32 MiB files);

qdrant-client local mode (``qdrant-local:///path``: every point pickled into one
SQLite file, the payload's base64 token copy in it; local mode ignores float16 and
quantization, so the engine's own vectors are float32 whatever the dtype):

- ``total`` (allocated), ``apparent``, and ``copy b64``: the payload's token copy
  (``tokens_b64``) per token, measured from the stored payloads (base64: 4/3 of its bytes);

and for both:

- ``1st pass``: the bytes per token the planner's scoring reads for every candidate
  (the token copy's row, or its sign bits for binary, whose int8 rerank rows are read
  for the top ``rerank`` candidates only);
- ``fetch err``: the largest absolute difference between the vectors written
  (float32) and those ``fetch_tokens`` returns, over every passage, after reopening;
- ``maxsim err``: the largest absolute difference between the engine's MaxSim scores
  (``candidates(tokens=...)``, every passage a candidate) and numpy's MaxSim on the
  written vectors, for a few 32-token queries.

``--detail`` also lists the Edge segments' bytes per token by part (vector storage,
quantized vectors, payload, indexes), summed over segments.

``--token-pooling F,...`` also writes the passages with their token rows pooled by each
factor within their sentences (:mod:`agrame_vdb.pooling`; row 0 kept apart as ``[CLS]``
is): the bytes are then per token *before* pooling, so they compare with factor 1's,
and the time pooling took is printed. Random tokens cluster less than a model's do; the
rows per token are what pooling sets.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from agrame_vdb import CollectionSchema, StoredPassage, connect
from agrame_vdb.hardware import cpu_model
from agrame_vdb.pooling import pool_unit_tokens
from agrame_vdb.units import Unit

DIM = 128
DTYPES = ("float32", "float16", "int8", "binary")
ENGINES = ("edge", "local")
#: bytes a token of what the first scoring pass reads for every candidate, per dtype
FIRST_PASS = {"float32": 4 * DIM, "float16": 2 * DIM, "int8": DIM + 4, "binary": DIM // 8}
PARTS = ("segments", "wal", "copy .bin", "copy sqlite", "other")


def make_passages(n: int, seed: int = 0, *, dim: int = DIM, start: int = 0) -> list[StoredPassage]:
    """``n`` passages of 100-160 random unit-norm ``dim``-d tokens, 5 sentence units each;
    numbered from ``start`` (passage ``i`` is index ``i % 4`` of document ``doc-{i // 4}``,
    so its id depends on ``i`` only: written again, it overwrites)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(100, 161, size=n)
    flat = rng.standard_normal((int(lengths.sum()), dim), dtype=np.float32)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    text = "Sentence one is here. " * 5
    out = []
    for i, t in enumerate(np.split(flat, np.cumsum(lengths)[:-1]), start):
        cuts = np.linspace(1, len(t) - 1, 6).astype(int)
        units = tuple(
            Unit("sentence", k, ((22 * k, 22 * k + 21),), ((int(cuts[k]), int(cuts[k + 1])),)) for k in range(5)
        )
        out.append(StoredPassage.create(f"doc-{i // 4}", i % 4, t, units=units, text=text, metadata={"year": 2000 + i % 20}))
    return out


def pooled(passages: list[StoredPassage], factor: int) -> list[StoredPassage]:
    """The passages with their token rows pooled by ``factor`` (the pooled vector kept)."""
    out = []
    for p in passages:
        rows, units = pool_unit_tokens(p.tokens, p.units, factor, protected=[0])
        out.append(StoredPassage.create(p.doc_id, p.index, rows, pooled=p.pooled, units=units, text=p.text,
                                        metadata=p.metadata))
    return out


def part_of(relative: str) -> str:
    """Which part of a collection directory a file belongs to."""
    first, _, rest = relative.partition("/")
    if first == "shard":
        return {"segments": "segments", "wal": "wal"}.get(rest.partition("/")[0], "other")
    if re.fullmatch(r"tokens\.sqlite\.[0-9a-f]{8}\.bin", first):
        return "copy .bin"
    if re.fullmatch(r"tokens\.sqlite(-wal|-shm)?", first):
        return "copy sqlite"
    return "other"


def segment_part(relative: str) -> str:
    """The kind of a file inside a segment (``shard/segments/<uuid>/<kind>/...``)."""
    parts = relative.split("/")
    return parts[3] if len(parts) > 4 else "(files)"


def sizes(path: Path) -> dict[str, tuple[int, int]]:
    """``(allocated, apparent)`` bytes per file under ``path``, keyed by path relative to it."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            out[os.path.relpath(p, path)] = (st.st_blocks * 512, st.st_size)
    return out


def maxsim(q: np.ndarray, d: np.ndarray) -> float:
    return float((q.astype(np.float64) @ d.T.astype(np.float64)).max(axis=1).sum())


def build(url: str, dtype: str, passages: list[StoredPassage], batch: int, factor: int = 1) -> float:
    """Write the passages into a new collection ``c`` at ``url`` (rows pooled by ``factor``
    already, when > 1); the seconds it took."""
    repo = connect(url)
    try:
        repo.create_collection(CollectionSchema("c", DIM, dtype=dtype, token_pooling=factor))
        start = time.perf_counter()
        for i in range(0, len(passages), batch):
            repo.upsert("c", passages[i : i + batch])
        repo.optimize("c")
        return time.perf_counter() - start
    finally:
        repo.close()


def errors(repo: Any, passages: list[StoredPassage], queries: int) -> dict[str, float]:
    """The fetch and engine-MaxSim errors of a store (see the module docs)."""
    ids = [p.id for p in passages]
    err = 0.0
    for i in range(0, len(ids), 200):
        got = repo.fetch_tokens("c", ids[i : i + 200])
        for j, p in enumerate(passages[i : i + 200]):
            err = max(err, float(np.abs(got.tokens_of(j) - p.tokens).max()))
    rng = np.random.default_rng(1)
    score_err = 0.0
    by_id = {p.id: p for p in passages}
    for _ in range(queries):
        q = rng.standard_normal((32, DIM), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        hits = repo.candidates("c", q.mean(axis=0), tokens=q, limit=20, prefetch=len(passages))
        score_err = max(score_err, *(abs(h.score - maxsim(q, by_id[h.id].tokens)) for h in hits))
    return {"fetch err": err, "maxsim err": score_err}


def measure(root: Path, dtype: str, passages: list[StoredPassage], batch: int, queries: int,
            n_tokens: int, factor: int = 1) -> tuple[dict, dict]:
    """One Qdrant Edge collection: bytes per token by part, the errors, the build time.
    ``n_tokens``: the tokens the passages were encoded from (more than their rows when pooled)."""
    url = f"qdrant-edge://{root}"
    seconds = build(url, dtype, passages, batch, factor)
    files = sizes(root / "c")
    by_part = dict.fromkeys(PARTS, 0)
    detail: dict[str, int] = defaultdict(int)
    for rel, (size, _) in files.items():
        by_part[part_of(rel)] += size
        if rel.startswith("shard/segments/"):
            detail[segment_part(rel)] += size
    repo = connect(url)
    try:
        errs = errors(repo, passages, queries)
    finally:
        repo.close()
    total = sum(by_part.values())
    row = {"total": total / n_tokens, "less wal": (total - by_part["wal"]) / n_tokens}
    row.update({k: v / n_tokens for k, v in by_part.items()})
    row["apparent"] = sum(apparent for _, apparent in files.values()) / n_tokens
    row.update({"rows/token": sum(p.n_tokens for p in passages) / n_tokens})
    row.update({"1st pass": FIRST_PASS[dtype], **errs, "build s": seconds})
    return row, {k: v / n_tokens for k, v in sorted(detail.items())}


def measure_local(root: Path, dtype: str, passages: list[StoredPassage], batch: int, queries: int) -> dict:
    """One qdrant-client local-mode collection (on disk): bytes per token, the payload
    copy's share, the errors, the build time."""
    from agrame_vdb.repositories import _qdrant_common as qc

    url = f"qdrant-local://{root}"
    seconds = build(url, dtype, passages, batch)
    files = sizes(root)
    n_tokens = sum(p.n_tokens for p in passages)
    repo = connect(url)
    try:
        copy = 0
        ids = [p.id for p in passages]
        for i in range(0, len(ids), 200):
            for r in repo._client.retrieve("c", ids[i : i + 200], with_payload=[qc.P_TOK]):
                copy += len(r.payload[qc.P_TOK])
        errs = errors(repo, passages, queries)
    finally:
        repo.close()
    return {
        "total": sum(size for size, _ in files.values()) / n_tokens,
        "apparent": sum(apparent for _, apparent in files.values()) / n_tokens,
        "copy b64": copy / n_tokens,
        "1st pass": FIRST_PASS[dtype],
        **errs,
        "build s": seconds,
    }


def print_table(title: str, cols: tuple[str, ...], rows: Any) -> None:
    """Print a table as its rows come: ``rows`` yields ``(dtype, row)``."""
    print(title)
    print(f"{'dtype':<8}" + "".join(f"{c:>12}" for c in cols), flush=True)
    for dtype, row in rows:
        cells = [f"{row[c]:>12.2e}" if c.endswith(" err") else f"{row[c]:>12.1f}" for c in cols]
        print(f"{dtype:<8}" + "".join(cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--engines", default=",".join(ENGINES), help="edge (Qdrant Edge), local (qdrant-client local mode)")
    ap.add_argument("--token-pooling", default="1", help="Edge: pooling factors, comma-separated (1: none)")
    ap.add_argument("--detail", action="store_true", help="list the Edge segments' bytes per token by part")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the stores (default: a temporary directory)")
    args = ap.parse_args()

    passages = make_passages(args.passages)
    n_tokens = sum(p.n_tokens for p in passages)
    dtypes = args.dtypes.split(",")
    print(f"CPU: {cpu_model()}")
    print(f"{args.passages} passages, {n_tokens} tokens ({n_tokens / args.passages:.1f} per passage), dim {DIM}, "
          f"batches of {args.batch}, optimize()d; raw float32 vector: {DIM * 4} B/token")
    details: dict[str, dict] = {}

    def run(kind: str, fn: Any) -> Any:
        for dtype in dtypes:
            root = Path(tempfile.mkdtemp(prefix=f"storage-{kind}-{dtype}-", dir=args.dir))
            try:
                yield dtype, fn(root, dtype)
            finally:
                shutil.rmtree(root, ignore_errors=True)

    engines = args.engines.split(",")
    if "edge" in engines:
        for factor in [int(f) for f in args.token_pooling.split(",")]:
            start = time.perf_counter()
            written = passages if factor == 1 else pooled(passages, factor)
            if factor > 1:
                seconds = time.perf_counter() - start
                print(f"  (pooling by {factor}: {seconds:.2f} s, {1e6 * seconds / n_tokens:.1f} ms per 1,000 tokens)")

            def edge(root: Path, dtype: str, written: list[StoredPassage] = written, factor: int = factor) -> dict:
                row, details[f"{dtype} pool {factor}"] = measure(root, dtype, written, args.batch, args.queries,
                                                                 n_tokens, factor)
                return row

            cols = ("total", "less wal", *PARTS, "apparent", "rows/token", "1st pass", "fetch err", "maxsim err", "build s")
            print_table(f"Qdrant Edge, token pooling {factor}, bytes/token (allocated blocks)", cols, run("edge", edge))
    if "local" in engines:
        cols = ("total", "apparent", "copy b64", "1st pass", "fetch err", "maxsim err", "build s")
        print_table(
            "qdrant-client local mode, bytes/token (allocated blocks)", cols,
            run("local", lambda root, dtype: measure_local(root, dtype, passages, args.batch, args.queries)),
        )
    if args.detail:
        print("\nQdrant Edge segments by part, bytes/token")
        for dtype, parts in details.items():
            print(f"  {dtype}: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
