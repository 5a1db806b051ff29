"""Values at the edges, the same on every engine (issue 14, low items).

- Names and values ending in a newline: a name is refused (``$`` let ``"docs\\n"``
  through), a value is filtered exactly (Milvus put it verbatim into an expression).
- Filters nested deeper than MAX_FILTER_DEPTH are refused with InvalidFilterError;
  the deepest allowed one filters as the hand-computed reference.
- Integers beyond ±2**53 (MAX_EXACT_INT) in filters and metadata are refused with
  the same typed error everywhere; ±2**53 themselves filter identically.
- Oversized metadata, text and doc ids are refused on every engine before any write.

Expected sets come from Python predicates over the written metadata (the reference).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from ..errors import InvalidFilterError, InvalidInputError, InvalidMetadataError, InvalidSchemaError
from ..repository import (
    MAX_EXACT_INT,
    MAX_FILTER_DEPTH,
    MAX_METADATA_BYTES,
    MAX_STRING_BYTES,
    CollectionSchema,
    Eq,
    Filter,
    In,
    Not,
    Range,
    StoredPassage,
)

from .data import DIM, make_passages, unit_vectors
from .engines import EngineFixtures

BIG = MAX_EXACT_INT  # 2**53
# integer metadata at and next to the limits, as scalars and inside lists
EDGE_INTS = [BIG, -BIG, BIG - 1, -(BIG - 1), 0, 1]


def _edge_passages() -> list[StoredPassage]:
    rng = np.random.default_rng(7)
    out = []
    for i, n in enumerate(EDGE_INTS):
        meta = {"n": n, "ns": [n, 5], "lang": "en\n" if i % 2 else "en", "tag": f"t{i}\n"}
        out.append(StoredPassage.create(f"edge-{i}\n" if i == 0 else f"edge-{i}", 0, unit_vectors(rng, 3), text="x",
                                        metadata=meta))
    return out


def _check(repo, name, passages, flt, predicate):
    expected = {p.id for p in passages if predicate(p)}
    assert repo.count(name, flt) == len(expected), flt
    assert set(repo.iter_ids(name, filter=flt, page=5)) == expected, flt
    got = {c.id for c in repo.candidates(name, passages[0].pooled, limit=len(passages), filter=flt)}
    assert got == expected, flt


def _ints(p, key):
    v = p.metadata.get(key)
    vals = v if isinstance(v, list) else [v] if v is not None else []
    return [x for x in vals if isinstance(x, int) and not isinstance(x, bool)]


def _nested_not(depth: int) -> Filter:
    f: Filter = Eq("lang", "en")
    for _ in range(depth - 1):
        f = Not(f)
    return f


def _nothing_lost(repo, name, passages, good):
    assert repo.count(name) == len(passages)
    assert repo.fetch(name, [good.id]).missing == (good.id,)
    got = repo.fetch(name, [p.id for p in passages], strict=True).passages
    for a, b in zip(got, passages):
        assert a.id == b.id and dict(a.metadata) == dict(b.metadata) and a.text == b.text
        np.testing.assert_allclose(a.tokens, b.tokens, atol=1e-6)


class ValueTests(EngineFixtures):
    """Values at the edges: the same on every engine."""

    @pytest.fixture(scope="class")
    @classmethod
    def edges(cls, shared_store, shared_repo):
        """(collection name, repository, passages): 12 passages and the edge ones."""
        name = f"{shared_store.collection}_edges"
        shared_repo.create_collection(CollectionSchema(name, DIM, indexed_fields={"n": "integer"}))
        passages = make_passages(12) + _edge_passages()
        shared_repo.upsert(name, passages)
        return name, shared_repo, passages

    # --------------------------------------------------------------------------- 1. trailing newlines

    @pytest.mark.parametrize("tail", ["\n", "\r\n", "\n\n", "\x00", " "])
    def test_names_with_a_trailing_newline_are_refused(self, edges, tail):
        name, repo, passages = edges
        before = repo.list_collections()
        with pytest.raises(InvalidSchemaError):
            repo.create_collection(CollectionSchema(name + tail, DIM))
        with pytest.raises(InvalidSchemaError):
            repo.count(name + tail)  # the real collection's name, then the tail
        with pytest.raises(InvalidSchemaError):
            repo.drop_collection(name + tail)
        with pytest.raises(InvalidSchemaError):
            repo.create_alias("al" + tail, name)
        with pytest.raises(InvalidFilterError):
            Eq("lang" + tail, "en")
        with pytest.raises(InvalidFilterError):
            Filter.from_json({"source.name" + tail: "wiki"})
        assert repo.list_collections() == before
        assert repo.count(name) == len(passages)

    def test_values_ending_in_a_newline_filter_exactly(self, edges):
        name, repo, passages = edges
        _check(repo, name, passages, Eq("lang", "en\n"), lambda p: p.metadata["lang"] == "en\n")
        _check(repo, name, passages, Eq("lang", "en"), lambda p: p.metadata["lang"] == "en")
        _check(repo, name, passages, In("tag", ("t1\n", "t2")), lambda p: p.metadata.get("tag") == "t1\n")
        _check(repo, name, passages, Eq("doc_id", "edge-0\n"), lambda p: p.doc_id == "edge-0\n")
        _check(repo, name, passages, In("doc_id", ("edge-0\n", "edge-1")), lambda p: p.doc_id in ("edge-0\n", "edge-1"))

    # --------------------------------------------------------------------------- 2. deep filters

    def test_filter_depth_is_limited_with_a_typed_error(self, edges):
        name, repo, passages = edges
        deepest = _nested_not(MAX_FILTER_DEPTH)  # an odd number of Not over Eq when the depth is even
        flips = (MAX_FILTER_DEPTH - 1) % 2 == 1
        _check(repo, name, passages, deepest, lambda p: (p.metadata["lang"] == "en") != flips)
        with pytest.raises(InvalidFilterError, match="MAX_FILTER_DEPTH"):
            Not(deepest)
        for depth in (MAX_FILTER_DEPTH + 1, 10_000):
            text = '{"$not": ' * (depth - 1) + '{"lang": "en"}' + "}" * (depth - 1)
            with pytest.raises(InvalidFilterError, match="MAX_FILTER_DEPTH"):
                Filter.from_json(text)
            obj: dict = {"lang": "en"}
            for _ in range(depth - 1):
                obj = {"$not": obj}
            with pytest.raises(InvalidFilterError, match="MAX_FILTER_DEPTH"):
                Filter.from_json(obj)
        assert Filter.from_json(json.dumps(deepest.to_json())) == deepest
        assert repo.count(name) == len(passages)

    # --------------------------------------------------------------------------- 3. integer limits

    def test_integer_limits_are_the_same_on_every_engine(self, edges):
        name, repo, passages = edges
        cases = [
            (Eq("n", BIG), lambda p: BIG in _ints(p, "n")),
            (Eq("n", -BIG), lambda p: -BIG in _ints(p, "n")),
            (Eq("ns", BIG - 1), lambda p: BIG - 1 in _ints(p, "ns")),
            (In("n", (BIG, -(BIG - 1))), lambda p: bool({BIG, -(BIG - 1)} & set(_ints(p, "n")))),
            (Range("n", gte=BIG), lambda p: any(v >= BIG for v in _ints(p, "n"))),
            (Range("n", gt=BIG - 1), lambda p: any(v > BIG - 1 for v in _ints(p, "n"))),
            (Range("n", lte=-BIG), lambda p: any(v <= -BIG for v in _ints(p, "n"))),
            (Range("n", lt=-(BIG - 1)), lambda p: any(v < -(BIG - 1) for v in _ints(p, "n"))),
            (Range("ns", gt=BIG - 1), lambda p: any(v > BIG - 1 for v in _ints(p, "ns"))),
            (Range("ns", lt=-(BIG - 1), gte=-BIG), lambda p: any(-BIG <= v < -(BIG - 1) for v in _ints(p, "ns"))),
            (Range("n", gte=-BIG, lte=BIG), lambda p: bool(_ints(p, "n"))),
            (Range("n", gt=float(BIG - 1)), lambda p: any(v > BIG - 1 for v in _ints(p, "n"))),
        ]
        for flt, predicate in cases:
            _check(repo, name, passages, flt, predicate)
        # one past the limit: the same typed error everywhere, built directly or parsed
        for over in (BIG + 1, -(BIG + 1), 2**63, 2**64):
            for make in (
                lambda v: Eq("n", v),
                lambda v: In("n", (1, v)),
                lambda v: Range("n", gte=v),
                lambda v: Range("ns", lt=v),
                lambda v: Filter.from_json({"n": {"$gt": v}}),
                lambda v: Filter.from_json(json.dumps({"n": {"$nin": [v]}})),
            ):
                with pytest.raises(InvalidFilterError, match="2\\*\\*53"):
                    make(over)
        # and in metadata: refused when built, and at the write when grown in place after
        with pytest.raises(InvalidMetadataError, match="2\\*\\*53"):
            replace(passages[0], metadata={"n": BIG + 1})
        good = replace(make_passages(1, seed=90)[0], id="00000000-0000-4000-8000-0000000000aa")
        for over in (BIG + 1, -(BIG + 1), 2**63 - 1):
            bad = replace(passages[1], metadata={"ns": [0]})
            bad.metadata["ns"][0] = over
            with pytest.raises(InvalidMetadataError, match="2\\*\\*53"):
                repo.upsert(name, [good, bad])
        with pytest.raises(InvalidInputError, match="2\\*\\*53"):
            StoredPassage.create("d", BIG + 1, unit_vectors(np.random.default_rng(0), 2))
        _nothing_lost(repo, name, passages, good)

    # --------------------------------------------------------------------------- 4. size limits

    def test_size_limits_are_the_same_on_every_engine(self, edges):
        name, repo, passages = edges
        good = replace(make_passages(1, seed=91)[0], id="00000000-0000-4000-8000-0000000000bb")
        target = passages[2]  # the bad records overwrite a stored passage: it must survive

        def grown(value: str) -> StoredPassage:
            bad = replace(target, metadata={"blob": ["x"]})
            bad.metadata["blob"][0] = value  # changed in place after the checks at construction
            return bad

        with pytest.raises(InvalidMetadataError, match="MAX_METADATA_BYTES"):
            replace(target, metadata={"blob": "x" * MAX_METADATA_BYTES})
        for bad in (
            grown("x" * MAX_METADATA_BYTES),
            grown("x" * (50 * 2**20)),  # the 50 MB value Edge took
            grown("é" * (MAX_METADATA_BYTES // 6 + 1)),  # as JSON, \u00e9: 6 bytes each
        ):
            with pytest.raises(InvalidMetadataError, match="MAX_METADATA_BYTES"):
                repo.upsert(name, [good, bad])
        for bad in (
            replace(target, text="é" * (MAX_STRING_BYTES // 2 + 1), units=()),
            StoredPassage.create("d" * (MAX_STRING_BYTES + 1), 0, target.tokens),
        ):
            with pytest.raises(InvalidInputError, match="MAX_STRING_BYTES"):
                repo.upsert(name, [good, bad])
        # just under the limits is written (and then the passage is put back)
        room = MAX_METADATA_BYTES - len('{"blob":""}')
        fits = replace(target, metadata={"blob": "x" * room})
        assert repo.upsert(name, [fits]) == 1
        assert len(repo.fetch(name, [target.id]).passages[0].metadata["blob"]) == room
        repo.upsert(name, [target])
        _nothing_lost(repo, name, passages, good)
