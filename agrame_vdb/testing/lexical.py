"""Lexical and hybrid first stages: every engine's equal the reference.

The reference is BM25 written out here from the texts (the spec's words and term
ids, then the formula of :mod:`agrame_vdb.lexical`), not the memory engine's index:
IDF over every passage that has a word, whatever the filter. Hybrid candidates must
be the reciprocal rank fusion of the engine's own two branches, each filtered.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from ..errors import InvalidInputError, LexicalUnavailableError, UnsupportedOperationError
from ..filters import And, Eq, Filter, Not, Range
from ..lexical import LexicalSpec, term_id, words
from ..records import StoredPassage
from ..repository import CollectionSchema
from .data import DIM, metadata, unit_vectors
from .engines import EngineFixtures

SPEC = LexicalSpec(avgdl=12.0)
_VOCAB = [f"w{i}" for i in range(40)] + ["BRCA1", "p53", "Zürich", "naïve", "ＡＢＣ"]
QUERIES = ("w1 w2", "brca1", "w3 w3 w7 zürich", "abc w39 w5", "p53 naive w0 w11 w12")
FILTERS: tuple[Filter, ...] = (
    Eq("lang", "en"),
    Range("year", gte=2003, lt=2009),
    And((Eq("lang", "fr"), Not(Eq("published", True)))),
)


def lexical_passages(n: int = 40, seed: int = 5) -> list[StoredPassage]:
    """``n`` passages whose texts draw 4 to 24 words from a small vocabulary (so terms
    repeat and lengths differ), the last one with no word at all."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(4, 25))
        text = " ".join(_VOCAB[j] for j in rng.zipf(1.3, size=k) % len(_VOCAB)) if i < n - 1 else "— … —"
        out.append(StoredPassage.create(f"doc-{i % 7}", i // 7, unit_vectors(rng, 3), text=text, metadata=metadata(i)))
    return out


def bm25_reference(query: str, passages: list[StoredPassage], spec: LexicalSpec = SPEC) -> dict[str, float]:
    """BM25 of ``query`` against each passage sharing a word with it."""
    docs = {p.id: Counter(term_id(w) for w in words(p.text)) for p in passages}
    docs = {i: c for i, c in docs.items() if c}
    n = len(docs)
    q = Counter(term_id(w) for w in words(query))
    out: dict[str, float] = {}
    for i, tf in docs.items():
        length = sum(tf.values())
        s = 0.0
        for t, qn in q.items():
            if t in tf:
                df = sum(1 for c in docs.values() if t in c)
                w = tf[t] * (spec.k1 + 1) / (tf[t] + spec.k1 * (1 - spec.b + spec.b * length / spec.avgdl))
                s += qn * math.log((n - df + 0.5) / (df + 0.5) + 1) * w
        if s:
            out[i] = s
    return out


def assert_ranking(got, reference: dict[str, float], limit: int, keep=lambda pid: True) -> None:
    """``got`` is the reference's top ``limit`` among the kept ids, scores within 1e-4
    (relative), in order; passages tied with the last one may stand in for each other."""
    ref = sorted(((s, i) for i, s in reference.items() if keep(i)), key=lambda t: (-t[0], t[1]))
    assert len(got) == min(limit, len(ref)), (len(got), len(ref))
    for c in got:
        assert c.id in reference and keep(c.id), c.id
        assert c.score == pytest.approx(reference[c.id], rel=1e-4), (c.id, c.score, reference[c.id])
    for a, b in zip(got, got[1:]):
        assert reference[a.id] >= reference[b.id] * (1 - 1e-4), (a, b)
    if got:
        floor = reference[got[-1].id] * (1 + 1e-4)
        assert {i for s, i in ref if s > floor} <= {c.id for c in got}


class LexicalTests(EngineFixtures):
    """Lexical candidates equal the BM25 reference; hybrid fuses two filtered branches."""

    @pytest.fixture
    def lexical(self, store, repo):
        if not repo.capabilities().lexical:
            with pytest.raises(UnsupportedOperationError):
                repo.create_collection(CollectionSchema(store.collection, DIM, lexical=SPEC))
            pytest.skip(f"{repo.capabilities().engine} has no lexical search (and says so)")
        repo.create_collection(
            CollectionSchema(store.collection, DIM, indexed_fields={"lang": "keyword", "year": "integer"}, lexical=SPEC)
        )
        passages = lexical_passages()
        repo.upsert(store.collection, passages)
        return repo, store.collection, passages

    def test_schema_records_the_tokenisation(self, store, lexical):
        repo, name, _ = lexical
        assert repo.open_collection(name).lexical == SPEC
        again = store.connect() if store.case.persistent and not store.case.exclusive else repo
        assert again.open_collection(name).lexical == SPEC

    @pytest.mark.parametrize("query", QUERIES)
    def test_lexical_candidates_equal_the_reference(self, lexical, query):
        repo, name, passages = lexical
        reference = bm25_reference(query, passages)
        assert reference, "the query shares no word with the corpus"
        for limit in (3, 10, 100):
            got = repo.lexical_candidates(name, query, limit=limit)
            assert all(c.stage == "lexical" for c in got)
            assert_ranking(got, reference, limit)

    @pytest.mark.parametrize("flt", FILTERS, ids=("eq", "range", "and-not"))
    def test_lexical_filters(self, lexical, flt):
        from ..repositories.memory import matches

        repo, name, passages = lexical
        by_id = {p.id: p for p in passages}
        for query in QUERIES[:3]:
            got = repo.lexical_candidates(name, query, limit=8, filter=flt)
            assert_ranking(got, bm25_reference(query, passages), 8, keep=lambda i: matches(flt, by_id[i]))

    def test_query_without_a_word_finds_nothing(self, lexical):
        repo, name, _ = lexical
        assert repo.lexical_candidates(name, "?! —", limit=5) == []
        for bad in ("", "   ", None, 3):
            with pytest.raises(InvalidInputError):
                repo.lexical_candidates(name, bad, limit=5)

    def test_rewrites_and_deletes_keep_the_statistics(self, lexical):
        repo, name, passages = lexical
        if repo.capabilities().engine == "qdrant-server":
            pytest.skip("a Qdrant server's IDF counts deleted points until the optimizer vacuums their segment "
                        "(qdrant/qdrant#6735); it has no call that forces it")
        changed = StoredPassage.create(
            passages[0].doc_id, passages[0].index, passages[0].tokens, text="brca1 brca1 w1", metadata=passages[0].metadata
        )
        repo.upsert(name, [changed])
        repo.delete(name, [passages[1].id, passages[2].id])
        repo.optimize(name)
        now = [changed] + passages[3:]
        for query in QUERIES:
            assert_ranking(repo.lexical_candidates(name, query, limit=10), bm25_reference(query, now), 10)

    @pytest.mark.parametrize("flt", (None,) + FILTERS[:2], ids=("no-filter", "eq", "range"))
    def test_hybrid_is_the_fusion_of_two_filtered_branches(self, lexical, flt):
        from ..fusion import rrf
        from ..repositories.memory import matches

        repo, name, passages = lexical
        by_id = {p.id: p for p in passages}
        rng = np.random.default_rng(9)
        for query in QUERIES[:3]:
            pooled = unit_vectors(rng, 1)[0]
            got = repo.hybrid_candidates(name, pooled, query, limit=6, dense_limit=8, lexical_limit=5, rrf_k=10, filter=flt)
            dense = repo.candidates(name, pooled, limit=8, filter=flt)
            lexical = repo.lexical_candidates(name, query, limit=5, filter=flt)
            fused = {c.id: c.score for c in rrf([dense, lexical], limit=100, k=10)}
            assert len(got) == min(6, len(fused))
            assert all(c.stage == "hybrid" for c in got)
            for c in got:
                assert flt is None or matches(flt, by_id[c.id])
                assert c.score == pytest.approx(fused[c.id], rel=1e-5)
            floor = got[-1].score * (1 + 1e-6)
            assert {i for i, s in fused.items() if s > floor} <= {c.id for c in got}

    def test_a_collection_without_lexical_vectors_names_the_migration(self, store, repo):
        name = store.collection
        repo.create_collection(CollectionSchema(name, DIM))
        repo.upsert(name, lexical_passages(5))
        for call in (
            lambda: repo.lexical_candidates(name, "w1", limit=3),
            lambda: repo.hybrid_candidates(name, unit_vectors(np.random.default_rng(1), 1)[0], "w1", limit=3),
        ):
            if not repo.capabilities().lexical:
                with pytest.raises(UnsupportedOperationError):
                    call()
                continue
            with pytest.raises(LexicalUnavailableError, match=r"migrate convert .*--lexical"):
                call()
        assert repo.open_collection(name).lexical is None

    def test_lexical_vectors_persist(self, store, lexical):
        if not store.case.persistent:
            pytest.skip("the store does not persist")
        repo, name, passages = lexical
        repo.close()
        again = store.connect()
        for query in QUERIES[:2]:
            assert_ranking(again.lexical_candidates(name, query, limit=10), bm25_reference(query, passages), 10)
