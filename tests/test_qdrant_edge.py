"""Qdrant Edge specifics: the token side store is a cache the engine can always overrule."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from agrame_vdb import CollectionSchema, connect

from .conformance._data import DIM, make_passages, unit_vectors


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


def _edit_index(d, *statements):
    """Run SQL statements (text, or (text, parameters)) on a collection's token-copy index
    and commit: how these tests damage or age a store."""
    con = sqlite3.connect(d / "tokens.sqlite")
    try:
        for statement in statements:
            con.execute(*((statement,) if isinstance(statement, str) else statement))
        con.commit()
    finally:
        con.close()


def test_fetch_reads_the_side_store_not_engine_vectors(edge):
    repo, passages, spy, _ = edge
    _check(repo, passages)
    assert spy.vector_requests == [False]


def test_stale_rows_fall_back_to_engine_vectors(edge):
    repo, passages, spy, d = edge
    _edit_index(d, "UPDATE tokens SET version = version + 1 WHERE rowid % 2 = 0", "DELETE FROM tokens WHERE rowid = 3")
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
    _edit_index(d, "UPDATE tokens SET version = version + 1, units = x'' WHERE rowid % 2 = 0",
                "DELETE FROM tokens WHERE rowid = 3")
    after = _check_batch(repo, passages)
    assert after.versions == before.versions  # the engine's stamps, whichever copy was read
    assert spy.vector_requests[-1] == ["tokens"]  # the stale ones came from the engine


def test_rows_from_before_the_units_column_take_the_payload_units_until_optimize(edge):
    repo, passages, spy, d = edge
    repo.close()  # an old store: the units column dropped (and the later checksum column)
    _edit_index(d, "ALTER TABLE tokens DROP COLUMN units", "ALTER TABLE tokens DROP COLUMN checksum")
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


# ----- the side store's data file: crashes, damage, compaction, old stores


def _data_file(d):
    (f,) = d.glob("tokens.sqlite.*.bin")
    return f


def _open_spied(d):
    """The store of collection folder ``d`` opened, with a spy on the collection's shard."""
    repo = connect(f"qdrant-edge://{d.parent}")
    repo.open_collection("c")
    spy = _Spy(repo._shards["c"])
    repo._shards["c"] = spy
    return repo, spy


def _reopen(repo, d):
    repo._shards["c"] = getattr(repo._shards["c"], "_shard", repo._shards["c"])
    repo.close()
    return _open_spied(d)


def _check_after_reopening(repo, d, passages):
    """Closed and opened again, the store reads ``passages`` from the side store alone."""
    repo, spy = _reopen(repo, d)
    try:
        _check_batch(repo, passages)
        assert spy.vector_requests == [False]
    finally:
        repo.close()


def test_bytes_appended_by_a_crashed_write_are_cut_off_at_open(edge):
    repo, passages, spy, d = edge
    f = _data_file(d)
    size = f.stat().st_size
    with f.open("ab") as out:  # a write that never committed its rows
        out.write(b"\x7f" * 4096)
    repo, spy = _reopen(repo, d)
    try:
        assert f.stat().st_size == size
        _check_batch(repo, passages)
        assert spy.vector_requests == [False]  # every row still good
        fresh = make_passages(3, seed=9)  # the same ids as passages[:3], other vectors
        repo.upsert("c", fresh)
        _check_batch(repo, fresh + passages[3:])
    finally:
        repo.close()


def test_a_truncated_data_file_drops_the_rows_past_its_end(edge):
    repo, passages, spy, d = edge
    f = _data_file(d)
    with f.open("r+b") as out:
        out.truncate(f.stat().st_size // 2)
    repo, spy = _reopen(repo, d)
    try:
        store = repo._token_stores["c"]
        assert 0 < len(store.ids()) < len(passages)
        _check_batch(repo, passages)  # the rest from the engine
        assert spy.vector_requests == [False, ["tokens"]]
        # new bytes land where the dropped rows pointed: no old row may read them
        fresh = make_passages(6, seed=11)  # the same ids as passages[:6], other vectors
        repo.upsert("c", fresh)
        _check_batch(repo, fresh + passages[6:])
        _check(repo, fresh + passages[6:])
    finally:
        repo.close()


def test_a_lost_data_file_leaves_the_engine_to_answer(edge):
    repo, passages, spy, d = edge
    repo, spy = _reopen(repo, d)
    repo.close()
    _data_file(d).unlink()
    repo = connect(f"qdrant-edge://{d.parent}")
    try:
        repo.open_collection("c")
        assert repo._token_stores["c"].ids() == set()
        _check_batch(repo, passages)
        repo.upsert("c", passages[:4])
        assert len(repo._token_stores["c"].ids()) == 4
        _check_batch(repo, passages)
    finally:
        repo.close()


def test_optimize_compacts_the_data_file_once_a_quarter_is_dead(edge):
    repo, passages, spy, d = edge
    store = repo._token_stores["c"]
    assert store.compact() is False  # nothing dead yet
    rng = np.random.default_rng(5)
    current = list(passages)
    for _ in range(3):
        current = [_new_tokens(p, rng) for p in current[:8]] + current[8:]
        repo.upsert("c", current[:8])
    repo.delete("c", [current[-1].id])
    current = current[:-1]
    before = store.stats()
    assert before["dead_bytes"] > before["live_bytes"]
    old = _data_file(d)
    repo.optimize("c")
    after = store.stats()
    assert after["dead_bytes"] == 0 and after["live_bytes"] == before["live_bytes"]
    assert not old.exists() and _data_file(d).stat().st_size == after["live_bytes"]
    _check_batch(repo, current)
    assert spy.vector_requests[-1] is False
    _check_after_reopening(repo, d, current)


def test_a_data_file_left_by_an_interrupted_compaction_is_removed_at_open(edge):
    repo, passages, spy, d = edge
    stray = d / "tokens.sqlite.deadbeef.bin"
    stray.write_bytes(b"\x00" * 1024)
    _check_after_reopening(repo, d, passages)
    assert not stray.exists()


def test_a_store_from_before_the_data_file_is_read_then_moved_by_optimize(edge):
    import json

    repo, passages, spy, d = edge
    stamps = {str(r.id): r.payload["tokens_version"] for r in spy.retrieve([p.id for p in passages], ["tokens_version"], False)}
    repo._shards["c"] = spy._shard
    repo.close()
    for f in d.glob("tokens.sqlite*"):
        f.unlink()
    con = sqlite3.connect(d / "tokens.sqlite")  # the earlier layout: vectors in a blob, units as JSON
    con.execute("CREATE TABLE tokens (id TEXT PRIMARY KEY, version INTEGER NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL, units TEXT)")
    con.executemany(
        "INSERT INTO tokens VALUES (?, ?, ?, ?, ?)",
        [
            (p.id, stamps[p.id], p.n_tokens, p.tokens.astype("<f4").tobytes()[: None if i else -4],  # the first damaged
             json.dumps([[u.kind, u.index, [list(s) for s in u.char_spans], [list(r) for r in u.token_ranges]] for u in p.units]))
            for i, p in enumerate(passages)
        ],
    )
    con.commit()
    con.close()
    repo, spy = _open_spied(d)
    try:
        store = repo._token_stores["c"]
        assert store.stats()["old_rows"] == len(passages)
        _check_batch(repo, passages)
        assert spy.vector_requests == [False, ["tokens"]]  # the damaged row: from the engine
        repo.optimize("c")
        assert store.stats()["old_rows"] == 0 and store.ids() == {p.id for p in passages[1:]}
        assert store.stats()["live_bytes"] == sum(p.tokens.nbytes for p in passages[1:])
        spy.vector_requests.clear()
        _check_batch(repo, passages)
        assert spy.vector_requests == [False, ["tokens"]]
    finally:
        repo._shards["c"] = spy._shard
        repo.close()


def test_unit_kinds_keep_their_numbers_across_writes_and_reopening(edge):
    from dataclasses import replace

    from agrame_vdb.units import Unit

    repo, passages, spy, d = edge
    extra = replace(
        make_passages(1, seed=4)[0],
        units=(Unit("claim", 0, ((0, 7),), ((0, 1),)), Unit("sentence", 0, ((0, 7),), ((0, 2),))),
    )
    repo.upsert("c", [extra])
    repo, spy = _reopen(repo, d)
    try:
        assert repo._token_stores["c"].kinds == ("proposition", "sentence", "claim")
        _check_batch(repo, [extra, *passages[1:]])
        assert spy.vector_requests == [False]
    finally:
        repo.close()


# ----- damaged bytes or units: checksums send the read to the engine


def _results(repo):
    """Every unit's (and passage's) search result for two queries: ids, scores, spans."""
    from agrame_vdb.planner import Planner

    rng = np.random.default_rng(7)
    planner = Planner(repo, "c", device="cpu", candidates=50)
    out = []
    for _ in range(2):
        q = rng.normal(size=(8, DIM)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        for g in ("passage", "sentence", "proposition"):
            for r in planner.search_vectors(q, granularity=g, k=50).results:
                out.append((g, r.passage_id, r.unit_kind, r.unit_index, r.score, r.passage_score, r.char_spans))
    return out


def _engine_results(d):
    """The reference: the same collection read with no token copy (the engine's own vectors)."""
    repo = connect(f"qdrant-edge://{d.parent}?token_copy=0")
    try:
        assert repo._token_stores == {}
        return _results(repo)
    finally:
        repo.close()


def _row(d, pid):
    con = sqlite3.connect(d / "tokens.sqlite")
    try:
        return con.execute("SELECT pos, n, units FROM tokens WHERE id = ?", (pid,)).fetchone()
    finally:
        con.close()


def _damage_bytes(d, pid, how):
    pos, n, _ = _row(d, pid)
    size = n * DIM * 4
    data = b"\x00" * size if how == "zeros" else np.random.default_rng(3).bytes(size)
    with _data_file(d).open("r+b") as out:  # under the open store's memory map
        out.seek(pos)
        out.write(data)


def _damage_units(d, pid, how):
    units = _row(d, pid)[2]
    # bytes 24..31: the first row's start (sentence 0's first character span)
    damaged = units[:-8] if how == "cut" else units[:24] + bytes([units[24] ^ 1]) + units[25:]
    _edit_index(d, ("UPDATE tokens SET units = ? WHERE id = ?", (damaged, pid)))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d, pid: _damage_bytes(d, pid, "zeros"),
        lambda d, pid: _damage_bytes(d, pid, "random"),
        lambda d, pid: _damage_units(d, pid, "bit"),
        lambda d, pid: _damage_units(d, pid, "cut"),
    ],
    ids=["zeroed-bytes", "random-bytes", "units-bit-flipped", "units-cut-short"],
)
def test_a_damaged_row_is_read_from_the_engine_and_counted_once(edge, damage, caplog):
    repo, passages, spy, d = edge
    repo._shards["c"] = spy._shard
    repo.close()
    reference = _engine_results(d)
    repo = connect(f"qdrant-edge://{d.parent}")
    try:
        assert _results(repo) == reference  # the token copy agrees with the engine
        damage(d, passages[0].id)
        with caplog.at_level("WARNING", logger="agrame_vdb"):
            assert _results(repo) == reference
            assert _results(repo) == reference
        assert repo.diagnostics == {"token_copy_fallbacks": 1}
        warned = [r for r in caplog.records if r.levelname == "WARNING" and "checksum" in r.getMessage()]
        assert len(warned) == 1 and passages[0].id in warned[0].getMessage()
        assert repo._token_stores["c"].ids() == {p.id for p in passages[1:]}  # the damaged row dropped
        _check_batch(repo, passages)
        repo.upsert("c", passages[:1])  # written again: read from the token copy again
        assert _results(repo) == reference and repo.diagnostics == {"token_copy_fallbacks": 1}
        assert passages[0].id in repo._token_stores["c"].ids()
    finally:
        repo.close()


def test_rows_from_before_the_checksum_column_are_read_then_sealed_by_optimize(edge):
    repo, passages, spy, d = edge
    repo._shards["c"] = spy._shard
    repo.close()
    reference = _engine_results(d)
    # an old store: no checksum column
    _edit_index(d, "ALTER TABLE tokens DROP COLUMN checksum", "DELETE FROM meta WHERE key = 'kinds_sum'")
    repo, spy = _open_spied(d)
    try:
        store = repo._token_stores["c"]
        assert store.stats()["unchecked_rows"] == len(passages)
        _check_batch(repo, passages)
        assert spy.vector_requests == [False]  # the old rows read, from the token copy
        repo._shards["c"] = spy._shard
        _damage_bytes(d, passages[1].id, "zeros")  # damaged before it has a checksum
        repo.optimize("c")
        # sealed where equal to the engine's vectors and units; the damaged one dropped
        assert store.stats()["unchecked_rows"] == 0
        assert store.ids() == {p.id for p in passages} - {passages[1].id}
        assert _results(repo) == reference
        _damage_bytes(d, passages[2].id, "random")  # a sealed row is checked
        assert _results(repo) == reference
        assert repo.diagnostics == {"token_copy_fallbacks": 1}
    finally:
        repo.close()
    repo = connect(f"qdrant-edge://{d.parent}")
    try:  # reopened: no longer an old store, every row must have a checksum
        assert _results(repo) == reference
        store = repo._token_stores["c"]
        _edit_index(d, ("UPDATE tokens SET checksum = NULL WHERE id = ?", (passages[3].id,)))
        assert _results(repo) == reference
        assert repo.diagnostics == {"token_copy_fallbacks": 1} and passages[3].id not in store.ids()
    finally:
        repo.close()


def test_damaged_unit_kind_names_set_the_token_copy_aside(edge):
    repo, passages, spy, d = edge
    repo._shards["c"] = spy._shard
    repo.close()
    reference = _engine_results(d)
    _edit_index(d, "UPDATE kinds SET name = 'sentencf' WHERE name = 'sentence'")
    repo = connect(f"qdrant-edge://{d.parent}")
    try:
        with pytest.warns(UserWarning, match="unreadable"):
            repo.open_collection("c")
        assert repo._token_stores["c"].ids() == set()
        assert _results(repo) == reference
    finally:
        repo.close()


def test_a_data_file_name_outside_the_store_is_never_opened(edge):
    repo, passages, spy, d = edge
    repo._shards["c"] = spy._shard
    repo.close()
    victim = d.parent / "unrelated.bin"
    victim.write_bytes(b"keep me" * 1000)
    _edit_index(d, "UPDATE meta SET value = '../unrelated.bin' WHERE key = 'data_file'")
    repo = connect(f"qdrant-edge://{d.parent}")
    try:
        with pytest.warns(UserWarning, match="unreadable"):
            repo.open_collection("c")
        assert victim.read_bytes() == b"keep me" * 1000
        _check_batch(repo, passages)
    finally:
        repo.close()


# ----- lexical and hybrid first stages


@pytest.fixture(params=["appendable", "indexed"])
def lexical_edge(request, tmp_path, monkeypatch):
    """A lexical collection of the conformance suite's passages, optimised; "indexed":
    with a tiny indexing threshold, so the passages sit in a non-appendable segment and
    a rewrite or delete leaves a deleted copy there until optimize() vacuums it."""
    from agrame_vdb.repositories import qdrant_edge
    from agrame_vdb.testing.lexical import SPEC, lexical_passages

    if request.param == "indexed":
        monkeypatch.setattr(qdrant_edge, "_LEXICAL_OPTIMIZERS", {**qdrant_edge._LEXICAL_OPTIMIZERS, "indexing_threshold": 1})
    repo = connect(f"qdrant-edge://{tmp_path}/store")
    repo.create_collection(CollectionSchema("c", DIM, indexed_fields={"lang": "keyword"}, lexical=SPEC))
    passages = lexical_passages()
    repo.upsert("c", passages)
    repo.optimize("c")
    if request.param == "indexed":
        assert repo._shards["c"].info().indexed_vectors_count > 0
    yield repo, passages, tmp_path / "store" / "c"
    repo.close()


def _rewritten(p, text):
    from agrame_vdb.records import StoredPassage

    return StoredPassage.create(p.doc_id, p.index, p.tokens, text=text, metadata=p.metadata)


def _assert_reference(repo, passages, queries=None):
    from agrame_vdb.testing.lexical import QUERIES, assert_ranking, bm25_reference

    for query in queries or QUERIES:
        assert_ranking(repo.lexical_candidates("c", query, limit=10), bm25_reference(query, passages), 10)


def test_only_a_lexical_collection_has_the_sparse_vector_and_the_vacuuming_optimizers(tmp_path):
    import json

    from agrame_vdb.testing.lexical import SPEC

    repo = connect(f"qdrant-edge://{tmp_path}")
    repo.create_collection(CollectionSchema("plain", DIM))
    repo.create_collection(CollectionSchema("lex", DIM, lexical=SPEC))
    plain = json.loads((tmp_path / "plain" / "shard" / "edge_config.json").read_text())
    lex = json.loads((tmp_path / "lex" / "shard" / "edge_config.json").read_text())
    repo.close()
    assert not plain.get("sparse_vectors") and "optimizers" not in plain
    assert lex["sparse_vectors"] == {"lexical": {"modifier": "idf"}}
    assert lex["optimizers"]["deleted_threshold"] == 0.0 and lex["optimizers"]["vacuum_min_vector_number"] == 0
    assert set(lex["vectors"]) == set(plain["vectors"])


def test_a_rewrite_to_a_text_without_words_drops_the_old_terms(lexical_edge):
    repo, passages, _ = lexical_edge
    old = passages[0]
    repo.upsert("c", [_rewritten(old, "— … —"), _rewritten(passages[1], "brca1 w1 w1")])
    now = [_rewritten(passages[1], "brca1 w1 w1")] + passages[2:]
    for query in {*old.text.split()[:5], "w1 w2", "brca1"}:
        assert old.id not in {c.id for c in repo.lexical_candidates("c", query, limit=100)}
    repo.optimize("c")
    _assert_reference(repo, now, [*old.text.split()[:5], "w1 w2", "brca1"])
    assert repo.fetch("c", [old.id], strict=True).passages[0].text == "— … —"


def test_deletes_and_rewrites_leave_exact_statistics_after_optimize_also_after_reopening(lexical_edge, tmp_path):
    repo, passages, d = lexical_edge
    repo.close()
    repo = connect(f"qdrant-edge://{d.parent}")  # the shard's own config, as persisted
    try:
        repo.delete("c", [p.id for p in passages[:5]])
        repo.upsert("c", [_rewritten(passages[5], "p53 p53 zürich")])
        repo.optimize("c")
        _assert_reference(repo, [_rewritten(passages[5], "p53 p53 zürich")] + passages[6:])
    finally:
        repo.close()


def test_lexical_and_hybrid_candidates_carry_the_write_versions(lexical_edge):
    repo, passages, _ = lexical_edge
    pooled = passages[3].pooled
    for got in (
        repo.lexical_candidates("c", "w1 w2", limit=10, with_versions=True),
        repo.hybrid_candidates("c", pooled, "w1 w2", limit=10, with_versions=True),
    ):
        batch = repo.fetch_tokens("c", [c.id for c in got])
        assert dict(zip(batch.ids, batch.versions)) == {c.id: c.version for c in got}
        assert all(c.version is not None for c in got)
    assert all(c.version is None for c in repo.lexical_candidates("c", "w1 w2", limit=10))


@pytest.mark.parametrize("rrf_k", (1, 60, 10_000))
def test_hybrid_is_one_engine_request_with_the_librarys_scores(lexical_edge, rrf_k):
    from agrame_vdb.filters import Eq
    from agrame_vdb.fusion import rrf

    repo, passages, _ = lexical_edge
    assert repo.capabilities().hybrid_in_engine
    shard = repo._shards["c"]
    queries = []

    class Counting:
        def query(self, req):
            queries.append(req)
            return shard.query(req)

        def __getattr__(self, name):
            return getattr(shard, name)

    pooled = unit_vectors(np.random.default_rng(4), 1)[0]
    for flt in (None, Eq("lang", "en")):
        dense = repo.candidates("c", pooled, limit=12, filter=flt)
        lexical = repo.lexical_candidates("c", "w1 w3 brca1", limit=7, filter=flt)
        fused = {c.id: c.score for c in rrf([dense, lexical], limit=100, k=rrf_k)}
        repo._shards["c"] = Counting()
        try:
            got = repo.hybrid_candidates(
                "c", pooled, "w1 w3 brca1", limit=9, dense_limit=12, lexical_limit=7, rrf_k=rrf_k, filter=flt
            )
        finally:
            repo._shards["c"] = shard
        assert len(queries) == 1
        queries.clear()
        assert len(got) == min(9, len(fused)) and all(c.stage == "hybrid" for c in got)
        for c in got:
            assert c.score == pytest.approx(fused[c.id], rel=1e-6)
        assert {i for i, s in fused.items() if s > got[-1].score * (1 + 1e-6)} <= {c.id for c in got}


def _allocated(path) -> int:
    import os

    return sum(os.stat(os.path.join(d, f)).st_blocks * 512 for d, _, files in os.walk(path) for f in files)


def test_writes_flush_the_wal_as_they_go(tmp_path, monkeypatch):
    """Edge keeps every update in its WAL until a flush: the repository flushes every
    ``WAL_FLUSH_BYTES`` of token vectors, so the WAL stays bounded, and nothing is lost."""
    from agrame_vdb.repositories import qdrant_edge
    from agrame_vdb.repository import StoredPassage

    monkeypatch.setattr(qdrant_edge, "WAL_FLUSH_BYTES", 4 << 20)
    dim, rng = 1024, np.random.default_rng(3)
    repo = connect(f"qdrant-edge://{tmp_path}/store")
    repo.create_collection(CollectionSchema("c", dim, dtype="int8"))
    written = 0
    try:
        for b in range(12):  # 12 x 10 MiB of float32 tokens, ~150 MiB in a WAL never flushed
            batch = [StoredPassage.create(f"d{b}", i, unit_vectors(rng, 256, dim)) for i in range(10)]
            repo.upsert("c", batch)
            written += sum(p.tokens.nbytes for p in batch)
        wal = _allocated(tmp_path / "store" / "c" / "shard" / "wal")
        # the engine's two 32 MiB WAL files at most, and what came since the last flush;
        # never flushed, the WAL holds ~1.25x the float32 bytes written (~150 MiB here)
        assert written == 120 * 2**20
        assert wal < 64 * 2**20 + 2 * (4 << 20)
    finally:
        repo.close()
    with connect(f"qdrant-edge://{tmp_path}/store") as again:
        assert again.count("c") == 120
        got = again.fetch_tokens("c", [batch[-1].id])
        np.testing.assert_allclose(got.tokens, batch[-1].tokens, atol=1 / 127)


def _bytes_read() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/io"), reason="needs Linux's /proc/self/io")
@pytest.mark.parametrize("limit, warmed", [(1 << 30, True), (1, False)])
def test_loading_a_shard_reads_its_payload_files_once_unless_they_are_too_big(tmp_path, monkeypatch, limit, warmed):
    from agrame_vdb.repositories import qdrant_edge

    monkeypatch.setattr(qdrant_edge, "PAYLOAD_WARM_BYTES", limit)
    with connect(f"qdrant-edge://{tmp_path}/store") as repo:
        repo.create_collection(CollectionSchema("c", DIM))
        repo.upsert("c", make_passages(40))
        repo.optimize("c")
    files = qdrant_edge._payload_files(tmp_path / "store" / "c" / "shard")
    size = sum(f.stat().st_size for f in files)
    assert files and size > 0
    before = _bytes_read()
    with connect(f"qdrant-edge://{tmp_path}/store") as repo:
        repo.open_collection("c")
        read = _bytes_read() - before
        assert repo.count("c") == 40
    # read(2) counts what the process read through system calls (Edge maps its files)
    assert (read >= size) == warmed


class _CountingShard:
    """An Edge shard that counts its ``optimize()`` calls."""

    def __init__(self, shard):
        self.shard, self.optimized = shard, 0

    def optimize(self):
        self.optimized += 1
        return self.shard.optimize()

    def __getattr__(self, name):
        return getattr(self.shard, name)


@pytest.mark.parametrize("dtype, value_bytes", [("float32", 4), ("float16", 2), ("int8", 1), ("binary", 1)])
def test_writes_optimize_the_shard_every_optimize_bytes_of_engine_tokens(tmp_path, monkeypatch, dtype, value_bytes):
    """Edge never optimizes by itself: the repository runs the engine's optimize every
    ``OPTIMIZE_BYTES`` of token bytes in the engine's own form (4, 2 or 1 a value), so
    the rebuild at a job's end handles one bounded segment; nothing is lost."""
    from agrame_vdb.repositories import qdrant_edge
    from agrame_vdb.repository import StoredPassage

    monkeypatch.setattr(qdrant_edge, "OPTIMIZE_BYTES", 2 << 20)
    dim, rng = 256, np.random.default_rng(5)
    repo = connect(f"qdrant-edge://{tmp_path}/store")
    repo.create_collection(CollectionSchema("c", dim, dtype=dtype))
    counting = repo._shards["c"] = _CountingShard(repo._shards["c"])
    written, calls = [], []
    try:
        for b in range(8):  # 8 x 2**18 token values: 8, 4 or 2 MiB in the engine's form
            batch = [StoredPassage.create(f"d{b}", i, unit_vectors(rng, 256, dim)) for i in range(4)]
            repo.upsert("c", batch)
            written += batch
            calls.append(counting.optimized)
        step = (2 << 20) // (value_bytes << 18)  # batches between two optimizations
        assert calls == [(b + 1) // step for b in range(8)]
        repo._shards["c"] = counting.shard
        repo.optimize("c")  # the job's end: counted afresh from here
        counting = repo._shards["c"] = _CountingShard(counting.shard)
        repo.upsert("c", written[: 4 * (step - 1)] if step > 1 else [])
        assert counting.optimized == 0
    finally:
        repo._shards["c"] = getattr(repo._shards["c"], "shard", repo._shards["c"])
        repo.close()
    atol = {"float32": 0.0, "float16": 1e-3, "int8": 1 / 127, "binary": 1 / 127}[dtype]
    with connect(f"qdrant-edge://{tmp_path}/store") as again:
        assert again.count("c") == 32
        got = again.fetch_tokens("c", [p.id for p in written])
        assert not got.missing
        for p in written:
            np.testing.assert_allclose(got.tokens_of(got.ids.index(p.id)), p.tokens, atol=atol)


def test_large_writes_leave_optimized_segments_behind_them(tmp_path, monkeypatch):
    """The optimizations during writes turn the appendable segment into optimized ones
    as the job goes (Edge merges small ones, up to its segment size limit); queries and
    fetches give what a store optimized once at the end gives."""
    from agrame_vdb.repositories import qdrant_edge
    from agrame_vdb.repository import StoredPassage

    def build(where, every):
        monkeypatch.setattr(qdrant_edge, "OPTIMIZE_BYTES", every)
        rng = np.random.default_rng(6)
        repo = connect(f"qdrant-edge://{where}")
        repo.create_collection(CollectionSchema("c", 128))
        written = []
        for b in range(12):  # 12 x 4 MiB of float32 tokens
            batch = [StoredPassage.create(f"d{b}", i, unit_vectors(rng, 256, 128)) for i in range(32)]
            repo.upsert("c", batch)
            written += batch
        before = repo._shards["c"].info().indexed_vectors_count
        repo.optimize("c")
        return repo, before, written

    once, never, written = build(tmp_path / "once", 1 << 40)
    often, indexed, _ = build(tmp_path / "often", 12 << 20)
    try:
        # optimized segments (with the pooled index) were there before the job's optimize()
        assert never == 0 and indexed > 0
        ids = [p.id for p in written[::7]]
        a, b = once.fetch_tokens("c", ids), often.fetch_tokens("c", ids)
        for p in written[::7]:
            np.testing.assert_array_equal(a.tokens_of(a.ids.index(p.id)), p.tokens)
            np.testing.assert_array_equal(b.tokens_of(b.ids.index(p.id)), p.tokens)
        rng = np.random.default_rng(7)
        for _ in range(3):
            q = unit_vectors(rng, 8, 128)
            a = once.candidates("c", q.mean(0), tokens=q, limit=10, prefetch=400)
            b = often.candidates("c", q.mean(0), tokens=q, limit=10, prefetch=400)
            assert [c.id for c in a] == [c.id for c in b]
            np.testing.assert_allclose([c.score for c in a], [c.score for c in b], rtol=1e-6)
    finally:
        once.close()
        often.close()


@pytest.mark.parametrize("token_copy, on_disk, cold", [(True, False, True), (True, True, True), (False, False, False), (False, True, True)])
def test_the_engine_copy_is_left_cold_where_a_token_copy_serves_the_queries(tmp_path, token_copy, on_disk, cold):
    """With a token copy the planner never reads the engine's token vectors, so a new
    collection keeps them mapped and not read in (``Memory.Cold``), as ``on_disk`` asks;
    without one they are the scoring path and stay cached unless ``on_disk``."""
    import json

    with connect(f"qdrant-edge://{tmp_path}/store?token_copy={str(token_copy).lower()}") as repo:
        repo.create_collection(CollectionSchema("c", DIM, on_disk=on_disk))
        passages = make_passages(6)
        repo.upsert("c", passages)
        got = repo.fetch_tokens("c", [p.id for p in passages])
        for p in passages:
            np.testing.assert_array_equal(got.tokens_of(got.ids.index(p.id)), p.tokens)
    config = json.loads((tmp_path / "store" / "c" / "shard" / "edge_config.json").read_text())
    assert (config["vectors"]["tokens"].get("memory") == "cold") == cold
    assert "memory" not in config["vectors"]["pooled"]  # the first stage's vectors stay in RAM
