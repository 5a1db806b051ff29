"""The core of the conformance suite: collections, writes, filters, candidates,
fetch, persistence and concurrency.

References are independent of the engines: Python predicates for filters, numpy
cosine for the first stage, numpy MaxSim for the rerank, the written arrays for
fetch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from ..errors import (
    CollectionNotFoundError,
    ConcurrentAccessError,
    InvalidIdError,
    MissingPassagesError,
    SchemaMismatchError,
    UnsupportedOperationError,
)
from ..repository import (
    SCHEMA_VERSION,
    And,
    Candidate,
    Capabilities,
    CollectionSchema,
    Eq,
    Filter,
    In,
    Not,
    Or,
    Range,
    Repository,
    StoredPassage,
    TokenBatch,
)
from .data import DIM, cosine_order, make_passages, maxsim, unit_vectors
from .engines import N, EngineFixtures


def _by_id(passages):
    return {p.id: p for p in passages}


FILTER_CASES = [
    ("eq-str", Eq("lang", "en"), lambda p, m: m["lang"] == "en"),
    ("eq-int", Eq("year", 2003), lambda p, m: m["year"] == 2003),
    ("eq-bool", Eq("published", True), lambda p, m: m["published"] is True),
    ("eq-doc_id", Eq("doc_id", "doc-2"), lambda p, m: p.doc_id == "doc-2"),
    ("eq-nested", Eq("source.name", "wiki"), lambda p, m: m["source"]["name"] == "wiki"),
    ("eq-list-any", Eq("tags", "b"), lambda p, m: "b" in m["tags"]),
    ("eq-missing", Eq("nothing", "x"), lambda p, m: False),
    ("eq-typed", Eq("year", "2003"), lambda p, m: False),
    ("in-str", In("lang", ("en", "de")), lambda p, m: m["lang"] in ("en", "de")),
    ("in-int", In("year", (2001, 2005, 2011)), lambda p, m: m["year"] in (2001, 2005, 2011)),
    ("in-list", In("tags", ("a", "z")), lambda p, m: "a" in m["tags"]),
    ("range-int", Range("year", gte=2003, lt=2007), lambda p, m: 2003 <= m["year"] < 2007),
    ("range-float", Range("score", gt=0.25, lte=0.75), lambda p, m: 0.25 < m["score"] <= 0.75),
    ("range-index", Range("passage_index", gte=3), lambda p, m: p.index >= 3),
    ("range-optional", Range("optional", lte=12), lambda p, m: "optional" in m and m["optional"] <= 12),
    ("not", Not(Eq("lang", "en")), lambda p, m: m["lang"] != "en"),
    ("not-missing", Not(Range("optional", gte=0)), lambda p, m: "optional" not in m),
    ("and", And(Eq("lang", "en"), Range("year", gte=2005)), lambda p, m: m["lang"] == "en" and m["year"] >= 2005),
    ("or", Or(Eq("lang", "de"), Eq("published", True)), lambda p, m: m["lang"] == "de" or m["published"]),
    (
        "nested-logic",
        And(Or(Eq("lang", "fr"), In("tags", ("c",))), Not(Range("year", lt=2004))),
        lambda p, m: (m["lang"] == "fr" or "c" in m["tags"]) and not m["year"] < 2004,
    ),
    ("operators", (Eq("lang", "en") | Eq("lang", "fr")) & ~Eq("published", True), lambda p, m: m["lang"] in ("en", "fr") and not m["published"]),
    (
        "from-json",
        Filter.from_json({"lang": {"$in": ["en", "fr"]}, "year": {"$gte": 2002, "$lt": 2010}, "$not": {"source.rank": 0}}),
        lambda p, m: m["lang"] in ("en", "fr") and 2002 <= m["year"] < 2010 and m["source"]["rank"] != 0,
    ),
    (
        "from-json-ne-nin-or",
        Filter.from_json({"$or": [{"lang": {"$ne": "en"}}, {"year": {"$nin": [2000, 2001, 2002]}}]}),
        lambda p, m: m["lang"] != "en" or m["year"] not in (2000, 2001, 2002),
    ),
]


_SECOND_OPENER = textwrap.dedent(
    """
    import sys
    from agrame_vdb import connect
    try:
        repo = connect(sys.argv[1])
        repo.open_collection(sys.argv[2])
        repo.count(sys.argv[2])
    except Exception as exc:
        print(type(exc).__name__)
        print(exc)
    else:
        print("opened")
    """
)


class RepositoryTests(EngineFixtures):
    """Collections, writes, filters, candidates, fetch, persistence, concurrency."""

    # --------------------------------------------------------------------------- collections

    def test_is_a_repository(self, readonly):
        store, repo, passages = readonly
        assert isinstance(repo, Repository)
        caps = repo.capabilities()
        assert isinstance(caps, Capabilities)
        assert "float32" in caps.dtypes
        assert {"eq", "in", "range", "and", "or", "not"} <= caps.filter_ops

    def test_create_open_and_schema_mismatch(self, store, repo):
        name = store.collection
        schema = CollectionSchema(name, DIM)
        assert repo.create_collection(schema) == schema
        assert repo.create_collection(schema) == schema  # opening again is fine
        assert repo.open_collection(name) == schema
        assert name in repo.list_collections()
        for bad in (
            CollectionSchema(name, DIM + 1),
            CollectionSchema(name, DIM, dtype="float16"),
            CollectionSchema(name, DIM, schema_version=SCHEMA_VERSION + 1),
        ):
            with pytest.raises(SchemaMismatchError):
                repo.create_collection(bad)
        with pytest.raises(CollectionNotFoundError):
            repo.open_collection(name + "_missing")
        with pytest.raises(CollectionNotFoundError):
            repo.count(name + "_missing")

    def test_indexed_fields_are_added(self, store, repo):
        name = store.collection
        repo.create_collection(CollectionSchema(name, DIM, indexed_fields={"lang": "keyword"}))
        merged = repo.create_collection(CollectionSchema(name, DIM, indexed_fields={"year": "integer"}))
        assert dict(merged.indexed_fields) == {"lang": "keyword", "year": "integer"}
        with pytest.raises(SchemaMismatchError):
            repo.create_collection(CollectionSchema(name, DIM, indexed_fields={"year": "keyword"}))

    def test_drop_collection(self, store, repo):
        name = store.collection
        repo.create_collection(CollectionSchema(name, DIM))
        repo.upsert(name, make_passages(3))
        assert repo.drop_collection(name) is True
        assert name not in repo.list_collections()
        assert repo.drop_collection(name) is False
        with pytest.raises(CollectionNotFoundError):
            repo.count(name)
        repo.create_collection(CollectionSchema(name, DIM))
        assert repo.count(name) == 0

    # --------------------------------------------------------------------------- writes

    def test_upsert_overwrites_never_duplicates(self, store, loaded):
        repo, passages = loaded
        name = store.collection
        assert repo.count(name) == N
        rng = np.random.default_rng(99)
        changed = [
            replace(p, tokens=unit_vectors(rng, 4), pooled=unit_vectors(rng, 1)[0], units=(), text=f"new {i}", metadata={"lang": "xx"})
            for i, p in enumerate(passages[:5])
        ]
        repo.upsert(name, changed)
        assert repo.count(name) == N
        got = repo.fetch(name, [p.id for p in changed], strict=True)
        for old, new in zip(changed, got):
            assert new.text == old.text and new.units == () and dict(new.metadata) == {"lang": "xx"}
            np.testing.assert_array_equal(new.tokens, old.tokens)
        assert repo.count(name, Eq("lang", "xx")) == 5

    def test_delete_by_id(self, store, loaded):
        repo, passages = loaded
        name = store.collection
        gone = [passages[0].id, passages[7].id]
        repo.delete(name, gone + ["00000000-0000-4000-8000-000000000000"])  # unknown ids are ignored
        assert repo.count(name) == N - 2
        result = repo.fetch(name, gone + [passages[1].id])
        assert result.ids == [passages[1].id] and set(result.missing) == set(gone)
        repo.delete(name, [])
        assert repo.count(name) == N - 2

    def test_delete_by_doc_id_and_where(self, store, loaded):
        repo, passages = loaded
        name = store.collection
        n_doc1 = sum(p.doc_id == "doc-1" for p in passages)
        assert repo.delete_by_doc_id(name, "doc-1") == n_doc1
        assert repo.count(name, Eq("doc_id", "doc-1")) == 0
        assert repo.count(name) == N - n_doc1
        assert repo.delete_by_doc_id(name, ["doc-2", "doc-3", "nope"]) == sum(p.doc_id in ("doc-2", "doc-3") for p in passages)
        # stale passages of a shortened document: index >= 2 of doc-0
        stale = [p for p in passages if p.doc_id == "doc-0" and p.index >= 2]
        assert repo.delete_where(name, And(Eq("doc_id", "doc-0"), Range("passage_index", gte=2))) == len(stale)
        left = set(repo.iter_ids(name))
        expected = {p.id for p in passages if p.doc_id not in ("doc-1", "doc-2", "doc-3") and p not in stale}
        assert left == expected

    # --------------------------------------------------------------------------- filters

    @pytest.mark.parametrize("flt,predicate", [pytest.param(f, pr, id=i) for i, f, pr in FILTER_CASES])
    def test_filters(self, readonly, flt, predicate):
        store, repo, passages = readonly
        name = store.collection
        expected = {p.id for p in passages if predicate(p, p.metadata)}
        assert repo.count(name, flt) == len(expected)
        assert set(repo.iter_ids(name, filter=flt, page=7)) == expected
        q = passages[0].pooled
        got = {c.id for c in repo.candidates(name, q, limit=N, filter=flt)}
        assert got == expected

    def test_list_ids_pages(self, readonly):
        store, repo, passages = readonly
        name = store.collection
        seen: list[str] = []
        offset = None
        pages = 0
        while True:
            page = repo.list_ids(name, limit=8, offset=offset)
            assert len(page.ids) <= 8
            seen.extend(page.ids)
            pages += 1
            if page.next_offset is None:
                break
            offset = page.next_offset
        assert pages == 4
        assert seen == sorted(p.id for p in passages)

    # --------------------------------------------------------------------------- candidates

    def test_first_stage_matches_exact_cosine(self, readonly):
        store, repo, passages = readonly
        name = store.collection
        rng = np.random.default_rng(5)
        for q in unit_vectors(rng, 3):
            ref = cosine_order(q, passages)
            got = repo.candidates(name, q, limit=10)
            assert all(isinstance(c, Candidate) and c.stage == "pooled" for c in got)
            assert [c.id for c in got] == [i for i, _ in ref[:10]]
            np.testing.assert_allclose([c.score for c in got], [s for _, s in ref[:10]], atol=1e-5)
        # with a filter, the order is the reference's order restricted to the matches
        en = {p.id for p in passages if p.metadata["lang"] == "en"}
        got = repo.candidates(name, q, limit=5, filter=Eq("lang", "en"))
        assert [c.id for c in got] == [i for i, _ in ref if i in en][:5]

    def test_maxsim_rerank_matches_brute_force(self, readonly):
        store, repo, passages = readonly
        name = store.collection
        if not repo.capabilities().maxsim_rerank:
            pytest.skip(f"{repo.capabilities().engine} has no engine-side MaxSim")
        rng = np.random.default_rng(6)
        qt = unit_vectors(rng, 5)
        q = qt.mean(axis=0)
        by_id = _by_id(passages)
        prefetched = [i for i, _ in cosine_order(q, passages)[:12]]
        ref = sorted(((maxsim(qt, by_id[i].tokens), i) for i in prefetched), key=lambda t: -t[0])
        got = repo.candidates(name, q, tokens=qt, limit=6, prefetch=12)
        assert all(c.stage == "maxsim" for c in got)
        assert [c.id for c in got] == [i for _, i in ref[:6]]
        np.testing.assert_allclose([c.score for c in got], [s for s, _ in ref[:6]], rtol=1e-5, atol=1e-5)
        # a filter applies before the prefetch
        fr = {p.id for p in passages if p.metadata["lang"] == "fr"}
        got = repo.candidates(name, q, tokens=qt, limit=N, prefetch=N, filter=Eq("lang", "fr"))
        assert {c.id for c in got} == fr

    def test_candidates_on_empty_collection(self, store, repo):
        repo.create_collection(CollectionSchema(store.collection, DIM))
        assert repo.candidates(store.collection, np.ones(DIM, np.float32), limit=3) == []
        assert repo.count(store.collection) == 0

    # --------------------------------------------------------------------------- fetch

    def test_fetch_round_trip(self, readonly):
        store, repo, passages = readonly
        name = store.collection
        want = [passages[4], passages[0], passages[4], passages[17]]
        result = repo.fetch(name, [p.id for p in want])
        assert result.ids == [p.id for p in want]  # order asked, duplicates kept
        assert result.missing == ()
        for written, got in zip(want, result):
            assert isinstance(got, StoredPassage)
            assert (got.id, got.doc_id, got.index, got.text) == (written.id, written.doc_id, written.index, written.text)
            assert got.tokens.dtype == np.float32 and got.tokens.shape == written.tokens.shape
            np.testing.assert_array_equal(got.tokens, written.tokens)  # bit-exact for float32
            np.testing.assert_allclose(
                got.pooled / np.linalg.norm(got.pooled), written.pooled / np.linalg.norm(written.pooled), atol=1e-6
            )
            assert got.units == written.units
            assert json.dumps(dict(got.metadata), sort_keys=True) == json.dumps(dict(written.metadata), sort_keys=True)
            assert got.schema_version == SCHEMA_VERSION

    def test_fetch_reports_missing(self, readonly):
        store, repo, passages = readonly
        name = store.collection
        ghost = "00000000-0000-4000-8000-00000000abcd"
        result = repo.fetch(name, [passages[2].id, ghost, passages[3].id])
        assert result.ids == [passages[2].id, passages[3].id]
        assert result.missing == (ghost,)
        with pytest.raises(MissingPassagesError) as err:
            repo.fetch(name, [passages[2].id, ghost], strict=True)
        assert err.value.ids == (ghost,) and ghost in str(err.value)
        assert repo.fetch(name, []).passages == ()
        # ids are canonicalised: upper case finds the same passage
        assert repo.fetch(name, [passages[2].id.upper()]).ids == [passages[2].id]

    def test_fetch_tokens_equals_fetch(self, readonly):
        store, repo, passages = readonly
        name = store.collection
        ghost = "00000000-0000-4000-8000-00000000abcd"
        asked = [passages[4].id, ghost, passages[0].id, passages[4].id.upper(), passages[17].id, passages[9].id]
        batch = repo.fetch_tokens(name, asked)
        full = repo.fetch(name, asked)
        assert isinstance(batch, TokenBatch)
        # found ones once each, in the order first asked (ids canonicalised); the others missing, as fetch
        assert batch.ids == tuple(dict.fromkeys(full.ids)) == (passages[4].id, passages[0].id, passages[17].id, passages[9].id)
        assert batch.missing == full.missing == (ghost,)
        assert len(batch) == 4 and len(batch.units) == len(batch.versions) == 4
        tokens = batch.tokens
        assert tokens.dtype == np.float32 and tokens.ndim == 2 and tokens.shape[1] == DIM
        assert tokens.flags.c_contiguous and tokens.flags.writeable
        assert batch.offsets.dtype == np.int64 and batch.offsets[0] == 0 and batch.offsets[-1] == tokens.shape[0]
        by_id = _by_id(full)
        written = _by_id(passages)
        for i, pid in enumerate(batch.ids):
            assert batch.n_tokens[i] == by_id[pid].n_tokens
            np.testing.assert_array_equal(batch.tokens_of(i), by_id[pid].tokens)  # bit-exact, as fetch
            np.testing.assert_array_equal(batch.tokens_of(i), written[pid].tokens)
            assert batch.units[i] == by_id[pid].units == written[pid].units
        versioned = repo.capabilities().versions
        assert all((v is not None) == versioned for v in batch.versions)
        assert repo.fetch_tokens(name, batch.ids).versions == batch.versions  # stable while not rewritten
        empty = repo.fetch_tokens(name, [])
        assert empty.ids == () and empty.missing == () and empty.tokens.shape == (0, DIM) and empty.offsets.tolist() == [0]
        assert repo.fetch_tokens(name, [ghost]).missing == (ghost,)
        with pytest.raises(InvalidIdError):
            repo.fetch_tokens(name, ["abc"])
        with pytest.raises(InvalidIdError):
            repo.fetch_tokens(name, passages[0].id)  # one bare string, not a list

    def test_rewrites_change_the_version(self, store, loaded):
        repo, passages = loaded
        name = store.collection
        ids = [p.id for p in passages[:3]]
        before = repo.fetch_tokens(name, ids)
        rng = np.random.default_rng(12)
        other = replace(passages[0], tokens=unit_vectors(rng, 5), pooled=unit_vectors(rng, 1)[0], units=())
        repo.upsert(name, [other, passages[1]])  # other vectors; the very same passage again
        after = repo.fetch_tokens(name, ids)
        assert after.ids == tuple(ids)
        np.testing.assert_array_equal(after.tokens_of(0), other.tokens)
        assert after.units[0] == () and after.units[1] == passages[1].units
        caps = repo.capabilities()
        if caps.versions:
            # every write is a new version, even of the same content; the unwritten one keeps its own
            assert after.versions[0] != before.versions[0] and after.versions[1] != before.versions[1]
            assert after.versions[2] == before.versions[2]
        else:
            assert set(before.versions) == set(after.versions) == {None}
        # candidates carry the version fetch_tokens reports, when asked for it
        expected = dict(zip(after.ids, after.versions))
        got = repo.candidates(name, other.pooled, limit=N, with_versions=True)
        assert len(got) == N and all(c.version == expected[c.id] for c in got if c.id in expected)
        assert [c.id for c in got] == [c.id for c in repo.candidates(name, other.pooled, limit=N)]
        if caps.versions:
            assert all(c.version is not None for c in got)
        if caps.maxsim_rerank:
            qt = unit_vectors(rng, 3)
            hits = repo.candidates(name, qt.mean(axis=0), tokens=qt, limit=5, prefetch=N, with_versions=True)
            assert all(c.stage == "maxsim" and (c.version is not None) == caps.versions for c in hits)
            assert all(c.version == expected[c.id] for c in hits if c.id in expected)
        repo.delete(name, [ids[2]])
        assert repo.fetch_tokens(name, ids).missing == (ids[2],)

    @pytest.mark.parametrize("dtype", ["float16", "int8", "binary"])
    def test_storage_dtypes(self, store, repo, dtype):
        caps = repo.capabilities()
        if dtype not in caps.dtypes:
            with pytest.raises(UnsupportedOperationError, match=dtype):  # refused before the engine is asked
                repo.create_collection(CollectionSchema(f"{store.collection}_{dtype}", DIM, dtype=dtype))
            pytest.skip(f"{caps.engine} does not offer {dtype}")
        name = f"{store.collection}_{dtype}"
        repo.create_collection(CollectionSchema(name, DIM, dtype=dtype, on_disk=True))
        passages = make_passages(12, seed=3)
        repo.upsert(name, passages)
        tol = caps.fetch_atol[dtype]
        fetched = repo.fetch(name, [p.id for p in passages], strict=True)
        for written, got in zip(passages, fetched):
            np.testing.assert_allclose(got.tokens, written.tokens, atol=tol, rtol=0)
        batch = repo.fetch_tokens(name, [p.id for p in passages])  # the same vectors as fetch, bit for bit
        assert batch.ids == tuple(p.id for p in passages) and batch.tokens.dtype == np.float32
        for i, got in enumerate(fetched):
            np.testing.assert_array_equal(batch.tokens_of(i), got.tokens)
        rng = np.random.default_rng(8)
        qt = unit_vectors(rng, 4)
        by_id = _by_id(passages)
        got = repo.candidates(name, qt.mean(axis=0), tokens=qt, limit=12, prefetch=12)
        assert {c.id for c in got} == set(by_id)
        for c in got:  # MaxSim on the stored (maybe float16) vectors: close to the exact one
            assert abs(c.score - maxsim(qt, by_id[c.id].tokens)) <= 4 * 4 * 1e-3 + 1e-5

    # --------------------------------------------------------------------------- persistence, concurrency

    def test_reopen_persisted(self, store, loaded):
        if not store.case.persistent:
            pytest.skip(f"{store.case.id} does not persist")
        repo, passages = loaded
        name = store.collection
        repo.delete(name, [passages[0].id])
        repo.close()
        again = store.connect()
        schema = again.open_collection(name)
        assert schema.dim == DIM and dict(schema.indexed_fields) == {"lang": "keyword", "year": "integer"}
        assert again.count(name) == N - 1
        got = again.fetch(name, [passages[5].id], strict=True).passages[0]
        np.testing.assert_array_equal(got.tokens, passages[5].tokens)
        assert got.units == passages[5].units
        q = passages[9].pooled
        assert again.candidates(name, q, limit=1)[0].id == passages[9].id
        again.upsert(name, [passages[0]])
        assert again.count(name) == N

    def test_second_process_gets_clear_error(self, store, loaded):
        if not store.case.exclusive:
            pytest.skip(f"{store.case.id} allows several processes")
        repo, passages = loaded
        proc = subprocess.run(
            [sys.executable, "-c", _SECOND_OPENER, store.url, store.collection],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = proc.stdout.strip().splitlines()
        assert lines and lines[0] == ConcurrentAccessError.__name__, proc.stdout + proc.stderr
        assert "another process" in proc.stdout
        assert repo.count(store.collection) == N  # the first opener is unharmed

    def test_closed_repository_refuses(self, store, repo):
        repo.create_collection(CollectionSchema(store.collection, DIM))
        repo.close()
        with pytest.raises(Exception) as err:
            repo.count(store.collection)
        assert "closed" in str(err.value)
