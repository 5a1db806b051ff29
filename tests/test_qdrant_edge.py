"""Qdrant Edge specifics: the token side store is a cache the engine can always overrule."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from agrame_vdb import CollectionSchema, connect

from .conformance._data import DIM, make_passages


class _Spy:
    """Wraps an EdgeShard and records what ``retrieve`` was asked for."""

    def __init__(self, shard):
        self._shard = shard
        self.vector_requests: list = []
        self.payload_requests: list = []

    def retrieve(self, ids, with_payload, with_vector):
        self.vector_requests.append(with_vector)
        self.payload_requests.append(with_payload)
        return self._shard.retrieve(ids, with_payload, with_vector)

    def __getattr__(self, name):
        return getattr(self._shard, name)


@pytest.fixture
def edge(tmp_path):
    repo = connect(f"qdrant-edge://{tmp_path}/store")
    repo.create_collection(CollectionSchema("c", DIM))
    passages = make_passages(12)
    repo.upsert("c", passages)
    spy = _Spy(repo._shards["c"])
    repo._shards["c"] = spy
    yield repo, passages, spy, tmp_path / "store" / "c"
    repo._shards["c"] = spy._shard
    repo.close()


def _check(repo, passages):
    got = repo.fetch("c", [p.id for p in passages], strict=True)
    for written, read in zip(passages, got):
        np.testing.assert_array_equal(read.tokens, written.tokens)


def test_fetch_reads_the_side_store_not_engine_vectors(edge):
    repo, passages, spy, _ = edge
    _check(repo, passages)
    assert spy.vector_requests == [False]


def test_stale_rows_fall_back_to_engine_vectors(edge):
    repo, passages, spy, d = edge
    con = sqlite3.connect(d / "tokens.sqlite")
    con.execute("UPDATE tokens SET version = version + 1, data = zeroblob(length(data)) WHERE rowid % 2 = 0")
    con.execute("DELETE FROM tokens WHERE rowid = 3")
    con.commit()
    con.close()
    _check(repo, passages)
    assert spy.vector_requests[-1] == ["tokens"]  # the stale ones came from the engine


def test_overwrite_and_delete_keep_the_store_in_step(edge):
    repo, passages, spy, d = edge
    rng = np.random.default_rng(3)
    changed = [_new_tokens(p, rng) for p in passages[:3]]
    repo.upsert("c", changed)
    _check(repo, changed + passages[3:])
    repo.delete("c", [passages[4].id])
    repo.delete_by_doc_id("c", passages[5].doc_id)
    left = set(repo.iter_ids("c"))
    con = sqlite3.connect(d / "tokens.sqlite")
    assert {r[0] for r in con.execute("SELECT id FROM tokens")} == left
    con.close()
    assert all(r is False for r in spy.vector_requests)


def test_optimize_drops_orphan_rows(edge):
    repo, passages, spy, d = edge
    store = repo._token_stores["c"]
    store.put([("00000000-0000-4000-8000-000000000001", 1, passages[0].tokens, None)])
    repo.optimize("c")
    assert "00000000-0000-4000-8000-000000000001" not in store.ids()
    assert len(store.ids()) == len(passages)


def _check_batch(repo, passages):
    batch = repo.fetch_tokens("c", [p.id for p in passages])
    assert batch.ids == tuple(p.id for p in passages)
    for i, written in enumerate(passages):
        np.testing.assert_array_equal(batch.tokens_of(i), written.tokens)
        assert batch.units[i] == written.units
    return batch


def test_fetch_tokens_reads_stamps_from_the_engine_and_the_rest_from_the_side_store(edge):
    repo, passages, spy, _ = edge
    _check_batch(repo, passages)
    assert spy.payload_requests == [["tokens_version"]] and spy.vector_requests == [False]


def test_fetch_tokens_falls_back_to_engine_vectors_for_stale_rows(edge):
    repo, passages, spy, d = edge
    before = repo.fetch_tokens("c", [p.id for p in passages])
    con = sqlite3.connect(d / "tokens.sqlite")
    con.execute("UPDATE tokens SET version = version + 1, data = zeroblob(length(data)), units = '[]' WHERE rowid % 2 = 0")
    con.execute("DELETE FROM tokens WHERE rowid = 3")
    con.commit()
    con.close()
    after = _check_batch(repo, passages)
    assert after.versions == before.versions  # the engine's stamps, whichever copy was read
    assert spy.vector_requests[-1] == ["tokens"]  # the stale ones came from the engine


def test_rows_from_before_the_units_column_take_the_payload_units_until_optimize(edge):
    repo, passages, spy, d = edge
    repo.close()  # an old store: the units column dropped
    con = sqlite3.connect(d / "tokens.sqlite")
    con.execute("ALTER TABLE tokens DROP COLUMN units")
    con.commit()
    con.close()
    repo = connect(f"qdrant-edge://{d.parent}")
    try:
        _check_batch(repo, passages)
        store = repo._token_stores["c"]
        assert len(store.without_units()) == len(passages)
        spy = _Spy(repo._shards["c"])
        repo._shards["c"] = spy
        _check_batch(repo, passages)
        assert spy.vector_requests == [False, False]  # units from the payload, vectors from the side store
        repo._shards["c"] = spy._shard
        repo.optimize("c")
        assert store.without_units() == []
        _check_batch(repo, passages)
    finally:
        repo.close()


def test_unreadable_store_is_set_aside(tmp_path):
    url = f"qdrant-edge://{tmp_path}/store"
    repo = connect(url)
    repo.create_collection(CollectionSchema("c", DIM))
    passages = make_passages(5)
    repo.upsert("c", passages)
    repo.close()
    (tmp_path / "store" / "c" / "tokens.sqlite").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / "store" / "c" / f"tokens.sqlite{suffix}").unlink(missing_ok=True)
    repo = connect(url)
    with pytest.warns(UserWarning, match="unreadable"):
        repo.open_collection("c")
    _check(repo, passages)  # from the engine
    repo.upsert("c", passages[:2])
    assert len(repo._token_stores["c"].ids()) == 2
    repo.close()


def _new_tokens(p, rng):
    from dataclasses import replace

    t = rng.normal(size=(p.n_tokens, DIM)).astype(np.float32)
    return replace(p, tokens=t)
