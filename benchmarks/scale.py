"""How Qdrant Edge stores grow: ``python benchmarks/scale.py [--sizes 10000,50000,200000]``.

Prints figures, asserts nothing. For each size and storage option (``CollectionSchema.dtype``:
float32, float16, int8, binary) it builds a Qdrant Edge store (the default engine) of that many
passages of 100-160 random unit-norm ``--dim``-d tokens (128 by default), 5 sentence
units each (``storage.make_passages``), written through the repository in batches of
``--batch`` (256, the indexer's batch) and ``optimize()``-d, as an indexing job ends. Ids
are deterministic (document ``doc-{i // 4}``, index ``i % 4``), so a rewrite overwrites.
Then, per store:

- ``write p/s``: passages per second of the ``upsert`` calls (making the passages is not
  counted; they include the engine optimizations the repository runs every
  ``OPTIMIZE_BYTES``), ``optimize s`` (the final ``optimize()``) and ``segments`` (Edge's
  count after it);
- ``B/token``: the store directory's allocated bytes (``st_blocks``) over the tokens
  written, after ``optimize()`` and ``close()``; ``peak B/token``: the most the directory
  held while it was written and optimised (sampled every second);
- ``RSS open`` and ``open s``: the resident memory of a fresh process after ``connect`` and
  ``open_collection``, and the time they took (``RSS base``: the same process before, with torch and the
  library imported), and ``RSS queries`` after the queries below;
- sentence-level top-``k`` (10) through ``Planner.search_vectors`` with a pooled first
  stage of ``--candidates`` (200), query encoding excluded (random unit-norm 32-token
  ``[Q]``/``[Q']`` vectors), ``--queries`` timed after ``--warmup`` other ones, in that
  fresh process with ``--threads`` (1) torch threads: wall p50/p95 and the median of each
  step the planner reports (candidates, fetch, rerank);
  with ``--warm`` that process first reads the token copy's data file once (the page
  cache then holds it, as in a service that has run a while: ``warm copy MB``, ``warm s``);
- ``fetch+rerank`` (the planner's fetch and rerank steps, median) against the bare matmul
  floor for the same candidates: their token vectors already in memory as one float32
  tensor, one ``torch`` matmul with the ``[Q]`` and ``[Q']`` rows, the max over each
  passage's and each sentence's tokens (``np.maximum.reduceat``) and the sums. Beside
  them, for the same candidates, one ``fetch_tokens`` alone (read just after the planner
  read them: warm pages) and the kernel alone (``granular_maxsim`` on them), and the
  floor's matmul alone; ``floor err`` is the largest difference between the floor's scores
  and the kernel's. These run for the first ``--floor-queries`` (50) timed queries.

Each finished size and option is a line of ``--out`` (JSON Lines); a run started again
skips what is there, so a stopped run resumes with what is left. Stores are built one at
a time under ``--workdir`` and deleted once measured (``--keep``: kept); before a build the
free disk is checked against what the store may need (the most a store of that option
held per token in an earlier line, else an estimate from the row sizes) and a store that
does not fit is refused with what it needs. The stores of the smallest size are kept until
the run ends: after each larger store's queries, the smallest store of the same option is
queried again (``ref`` figures), so the two p50s are taken at the same machine load. The
targets printed at the end: sentence p50 at the largest size at most 1.5x the p50 at the
smallest, and fetch+rerank at most 2x the floor. ``--sizes 2000`` is a smoke run (44 s for
the three options on a quiet 2-core machine). Figures: docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agrame_vdb import CollectionSchema, connect  # noqa: E402
from agrame_vdb.hardware import cpu_model  # noqa: E402
from agrame_vdb.maxsim import granular_maxsim, pack_token_ranges  # noqa: E402
from agrame_vdb.planner import Planner  # noqa: E402
from agrame_vdb.planner.plan import pool_query  # noqa: E402
from agrame_vdb.schema import DTYPES  # noqa: E402
from agrame_vdb.token_rows import row_bytes  # noqa: E402
from benchmarks.bounds import rss_mb  # noqa: E402
from benchmarks.query import pct, random_queries, run_vectors  # noqa: E402
from benchmarks.repositories import disk_bytes, print_table  # noqa: E402
from benchmarks.storage import make_passages, part_of, sizes  # noqa: E402

COLLECTION = "scale"
MEAN_TOKENS = 130  # 100-160 tokens a passage
GIB = 2**30
BUILT = "built.json"  # in a store directory: its build finished

# --------------------------------------------------------------------------- disk


def estimate_bytes(n: int, dtype: str, dim: int, earlier: list[dict[str, Any]]) -> int:
    """What building ``n`` passages may need on disk at its peak: the most an earlier store of
    this dtype and dim held per token, else the engine's rows and the copy's rows plus
    the engine's rebuilt segments during ``optimize()`` (3 rows a token), 40 bytes a token
    of payload and index, and the WAL; 10% and 1 GiB more to spare."""
    tokens = n * MEAN_TOKENS
    per_token = 3 * row_bytes(dtype, dim) + 40.0
    seen = [r["peak B/token"] for r in earlier if r["storage"] == dtype and r["dim"] == dim]
    if seen:
        per_token = max(seen)
    return int(tokens * per_token * 1.1 + 128 * 2**20 + GIB)


class PeakDisk:
    """The most ``path`` holds (allocated bytes), sampled every ``every`` seconds on a thread."""

    def __init__(self, path: Path, every: float = 1.0) -> None:
        self.path, self.every, self.peak = path, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def sample(self) -> None:
        self.peak = max(self.peak, disk_bytes(self.path))

    def __enter__(self) -> PeakDisk:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# --------------------------------------------------------------------------- building


def build(where: Path, n: int, dtype: str, dim: int, batch: int) -> dict[str, Any]:
    """Write ``n`` passages into a new collection at ``where``, optimise, close; the figures."""
    repo = connect(f"qdrant-edge://{where}")
    written = tokens = 0
    write_s = make_s = 0.0
    with PeakDisk(where) as peak:
        try:
            repo.create_collection(CollectionSchema(COLLECTION, dim, dtype=dtype))
            for start in range(0, n, batch):
                t = time.perf_counter()
                passages = make_passages(min(batch, n - start), seed=[dim, start], dim=dim, start=start)
                make_s += time.perf_counter() - t
                t = time.perf_counter()
                written += repo.upsert(COLLECTION, passages)
                write_s += time.perf_counter() - t
                tokens += sum(p.n_tokens for p in passages)
                if start // batch % 40 == 39:
                    print(f"\r  {dtype}: wrote {written}/{n} ({written / write_s:.0f} p/s)", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            t = time.perf_counter()
            repo.optimize(COLLECTION)
            optimize_s = time.perf_counter() - t
            segments = repo._shards[COLLECTION].info().segments_count  # Edge's own count
        finally:
            repo.close()
    by_part = dict.fromkeys(("segments", "wal", "copy .bin", "copy sqlite", "other"), 0)
    for rel, (size, _) in sizes(where / COLLECTION).items():
        by_part[part_of(rel)] += size
    total = disk_bytes(where)
    return {
        "written": written,
        "tokens": tokens,
        "write p/s": written / write_s,
        "write tokens/s": tokens / write_s,
        "make s": make_s,
        "optimize s": optimize_s,
        "segments": segments,
        "disk bytes": total,
        "B/token": total / tokens,
        "segments B/token": by_part["segments"] / tokens,
        "copy B/token": (by_part["copy .bin"] + by_part["copy sqlite"]) / tokens,
        "wal B/token": by_part["wal"] / tokens,
        "peak B/token": max(peak.peak, total) / tokens,
    }


def store_dir(args: argparse.Namespace, n: int, dtype: str) -> Path:
    return args.workdir / f"scale-{n}-{dtype}-d{args.dim}"


def build_store(where: Path, n: int, dtype: str, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`build` into an empty ``where`` (what a stopped build left is removed: its
    figures would be wrong), then the mark of a finished store."""
    shutil.rmtree(where, ignore_errors=True)
    figures = build(where, n, dtype, args.dim, args.batch)
    (where / BUILT).write_text(json.dumps(figures))
    return figures


# --------------------------------------------------------------------------- the query side, in a fresh process


def floor_scores(tokens: torch.Tensor, offsets: np.ndarray, unit_start: np.ndarray, unit_end: np.ndarray,
                 q: torch.Tensor, sq: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """The bare computation: one matmul of the candidates' tokens [N, dim] with the
    ``[Q]`` and ``[Q']`` rows, the max over each passage's (``offsets``) and each unit's
    (contiguous ``[unit_start, unit_end)``, in order, not overlapping) tokens, summed
    over the query rows. Passage scores [P], unit scores [U], and the matmul's ms."""
    t = time.perf_counter()
    sim = (tokens @ torch.cat([q, sq]).T).numpy()  # [N, 2 Lq]: the faster of the two orientations here
    matmul_ms = (time.perf_counter() - t) * 1e3
    lq = q.shape[0]
    passage = np.maximum.reduceat(sim[:, :lq], offsets[:-1], axis=0).sum(axis=1)
    # bounds start0, end0, start1, ...: every other segment is a unit (the others the gaps)
    bounds = np.stack([unit_start, unit_end], axis=1).reshape(-1)
    if bounds[-1] == len(sim):
        bounds = bounds[:-1]
    unit = np.maximum.reduceat(sim[:, lq:], bounds, axis=0)[::2].sum(axis=1)
    return passage, unit, matmul_ms


def timed(fn: Any) -> tuple[Any, float, float]:
    """``fn()``, its wall time and the process's CPU time (ms)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3


def against_floor(repo: Any, q: np.ndarray, sq: np.ndarray, candidates: int) -> dict[str, float]:
    """For one query's candidates (the planner's first stage again): ``fetch_tokens`` alone,
    the kernel alone, the floor and its matmul (ms; ``cpu``: the CPU time of the fetch and
    the kernel together, and of the floor), and the floor's largest score difference."""
    cands = repo.candidates(COLLECTION, pool_query(q), limit=candidates, with_versions=True)
    by_id = {c.id: c.version for c in cands}
    ids = sorted(by_id)
    batch, fetch_ms, fetch_cpu = timed(lambda: repo.fetch_tokens(COLLECTION, ids, versions=[by_id[i] for i in ids]))
    tokens = torch.from_numpy(np.array(batch.tokens))
    cols = batch.units.token_ranges("sentence")
    packed = pack_token_ranges(tokens, batch.offsets, cols.unit_passage, cols.range_unit, cols.ranges)
    scores, kernel_ms, kernel_cpu = timed(lambda: granular_maxsim(q, packed, sq))
    if len(cols.ranges) != len(cols.unit_passage):
        raise SystemExit("the floor takes units of one token range each")
    starts = batch.offsets[cols.unit_passage]
    args = (tokens, batch.offsets, starts + cols.ranges[:, 0], starts + cols.ranges[:, 1], torch.from_numpy(q), torch.from_numpy(sq))
    (passage, unit, matmul_ms), floor_ms, floor_cpu = timed(lambda: floor_scores(*args))
    err = max(float(np.abs(passage - scores.passage[0].numpy()).max()), float(np.abs(unit - scores.unit[0].numpy()).max()))
    return {"fetch": fetch_ms, "kernel": kernel_ms, "floor": floor_ms, "matmul": matmul_ms, "err": err,
            "tokens": len(batch.tokens), "direct cpu": fetch_cpu + kernel_cpu, "floor cpu": floor_cpu}


def warm_copy(store: Path) -> tuple[int, float]:
    """Read the token copy's data files once, so the page cache holds them as it does in
    a service that has run a while (or for a store just written that fits): bytes, s."""
    t, read = time.perf_counter(), 0
    for f in sorted((store / COLLECTION).glob("tokens.sqlite*.bin")):
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 22):
                read += len(chunk)
    return read, time.perf_counter() - t


def probe(args: argparse.Namespace) -> None:
    """Open the store at ``args.probe``, time queries, print one JSON object."""
    torch.set_num_threads(args.threads)
    warmed, warm_s = warm_copy(args.probe) if args.warm else (0, 0.0)
    base = rss_mb()
    t = time.perf_counter()
    repo = connect(f"qdrant-edge://{args.probe}")
    try:
        repo.open_collection(COLLECTION)
        open_s = time.perf_counter() - t
        rss_open = rss_mb()
        count = repo.count(COLLECTION)
        planner = Planner(repo, COLLECTION, device="cpu", candidates=args.candidates, first_stage="pooled")
        queries = random_queries(args.warmup + args.queries, dim=args.dim)
        walls, responses = run_vectors(planner, queries, "sentence", args.k, warmup=args.warmup)
        rss_queries = rss_mb()
        steps = [r.timings for r in responses]
        floors = [against_floor(repo, q, sq, args.candidates) for q, sq in queries[args.warmup :][: args.floor_queries]]
    finally:
        repo.close()
    wall = [w for w, _ in walls]
    med = statistics.median
    fetch_rerank = med([s.fetch_ms + s.rerank_ms for s in steps])
    floor = med([f["floor"] for f in floors])
    print(json.dumps({
        "count": count,
        "open s": open_s,
        "RSS base MB": base,
        "RSS open MB": rss_open,
        "RSS queries MB": rss_queries,
        "p50 ms": pct(wall, 50),
        "p95 ms": pct(wall, 95),
        "cpu p50 ms": pct([c for _, c in walls], 50),
        "candidates ms": med([s.candidates_ms for s in steps]),
        "fetch ms": med([s.fetch_ms for s in steps]),
        "rerank ms": med([s.rerank_ms for s in steps]),
        "fetch+rerank ms": fetch_rerank,
        "fetch_tokens ms": med([f["fetch"] for f in floors]),
        "kernel ms": med([f["kernel"] for f in floors]),
        "floor ms": floor,
        "matmul ms": med([f["matmul"] for f in floors]),
        "vs floor": fetch_rerank / floor,
        "floor err": max(f["err"] for f in floors),
        "fetch_tokens+kernel cpu ms": med([f["direct cpu"] for f in floors]),
        "floor cpu ms": med([f["floor cpu"] for f in floors]),
        "cpu vs floor": med([f["direct cpu"] for f in floors]) / med([f["floor cpu"] for f in floors]),
        "candidate tokens": med([f["tokens"] for f in floors]),
        "n fetched": med([s.n_fetched for s in steps]),
        "load": os.getloadavg()[0],
        "warm copy MB": warmed / 2**20,
        "warm s": warm_s,
    }))


def run_probe(where: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", str(where), "--dim", str(args.dim),
           "--queries", str(args.queries), "--warmup", str(args.warmup), "--floor-queries", str(args.floor_queries), "--candidates", str(args.candidates),
           "-k", str(args.k), "--threads", str(args.threads), *(["--warm"] if args.warm else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"the query process failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the run


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


COLUMNS = {  # column: (key, format)
    "passages": ("passages", "d"), "storage": ("storage", "s"), "tokens": ("tokens", "d"),
    "write p/s": ("write p/s", ".0f"), "optimize s": ("optimize s", ".1f"), "B/token": ("B/token", ".0f"),
    "peak B/token": ("peak B/token", ".0f"), "segments": ("segments", "d"), "open s": ("open s", ".1f"),
    "RSS open MB": ("RSS open MB", ".0f"), "RSS queries MB": ("RSS queries MB", ".0f"),
    "p50 ms": ("p50 ms", ".1f"), "p95 ms": ("p95 ms", ".1f"), "cpu p50 ms": ("cpu p50 ms", ".1f"), "cand ms": ("candidates ms", ".1f"),
    "fetch ms": ("fetch ms", ".1f"), "rerank ms": ("rerank ms", ".1f"), "fetch_tokens ms": ("fetch_tokens ms", ".1f"),
    "kernel ms": ("kernel ms", ".1f"), "floor ms": ("floor ms", ".1f"), "matmul ms": ("matmul ms", ".1f"), "fetch+rerank / floor": ("vs floor", ".2f"),
    "cpu: fetch_tokens+kernel / floor": ("cpu vs floor", ".2f"),
    "load": ("load", ".1f"),
}


def show(rows: list[dict[str, Any]]) -> None:
    print_table([{c: format(r[k], f) if k in r else "-" for c, (k, f) in COLUMNS.items()} for r in rows])  # older rows lack some


def targets(rows: list[dict[str, Any]]) -> None:
    """Per storage: the largest store's p50 over the smallest's (wall, CPU, and against the
    smallest store queried again just after the largest), and the worst fetch+rerank / floor."""
    for dtype in dict.fromkeys(r["storage"] for r in rows):
        mine = sorted((r for r in rows if r["storage"] == dtype), key=lambda r: r["passages"])
        small, large = mine[0], mine[-1]
        worst = max(mine, key=lambda r: r["vs floor"])
        parts = []
        if large is not small:
            ratio = large["p50 ms"] / small["p50 ms"]
            p50 = (f"p50 at {large['passages']} / at {small['passages']} {ratio:.2f} (target <= 1.5: "
                   f"{'met' if ratio <= 1.5 else 'missed'}; CPU time {large['cpu p50 ms'] / small['cpu p50 ms']:.2f}")
            if large.get("ref passages") == small["passages"]:
                p50 += (f"; against the {small['passages']} store queried again right after: "
                        f"{large['p50 ms'] / large['ref p50 ms']:.2f}, CPU {large['cpu p50 ms'] / large['ref cpu p50 ms']:.2f}")
            parts.append(p50 + ")")
        parts.append(f"fetch+rerank / floor at most {worst['vs floor']:.2f} (target <= 2, at {worst['passages']})")
        print(f"{dtype}: " + "; ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,50000,200000", help="passages per store, comma-separated")
    ap.add_argument("--storage", default=",".join(DTYPES), help="CollectionSchema.dtype options, comma-separated")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200, help="timed queries per store")
    ap.add_argument("--warmup", type=int, default=10, help="other queries run first in the query process")
    ap.add_argument("--floor-queries", type=int, default=50, help="of the timed queries, how many are timed against the floor")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the query process")
    ap.add_argument("--batch", type=int, default=256, help="passages per upsert (the indexer's batch_size)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "scale" / "results.jsonl")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "scale" / "stores")
    ap.add_argument("--keep", action="store_true", help="keep the stores (default: each is deleted once measured)")
    ap.add_argument("--warm", action="store_true",
                    help="read each store's token copy once before its queries (page cache warm, as in a running service)")
    ap.add_argument("--probe", type=Path, help=argparse.SUPPRESS)  # the query process
    args = ap.parse_args()
    if args.probe is not None:
        probe(args)
        return
    storages = args.storage.split(",")
    unknown = [s for s in storages if s not in DTYPES]
    if unknown:
        ap.error(f"--storage takes {', '.join(DTYPES)}, got {', '.join(unknown)}")
    wanted = [int(s) for s in args.sizes.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs), load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
          f"{args.threads} thread(s) for queries")
    print(f"Qdrant Edge; dim {args.dim}; 100-160 tokens, 5 sentences a passage; batches of {args.batch}; "
          f"sentence top-{args.k} of {args.candidates} pooled candidates, {args.queries} queries after {args.warmup}; "
          f"results in {args.out}")
    refused = []
    smallest = min(wanted)
    for n in wanted:
        for dtype in storages:
            done = read_rows(args.out)
            if any((r["passages"], r["storage"], r["dim"]) == (n, dtype, args.dim) for r in done):
                print(f"{n} {dtype}: in {args.out} already, skipped")
                continue
            need, free = estimate_bytes(n, dtype, args.dim, done), shutil.disk_usage(args.workdir).free
            if need > free:
                print(f"{n} {dtype}: REFUSED, it may need {need / GIB:.1f} GiB and {args.workdir} has "
                      f"{free / GIB:.1f} GiB free (free some, or use --workdir elsewhere)", flush=True)
                refused.append((n, dtype))
                continue
            where = store_dir(args, n, dtype)
            t = time.perf_counter()
            row: dict[str, Any] = {"passages": n, "storage": dtype, "dim": args.dim, "batch": args.batch, "warm": args.warm,
                                   "candidates": args.candidates, "k": args.k, "queries": args.queries, "cpu": cpu_model()}
            row.update(build_store(where, n, dtype, args))
            row.update(run_probe(where, args))
            if n != smallest:  # the smallest store's queries again, now: the same load for both
                ref = store_dir(args, smallest, dtype)
                if not (ref / BUILT).exists():
                    build_store(ref, smallest, dtype, args)
                again = run_probe(ref, args)
                row.update({"ref passages": smallest, **{f"ref {k}": again[k] for k in ("p50 ms", "p95 ms", "cpu p50 ms", "load")}})
            row["build+probe s"] = time.perf_counter() - t
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{n} {dtype}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
            if not args.keep and n != smallest:
                shutil.rmtree(where)
    if not args.keep:
        for dtype in storages:
            shutil.rmtree(store_dir(args, smallest, dtype), ignore_errors=True)
    rows = [r for r in read_rows(args.out) if r["dim"] == args.dim and r["passages"] in wanted and r["storage"] in storages]
    if rows:
        print()
        show(sorted(rows, key=lambda r: (r["passages"], DTYPES.index(r["storage"]))))
        print()
        targets(rows)
    if refused:
        raise SystemExit(f"refused for want of disk: {', '.join(f'{n} {d}' for n, d in refused)}")


if __name__ == "__main__":
    main()
