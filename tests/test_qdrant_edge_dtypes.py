"""Qdrant Edge's float16 and int8 collections: what the engine and the token copy keep,
read back against independent numpy references, across reopening, and the move of an
int8 collection's old float32 token copy to the int8 form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agrame_vdb import CollectionSchema, connect
from agrame_vdb.repositories import qdrant_edge

from .conformance._data import DIM, make_passages, maxsim, unit_vectors
from .test_qdrant_edge import _data_file, _edit_index, _open_spied, _row


def _int8_reference(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    s = np.abs(x).max(axis=1, keepdims=True)
    q = np.round(np.divide(x, s, out=np.zeros_like(x), where=s > 0) * 127)
    return q * s / 127


def _assert_copy_of(dtype, got, written):
    """The token copy's vectors of a ``dtype`` collection: float16 casts, or int8 codes."""
    if dtype == "float16":
        np.testing.assert_array_equal(got, written.astype(np.float16).astype(np.float32))
    else:
        s = np.abs(written).max(axis=1, keepdims=True)
        assert np.all(np.abs(got - _int8_reference(written)) <= 2.4e-7 * s)


def _collection(tmp_path, dtype, **kwargs):
    repo = connect(f"qdrant-edge://{tmp_path}/store")
    repo.create_collection(CollectionSchema("c", DIM, dtype=dtype, **kwargs))
    return repo, tmp_path / "store" / "c"


def _read(repo, passages):
    batch = repo.fetch_tokens("c", [p.id for p in passages])
    assert batch.ids == tuple(p.id for p in passages)
    return [batch.tokens_of(i).copy() for i in range(len(passages))], batch


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_the_token_copy_holds_the_dtype_and_reads_the_same_after_reopening_and_optimize(tmp_path, dtype):
    repo, d = _collection(tmp_path, dtype, on_disk=True)
    passages = make_passages(12)
    repo.upsert("c", passages)
    first, batch = _read(repo, passages)
    for got, p in zip(first, passages):
        _assert_copy_of(dtype, got, p.tokens)
    for got, p in zip(repo.fetch("c", [p.id for p in passages], strict=True), first):  # fetch: the same vectors
        np.testing.assert_array_equal(got.tokens, p)
    per_token = {"float16": 2 * DIM, "int8": DIM + 4}[dtype]
    assert _data_file(d).stat().st_size == sum(p.n_tokens for p in passages) * per_token
    repo.close()
    for step in ("reopened", "optimized", "reopened again"):
        repo, spy = _open_spied(d)
        try:
            if step == "optimized":
                repo.optimize("c")
            again, _ = _read(repo, passages)
            assert spy.vector_requests == [False]  # from the token copy
            for a, b in zip(again, first):
                np.testing.assert_array_equal(a, b)
        finally:
            repo._shards["c"] = spy._shard
            repo.close()


def test_an_int8_collection_keeps_turbo8_codes_in_the_engine_and_scores_them(tmp_path):
    repo, d = _collection(tmp_path, "int8")
    config = json.loads((d / "shard" / "edge_config.json").read_text())
    assert config["vectors"]["tokens"]["datatype"] == "turbo8" and "quantization_config" not in config["vectors"]["tokens"]
    passages = make_passages(20, seed=4)
    repo.upsert("c", passages)
    repo.optimize("c")
    repo.close()
    atol = qdrant_edge._TURBO8_ATOL
    nocopy = connect(f"qdrant-edge://{d.parent}?token_copy=0")  # the engine's own vectors
    try:
        assert nocopy.capabilities().fetch_atol["int8"] == atol
        got = nocopy.fetch("c", [p.id for p in passages], strict=True)
        errors = [np.abs(g.tokens - p.tokens).max() for g, p in zip(got, passages)]
        assert max(errors) <= 0.01 and max(errors) > 0  # lossy codes, close for unit-norm tokens
        rng = np.random.default_rng(5)
        for _ in range(3):  # the engine's MaxSim on its codes: close to numpy's on the written vectors
            q = unit_vectors(rng, 8)
            hits = nocopy.candidates("c", q.mean(axis=0), tokens=q, limit=20, prefetch=20)
            by_id = {p.id: p for p in passages}
            assert {h.id for h in hits} == set(by_id)
            assert all(abs(h.score - maxsim(q, by_id[h.id].tokens)) <= 8 * 4e-3 for h in hits)
    finally:
        nocopy.close()


def test_a_stale_int8_row_gives_way_to_the_engines_codes(tmp_path):
    repo, d = _collection(tmp_path, "int8")
    passages = make_passages(6, seed=2)
    repo.upsert("c", passages)
    try:
        _edit_index(d, ("UPDATE tokens SET version = version + 1 WHERE id = ?", (passages[0].id,)))
        got, _ = _read(repo, passages)
        assert np.abs(got[0] - passages[0].tokens).max() <= qdrant_edge._TURBO8_ATOL
        for g, p in zip(got[1:], passages[1:]):
            _assert_copy_of("int8", g, p.tokens)
    finally:
        repo.close()


def _old_int8_collection(tmp_path, monkeypatch, passages):
    """An int8 collection as written before the int8 token copy: a shard with float32
    originals and int8 scalar quantization, a float32 copy, no ``dtype`` in its meta."""
    import qdrant_edge as qe

    from agrame_vdb import token_rows
    from agrame_vdb.repositories import _qdrant_common as qc

    with monkeypatch.context() as m:
        m.setitem(token_rows.STORAGE_CODES, "int8", "f4")
        m.setattr(qdrant_edge, "_TOKEN_DATATYPES", {"float16": qe.VectorStorageDatatype.Float16})
        real_params = qe.EdgeVectorParams

        def old_params(*args, **kwargs):  # the old int8 config: float32 originals, quantised
            if kwargs.get("multivector_config") is not None:
                kwargs["quantization_config"] = qe.ScalarQuantizationConfig(
                    type=qe.ScalarType.Int8, quantile=qc.SCALAR_QUANTILE, always_ram=True
                )
            return real_params(*args, **kwargs)

        m.setattr(qe, "EdgeVectorParams", old_params)
        repo, d = _collection(tmp_path, "int8")
        repo.upsert("c", passages)
        repo.close()
    _edit_index(d, "DELETE FROM meta WHERE key = 'dtype'")
    return d


def test_an_old_int8_collection_is_read_exactly_then_moved_to_int8_rows_by_optimize(tmp_path, monkeypatch):
    passages = make_passages(12, seed=6)
    d = _old_int8_collection(tmp_path, monkeypatch, passages)
    assert "quantization_config" in json.loads((d / "shard" / "edge_config.json").read_text())["vectors"]["tokens"]
    repo, spy = _open_spied(d)
    try:
        store = repo._token_stores["c"]
        assert store.code == "f4"
        got, _ = _read(repo, passages)
        for g, p in zip(got, passages):
            np.testing.assert_array_equal(g, p.tokens)  # the old float32 rows, as they were
        more = make_passages(16, seed=7)[12:]  # written before optimize: still float32 rows
        repo.upsert("c", more)
        assert store.code == "f4"
        every = passages + more
        old_file = _data_file(d)
        repo.optimize("c")
        assert store.code == "i8" and not old_file.exists()
        assert store.stats()["live_bytes"] == sum(p.n_tokens for p in every) * (DIM + 4)
        spy.vector_requests.clear()
        got, _ = _read(repo, every)
        assert spy.vector_requests == [False] and repo.diagnostics == {"token_copy_fallbacks": 0}
        for g, p in zip(got, every):
            _assert_copy_of("int8", g, p.tokens)
        # the engine kept its float32 originals: a stale row reads them exactly
        _edit_index(d, ("UPDATE tokens SET version = version + 1 WHERE id = ?", (every[0].id,)))
        got, _ = _read(repo, every[:1])
        np.testing.assert_array_equal(got[0], every[0].tokens)
    finally:
        repo._shards["c"] = spy._shard
        repo.close()
    repo, spy = _open_spied(d)
    try:  # reopened: int8 rows, their checksums hold
        assert repo._token_stores["c"].code == "i8"
        got, _ = _read(repo, every[1:])
        assert spy.vector_requests == [False] and repo.diagnostics == {"token_copy_fallbacks": 0}
        for g, p in zip(got, every[1:]):
            _assert_copy_of("int8", g, p.tokens)
    finally:
        repo._shards["c"] = spy._shard
        repo.close()


def test_old_int8_rows_without_checksums_are_moved_then_sealed(tmp_path, monkeypatch):
    passages = make_passages(10, seed=8)
    d = _old_int8_collection(tmp_path, monkeypatch, passages)
    _edit_index(d, "ALTER TABLE tokens DROP COLUMN checksum")  # older still: no checksum column
    pos, n, _ = _row(d, passages[1].id)
    with _data_file(d).open("r+b") as out:  # damaged before it had a checksum
        out.seek(pos)
        out.write(b"\x00" * n * DIM * 4)
    repo, spy = _open_spied(d)
    try:
        store = repo._token_stores["c"]
        assert store.stats()["unchecked_rows"] == len(passages) and store.code == "f4"
        repo._shards["c"] = spy._shard
        repo.optimize("c")
        stats = store.stats()
        assert store.code == "i8" and stats["unchecked_rows"] == 0
        assert store.ids() == {p.id for p in passages} - {passages[1].id}  # unequal to the engine's: dropped
        repo._shards["c"] = spy
        spy.vector_requests.clear()
        got, _ = _read(repo, passages)
        assert spy.vector_requests == [False, ["tokens"]]
        np.testing.assert_array_equal(got[1], passages[1].tokens)  # from the engine's originals
        for g, p in zip(got[2:], passages[2:]):
            _assert_copy_of("int8", g, p.tokens)
    finally:
        repo._shards["c"] = spy._shard
        repo.close()


def test_a_move_to_int8_rows_interrupted_before_its_commit_leaves_the_float32_rows(tmp_path, monkeypatch):
    passages = make_passages(8, seed=9)
    d = _old_int8_collection(tmp_path, monkeypatch, passages)
    repo = connect(f"qdrant-edge://{d.parent}")
    try:
        repo.open_collection("c")
        store = repo._token_stores["c"]
        old_file = _data_file(d)

        def crash(*args):
            raise KeyboardInterrupt  # as a crash between writing the new file and the commit

        monkeypatch.setattr(store, "_set_code", crash)
        with pytest.raises(KeyboardInterrupt):
            repo.optimize("c")
        monkeypatch.undo()
        assert store.code == "f4" and old_file.exists() and list(d.glob("tokens.sqlite.*.bin")) == [old_file]
        got, _ = _read(repo, passages)
        for g, p in zip(got, passages):
            np.testing.assert_array_equal(g, p.tokens)
        repo.optimize("c")
        assert store.code == "i8"
        got, _ = _read(repo, passages)
        for g, p in zip(got, passages):
            _assert_copy_of("int8", g, p.tokens)
    finally:
        repo.close()


def test_damaged_or_cut_int8_rows_are_read_from_the_engine(tmp_path):
    repo, d = _collection(tmp_path, "int8")
    passages = make_passages(8, seed=10)
    repo.upsert("c", passages)
    repo.close()
    pos, n, _ = _row(d, passages[0].id)
    with _data_file(d).open("r+b") as out:
        out.seek(pos + 3)  # a bit of the first token's scale
        out.write(bytes([out.read(1)[0] ^ 0x10]))
    last = max(passages, key=lambda p: _row(d, p.id)[0])
    f = _data_file(d)
    with f.open("r+b") as out:
        out.truncate(f.stat().st_size - 1)  # the last passage's bytes cut short
    repo, spy = _open_spied(d)
    try:
        store = repo._token_stores["c"]
        assert last.id not in store.ids()
        got, _ = _read(repo, passages)
        assert spy.vector_requests == [False, ["tokens"]]
        assert repo.diagnostics == {"token_copy_fallbacks": 1}
        for g, p in zip(got, passages):
            if p.id in (passages[0].id, last.id):  # the engine's Turbo8 codes
                assert np.abs(g - p.tokens).max() <= qdrant_edge._TURBO8_ATOL
            else:
                _assert_copy_of("int8", g, p.tokens)
    finally:
        repo._shards["c"] = spy._shard
        repo.close()


def test_a_store_with_an_unknown_row_form_is_set_aside(tmp_path):
    repo, d = _collection(tmp_path, "int8")
    passages = make_passages(4, seed=11)
    repo.upsert("c", passages)
    repo.close()
    _edit_index(d, "UPDATE meta SET value = 'u4' WHERE key = 'dtype'")
    repo = connect(f"qdrant-edge://{d.parent}")
    try:
        with pytest.warns(UserWarning, match="unreadable"):
            repo.open_collection("c")
        assert repo._token_stores["c"].ids() == set() and repo._token_stores["c"].code == "i8"
        got, _ = _read(repo, passages)
        assert all(np.abs(g - p.tokens).max() <= qdrant_edge._TURBO8_ATOL for g, p in zip(got, passages))
    finally:
        repo.close()
