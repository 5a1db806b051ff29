"""Concurrent searches against Qdrant Edge while an indexing job writes into the same
collection (same process: Edge takes one opener): no errors, and only complete
passages are ever returned (text and units equal what was written for that id).

The encoder is :class:`tests.indexing_helpers.FakeEncoder` (not under test here).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from agrame_vdb import connect
from agrame_vdb.chunking import ChunkingOptions
from agrame_vdb.indexer import RetryPolicy, index_documents
from agrame_vdb.planner import Planner

from ..indexing_helpers import FakeEncoder, make_docs, snapshot, write_jsonl
from . import report

THREADS = 8
SECONDS = 30.0 if report.FULL else 4.0
DOCS = 400 if report.FULL else 80
OPTIONS = dict(batch_size=4, encode_batch_size=4, chunking=ChunkingOptions(max_tokens=16),
               retry=RetryPolicy(attempts=3, initial=0.0, maximum=0.0))


def test_searches_under_concurrent_indexing_on_qdrant_edge(tmp_path):
    fake = FakeEncoder()
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(DOCS))
    ref = connect("memory://")
    index_documents(src, ref, "docs", encoder=fake, **OPTIONS)
    expected = snapshot(ref, "docs")
    rng = np.random.default_rng(7)
    queries = [fake._table[rng.integers(1000, 20000, size=6)] for _ in range(64)]

    repo = connect(f"qdrant-edge://{tmp_path / 'store'}")
    # a first batch so that searches have a collection from the start
    index_documents(write_jsonl(tmp_path / "seed.jsonl", make_docs(4)), repo, "docs", encoder=fake, **OPTIONS)
    planner = Planner(repo, "docs")
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(THREADS)]
    errors: list[str] = []
    incomplete: list[str] = []

    def check(resp, granularity: str) -> None:
        for r in resp.results:
            e = expected.get(r.passage_id)
            if e is None or r.passage_text != e.text or dict(r.metadata) != e.metadata or not np.isfinite(r.score):
                incomplete.append(f"{r.passage_id}: passage not as written")
                continue
            if granularity != "passage":
                spans = {(k, i): s for k, i, s, _ in e.units}
                if spans.get((r.unit_kind, r.unit_index)) != tuple(r.char_spans):
                    incomplete.append(f"{r.passage_id}: unit {r.unit_kind} {r.unit_index} not as written")

    def searcher(t: int) -> None:
        i = t
        while not stop.is_set():
            q = queries[i % len(queries)]
            granularity = "sentence" if i % 2 else "passage"
            start = time.perf_counter()
            try:
                resp = planner.search_vectors(q, q, granularity=granularity, k=5, candidates=20)
            except BaseException as exc:  # noqa: BLE001 - a panic is a BaseException
                errors.append(f"{type(exc).__name__}: {exc}")
            else:
                latencies[t].append((time.perf_counter() - start) * 1000)
                check(resp, granularity)
            i += THREADS

    threads = [threading.Thread(target=searcher, args=(t,), daemon=True) for t in range(THREADS)]
    for th in threads:
        th.start()
    started = time.monotonic()
    try:
        summary = index_documents(src, repo, "docs", encoder=fake, **OPTIONS)
        remaining = SECONDS - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
    finally:
        stop.set()
        for th in threads:
            th.join(60)
    hung = sum(th.is_alive() for th in threads)
    served = sum(len(x) for x in latencies)
    all_lat = [v for x in latencies for v in x]
    report.add(queries_served=served, query_errors=len(errors) + hung, incomplete_results=len(incomplete))
    report.add_latencies(all_lat)
    report.DETAILS.update(load_threads=THREADS, load_seconds=round(time.monotonic() - started, 1),
                          load_passages_indexed=summary.passages)
    assert hung == 0
    assert errors == [], errors[:5]
    assert incomplete == [], incomplete[:5]
    assert served > THREADS
    got = snapshot(repo, "docs")
    assert sorted(got) == sorted(expected) and repo.count("docs") == len(expected)
    repo.close()
