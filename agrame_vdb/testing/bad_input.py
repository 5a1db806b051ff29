"""Bad input at every repository call: bad records, queries and arguments are refused
with the library's typed error, and nothing is written (the stored passages read back
as they were)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ..errors import (
    InvalidFilterError,
    InvalidIdError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidSchemaError,
    InvalidUnitError,
    InvalidVectorError,
    SchemaMismatchError,
)
from ..repository import SCHEMA_VERSION, CollectionSchema, StoredPassage
from ..units import Unit
from .data import DIM, make_passages, unit_vectors
from .engines import N, EngineFixtures


def _nan_after_build(p: StoredPassage) -> list[StoredPassage]:
    bad = replace(p, tokens=p.tokens.copy())
    bad.tokens[1, 2] = np.nan  # changed in place after the checks at construction
    return [bad]


def _wrong_dim(p: StoredPassage) -> list[StoredPassage]:
    rng = np.random.default_rng(1)
    return [StoredPassage.create("doc-x", 0, unit_vectors(rng, 3, DIM + 2))]


def _upsert_cases():
    p = make_passages(1, seed=42)[0]
    t = p.tokens
    return [
        ("nan-in-place", lambda: _nan_after_build(p), InvalidVectorError),
        ("nan", lambda: [replace(p, tokens=np.where(np.arange(DIM) == 3, np.nan, t))], InvalidVectorError),
        ("inf", lambda: [replace(p, tokens=t * np.float32(np.inf))], InvalidVectorError),
        ("overflow", lambda: [replace(p, tokens=t.astype(np.float64) * 1e300)], InvalidVectorError),
        ("ragged", lambda: [replace(p, tokens=[list(t[0]), list(t[1][:-1])])], InvalidVectorError),
        ("empty", lambda: [replace(p, tokens=np.zeros((0, DIM), np.float32), units=())], InvalidVectorError),
        ("empty-rows", lambda: [replace(p, tokens=[[]], units=())], InvalidVectorError),
        ("one-d", lambda: [replace(p, tokens=t[0], units=())], InvalidVectorError),
        ("strings", lambda: [replace(p, tokens=[["a"] * DIM])], InvalidVectorError),
        ("wrong-dim", lambda: _wrong_dim(p), InvalidVectorError),
        ("pooled-zero", lambda: [replace(p, pooled=np.zeros(DIM, np.float32))], InvalidVectorError),
        ("pooled-shape", lambda: [replace(p, pooled=t[:2])], InvalidVectorError),
        ("id-not-uuid", lambda: [replace(p, id="abc")], InvalidIdError),
        ("id-negative", lambda: [replace(p, id=-1)], InvalidIdError),
        ("id-huge", lambda: [replace(p, id=2**64)], InvalidIdError),
        ("meta-nan", lambda: [replace(p, metadata={"x": float("nan")})], InvalidMetadataError),
        ("meta-np-nan", lambda: [replace(p, metadata={"x": np.float32("nan")})], InvalidMetadataError),
        ("meta-bytes", lambda: [replace(p, metadata={"x": b"ab"})], InvalidMetadataError),
        ("meta-set", lambda: [replace(p, metadata={"x": {1, 2}})], InvalidMetadataError),
        ("meta-key", lambda: [replace(p, metadata={1: "x"})], InvalidMetadataError),
        ("meta-int", lambda: [replace(p, metadata={"x": 2**70})], InvalidMetadataError),
        ("meta-reserved", lambda: [replace(p, metadata={"doc_id": "other"})], InvalidMetadataError),
        ("unit-past-tokens", lambda: [replace(p, units=(Unit("sentence", 0, ((0, 4),), ((0, p.n_tokens + 1),)),))], InvalidUnitError),
        ("unit-past-text", lambda: [replace(p, units=(Unit("sentence", 0, ((0, 999),), ((0, 1),)),))], InvalidUnitError),
        ("unit-unaligned", lambda: [replace(p, units=(Unit("sentence", 0, ((0, 4),)),))], InvalidUnitError),
        ("unit-duplicate", lambda: [replace(p, units=(p.units[0], p.units[0]))], InvalidUnitError),
        ("duplicate-ids", lambda: [p, p], InvalidInputError),
        ("not-a-passage", lambda: [{"id": p.id}], InvalidInputError),
        ("schema-version", lambda: [replace(p, schema_version=SCHEMA_VERSION + 1)], SchemaMismatchError),
    ]


def _query_cases(tokens_ok: bool):
    q = np.ones(DIM, np.float32)
    qt = np.ones((3, DIM), np.float32)
    cases = [
        ("q-nan", dict(pooled=np.full(DIM, np.nan, np.float32)), InvalidVectorError),
        ("q-dim", dict(pooled=np.ones(DIM + 1, np.float32)), InvalidVectorError),
        ("q-zero", dict(pooled=np.zeros(DIM, np.float32)), InvalidVectorError),
        ("q-2d", dict(pooled=qt), InvalidVectorError),
        ("limit-0", dict(pooled=q, limit=0), InvalidInputError),
        ("limit-bool", dict(pooled=q, limit=True), InvalidInputError),
        ("prefetch-small", dict(pooled=q, tokens=qt, limit=10, prefetch=5), InvalidInputError),
        ("filter-dict", dict(pooled=q, filter={"lang": "en"}), InvalidFilterError),
    ]
    if tokens_ok:
        cases += [
            ("t-nan", dict(pooled=q, tokens=np.full((2, DIM), np.nan, np.float32)), InvalidVectorError),
            ("t-inf", dict(pooled=q, tokens=np.full((2, DIM), np.inf, np.float32)), InvalidVectorError),
            ("t-empty", dict(pooled=q, tokens=np.zeros((0, DIM), np.float32)), InvalidVectorError),
            ("t-1d", dict(pooled=q, tokens=q), InvalidVectorError),
            ("t-dim", dict(pooled=q, tokens=np.ones((2, DIM - 1), np.float32)), InvalidVectorError),
            ("t-ragged", dict(pooled=q, tokens=[[1.0] * DIM, [1.0]]), InvalidVectorError),
        ]
    return cases


class BadInputTests(EngineFixtures):
    """Bad records, queries and calls: the typed error, nothing written."""

    # --------------------------------------------------------------------------- bad input

    @pytest.mark.parametrize("make,error", [pytest.param(m, e, id=i) for i, m, e in _upsert_cases()])
    def test_bad_upsert_is_rejected_and_harmless(self, readonly, make, error):
        store, repo, passages = readonly
        name = store.collection
        good = replace(make_passages(1, seed=43)[0], id="00000000-0000-4000-8000-0000000000ff")
        with pytest.raises(error):
            repo.upsert(name, [good, *make()])  # built here or refused by upsert: nothing is written
        assert repo.count(name) == N
        assert repo.fetch(name, [good.id]).missing == (good.id,)
        for i in (0, 3):  # the bad passage has passages[0]'s id
            got = repo.fetch(name, [passages[i].id], strict=True).passages[0]
            np.testing.assert_array_equal(got.tokens, passages[i].tokens)
        assert np.isfinite(repo.candidates(name, passages[3].pooled, limit=1)[0].score)

    @pytest.mark.parametrize("case", range(len(_query_cases(True))))
    def test_bad_query_is_rejected(self, readonly, case):
        store, repo, passages = readonly
        cases = _query_cases(repo.capabilities().maxsim_rerank)
        if case >= len(cases):
            pytest.skip("token queries not supported")
        _, kwargs, error = cases[case]
        pooled = kwargs.pop("pooled")
        with pytest.raises(error):
            repo.candidates(store.collection, pooled, **kwargs)

    @pytest.mark.parametrize(
        "call,error",
        [
            pytest.param(lambda r, n: r.fetch(n, ["abc"]), InvalidIdError, id="fetch-bad-id"),
            pytest.param(lambda r, n: r.fetch(n, "0c55945e-fd5e-51d8-9597-c4dcf1e223d1"), InvalidIdError, id="fetch-bare-str"),
            pytest.param(lambda r, n: r.fetch(n, [7]), InvalidIdError, id="fetch-int-id"),
            pytest.param(lambda r, n: r.delete(n, ["not-a-uuid"]), InvalidIdError, id="delete-bad-id"),
            pytest.param(lambda r, n: r.delete_by_doc_id(n, [""]), InvalidInputError, id="delete-empty-doc"),
            pytest.param(lambda r, n: r.delete_where(n, None), InvalidFilterError, id="delete-where-none"),
            pytest.param(lambda r, n: r.count(n, "lang=en"), InvalidFilterError, id="count-str-filter"),
            pytest.param(lambda r, n: r.list_ids(n, offset="zzz"), InvalidIdError, id="list-bad-offset"),
            pytest.param(lambda r, n: r.list_ids(n, limit=0), InvalidInputError, id="list-limit-0"),
            pytest.param(lambda r, n: r.count("bad name!"), InvalidSchemaError, id="bad-collection-name"),
            pytest.param(lambda r, n: r.create_collection(CollectionSchema(n, 0)), InvalidSchemaError, id="dim-0"),
        ],
    )
    def test_bad_calls_are_rejected_and_harmless(self, readonly, call, error):
        store, repo, passages = readonly
        with pytest.raises(error):
            call(repo, store.collection)
        assert repo.count(store.collection) == N
