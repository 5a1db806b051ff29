"""Bad values at the edges (issue 14, low items), generated with hypothesis.

Each input must end in the one typed error its class calls for (not just any
AgrameError), checked by :func:`harness.typed_or_ok` and counted in
``bad_inputs_tried``; the write classes also count ``passages_lost`` (must be 0):

- names (collections, aliases, filter fields, unit kinds) ending in a newline or
  another control or space character;
- filters nested past MAX_FILTER_DEPTH, as JSON text, as dicts and as Python objects;
- integers past ±2**53 (MAX_EXACT_INT) in filters and metadata;
- metadata past MAX_METADATA_BYTES as JSON, on construction and grown in place;
- record files whose metadata nests hundreds of levels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agrame_vdb import connect
from agrame_vdb.documents import read_documents
from agrame_vdb.errors import (
    InvalidFilterError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidSchemaError,
    InvalidUnitError,
)
from agrame_vdb.repository import (
    MAX_EXACT_INT,
    MAX_FILTER_DEPTH,
    MAX_METADATA_BYTES,
    And,
    CollectionSchema,
    Eq,
    Filter,
    In,
    Not,
    Or,
    Range,
    StoredPassage,
    validate_metadata,
)
from agrame_vdb.units import Unit

from . import report
from .harness import typed_or_ok

DIM = 8
EXAMPLES = 400 if report.FULL else 40
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not report.FULL, database=None,
                    suppress_health_check=list(HealthCheck))
N_STORED = 5


def _passage(i: int, **meta) -> StoredPassage:
    rng = np.random.default_rng(i)
    return StoredPassage.create(f"doc-{i}", 0, rng.normal(size=(3, DIM)).astype(np.float32), text="some text",
                                metadata={"lang": "en", "year": 2000 + i, **meta})


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    root = tmp_path_factory.mktemp("values") / "store"
    repo = connect(f"qdrant-edge://{root}")
    repo.create_collection(CollectionSchema("c", dim=DIM, indexed_fields={"lang": "keyword", "year": "integer"}))
    repo.upsert("c", [_passage(i) for i in range(N_STORED)])
    yield repo, root
    repo.close()


def _expect(out, error: type[BaseException], what: str) -> None:
    assert isinstance(out.error, error), f"{what}: expected {error.__name__}, got {out.error!r}"


def _lost(repo) -> int:
    """Stored passages missing or changed (the module writes N_STORED and keeps them)."""
    want = {p.id: p for p in (_passage(i) for i in range(N_STORED))}
    got = {p.id: p for p in repo.fetch("c", list(want)).passages}
    changed = [i for i, p in got.items() if dict(p.metadata) != dict(want[i].metadata)]
    return len(want) - len(got) + len(changed) + max(0, repo.count("c") - N_STORED)


# ------------------------------------------------------------------ names

identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
kinds = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
tails = st.text(alphabet=st.characters(categories=["Cc", "Zs", "Zl", "Zp"]), min_size=1, max_size=3)
tails = st.one_of(st.sampled_from(["\n", "\r\n", "\n\n", "\x00", " "]), tails)


@SETTINGS
@given(base=identifiers, kind=kinds, tail=tails)
def test_names_with_trailing_control_characters(edge, base, kind, tail):
    repo, root = edge
    name = base + tail
    for what, fn, error in (
        (f"CollectionSchema({name!r})", lambda: CollectionSchema(name, DIM), InvalidSchemaError),
        (f"create_collection({name!r})", lambda: repo.create_collection(CollectionSchema(name, DIM)), InvalidSchemaError),
        (f"count({'c' + tail!r})", lambda: repo.count("c" + tail), InvalidSchemaError),
        (f"create_alias({name!r})", lambda: repo.create_alias(name, "c"), InvalidSchemaError),
        (f"Eq({name!r})", lambda: Eq(name, "x"), InvalidFilterError),
        (f"from_json({name!r})", lambda: Filter.from_json(json.dumps({f"a.{name}": 1})), InvalidFilterError),
        (f"Unit({kind + tail!r})", lambda: Unit(kind + tail, 0, ((0, 1),)), InvalidUnitError),
    ):
        _expect(typed_or_ok(fn, what), error, what)


def test_no_bad_name_reached_the_store(edge):
    repo, root = edge
    assert repo.list_collections() == ["c"]
    assert repo.list_aliases() == {}
    odd = [p.name for p in root.rglob("*") if not p.name.isprintable() or p.name != p.name.strip()]
    assert odd == []


# ------------------------------------------------------------------ deep filters

ops = st.lists(st.sampled_from(["$not", "$and", "$or"]), min_size=1, max_size=3)


def _deep_json(depth: int, chain: list[str]) -> dict:
    obj: dict = {"lang": "en"}
    for i in range(depth - 1):
        op = chain[i % len(chain)]
        obj = {op: obj} if op == "$not" else {op: [obj, {"year": 2001}]}
    return obj


def _deep_objects(depth: int, chain: list[str]) -> Filter:
    f: Filter = Eq("lang", "en")
    for i in range(depth - 1):
        op = chain[i % len(chain)]
        f = Not(f) if op == "$not" else And(f, Eq("year", 2001)) if op == "$and" else Or(f, Range("year", gte=1))
    return f


@SETTINGS
@given(depth=st.integers(MAX_FILTER_DEPTH + 1, 12_000), chain=ops)
def test_deep_filters(edge, depth, chain):
    repo, _ = edge
    # JSON text of that depth (built without recursion), the dict, and Python objects
    obj = _deep_json(depth, chain)
    text = json.dumps(obj) if depth < 200 else None
    if text is None:
        head = "".join('{"$not": ' for _ in range(depth - 1))
        text = head + '{"lang": "en"}' + "}" * (depth - 1)
    for what, fn in (
        (f"from_json(text of depth {depth})", lambda: Filter.from_json(text)),
        (f"from_json(dict of depth {depth}, {chain})", lambda: Filter.from_json(obj)),
        (f"Filter objects of depth {depth}, {chain}", lambda: repo.count("c", _deep_objects(depth, chain))),
    ):
        _expect(typed_or_ok(fn, what), InvalidFilterError, what)
    ok = typed_or_ok(lambda: repo.count("c", _deep_objects(MAX_FILTER_DEPTH, chain)), "the deepest filter allowed")
    assert ok.error is None, ok.error


# ------------------------------------------------------------------ huge integers

huge = st.one_of(st.integers(MAX_EXACT_INT + 1, 2**200), st.integers(-(2**200), -(MAX_EXACT_INT + 1)),
                 st.sampled_from([MAX_EXACT_INT + 1, -(MAX_EXACT_INT + 1), 2**63 - 1, -(2**63), 2**63, 2**64,
                                  10**5000, -(10**5000)]))  # past Python's 4300-digit str() limit


def _digits(v: int) -> str:
    """``str(v)`` without Python's 4300-digit limit (the JSON text of a filter)."""
    if v.bit_length() < 10_000:
        return str(v)
    return ("-" if v < 0 else "") + "1" + "0" * 5000  # only +-10**5000 are this long here


@SETTINGS
@given(v=huge)
@example(v=10**5000)
@example(v=-(MAX_EXACT_INT + 1))
def test_huge_integers(edge, v):
    repo, _ = edge
    v_ = f"<int of {v.bit_length()} bits>"
    for what, fn, error in (
        (f"Eq(year, {v_})", lambda: Eq("year", v), InvalidFilterError),
        (f"In(year, {v_})", lambda: In("year", (2001, v)), InvalidFilterError),
        (f"Range(year, gt={v_})", lambda: Range("year", gt=v), InvalidFilterError),
        (f"from_json $lte {v_}", lambda: Filter.from_json('{"year": {"$lte": ' + _digits(v) + "}}"), InvalidFilterError),
        (f"from_json $nin {v_}", lambda: Filter.from_json({"year": {"$nin": [v]}}), InvalidFilterError),
        (f"metadata {v_}", lambda: _passage(0, n=v), InvalidMetadataError),
        (f"nested metadata {v_}", lambda: _passage(0, deep={"a": [1, v]}), InvalidMetadataError),
        (f"passage index {v_}", lambda: StoredPassage.create("d", abs(v), np.ones((1, DIM), np.float32)),
         InvalidInputError),
    ):
        _expect(typed_or_ok(fn, what), error, what)

    def grown():  # built small, grown in place, written over a stored passage
        bad = _passage(1, ns=[0])
        bad.metadata["ns"][0] = v
        return repo.upsert("c", [_passage(99), bad])

    _expect(typed_or_ok(grown, f"upsert grown {v_}"), InvalidMetadataError, f"upsert grown {v_}")
    report.add(passages_lost=_lost(repo))


# ------------------------------------------------------------------ oversized metadata

chars = st.sampled_from(["x", "é", "\U0001f600", "\n", '"'])


@SETTINGS
@given(n=st.integers(MAX_METADATA_BYTES // 13, 4 * MAX_METADATA_BYTES), ch=chars, in_place=st.booleans())
def test_oversized_metadata(edge, n, ch, in_place):
    repo, _ = edge
    value = ch * n
    # the reference: compact JSON of the metadata as the passage would hold it
    size = len(json.dumps({"lang": "en", "year": 2002, "blob": [value]}, separators=(",", ":")).encode())
    too_big = size > MAX_METADATA_BYTES

    def write():
        if in_place:
            bad = _passage(2, blob=[""])
            bad.metadata["blob"][0] = value
        else:
            bad = _passage(2, blob=[value])
        return repo.upsert("c", [_passage(98), bad])

    out = typed_or_ok(write, f"metadata of {size} bytes ({n} x {ch!r}, in place: {in_place})")
    if too_big:
        _expect(out, InvalidMetadataError, f"metadata of {size} bytes")
        report.add(passages_lost=_lost(repo))
    else:  # it fits: written; put the stored passages back as they were
        assert out.error is None, out.error
        repo.delete("c", [_passage(98).id])
        repo.upsert("c", [_passage(2)])


def test_a_50_mb_value_is_refused_and_nothing_is_lost(edge):
    repo, _ = edge
    out = typed_or_ok(lambda: repo.upsert("c", [_passage(3, blob="x" * (50 * 2**20))]), "a 50 MB metadata value")
    _expect(out, InvalidMetadataError, "a 50 MB metadata value")
    lost = _lost(repo)
    report.add(passages_lost=lost)
    assert lost == 0


# ------------------------------------------------------------------ deep metadata in a record file


@SETTINGS
@given(depth=st.integers(40, 900), in_list=st.booleans())
def test_deep_record_metadata_is_a_typed_error(tmp_path_factory, depth, in_list):
    """A JSON Lines record whose metadata nests hundreds of levels (json reads up to
    about 1000) is read without RecursionError; the indexer's metadata check
    (``validate_metadata``) then refuses it with InvalidMetadataError."""
    meta: object = {"lang": "en"}
    for _ in range(depth):
        meta = [meta] if in_list else {"x": meta}
    path = tmp_path_factory.mktemp("deep") / "docs.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "One sentence.", "metadata": {"m": meta}}) + "\n"
                    + json.dumps({"id": "b", "text": "Two sentences. Here."}) + "\n")

    def read_and_check():
        records = list(read_documents(path))
        assert [r.doc_id for r in records] == ["a", "b"]
        assert records[1].document is not None
        return validate_metadata(records[0].document.metadata, "a")

    _expect(typed_or_ok(read_and_check, f"a record with metadata {depth} deep"), InvalidMetadataError,
            f"metadata {depth} deep")
