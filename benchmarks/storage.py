"""Disk bytes per token of a Qdrant Edge store: ``python benchmarks/storage.py [--passages 2000]``.

Prints figures, asserts nothing. For each storage dtype (float32, float16, int8) it
builds a collection of N passages of 100-160 random unit-norm 128-d tokens (5
sentence units each), written through the repository in batches of 250, then
``optimize()``-d and closed, and prints the allocated disk bytes per token (what
``st_blocks`` says: preallocated but unwritten parts of sparse files do not count):

- ``total``; ``less wal`` (the total without the WAL); ``segments`` (the engine's segments: vectors, payload, indexes);
  ``wal`` (the engine's write-ahead log, a fixed-size ring: a cost per collection,
  not per token); ``copy .bin`` and ``copy sqlite`` (the token copy's data file and
  its SQLite index, with its -wal/-shm); ``other`` (the schema, the shard's config);
  ``apparent``: the total of the files' sizes (``st_size``), preallocated parts
  counted (the WAL's and the segments' 32 MiB files);
- ``fetch err``: the largest absolute difference between the vectors written
  (float32) and those ``fetch_tokens`` returns, over every passage, after reopening;
- ``maxsim err``: the largest absolute difference between the engine's MaxSim scores
  (``candidates(tokens=...)``, every passage a candidate) and numpy's MaxSim on the
  written vectors, for a few 32-token queries.

``--detail`` also lists the segments' bytes per token by part (vector storage,
quantized vectors, payload, indexes), summed over segments.
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

import numpy as np

from agrame_vdb import CollectionSchema, StoredPassage, connect
from agrame_vdb.hardware import cpu_model
from agrame_vdb.units import Unit

DIM = 128
DTYPES = ("float32", "float16", "int8")
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


def measure(root: Path, dtype: str, passages: list[StoredPassage], batch: int, queries: int) -> tuple[dict, dict]:
    url = f"qdrant-edge://{root}"
    repo = connect(url)
    repo.create_collection(CollectionSchema("c", DIM, dtype=dtype))
    start = time.perf_counter()
    for i in range(0, len(passages), batch):
        repo.upsert("c", passages[i : i + batch])
    repo.optimize("c")
    seconds = time.perf_counter() - start
    repo.close()

    files = sizes(root / "c")
    n_tokens = sum(p.n_tokens for p in passages)
    by_part = dict.fromkeys(PARTS, 0)
    detail: dict[str, int] = defaultdict(int)
    for rel, (size, _) in files.items():
        by_part[part_of(rel)] += size
        if rel.startswith("shard/segments/"):
            detail[segment_part(rel)] += size

    repo = connect(url)
    try:
        ids = [p.id for p in passages]
        err = 0.0
        for i in range(0, len(ids), 200):
            got = repo.fetch_tokens("c", ids[i : i + 200])
            for j, p in enumerate(passages[i : i + 200]):
                err = max(err, float(np.abs(got.tokens_of(j) - p.tokens).max()))
        rng = np.random.default_rng(1)
        score_err = 0.0
        for _ in range(queries):
            q = rng.standard_normal((32, DIM), dtype=np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            hits = repo.candidates("c", q.mean(axis=0), tokens=q, limit=20, prefetch=len(passages))
            by_id = {p.id: p for p in passages}
            score_err = max(score_err, *(abs(h.score - maxsim(q, by_id[h.id].tokens)) for h in hits))
    finally:
        repo.close()
    total = sum(by_part.values())
    row = {"total": total / n_tokens, "less wal": (total - by_part["wal"]) / n_tokens}
    row.update({k: v / n_tokens for k, v in by_part.items()})
    row["apparent"] = sum(apparent for _, apparent in files.values()) / n_tokens
    row.update({"fetch err": err, "maxsim err": score_err, "build s": seconds})
    return row, {k: v / n_tokens for k, v in sorted(detail.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--detail", action="store_true", help="list the segments' bytes per token by part")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the stores (default: a temporary directory)")
    args = ap.parse_args()

    passages = make_passages(args.passages)
    n_tokens = sum(p.n_tokens for p in passages)
    print(f"CPU: {cpu_model()}")
    print(f"{args.passages} passages, {n_tokens} tokens ({n_tokens / args.passages:.1f} per passage), dim {DIM}, "
          f"batches of {args.batch}, optimize()d; raw float32 vector: {DIM * 4} B/token")
    print("bytes/token (allocated blocks)")
    cols = ("total", "less wal", *PARTS, "apparent", "fetch err", "maxsim err", "build s")
    print(f"{'dtype':<8}" + "".join(f"{c:>12}" for c in cols))
    details = {}
    for dtype in args.dtypes.split(","):
        root = Path(tempfile.mkdtemp(prefix=f"storage-{dtype}-", dir=args.dir))
        try:
            row, details[dtype] = measure(root, dtype, passages, args.batch, args.queries)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        cells = [f"{row[c]:>12.1f}" for c in cols[:-3]] + [f"{row[c]:>12.2e}" for c in cols[-3:-1]] + [f"{row[cols[-1]]:>12.1f}"]
        print(f"{dtype:<8}" + "".join(cells), flush=True)
    if args.detail:
        print("\nsegments by part, bytes/token")
        for dtype, parts in details.items():
            print(f"  {dtype}: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
