"""Repository write/query/fetch figures: ``python benchmarks/repositories.py [--passages 20000]``.

Prints figures, asserts nothing. Data: random unit-norm token vectors, 110-150
tokens per passage (mean 130), dim 128, 5 sentence units per passage; pooled
vectors are the normalised token means. Per engine and storage dtype:

- write throughput through the repository (passages/s) against raw engine calls on
  the same arrays (the target is >= 0.8x);
- first-stage candidate latency (p50): pooled top-100, and pooled prefetch 200 then
  the engine's MaxSim rerank to 100 with a 32-token query;
- fetch latency for 200 candidates (p50): token vectors, units, text, metadata, from
  the payload's binary copy (default) and from the engine's own vectors;
- disk bytes per token (allocated blocks, after ``optimize()``).

One function per engine (``bench_qdrant_edge``, ``bench_qdrant_local``,
``bench_milvus_lite``, ``bench_milvus_server``); add another engine by writing its
function and listing it in ``ENGINES``. Milvus runs on ``--milvus-passages`` (2000 by
default: Milvus Lite writes a few thousand token rows per second) and adds the
per-token ANN first stage (``first_stage=tokens``).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agrame_vdb import CollectionSchema, StoredPassage, connect
from agrame_vdb.units import Unit

DIM = 128
Row = dict[str, Any]


# --------------------------------------------------------------------------- data


def make_arrays(n: int, dim: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(110, 151, size=n)
    flat = rng.standard_normal((int(lengths.sum()), dim), dtype=np.float32)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    return np.split(flat, np.cumsum(lengths)[:-1])


def make_passages(arrays: list[np.ndarray]) -> list[StoredPassage]:
    out = []
    text = "Sentence one is here. " * 5
    for i, t in enumerate(arrays):
        n = t.shape[0]
        cuts = np.linspace(1, n - 1, 6).astype(int)
        units = tuple(
            Unit("sentence", k, ((22 * k, 22 * k + 21),), ((int(cuts[k]), int(cuts[k + 1])),)) for k in range(5)
        )
        out.append(
            StoredPassage.create(
                f"doc-{i // 4}", i % 4, t, units=units, text=text, metadata={"lang": "en" if i % 2 else "fr", "year": 2000 + i % 20}
            )
        )
    return out


# --------------------------------------------------------------------------- measuring


def disk_bytes(path: Path) -> int:
    """Allocated bytes under ``path`` (sparse WAL files count only what they use)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def p50(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def write_through_repository(repo: Any, name: str, passages: list[StoredPassage], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(passages), batch):
        repo.upsert(name, passages[i : i + batch])
    return len(passages) / (time.perf_counter() - start)


def query_figures(repo: Any, name: str, passages: list[StoredPassage], queries: int, seed: int = 1) -> Row:
    rng = np.random.default_rng(seed)
    qts = [rng.standard_normal((32, DIM), dtype=np.float32) for _ in range(queries)]
    qts = [q / np.linalg.norm(q, axis=1, keepdims=True) for q in qts]
    it = iter(range(10**9))

    def pooled() -> None:
        q = qts[next(it) % queries]
        repo.candidates(name, q.mean(axis=0), limit=100)

    def rerank() -> None:
        q = qts[next(it) % queries]
        repo.candidates(name, q.mean(axis=0), tokens=q, limit=100, prefetch=200)

    ids = [c.id for c in repo.candidates(name, qts[0].mean(axis=0), limit=200)]

    def fetch() -> None:
        repo.fetch(name, ids, strict=True)

    return {
        "pooled top100 p50 ms": p50(pooled, queries),
        "prefetch200+MaxSim p50 ms": p50(rerank, queries),
        "fetch 200 p50 ms": p50(fetch, max(5, queries // 3)),
    }


# --------------------------------------------------------------------------- Qdrant Edge


class RawEdge:
    """The same passages written with bare qdrant_edge calls, as a hand-written integration
    would: the same vectors (as lists), payload (text, units, metadata) and payload indexes;
    no input checks, no pooled or token-vector copies."""

    def __init__(self, path: Path, schema: CollectionSchema) -> None:
        import qdrant_edge as qe

        from agrame_vdb.repositories.qdrant_edge import QdrantEdgeRepository

        self.qe = qe
        self.path = path
        self.shard = qe.EdgeShard.create(str(path), QdrantEdgeRepository(path.parent / "unused")._config(schema))
        self.shard.update(qe.UpdateOperation.create_field_index("doc_id", qe.PayloadSchemaType.Keyword))
        self.shard.update(qe.UpdateOperation.create_field_index("passage_index", qe.PayloadSchemaType.Integer))

    def write(self, passages: list[StoredPassage]) -> None:
        qe = self.qe
        points = [
            qe.Point(
                p.id,
                {"tokens": p.tokens.tolist(), "pooled": p.pooled.tolist()},
                {
                    "doc_id": p.doc_id,
                    "passage_index": p.index,
                    "text": p.text,
                    "units": [[u.kind, u.index, u.char_spans, u.token_ranges] for u in p.units],
                    "metadata": dict(p.metadata),
                },
            )
            for p in passages
        ]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def close(self) -> None:
        self.shard.close()


def interleaved_writes(writers: dict[str, Callable[[list[StoredPassage]], None]], passages: list[StoredPassage], batch: int) -> dict[str, float]:
    """passages/s of each writer, writing batch by batch in turn so load spikes hit all alike."""
    spent = dict.fromkeys(writers, 0.0)
    for i in range(0, len(passages), batch):
        chunk = passages[i : i + batch]
        for name, write in writers.items():
            start = time.perf_counter()
            write(chunk)
            spent[name] += time.perf_counter() - start
    return {name: len(passages) / t for name, t in spent.items()}


def bench_qdrant_edge(arrays: list[np.ndarray], args: argparse.Namespace, root: Path) -> list[Row]:
    rows: list[Row] = []
    build_start = time.perf_counter()
    passages = make_passages(arrays)
    build_rate = len(passages) / (time.perf_counter() - build_start)
    print(f"  StoredPassage.create (checks included): {build_rate:.0f} passages/s")
    n_tokens = sum(a.shape[0] for a in arrays)
    name = "bench"
    for dtype in args.dtypes:
        raw = RawEdge(root / f"raw-{dtype}" / "shard", CollectionSchema("raw", DIM, dtype=dtype))
        repos = {}
        for copy in (True, False) if dtype == "float32" else (True,):
            where = root / f"edge-{dtype}-{'copy' if copy else 'nocopy'}"
            repo = connect(f"qdrant-edge://{where}", token_copy=copy)
            repo.create_collection(CollectionSchema(name, DIM, dtype=dtype))
            repos[copy] = (repo, where)
        writers: dict[str, Callable[[list[StoredPassage]], None]] = {"raw": raw.write}
        for copy, (repo, _) in repos.items():
            writers[f"repo-{copy}"] = lambda chunk, repo=repo: repo.upsert(name, chunk)
        rates = interleaved_writes(writers, passages, args.batch)
        raw.close()
        raw_disk = disk_bytes(raw.path)
        shutil.rmtree(raw.path.parent)
        print(f"  {dtype}: raw edge write {rates['raw']:.0f} passages/s, raw disk {raw_disk / n_tokens:.0f} B/token (before optimize)")
        for copy, (repo, where) in repos.items():
            start = time.perf_counter()
            repo.optimize(name)
            optimize_s = time.perf_counter() - start
            row: Row = {
                "engine": "qdrant-edge",
                "dtype": dtype,
                "token copy": copy,
                "passages": len(passages),
                "write p/s": rates[f"repo-{copy}"],
                "vs raw": rates[f"repo-{copy}"] / rates["raw"],
                "optimize s": optimize_s,
            }
            row.update(query_figures(repo, name, passages, args.queries))
            repo.close()
            row["disk B/token"] = disk_bytes(where) / n_tokens
            rows.append(row)
            print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
            shutil.rmtree(where)
            gc.collect()
    return rows


# --------------------------------------------------------------------------- qdrant-client local mode


def bench_qdrant_local(arrays: list[np.ndarray], args: argparse.Namespace, root: Path) -> list[Row]:
    """Local mode is a Python loop per point: small N only (``--local-passages``).

    Write rates compare in-memory stores (raw client calls vs the repository); disk is
    measured on a path store written afterwards.
    """
    n = min(args.local_passages, len(arrays))
    if n == 0:
        return []
    from qdrant_client import QdrantClient, models

    passages = make_passages(arrays[:n])
    n_tokens = sum(a.shape[0] for a in arrays[:n])
    client = QdrantClient(location=":memory:")
    client.create_collection(
        "raw",
        vectors_config={
            "tokens": models.VectorParams(
                size=DIM,
                distance=models.Distance.DOT,
                multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
                hnsw_config=models.HnswConfigDiff(m=0),
            ),
            "pooled": models.VectorParams(size=DIM, distance=models.Distance.COSINE),
        },
    )

    def raw_write(chunk: list[StoredPassage]) -> None:
        client.upsert(
            "raw",
            [
                models.PointStruct(
                    id=p.id,
                    vector={"tokens": p.tokens.tolist(), "pooled": p.pooled.tolist()},
                    payload={"doc_id": p.doc_id, "passage_index": p.index, "text": p.text, "metadata": dict(p.metadata)},
                )
                for p in chunk
            ],
        )

    repos = {copy: connect("qdrant-local://:memory:", token_copy=copy) for copy in (True, False)}
    writers: dict[str, Callable[[list[StoredPassage]], None]] = {"raw": raw_write}
    for copy, repo in repos.items():
        repo.create_collection(CollectionSchema("bench", DIM))
        writers[f"repo-{copy}"] = lambda chunk, repo=repo: repo.upsert("bench", chunk)
    rates = interleaved_writes(writers, passages, 64)
    client.close()
    rows = []
    for copy, repo in repos.items():
        row: Row = {
            "engine": "qdrant-local",
            "dtype": "float32",
            "token copy": copy,
            "passages": n,
            "write p/s": rates[f"repo-{copy}"],
            "vs raw": rates[f"repo-{copy}"] / rates["raw"],
            "optimize s": 0.0,
        }
        row.update(query_figures(repo, "bench", passages, max(5, args.queries // 5)))
        repo.close()
        where = root / f"local-{copy}"
        with connect(f"qdrant-local://{where}", token_copy=copy) as on_disk:
            on_disk.create_collection(CollectionSchema("bench", DIM))
            on_disk.upsert("bench", passages)
        row["disk B/token"] = disk_bytes(where) / n_tokens
        shutil.rmtree(where)
        rows.append(row)
        print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
    return rows


# --------------------------------------------------------------------------- Milvus (Lite, server)


class RawMilvus:
    """The same passages written with bare pymilvus calls, as a hand-written integration
    would: a passages collection (id, doc id, index, text, units, metadata, pooled vector)
    and a token-row collection (pk = passage number * 2**14 + t, passage number, vector),
    row dicts with list vectors, plain inserts; no checks, no filter document, no
    generations, no cleanup."""

    def __init__(self, client: Any, prefix: str, index: str) -> None:
        from pymilvus import DataType, MilvusClient

        self.client = client
        self.passages, self.tokens = f"{prefix}_p", f"{prefix}_t"
        self.next = 0
        s = MilvusClient.create_schema(auto_id=False)
        s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=36)
        s.add_field("pnum", DataType.INT64)
        s.add_field("doc_id", DataType.VARCHAR, max_length=65535)
        s.add_field("passage_index", DataType.INT64)
        s.add_field("text", DataType.VARCHAR, max_length=65535)
        s.add_field("units", DataType.JSON)
        s.add_field("metadata", DataType.JSON)
        s.add_field("pooled", DataType.FLOAT_VECTOR, dim=DIM)
        client.create_collection(self.passages, schema=s)
        t = MilvusClient.create_schema(auto_id=False)
        t.add_field("pk", DataType.INT64, is_primary=True)
        t.add_field("pnum", DataType.INT64)
        t.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
        client.create_collection(self.tokens, schema=t)
        from agrame_vdb.repositories.milvus import _vector_index  # the repository's index settings

        for name, field, metric, kind in ((self.passages, "pooled", "COSINE", index), (self.tokens, "vec", "IP", "FLAT")):
            ip = client.prepare_index_params()
            ip.add_index(field, **_vector_index(kind, metric))
            client.create_index(name, ip, sync=False)

    def write(self, passages: list[StoredPassage]) -> None:
        rows, toks = [], []
        for p in passages:
            n = self.next
            self.next += 1
            rows.append(
                {
                    "id": p.id,
                    "pnum": n,
                    "doc_id": p.doc_id,
                    "passage_index": p.index,
                    "text": p.text,
                    "units": {"u": [[u.kind, u.index, u.char_spans, u.token_ranges] for u in p.units]},  # a JSON object
                    "metadata": dict(p.metadata),
                    "pooled": p.pooled.tolist(),
                }
            )
            toks.extend({"pk": (n << 14) + t, "pnum": n, "vec": v} for t, v in enumerate(p.tokens.tolist()))
        for i in range(0, len(toks), 10_000):
            self.client.insert(self.tokens, toks[i : i + 10_000])
        self.client.insert(self.passages, rows)

    def drop(self) -> None:
        self.client.drop_collection(self.passages)
        self.client.drop_collection(self.tokens)


def _milvus_rows(engine: str, url: str, arrays: list[np.ndarray], args: argparse.Namespace, disk: Callable[[], int]) -> list[Row]:
    n = min(args.milvus_passages, len(arrays))
    if n == 0:
        return []
    passages = make_passages(arrays[:n])
    n_tokens = sum(a.shape[0] for a in arrays[:n])
    repo = connect(url)
    name = "bench"
    if name in repo.list_collections():
        repo.drop_collection(name)
    disk_before = disk()
    repo.create_collection(CollectionSchema(name, DIM))
    raw = RawMilvus(repo._client, "raw", repo._pooled_index)  # type: ignore[attr-defined]
    writers = {"raw": raw.write, "repo": lambda chunk: repo.upsert(name, chunk)}
    rates = interleaved_writes(writers, passages, args.batch)
    raw.drop()
    start = time.perf_counter()
    repo.optimize(name)
    optimize_s = time.perf_counter() - start
    row: Row = {
        "engine": engine,
        "dtype": "float32",
        "token copy": False,
        "passages": n,
        "write p/s": rates["repo"],
        "vs raw": rates["repo"] / rates["raw"],
        "optimize s": optimize_s,
    }
    queries = max(5, args.queries // 5)
    row.update(query_figures(repo, name, passages, queries))
    # the colbert-live first stage: per-token ANN over the token rows, aggregated per passage
    tok = connect(url, first_stage="tokens", token_k=32)
    rng = np.random.default_rng(2)
    qts = [q / np.linalg.norm(q, axis=1, keepdims=True) for q in (rng.standard_normal((32, DIM), dtype=np.float32) for _ in range(queries))]
    it = iter(range(10**9))
    row["token-ANN+MaxSim p50 ms"] = p50(lambda: tok.candidates(name, qts[next(it) % queries].mean(axis=0), tokens=qts[next(it) % queries], limit=100, prefetch=200), max(3, queries // 3))
    tok.close()
    row["disk B/token"] = (disk() - disk_before) / n_tokens
    repo.drop_collection(name)
    repo.close()
    print(f"  raw pymilvus write {rates['raw']:.0f} passages/s ({rates['raw'] * n_tokens / n:.0f} token rows/s)")
    print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
    return [row]


def bench_milvus_lite(arrays: list[np.ndarray], args: argparse.Namespace, root: Path) -> list[Row]:
    """Milvus Lite writes about 4-9k token rows/s: small N only (``--milvus-passages``)."""
    where = root / "milvus-lite.db"
    return _milvus_rows("milvus-lite", f"milvus-lite://{where}", arrays, args, lambda: disk_bytes(where) if where.exists() else 0)


def bench_milvus_server(arrays: list[np.ndarray], args: argparse.Namespace, root: Path) -> list[Row]:
    """``MILVUS_URI`` when set, else the embedded Milvus 2.3.5 server (PyPI ``milvus``), on
    127.0.0.1, started and stopped here. Disk: growth of the server's data directory
    (segments, write-ahead log and etcd together)."""
    if os.environ.get("MILVUS_URI"):
        uri = os.environ["MILVUS_URI"]
        url = uri if uri.startswith("milvus://") else "milvus://" + uri.split("://", 1)[-1]
        return _milvus_rows("milvus-server", url, arrays, args, lambda: 0)
    try:
        from milvus import MilvusServer, MilvusServerConfig
    except ImportError as exc:
        print(f"  skipped: no MILVUS_URI and the embedded server needs milvus==2.3.5 ({exc})")
        return []
    class Config(MilvusServerConfig):
        def try_bind_port(self, port):  # type: ignore[no-untyped-def]
            """The package's port probe, with SO_REUSEADDR (as the server's own listeners):
            a port in TIME_WAIT after a recently stopped server is free."""
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except OSError:
                sock.close()
                return None

    base = root / "milvus-server"
    server = MilvusServer(Config())
    server.set_base_dir(str(base))
    # etcd's client port must stay 2379 (the embedded etcd listens on 2379 and 2380 whatever
    # the setting says); free ephemeral ports for every other *_port setting, as the package's
    # own resolver mistakes ports in TIME_WAIT for taken ones
    server.config.configs["etcd_port"] = 2379
    socks = []
    for key in [k for k in server.config.configurable_items if k.endswith("_port") and k != "etcd_port"]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
        server.config.configs[key] = sock.getsockname()[1]
    for sock in socks:
        sock.close()
    start = time.perf_counter()
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    print(f"  embedded Milvus 2.3.5 started in {time.perf_counter() - start:.1f} s on 127.0.0.1:{server.listen_port}")
    try:
        return _milvus_rows("milvus-2.3.5", f"milvus://127.0.0.1:{server.listen_port}", arrays, args, lambda: disk_bytes(base / "data"))
    finally:
        server.stop()


ENGINES: dict[str, Callable[[list[np.ndarray], argparse.Namespace, Path], list[Row]]] = {
    "qdrant-edge": bench_qdrant_edge,
    "qdrant-local": bench_qdrant_local,
    "milvus-lite": bench_milvus_lite,
    "milvus-server": bench_milvus_server,
}


# --------------------------------------------------------------------------- report


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if v < 10 else f"{v:.0f}"
    return str(v)


def print_table(rows: list[Row]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for x in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(x, widths)) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--passages", type=int, default=20_000)
    ap.add_argument("--local-passages", type=int, default=500, help="passages for qdrant-client local mode (0: skip)")
    ap.add_argument("--milvus-passages", type=int, default=2000, help="passages for Milvus Lite and the Milvus server (0: skip)")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from {', '.join(ENGINES)}")
    ap.add_argument("--dtypes", default="float32,float16,int8")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--root", default=None, help="where the stores go (default: a temporary directory)")
    args = ap.parse_args()
    args.dtypes = args.dtypes.split(",")
    root = Path(args.root or tempfile.mkdtemp(prefix="agrame-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{args.passages} passages of 110-150 tokens x {DIM}-d, {os.cpu_count()} CPUs, stores under {root}")
    start = time.perf_counter()
    arrays = make_arrays(args.passages, DIM)
    print(f"  data: {sum(a.shape[0] for a in arrays)} token vectors in {time.perf_counter() - start:.1f} s")
    rows: list[Row] = []
    for name in args.engines.split(","):
        print(f"{name}:", flush=True)
        rows += ENGINES[name](arrays, args, root)
    print()
    print_table(rows)
    if args.root is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
