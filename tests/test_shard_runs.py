"""N shard runs of ``index`` equal one run, on every persistent embedded engine.

A small corpus is indexed once in one run, and again in three shard runs (0/3, 1/3,
2/3; each its own connection and checkpoint, one after another, as the pods of an
Indexed Job would write to a server) into another store. The two collections must
hold the same passage ids with the same text, units, metadata and, with the real
encoder in float32, bit-identical token vectors, and answer a lexical query alike.
The reference is the single run: sharding must change nothing but who writes what.

Passages are encoded one at a time (``encode_batch_size=1``) so that the vectors do not
depend on which passages share a padded batch, which differs between the two layouts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agrame_vdb import connect, index_documents
from agrame_vdb.chunking import ChunkingOptions
from agrame_vdb.shards import shard_of

from . import engines
from .indexing_helpers import assert_same_collection, make_docs, snapshot, write_jsonl

N = 3
QUERY = "rivers changed"

#: the embedded engines that keep what a run wrote for the next connection
PERSISTENT = [case.id for case in engines.LOCAL if case.persistent and "nocopy" not in case.id]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    docs = make_docs(14)  # 2, 5 and 7 documents in the three shards
    docs[5]["text"] = " ".join(f"Sentence {k} of the long document is about comets and rivers." for k in range(12))
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", docs), docs


def test_the_engines_are_the_embedded_persistent_ones():
    assert PERSISTENT == ["qdrant-local-path", "qdrant-edge", "milvus-lite"]


@pytest.mark.parametrize("case", engines.params(*PERSISTENT))
def test_three_shard_runs_equal_one_run(case, corpus, encoder, tmp_path):
    src, docs = corpus
    options = dict(encoder=encoder, chunking=ChunkingOptions(max_tokens=24), batch_size=4, encode_batch_size=1)
    assert str(encoder.dtype) == "torch.float32"  # bit-identical vectors from run to run
    whole_url, shards_url = case.url(tmp_path / "whole"), case.url(tmp_path / "shards")
    jobs = tmp_path / "jobs"

    with connect(whole_url) as repo:
        whole = index_documents(src, repo, "docs", checkpoint=jobs / "whole.json", rejects=jobs / "whole.rej", **options)
    parts = []
    for i in range(N):
        with connect(shards_url) as repo:  # one worker after another: an embedded store has one writer
            parts.append(index_documents(src, repo, "docs", shard=f"{i}/{N}", checkpoint=jobs / f"s{i}.json",
                                         rejects=jobs / f"s{i}.rej", **options))

    assert whole.documents == len(docs) and whole.rejected == 0 and whole.passages > len(docs)
    assert [p.documents for p in parts] == [sum(shard_of(d["id"], N) == i for d in docs) for i in range(N)]
    assert all(p.documents > 0 for p in parts) and sum(p.passages for p in parts) == whole.passages
    with connect(whole_url) as one, connect(shards_url) as three:
        single, sharded = snapshot(one, "docs"), snapshot(three, "docs")
        assert len(single) == whole.passages and one.count("docs") == three.count("docs")
        # ids, doc ids, passage index, text, units, metadata; token vectors bit for bit
        assert_same_collection(sharded, single, atol=0.0)
        for pid, p in single.items():
            assert p.tokens.dtype == sharded[pid].tokens.dtype and (p.tokens == sharded[pid].tokens).all(), pid
        # every passage with a query word, and its BM25 score (ties come in either order)
        a = {c.id: c.score for c in one.lexical_candidates("docs", QUERY, limit=len(single))}
        b = {c.id: c.score for c in three.lexical_candidates("docs", QUERY, limit=len(single))}
        assert len(a) > 5 and sorted(a) == sorted(b)
        assert b == pytest.approx(a, rel=1e-6)
    by_doc = {}
    for p in sharded.values():
        by_doc.setdefault(p.doc_id, []).append(p.index)
    assert sorted(by_doc) == sorted(d["id"] for d in docs)
    assert all(sorted(indexes) == list(range(len(indexes))) for indexes in by_doc.values())
