"""The query planner against a brute-force MaxSim over every stored passage and unit,
on every repository, with filters, spans, the token cache, batches, asyncio and threads.

The corpus is a few dozen short hand-written passages encoded once with the real
default encoder; queries are encoded once per module.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from typer.testing import CliRunner

from agrame_vdb import CollectionSchema, Filter, StoredPassage, connect
from agrame_vdb.errors import (
    CollectionNotFoundError,
    InvalidFilterError,
    InvalidInputError,
    StoreUnavailableError,
    UnsupportedOperationError,
)
from agrame_vdb.planner import Planner, SearchResponse, TokenCache, check_granularity, encode_queries
from agrame_vdb.repositories.memory import matches as filter_matches
from agrame_vdb.units import Passage, units_from_char_spans

from . import engines

TOPICS = {
    "landmarks": [
        "The Eiffel Tower stands in Paris. It was completed in 1889 for the World's Fair. Gustave Eiffel's company built it.",
        "The Great Wall of China stretches for thousands of kilometres. Its oldest parts date from the 7th century BC.",
        "The Colosseum is an amphitheatre in Rome. It could hold about fifty thousand spectators.",
        "Machu Picchu is an Inca citadel in Peru. It sits on a mountain ridge above the Urubamba valley.",
        "The Statue of Liberty was a gift from France. It was dedicated in New York in 1886.",
        "Big Ben is the nickname of the great bell in London. The clock tower was renamed Elizabeth Tower in 2012.",
    ],
    "science": [
        "Photosynthesis turns light into chemical energy. Plants absorb light with chlorophyll.",
        "Water boils at 100 degrees Celsius at sea level. At higher altitudes it boils at lower temperatures.",
        "DNA carries genetic information. Its structure is a double helix described in 1953.",
        "The Moon orbits the Earth about every 27 days. Its gravity causes the ocean tides.",
        "Black holes are regions where gravity prevents anything from escaping. Even light cannot leave them.",
        "Vaccines train the immune system to recognise pathogens. They have eradicated smallpox.",
    ],
    "technology": [
        "Python is a programming language created by Guido van Rossum. It was first released in 1991.",
        "The transistor was invented at Bell Labs in 1947. It replaced vacuum tubes in electronics.",
        "The World Wide Web was proposed by Tim Berners-Lee in 1989. He worked at CERN at the time.",
        "Linux is an open-source operating system kernel. Linus Torvalds released it in 1991.",
        "GPUs accelerate matrix multiplication. Deep learning relies on them for training.",
        "Vector databases index embeddings for similarity search. They support filters on metadata.",
    ],
    "sports": [
        "The first modern Olympic Games were held in Athens in 1896. Athletes from fourteen nations took part.",
        "A marathon is 42.195 kilometres long. The distance was fixed in 1921.",
        "Football is played by two teams of eleven players. The World Cup is held every four years.",
        "Tennis matches at Wimbledon are played on grass. The tournament began in 1877.",
        "Chess is a board game for two players. A grandmaster is the highest title in chess.",
    ],
    "food": [
        "Bananas are rich in potassium. They grow in tropical regions.",
        "Bread is made from flour, water and yeast. The dough rises as the yeast ferments.",
        "Coffee beans are the seeds of a berry. Ethiopia is often named as coffee's birthplace.",
        "Sushi combines vinegared rice with fish or vegetables. It comes from Japan.",
        "Chocolate is made from cacao beans. The Aztecs drank it as a bitter beverage.",
    ],
}
# Non-contiguous propositions of some passages, as character spans of their text.
PROPOSITIONS = {
    ("landmarks", 0): [["The Eiffel Tower", "in Paris"], ["It was completed in 1889"]],
    ("technology", 0): [["Python is a programming language"], ["Python", "created by Guido van Rossum"]],
    ("science", 2): [["DNA carries genetic information"], ["Its structure is a double helix"]],
    ("sports", 0): [["The first modern Olympic Games were held in Athens"], ["Olympic Games", "in 1896"]],
}
QUERIES = [
    "When was the Eiffel Tower built?",
    "who created the python language",
    "double helix structure",
    "where were the first olympics held",
    "what makes the ocean tides",
]
COLLECTION = "planner_test"


def _spans(text: str, pieces: list[str]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for piece in pieces:
        start = text.index(piece, pos) if piece in text[pos:] else text.index(piece)
        out.append((start, start + len(piece)))
        pos = start + len(piece)
    return sorted(out)


@pytest.fixture(scope="module")
def encoder(untrained_encoder):
    """This module's hand-made cases (which words match, which sentence is chitchat) were
    calibrated on the untrained model; pin it so they test the mechanism, not the weights."""
    return untrained_encoder


@pytest.fixture(scope="module")
def corpus(encoder) -> list[StoredPassage]:
    passages, extra = [], []
    for topic, texts in TOPICS.items():
        for i, text in enumerate(texts):
            passages.append(Passage.create(f"{topic}-{i}", 0, text, {"topic": topic, "year": 2000 + i, "n": i}))
            props = PROPOSITIONS.get((topic, i), [])
            extra.append(units_from_char_spans(text, [_spans(text, p) for p in props], kind="proposition"))
    encoded = encoder.encode_passages(passages, extra)
    return [
        StoredPassage.create(
            e.passage.doc_id, e.passage.index, e.token_vectors, units=e.units, text=e.passage.text,
            metadata=dict(e.passage.metadata),
        )
        for e in encoded
    ]


@pytest.fixture(scope="module")
def queries(encoder):
    q, sq = encode_queries(encoder, QUERIES, both=True)
    return q, sq


def _filled(url: str, corpus: list[StoredPassage]):
    repo = connect(url)
    repo.create_collection(CollectionSchema(COLLECTION, dim=corpus[0].dim, indexed_fields={"topic": "keyword"}))
    repo.upsert(COLLECTION, corpus)
    return repo


@pytest.fixture(scope="module")
def memory_repo(corpus):
    repo = _filled("memory://", corpus)
    yield repo
    repo.close()


@pytest.fixture(scope="module")
def planner(memory_repo, encoder) -> Planner:
    return Planner(memory_repo, COLLECTION, encoder, device="cpu")


def brute_force(q, sq, corpus, granularity, alpha=1.0, flt=None, k=10):
    """Every stored passage (or unit of the kind) scored in float64, best first."""
    rows = []
    for p in corpus:
        if flt is not None and not filter_matches(flt, p):
            continue
        d = p.tokens.astype(np.float64)
        s_p = float((q.astype(np.float64) @ d.T).max(axis=1).sum())
        if granularity == "passage":
            rows.append((s_p, p.id, -1))
            continue
        sim = sq.astype(np.float64) @ d.T
        for u in p.units:
            if u.kind == granularity:
                rows.append((float(sim[:, u.token_positions].max(axis=1).sum()) + alpha * s_p, p.id, u.index))
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    return rows[:k]


def ranking(response: SearchResponse):
    return [(r.passage_id, -1 if r.unit_index is None else r.unit_index) for r in response]


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("granularity", ["passage", "sentence", "proposition"])
@pytest.mark.parametrize("alpha", [1.0, 0.0, 0.3])
def test_results_equal_an_exhaustive_search_when_candidates_cover_the_corpus(planner, corpus, queries, granularity, alpha):
    q, sq = queries
    for b in range(len(QUERIES)):
        got = planner.search_vectors(q[b], sq[b], granularity=granularity, k=8, candidates=len(corpus), alpha=alpha)
        want = brute_force(q[b], sq[b], corpus, granularity, alpha, k=8)
        assert ranking(got) == [(pid, idx) for _, pid, idx in want]
        np.testing.assert_allclose([r.score for r in got], [s for s, _, _ in want], rtol=1e-5, atol=1e-4)
        for r in got:
            assert r.granularity == granularity
            if granularity == "passage":
                assert r.unit_score is None and r.score == r.passage_score
            else:
                assert r.unit_kind == granularity
                assert r.score == pytest.approx(r.unit_score + alpha * r.passage_score, abs=1e-4)


def brute_force_coverage(q, sq, corpus, granularity, alpha, beta, k=10):
    """Units scored in float64 by ``S(q',u) + alpha * S(q,p) + beta * W * C(u,q')``: ``C`` the
    mean over the unit's tokens of the max over the [Q'] rows that are not all zero, ``W``
    their count; rows (score, coverage term, passage id, unit index), best first."""
    real = np.any(sq != 0, axis=1)
    w = int(real.sum())
    rows = []
    for p in corpus:
        d = p.tokens.astype(np.float64)
        s_p = float((q.astype(np.float64) @ d.T).max(axis=1).sum())
        sim = sq.astype(np.float64) @ d.T
        for u in p.units:
            if u.kind == granularity:
                pos = u.token_positions
                term = beta * w * float(sim[real][:, pos].max(axis=0).mean())
                rows.append((float(sim[:, pos].max(axis=1).sum()) + alpha * s_p + term, term, p.id, u.index))
    rows.sort(key=lambda r: (-r[0], r[2], r[3]))
    return rows[:k]


@pytest.mark.parametrize("granularity", ["sentence", "proposition"])
@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_coverage_ranks_units_as_a_brute_force(memory_repo, encoder, corpus, queries, granularity, alpha):
    q, sq = queries
    betas = {"sentence": 0.5, "proposition": 0.25}
    planner = Planner(memory_repo, COLLECTION, encoder, device="cpu", unit_coverage=betas)
    changed = False
    for b in range(len(QUERIES)):
        padded = sq[b].copy()
        padded[20:] = 0.0  # a model without query augmentation zeroes its padding rows: W = 20
        for sub in (sq[b], padded):
            got = planner.search_vectors(q[b], sub, granularity=granularity, k=8, candidates=len(corpus), alpha=alpha)
            want = brute_force_coverage(q[b], sub, corpus, granularity, alpha, betas[granularity], k=8)
            assert ranking(got) == [(pid, idx) for _, _, pid, idx in want]
            np.testing.assert_allclose([r.score for r in got], [s for s, _, _, _ in want], rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose([r.coverage for r in got], [c for _, c, _, _ in want], rtol=1e-5, atol=1e-4)
            for r in got:
                assert r.score == pytest.approx(r.unit_score + alpha * r.passage_score + r.coverage, abs=1e-4)
                assert r.to_json()["coverage"] == r.coverage
            changed |= ranking(got) != [(pid, idx) for _, pid, idx in brute_force(q[b], sub, corpus, granularity, alpha, k=8)]
    assert changed  # the term does reorder units here
    # passages are ranked as they always were, and say nothing of coverage
    got = planner.search_vectors(q[0], granularity="passage", k=5, candidates=len(corpus))
    assert ranking(got) == [(pid, idx) for _, pid, idx in brute_force(q[0], sq[0], corpus, "passage", k=5)]
    assert all(r.coverage is None and "coverage" not in r.to_json() for r in got)


def test_the_encoders_unit_coverage_is_used_and_an_override_replaces_it(memory_repo, encoder, corpus, queries, monkeypatch):
    import dataclasses

    q, sq = queries
    assert encoder.config.unit_coverage == {}
    plain = Planner(memory_repo, COLLECTION, encoder, device="cpu")
    assert plain.unit_coverage == {}
    monkeypatch.setattr(encoder, "config", dataclasses.replace(encoder.config, unit_coverage={"proposition": 0.25}))
    planner = Planner(memory_repo, COLLECTION, encoder, device="cpu")
    assert planner.unit_coverage == {"proposition": 0.25}
    off = Planner(memory_repo, COLLECTION, encoder, device="cpu", unit_coverage={})
    for b in range(len(QUERIES)):
        got = planner.search_vectors(q[b], sq[b], granularity="proposition", k=8, candidates=len(corpus))
        want = brute_force_coverage(q[b], sq[b], corpus, "proposition", 1.0, 0.25, k=8)
        assert ranking(got) == [(pid, idx) for _, _, pid, idx in want]
        # another kind, and a planner told to use none, rank as they always did
        for pl, kind in ((planner, "sentence"), (off, "proposition"), (plain, "proposition")):
            got = pl.search_vectors(q[b], sq[b], granularity=kind, k=8, candidates=len(corpus))
            assert ranking(got) == [(pid, idx) for _, pid, idx in brute_force(q[b], sq[b], corpus, kind, k=8)]
            assert all(r.coverage is None and "coverage" not in r.to_json() for r in got)
    # text search encodes the query and ranks with the encoder's setting too
    got = planner.search(QUERIES[0], "proposition", k=8, candidates=len(corpus))
    assert ranking(got) == [(pid, idx) for _, _, pid, idx in brute_force_coverage(q[0], sq[0], corpus, "proposition", 1.0, 0.25, k=8)]
    # without an encoder, the override is the only source
    bare = Planner(memory_repo, COLLECTION, device="cpu", unit_coverage={"proposition": 0.25})
    got = bare.search_vectors(q[1], sq[1], granularity="proposition", k=8, candidates=len(corpus))
    assert ranking(got) == [(pid, idx) for _, _, pid, idx in brute_force_coverage(q[1], sq[1], corpus, "proposition", 1.0, 0.25, k=8)]
    assert Planner(memory_repo, COLLECTION, device="cpu").unit_coverage == {}


@pytest.mark.parametrize(
    "bad",
    [
        {"proposition": -0.1}, {"proposition": float("nan")}, {"proposition": float("inf")}, {"proposition": "0.25"},
        {"proposition": True}, {"proposition": None}, {"Proposition": 0.25}, {"passage": 0.25}, {"": 0.25},
        {1: 0.25}, {"prop osition": 0.25}, [("proposition", 0.25)], 0.25, "proposition",
    ],
)
def test_bad_unit_coverage_is_refused(memory_repo, encoder, bad):
    with pytest.raises(InvalidInputError, match="unit_coverage"):
        Planner(memory_repo, COLLECTION, encoder, device="cpu", unit_coverage=bad)


def test_text_search_encodes_with_both_markers(planner, corpus, queries):
    q, sq = queries
    got = planner.search(QUERIES[0], "sentence", k=5, candidates=len(corpus))
    assert ranking(got) == [(pid, idx) for _, pid, idx in brute_force(q[0], sq[0], corpus, "sentence", k=5)]
    assert got.query == QUERIES[0]
    assert got[0].doc_id == "landmarks-0"


def test_fewer_candidates_rank_only_the_first_stage(planner, memory_repo, corpus, queries):
    q, sq = queries
    from agrame_vdb.planner import pool_query

    first = {c.id for c in memory_repo.candidates(COLLECTION, pool_query(q[1]), limit=5)}
    got = planner.search_vectors(q[1], sq[1], granularity="sentence", k=20, candidates=5)
    assert {r.passage_id for r in got} <= first
    assert got.timings.n_candidates == 5


def test_engine_maxsim_first_stage(planner, corpus, queries):
    q, sq = queries
    got = planner.search_vectors(
        q[3], sq[3], granularity="sentence", k=6, candidates=len(corpus), first_stage="maxsim", prefetch=len(corpus)
    )
    assert ranking(got) == [(pid, idx) for _, pid, idx in brute_force(q[3], sq[3], corpus, "sentence", k=6)]
    assert got.timings.first_stage == "maxsim"
    # the engine's MaxSim is the passage score the planner computes
    for r in got:
        assert r.first_stage_score == pytest.approx(r.passage_score, abs=1e-3)


# ----------------------------------------------------------------------------- every repository

ENGINE_URLS = {case.id: case.url for case in engines.pick("memory", "qdrant-local-memory", "qdrant-edge", "milvus-lite")}


@pytest.mark.parametrize("engine", list(ENGINE_URLS))
def test_the_same_query_ranks_the_same_on_every_repository(engine, tmp_path, corpus, queries, encoder):
    q, sq = queries
    try:
        repo = _filled(ENGINE_URLS[engine](tmp_path), corpus)
    except StoreUnavailableError as exc:
        pytest.skip(f"{engine} is not available here: {exc}")
    try:
        planner = Planner(repo, COLLECTION, encoder, device="cpu")
        flt = Filter.from_json({"topic": {"$in": ["landmarks", "technology", "sports"]}})
        for granularity in ("passage", "sentence", "proposition"):
            for b in (0, 3):
                got = planner.search_vectors(q[b], sq[b], granularity=granularity, k=5, candidates=len(corpus))
                want = brute_force(q[b], sq[b], corpus, granularity, k=5)
                assert ranking(got) == [(pid, idx) for _, pid, idx in want], (engine, granularity, b)
                np.testing.assert_allclose([r.score for r in got], [s for s, _, _ in want], rtol=1e-5, atol=1e-4)
                filtered = planner.search_vectors(q[b], sq[b], granularity=granularity, k=5, candidates=len(corpus), filter=flt)
                assert ranking(filtered) == [(pid, idx) for _, pid, idx in brute_force(q[b], sq[b], corpus, granularity, flt=flt, k=5)]
    finally:
        repo.close()


# ----------------------------------------------------------------------------- results


@pytest.mark.parametrize("granularity", ["passage", "sentence", "proposition"])
def test_spans_slice_back_to_the_text_and_results_serialise(planner, queries, corpus, granularity):
    q, sq = queries
    by_id = {p.id: p for p in corpus}
    for b in range(len(QUERIES)):
        got = planner.search_vectors(q[b], sq[b], granularity=granularity, k=10, candidates=len(corpus))
        assert len(got) == (10 if granularity != "proposition" else min(10, 8))
        for r in got:
            p = by_id[r.passage_id]
            assert r.passage_text == p.text and r.doc_id == p.doc_id and r.passage_index == p.index
            assert " ".join(r.passage_text[s:e] for s, e in r.char_spans) == r.text
            assert dict(r.metadata) == dict(p.metadata)
        row = json.loads(json.dumps(got.to_json()))
        assert {"passage_id", "doc_id", "granularity", "unit_index", "score", "text", "char_spans"} <= set(row["results"][0])
        assert set(row["timings"]) >= {"encode_ms", "candidates_ms", "fetch_ms", "rerank_ms", "total_ms"}


def _records():
    """One response with every kind of field: a unit result with matches and nested
    metadata, a passage result without, and timings to round."""
    from types import MappingProxyType

    from agrame_vdb.planner import SearchResult, Timings, TokenMatch

    m = TokenMatch(position=3, char_span=(4, 9), query_tokens=(0, 5), query_texts=("[Q]", "tower"), score=0.8125)
    m2 = TokenMatch(position=0, char_span=None, query_tokens=(1,), query_texts=(), score=-0.25)
    unit = SearchResult(
        rank=1, passage_id="d#0", doc_id="d", passage_index=0, granularity="sentence", unit_kind="sentence",
        unit_index=1, score=2.5, passage_score=1.5, unit_score=1.0, alpha=1.0, text="two three",
        char_spans=((4, 7), (8, 13)), passage_text="One two three",
        metadata=MappingProxyType({"lang": "en", "tags": ["a", "b"], "nested": {"x": [1, {"y": None}]}, "n": 2.5}),
        first_stage_score=0.75, matches=(m, m2),
    )
    passage = SearchResult(
        rank=2, passage_id="e#1", doc_id="e", passage_index=1, granularity="passage", unit_kind=None,
        unit_index=None, score=1.25, passage_score=1.25, unit_score=None, alpha=0.0, text="Four", char_spans=((0, 4),),
        passage_text="Four", metadata=MappingProxyType({}),
    )
    timings = Timings(
        encode_ms=1.23456, candidates_ms=0.0004, fetch_ms=2.0, rerank_ms=10.98765, total_ms=15.5555, n_candidates=7,
        n_fetched=3, cache_hits=2, first_stage="maxsim", batch_size=2,
    )
    return SearchResponse("when?", "sentence", 2, (unit, passage), timings)


def test_results_serialise_as_they_always_have():
    """The JSON of every record, key order included, as the hand-written to_json wrote it
    (tests/data/search_response.json was made by that code)."""
    from pathlib import Path

    from agrame_vdb.planner import Timings

    response = _records()
    got = {"with": response.to_json(), "without": response.to_json(timings=False), "default_timings": Timings().to_json()}
    golden = (Path(__file__).parent / "data" / "search_response.json").read_text()
    assert json.dumps(got, indent=1) + "\n" == golden
    assert "matches" not in got["with"]["results"][1] and "timings" not in got["without"]


@pytest.mark.parametrize("module", ["agrame_vdb.planner", "agrame_vdb.planner.plan", "agrame_vdb.planner.results"])
def test_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_filters_are_applied(planner, corpus, queries):
    q, sq = queries
    flt = {"$and": [{"topic": "science"}, {"year": {"$gte": 2002}}]}
    got = planner.search_vectors(q[4], sq[4], granularity="sentence", k=10, candidates=len(corpus), filter=flt)
    assert got.results and all(r.metadata["topic"] == "science" and r.metadata["year"] >= 2002 for r in got)
    parsed = Filter.from_json(flt)
    assert ranking(got) == [(pid, idx) for _, pid, idx in brute_force(q[4], sq[4], corpus, "sentence", flt=parsed, k=10)]
    # a filter as a JSON string, and one that matches nothing
    assert ranking(planner.search_vectors(q[4], sq[4], granularity="sentence", k=10, filter=json.dumps(flt))) == ranking(got)
    assert len(planner.search_vectors(q[4], granularity="passage", filter={"topic": "nope"})) == 0


def test_matched_tokens_fall_inside_the_unit(planner, corpus, queries):
    got = planner.search(QUERIES[0], "sentence", k=3, matches=True)
    for r in got:
        assert r.matches
        assert sorted(i for m in r.matches for i in m.query_tokens) == list(range(32))
        for m in r.matches:
            if m.char_span is not None:
                s, e = m.char_span
                assert any(us <= s and e <= ue for us, ue in r.char_spans), (m, r.char_spans)
            assert len(m.query_texts) == len(m.query_tokens) and -1.01 <= m.score <= 1.01
    # the query's words find their twins in the passage text
    matched = {r.passage_text[m.char_span[0]:m.char_span[1]].lower() for m in got[0].matches if m.char_span}
    assert "1889" in matched or "built" in matched or "completed" in matched
    assert json.loads(json.dumps(got.to_json()))["results"][0]["matches"][0]["position"] >= 0


def test_passage_granularity_spans_cover_the_passage(planner):
    got = planner.search(QUERIES[2], k=2)
    assert got[0].char_spans == ((0, len(got[0].passage_text)),) and got[0].text == got[0].passage_text


def test_unknown_unit_kind_gives_no_results(planner, queries):
    q, sq = queries
    assert len(planner.search_vectors(q[0], sq[0], granularity="claim")) == 0


def test_bad_input_is_rejected_before_any_work(planner, memory_repo, encoder):
    for bad in ("Sentence", "", "a b", 3, "passage;"):
        with pytest.raises(InvalidInputError):
            check_granularity(bad)
    with pytest.raises(InvalidInputError):
        planner.search("q", k=0)
    with pytest.raises(InvalidInputError):
        planner.search("q", candidates=0)
    with pytest.raises(InvalidInputError):
        planner.search("q", alpha=float("nan"))
    with pytest.raises(InvalidFilterError):
        planner.search("q", filter="{not json")
    with pytest.raises(InvalidFilterError):
        planner.search("q", filter={"year": {"$regex": "x"}})
    with pytest.raises(InvalidInputError):
        planner.search("   ")
    with pytest.raises(InvalidInputError):
        planner.search(["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        planner.search_vectors(np.zeros((4, 7), dtype=np.float32))
    for not_numbers in ([[""]], [["a"] * 128], [[0.0] * 128, [0.0] * 3]):  # strings, ragged rows
        with pytest.raises(InvalidInputError, match="numeric"):
            planner.search_vectors(not_numbers)
    with pytest.raises(InvalidInputError):
        planner.search("q", first_stage="hnsw")
    with pytest.raises(InvalidInputError):
        Planner(memory_repo, COLLECTION, device="cpu").search("needs an encoder")
    with pytest.raises(CollectionNotFoundError):
        Planner(memory_repo, "missing", encoder, device="cpu")


def test_maxsim_first_stage_needs_an_engine_maxsim(memory_repo, encoder, monkeypatch):
    from dataclasses import replace

    caps = replace(memory_repo.capabilities(), maxsim_rerank=False)
    monkeypatch.setattr(memory_repo, "capabilities", lambda: caps)
    with pytest.raises(UnsupportedOperationError):
        Planner(memory_repo, COLLECTION, encoder, first_stage="maxsim", device="cpu")


# ----------------------------------------------------------------------------- batches, cache


def test_a_batch_equals_one_query_at_a_time(planner):
    batch = planner.search_batch(QUERIES, "sentence", k=4)
    assert [r.query for r in batch] == QUERIES
    for text, response in zip(QUERIES, batch):
        single = planner.search(text, "sentence", k=4)
        assert ranking(response) == ranking(single)
        np.testing.assert_allclose([r.score for r in response], [r.score for r in single], rtol=1e-5)
        assert response.timings.batch_size == len(QUERIES)


class _Unversioned:
    """A repository that keeps no write versions (as Milvus): the cache checks scores."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def capabilities(self):
        from dataclasses import replace

        return replace(self.inner.capabilities(), versions=False)

    def candidates(self, collection, pooled, **kwargs):
        from dataclasses import replace

        assert "with_versions" not in kwargs
        return [replace(c, version=None) for c in self.inner.candidates(collection, pooled, **kwargs)]

    def fetch_tokens(self, collection, ids):
        from dataclasses import replace

        batch = self.inner.fetch_tokens(collection, ids)
        return replace(batch, versions=(None,) * len(batch))


@pytest.mark.parametrize("versions", [True, False], ids=["versions", "scores"])
def test_the_cache_serves_hot_passages_and_notices_rewrites(corpus, encoder, queries, versions):
    q, sq = queries
    repo = _filled("memory://", corpus)
    if not versions:
        repo = _Unversioned(repo)
    cache = TokenCache(max_bytes=64 << 20)
    planner = Planner(repo, COLLECTION, encoder, device="cpu", cache=cache)
    first = planner.search_vectors(q[0], sq[0], granularity="sentence", k=5, candidates=len(corpus))
    assert first.timings.cache_hits == 0 and first.timings.n_fetched == len(corpus)
    second = planner.search_vectors(q[0], sq[0], granularity="sentence", k=5, candidates=len(corpus))
    assert second.timings.cache_hits == len(corpus) and second.timings.n_fetched <= 5
    assert ranking(second) == ranking(first)
    assert [r.score for r in second] == [r.score for r in first]

    # rewrite the winning passage with other vectors: the cached copy must not be used
    winner = next(p for p in corpus if p.id == first[0].passage_id)
    other = next(p for p in corpus if p.doc_id == "food-0")
    rewritten = StoredPassage(winner.id, winner.doc_id, winner.index, other.tokens, other.pooled, other.units, other.text, dict(other.metadata))
    repo.upsert(COLLECTION, [rewritten])
    now = [rewritten if p.id == winner.id else p for p in corpus]
    third = planner.search_vectors(q[0], sq[0], granularity="sentence", k=5, candidates=len(corpus))
    assert ranking(third) == [(pid, idx) for _, pid, idx in brute_force(q[0], sq[0], now, "sentence", k=5)]
    assert cache.rejected >= 1

    # same vectors, other units (re-segmented) on a result passage: seen on the fresh read
    top = next(p for p in now if p.id == third[0].passage_id)
    merged = type(top.units[0])("sentence", 0, ((0, len(top.text)),), ((1, top.n_tokens),))
    resegmented = StoredPassage(top.id, top.doc_id, top.index, top.tokens, top.pooled, (merged,), top.text, dict(top.metadata))
    repo.upsert(COLLECTION, [resegmented])
    now = [resegmented if p.id == top.id else p for p in now]
    fourth = planner.search_vectors(q[0], sq[0], granularity="sentence", k=5, candidates=len(corpus))
    assert ranking(fourth) == [(pid, idx) for _, pid, idx in brute_force(q[0], sq[0], now, "sentence", k=5)]

    # deleted passages vanish from the results
    repo.delete(COLLECTION, [fourth[0].passage_id])
    fifth = planner.search_vectors(q[0], sq[0], granularity="sentence", k=5, candidates=len(corpus))
    assert fourth[0].passage_id not in {r.passage_id for r in fifth}
    repo.close()


class _Recording:
    """Records the repository's reads; ``after_tokens`` runs once after the first ``fetch_tokens``."""

    def __init__(self, inner, after_tokens=None):
        self.inner = inner
        self.after_tokens = after_tokens
        self.reads: list[tuple[str, int]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def fetch(self, collection, ids, **kwargs):
        self.reads.append(("fetch", len(ids)))
        return self.inner.fetch(collection, ids, **kwargs)

    def fetch_tokens(self, collection, ids):
        self.reads.append(("fetch_tokens", len(ids)))
        batch = self.inner.fetch_tokens(collection, ids)
        if self.after_tokens is not None:
            hook, self.after_tokens = self.after_tokens, None
            hook()
        return batch


def test_scoring_reads_tokens_only_and_results_read_the_top_k_whole(memory_repo, planner, encoder, corpus, queries):
    q, sq = queries
    repo = _Recording(memory_repo)
    lean = Planner(repo, COLLECTION, encoder, device="cpu")
    for granularity in ("passage", "sentence"):
        repo.reads.clear()
        got = lean.search_vectors(q[0], sq[0], granularity=granularity, k=4, candidates=len(corpus))
        assert repo.reads[0] == ("fetch_tokens", len(corpus))
        assert repo.reads[1:] == [("fetch", len({r.passage_id for r in got}))]
        want = planner.search_vectors(q[0], sq[0], granularity=granularity, k=4, candidates=len(corpus))
        assert [r.to_json() for r in got] == [r.to_json() for r in want]
        assert got.timings.n_fetched == len(corpus)


def test_a_repository_without_fetch_tokens_is_read_whole(memory_repo, planner, encoder, corpus, queries):
    class Old:  # a repository from before fetch_tokens
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            if name == "fetch_tokens":
                raise AttributeError(name)
            return getattr(self.inner, name)

    q, sq = queries
    old = Planner(Old(memory_repo), COLLECTION, encoder, device="cpu")
    got = old.search_vectors(q[2], sq[2], granularity="sentence", k=5, candidates=len(corpus))
    assert ranking(got) == ranking(planner.search_vectors(q[2], sq[2], granularity="sentence", k=5, candidates=len(corpus)))


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache"])
def test_a_passage_rewritten_between_the_two_reads_is_scored_again(corpus, encoder, queries, cached):
    q, sq = queries
    inner = _filled("memory://", corpus)
    first = Planner(inner, COLLECTION, encoder, device="cpu").search_vectors(q[0], sq[0], granularity="sentence", k=5)
    winner = next(p for p in corpus if p.id == first[0].passage_id)
    other = next(p for p in corpus if p.doc_id == "food-0")
    rewritten = StoredPassage(winner.id, winner.doc_id, winner.index, other.tokens, other.pooled, other.units, other.text, dict(other.metadata))
    repo = _Recording(inner, after_tokens=lambda: inner.upsert(COLLECTION, [rewritten]))
    planner = Planner(repo, COLLECTION, encoder, device="cpu", cache=TokenCache() if cached else None)
    got = planner.search_vectors(q[0], sq[0], granularity="sentence", k=5, candidates=len(corpus))
    now = [rewritten if p.id == winner.id else p for p in corpus]
    # scored on what the results show: the rewritten passage's vectors, units and text
    assert ranking(got) == [(pid, idx) for _, pid, idx in brute_force(q[0], sq[0], now, "sentence", k=5)]
    by_id = {p.id: p for p in now}
    for r in got:
        assert r.passage_text == by_id[r.passage_id].text
    assert [kind for kind, _ in repo.reads].count("fetch_tokens") == 2  # the stale passage read again
    inner.close()


def test_the_cache_is_bounded():
    cache = TokenCache(max_bytes=1000)
    from agrame_vdb.planner.cache import Entry

    for i in range(10):
        cache.put("c", f"id{i}", Entry(np.zeros((2, 100), np.float32), (), np.ones(2), 400))
    assert len(cache) == 2 and cache.nbytes == 800 and cache.evictions == 8
    assert cache.get("c", "id9") is not None and cache.get("c", "id0") is None
    assert cache.invalidate("c") == 2 and len(cache) == 0
    with pytest.raises(InvalidInputError):
        TokenCache(max_bytes=0)


# ----------------------------------------------------------------------------- concurrency


def test_shared_between_threads(planner):
    cases = [(QUERIES[i % len(QUERIES)], ("passage", "sentence")[i % 2]) for i in range(8)]
    expected = [ranking(planner.search(text, g, k=4)) for text, g in cases]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda c: ranking(planner.search(c[0], c[1], k=4)), cases))
    assert got == expected


def test_shared_between_threads_with_a_cache_on_qdrant_edge(tmp_path, corpus, encoder):
    repo = _filled(f"qdrant-edge://{tmp_path}/edge", corpus)
    try:
        planner = Planner(repo, COLLECTION, encoder, device="cpu", cache=TokenCache(), candidates=12)
        expected = [ranking(planner.search(t, "sentence", k=3)) for t in QUERIES]
        with ThreadPoolExecutor(max_workers=5) as pool:
            got = list(pool.map(lambda t: ranking(planner.search(t, "sentence", k=3)), QUERIES * 3))
        assert got == expected * 3
    finally:
        repo.close()


def test_asyncio_variants(planner):
    async def main():
        one = await planner.asearch(QUERIES[1], "sentence", k=3)
        many = await asyncio.gather(*(planner.asearch(t, "passage", k=3) for t in QUERIES))
        batch = await planner.asearch_batch(QUERIES, "sentence", k=3)
        return one, many, batch

    one, many, batch = asyncio.run(main())
    assert ranking(one) == ranking(planner.search(QUERIES[1], "sentence", k=3))
    assert [ranking(r) for r in many] == [ranking(planner.search(t, "passage", k=3)) for t in QUERIES]
    assert [ranking(r) for r in batch] == [ranking(planner.search(t, "sentence", k=3)) for t in QUERIES]


class _Threads:
    """Records the thread (and a context variable) of every repository read; ``gate``
    (a callable) runs in each ``candidates`` call before it answers."""

    def __init__(self, inner, gate=None):
        self.inner = inner
        self.gate = gate
        self.seen: list[tuple[str, str, str | None]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _record(self, kind):
        self.seen.append((kind, threading.current_thread().name, _REQUEST.get()))

    def candidates(self, collection, pooled, **kwargs):
        self._record("candidates")
        if self.gate is not None:
            self.gate()
        return self.inner.candidates(collection, pooled, **kwargs)

    def fetch_tokens(self, collection, ids, **kwargs):
        self._record("fetch_tokens")
        return self.inner.fetch_tokens(collection, ids, **kwargs)

    def fetch(self, collection, ids, **kwargs):
        self._record("fetch")
        return self.inner.fetch(collection, ids, **kwargs)


_REQUEST: contextvars.ContextVar[str | None] = contextvars.ContextVar("request", default=None)


@pytest.mark.parametrize("executor", [False, True], ids=["asyncio-default", "own-executor"])
def test_asyncio_runs_the_sync_search_in_a_worker_thread(memory_repo, encoder, planner, executor):
    repo = _Threads(memory_repo)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="planner-pool") if executor else None
    try:
        async_planner = Planner(repo, COLLECTION, encoder, device="cpu", cache=TokenCache(), executor=pool)

        async def main():
            _REQUEST.set("req-1")
            return await async_planner.asearch(QUERIES[2], "sentence", k=3, matches=True), threading.current_thread().name

        got, loop_thread = asyncio.run(main())
    finally:
        if pool is not None:
            pool.shutdown()
    want = planner.search(QUERIES[2], "sentence", k=3, matches=True)
    assert got.to_json(timings=False) == want.to_json(timings=False)
    assert [kind for kind, _, _ in repo.seen] == ["candidates", "fetch_tokens", "fetch"]
    # every read off the event loop's thread, in the planner's executor when it has one,
    # and with the caller's context variables
    assert all(name != loop_thread for _, name, _ in repo.seen)
    assert all(name.startswith("planner-pool") for _, name, _ in repo.seen) == executor
    assert {request for _, _, request in repo.seen} == {"req-1"}


def test_concurrent_awaits_run_side_by_side(memory_repo, encoder, planner):
    """Three searches, each waiting in ``candidates`` for the other two: they finish
    only if they run at the same time (on one thread, the barrier would break)."""
    barrier = threading.Barrier(3, timeout=30)
    repo = _Threads(memory_repo, gate=barrier.wait)
    async_planner = Planner(repo, COLLECTION, encoder, device="cpu")

    async def main():
        return await asyncio.gather(*(async_planner.asearch(t, "sentence", k=3) for t in QUERIES[:3]))

    got = asyncio.run(main())
    assert [r.to_json(timings=False) for r in got] == [planner.search(t, "sentence", k=3).to_json(timings=False) for t in QUERIES[:3]]
    assert len({name for kind, name, _ in repo.seen if kind == "candidates"}) == 3


def test_a_timed_out_await_leaves_the_event_loop_free(memory_repo, encoder, planner):
    release = threading.Event()
    repo = _Threads(memory_repo, gate=lambda: release.wait(30))
    async_planner = Planner(repo, COLLECTION, encoder, device="cpu")

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(async_planner.asearch(QUERIES[0], "sentence", k=3), timeout=0.2)
        ticks = 0
        for _ in range(3):  # the loop still runs while the search waits in its thread
            await asyncio.sleep(0)
            ticks += 1
        release.set()
        return ticks, await async_planner.asearch(QUERIES[0], "sentence", k=3)

    ticks, again = asyncio.run(main())
    assert ticks == 3
    assert again.to_json(timings=False) == planner.search(QUERIES[0], "sentence", k=3).to_json(timings=False)


def test_asyncio_rejects_bad_input_before_any_work(memory_repo, encoder):
    repo = _Threads(memory_repo)
    async_planner = Planner(repo, COLLECTION, encoder, device="cpu")
    for call in (
        lambda: async_planner.asearch(3),  # type: ignore[arg-type]
        lambda: async_planner.asearch("q", granularity="Sentence"),
        lambda: async_planner.asearch_batch("one string"),
        lambda: async_planner.asearch("q", k=0),
    ):
        with pytest.raises(InvalidInputError):
            asyncio.run(call())
    with pytest.raises(InvalidInputError):
        asyncio.run(Planner(repo, COLLECTION, device="cpu").asearch("needs an encoder"))
    assert repo.seen == []


# ----------------------------------------------------------------------------- the command

runner = CliRunner()


@pytest.fixture(scope="module")
def edge_store(tmp_path_factory, corpus):
    path = tmp_path_factory.mktemp("cli") / "store"
    repo = _filled(f"qdrant-edge://{path}", corpus)
    repo.close()
    return f"qdrant-edge://{path}"


def test_cli_search_json(edge_store):
    result = runner.invoke(
        app_cli(),
        ["search", QUERIES[0], "--collection", COLLECTION, "--store", edge_store, "--granularity", "sentence",
         "-k", "3", "--candidates", "20", "--alpha", "0.5", "--filter", '{"topic": "landmarks"}', "--json",
         "--device", "cpu", "--model", "minilm-frozen-128"],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and len(rows) == 3
    for row in rows:
        assert {"passage_id", "doc_id", "granularity", "unit_index", "score", "text", "char_spans"} <= set(row)
        assert row["granularity"] == "sentence" and row["metadata"]["topic"] == "landmarks"
        assert " ".join(row["passage_text"][s:e] for s, e in row["char_spans"]) == row["text"]
        assert row["score"] == pytest.approx(row["unit_score"] + 0.5 * row["passage_score"], abs=1e-4)
    assert rows[0]["doc_id"] == "landmarks-0"


def test_cli_search_shows_snippets_and_writes_an_html_page_of_the_results_spans(edge_store, tmp_path):
    from .test_display import _Segments

    page = tmp_path / "results.html"
    common = [QUERIES[0], "--collection", COLLECTION, "--store", edge_store, "--granularity", "sentence", "-k", "3",
              "--candidates", "20", "--device", "cpu", "--model", "minilm-frozen-128", "--matches"]
    shown = runner.invoke(app_cli(), ["search", *common, "--html", str(page)], env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    rows = json.loads(runner.invoke(app_cli(), ["search", *common, "--json"]).stdout)
    parser = _Segments()
    parser.feed(page.read_text(encoding="utf-8"))
    for row in rows:  # the shaded segments of each result are exactly its char_spans
        assert sorted(parser.covered[row["rank"]]) == sorted(i for s, e in row["char_spans"] for i in range(s, e))
        assert row["text"] in shown.stdout  # the unit, highlighted inside its snippet
    marked: dict[str, set[int]] = {}
    for row in rows:  # matched tokens underlined: per passage, the union of its results' matches
        marked.setdefault(row["passage_id"], set()).update(
            i for m in row["matches"] if m["char_span"] for i in range(*m["char_span"]))
    assert parser.marked == {k: v for k, v in marked.items() if v} and parser.marked


def test_cli_search_queries_file_and_explain(edge_store, tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q{i}", "text": t}) for i, t in enumerate(QUERIES[:3])) + "\n")
    result = runner.invoke(
        app_cli(),
        ["search", "--queries", str(path), "--collection", COLLECTION, "--store", edge_store, "-k", "2", "--json",
         "--explain", "--device", "cpu", "--model", "minilm-frozen-128"],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["id"] for line in lines] == ["q0", "q1", "q2"]
    assert all(len(line["results"]) == 2 and line["results"][0]["granularity"] == "passage" for line in lines)
    assert all(set(line["timings"]) >= {"encode_ms", "candidates_ms", "fetch_ms", "rerank_ms"} for line in lines)

    table = runner.invoke(
        app_cli(),
        ["search", QUERIES[1], "-c", COLLECTION, "--store", edge_store, "-g", "sentence", "-k", "2", "--explain", "--device", "cpu", "--model", "minilm-frozen-128"],
    )
    assert table.exit_code == 0, table.output
    assert "Python" in table.stdout and "rerank" in table.stdout


def test_cli_search_errors_exit_2(edge_store):
    bad_filter = runner.invoke(app_cli(), ["search", "q", "-c", COLLECTION, "--store", edge_store, "--filter", "{nope", "--device", "cpu"])
    assert bad_filter.exit_code == 2 and "filter" in bad_filter.output
    missing = runner.invoke(app_cli(), ["search", "q", "-c", "nothere", "--store", edge_store, "--device", "cpu"])
    assert missing.exit_code == 2 and "nothere" in missing.output
    neither = runner.invoke(app_cli(), ["search", "-c", COLLECTION, "--store", edge_store])
    assert neither.exit_code == 2


def app_cli():
    from agrame_vdb.cli import app

    return app
