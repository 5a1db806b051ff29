"""The repository API outside any engine: URLs, filters, schemas, retries, doctests."""

from __future__ import annotations

import doctest
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

import agrame_vdb
from agrame_vdb import connect
from agrame_vdb.errors import (
    InvalidFilterError,
    InvalidInputError,
    InvalidSchemaError,
    RepositoryError,
    SchemaMismatchError,
    StoreUnavailableError,
    TransientRepositoryError,
    UnknownStoreError,
)
from agrame_vdb.repositories import parse_url
from agrame_vdb.repository import And, CollectionSchema, Eq, Filter, In, Not, Or, Range, StoredPassage


@pytest.mark.parametrize(
    "module",
    [
        "agrame_vdb.repository",
        "agrame_vdb.validation",
        "agrame_vdb.schema",
        "agrame_vdb.filters",
        "agrame_vdb.records",
        "agrame_vdb.repositories",
        "agrame_vdb.repositories._codec",
    ],
)
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# --------------------------------------------------------------------------- URLs


def test_unknown_scheme_lists_known_ones():
    with pytest.raises(UnknownStoreError) as err:
        connect("postgres://db/x")
    for scheme in ("memory", "qdrant-edge", "qdrant-local", "http", "milvus-lite", "milvus"):
        assert scheme in str(err.value)
    with pytest.raises(UnknownStoreError):
        connect("no-scheme-here")


def test_milvus_schemes_are_registered():
    try:
        importlib.import_module("agrame_vdb.repositories.milvus")
    except ModuleNotFoundError as exc:
        if exc.name != "agrame_vdb.repositories.milvus":
            pytest.skip(f"milvus repository exists but needs {exc.name}")
        for url in ("milvus-lite:///tmp/x.db", "milvus://localhost:19530"):
            with pytest.raises(StoreUnavailableError, match="not available yet"):
                connect(url)
    else:
        pytest.skip("agrame_vdb.repositories.milvus exists: its own tests cover it")


@pytest.mark.parametrize(
    "url,location,options",
    [
        ("qdrant-edge:///var/agrame", "/var/agrame", {}),
        ("qdrant-edge://./agrame-data", "./agrame-data", {}),
        ("qdrant-edge://rel/dir?token_copy=0", "rel/dir", {"token_copy": "0"}),
        ("qdrant-edge:", "", {}),
        ("qdrant-local://:memory:", ":memory:", {}),
        ("http://qdrant:6333", "qdrant:6333", {}),
        ("milvus-lite:///agrame.db", "/agrame.db", {}),
    ],
)
def test_parse_url(url, location, options):
    parsed = parse_url(url)
    assert parsed.location == location and parsed.options == options


def test_edge_default_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with connect("qdrant-edge:") as repo:
        assert Path(repo.root).resolve() == (tmp_path / "agrame-data").resolve()
    with connect("qdrant-edge://sub/store") as repo:
        assert (tmp_path / "sub" / "store").is_dir()
    with pytest.raises(InvalidInputError, match="unknown options"):
        connect("qdrant-edge://x?colour=red")
    with pytest.raises(InvalidInputError):
        connect("qdrant-edge://x?token_copy=maybe")


def test_public_names_are_reexported():
    for name in ("connect", "CollectionSchema", "StoredPassage", "Eq", "In", "Range", "And", "Or", "Not", "Filter"):
        assert hasattr(agrame_vdb, name) and name in agrame_vdb.__all__


def test_repository_module_keeps_every_name():
    """agrame_vdb.repository gathers the seam's modules: every name they export, and
    every name it exported when it held them all, is importable from it."""
    from agrame_vdb import filters, protocol, records, repository, schema, validation
    from agrame_vdb.repositories import base

    for module in (validation, schema, filters, records, protocol, base):
        for name in module.__all__:
            assert getattr(repository, name) is getattr(module, name), (module.__name__, name)
    earlier = """SCHEMA_VERSION DTYPES FIELD_TYPES BUILTIN_FIELDS DType CollectionSchema StoredPassage Candidate
    FetchResult TokenBatch IdPage Capabilities Filter Eq In Range And Or Not Repository RepositoryBase pool_tokens
    upgrade_hint newer_hint validate_ids validate_metadata MAX_EXACT_INT MAX_FILTER_DEPTH MAX_METADATA_BYTES
    MAX_STRING_BYTES""".split()
    assert set(earlier) <= set(repository.__all__)
    for name in (*repository.__all__, "check_name", "ALIAS_TTL_S", "Scalar"):
        assert hasattr(repository, name), name


# --------------------------------------------------------------------------- filters


def test_filter_from_json_forms():
    assert Filter.from_json({}) is None
    assert Filter.from_json({"lang": "en"}) == Eq("lang", "en")
    assert Filter.from_json('{"year": {"$gt": 1, "$lte": 5}}') == Range("year", gt=1, lte=5)
    assert Filter.from_json({"a": {"$ne": 1}}) == Not(Eq("a", 1))
    assert Filter.from_json({"a": {"$nin": ["x"]}}) == Not(In("a", ("x",)))
    assert Filter.from_json({"$or": [{"a": 1}, {"b": True}]}) == Or(Eq("a", 1), Eq("b", True))
    assert Filter.from_json({"a": 1, "b": 2}) == And(Eq("a", 1), Eq("b", 2))
    f = And(Or(Eq("a", "x"), In("b", (1, 2))), Not(Range("c", gte=0.5)))
    assert Filter.from_json(f.to_json()) == f
    assert (Eq("a", 1) & Eq("b", 2)) == And(Eq("a", 1), Eq("b", 2))
    assert ~Eq("a", 1) == Not(Eq("a", 1))
    assert f.fields() == {"a", "b", "c"}


@pytest.mark.parametrize(
    "bad",
    [
        [1],
        {"a": [1, 2]},
        {"a": {"$regex": "x"}},
        {"$xor": []},
        {"$and": []},
        {"$and": {"a": 1}},
        {"a": {}},
        {"a": 1.5},
        {"a": None},
        {"a": {"$in": "xy"}},
        {"a": {"$in": []}},
        {"a": {"$in": [1, "x"]}},
        {"a": {"$in": [True]}},
        {"a": {"$gt": "x"}},
        {"a": {"$gt": float("nan")}},
        {"bad field": 1},
        {"1abc": 1},
        {"a": 2**64},
        "{not json",
    ],
)
def test_filter_from_json_rejects(bad):
    with pytest.raises(InvalidFilterError):
        Filter.from_json(bad)


def test_filter_constructors_reject():
    with pytest.raises(InvalidFilterError):
        And()
    with pytest.raises(InvalidFilterError):
        Or(Eq("a", 1), "b")
    with pytest.raises(InvalidFilterError):
        Range("a")
    with pytest.raises(InvalidFilterError):
        Range("a", gte=True)
    with pytest.raises(InvalidFilterError):
        Not({"a": 1})


# --------------------------------------------------------------------------- records


def test_schema_validation():
    s = CollectionSchema("c_1", 8, indexed_fields={"meta.lang": "keyword"})
    assert s.indexed_fields == (("meta.lang", "keyword"),)
    assert CollectionSchema.from_json(s.to_json()) == s
    for kwargs in (
        dict(name="has-hyphen", dim=8),
        dict(name="1st", dim=8),
        dict(name="ok", dim=0),
        dict(name="ok", dim=8, dtype="int4"),
        dict(name="ok", dim=8, on_disk="yes"),
        dict(name="ok", dim=8, schema_version=0),
        dict(name="ok", dim=8, indexed_fields={"doc_id": "keyword"}),
        dict(name="ok", dim=8, indexed_fields={"x": "text"}),
    ):
        with pytest.raises(InvalidSchemaError):
            CollectionSchema(**kwargs)


def test_schema_json_is_the_stored_record():
    """The record engines store (Edge's collection.json, Qdrant's and Milvus's collection
    metadata): these exact keys, in this order, as every earlier version wrote them."""
    s = CollectionSchema("docs", 4, "float16", True, 2, {"z.b": "integer", "a": "keyword"}, "plain-base")
    assert json.dumps(s.to_json(), indent=1) == (
        '{\n "name": "docs",\n "dim": 4,\n "dtype": "float16",\n "on_disk": true,\n "schema_version": 2,\n'
        ' "indexed_fields": {\n  "a": "keyword",\n  "z.b": "integer"\n },\n "model": "plain-base"\n}'
    )
    assert CollectionSchema("c", 8, schema_version=1).to_json() == {
        "name": "c",
        "dim": 8,
        "dtype": "float32",
        "on_disk": False,
        "schema_version": 1,
        "indexed_fields": {},
        "model": None,
    }
    for schema in (s, CollectionSchema("c", 8, schema_version=1), CollectionSchema("_x", 65536, "int8", model="/m")):
        assert CollectionSchema.from_json(json.loads(json.dumps(schema.to_json()))) == schema


def test_schema_from_json_defaults_and_refusals():
    # a version 1 record has no model; optional fields default, unknown keys are ignored
    old = CollectionSchema.from_json({"name": "c", "dim": 8, "schema_version": 1, "format": 3})
    assert old == CollectionSchema("c", 8, schema_version=1)
    for record in ({"dim": 8, "schema_version": 1}, {"name": "c", "schema_version": 1}, {"name": "c", "dim": 8}, [], "c", None):
        with pytest.raises(SchemaMismatchError, match="unreadable"):
            CollectionSchema.from_json(record)  # type: ignore[arg-type]
    for record in (
        {"name": "c", "dim": "8", "schema_version": 1},
        {"name": "c", "dim": 8, "schema_version": 1, "indexed_fields": 5},
        {"name": "c", "dim": 8, "schema_version": 1, "dtype": None},
    ):
        with pytest.raises(InvalidSchemaError):
            CollectionSchema.from_json(record)


def test_stored_passage_defaults():
    tokens = np.array([[1.0, 0.0], [0.0, 2.0]])
    p = StoredPassage.create("d", 3, tokens, metadata={"n": np.int64(4), "t": (1, 2)})
    assert p.tokens.dtype == np.float32 and p.n_tokens == 2 and p.dim == 2
    assert np.isclose(np.linalg.norm(p.pooled), 1.0)
    assert dict(p.metadata) == {"n": 4, "t": [1, 2]} and type(p.metadata["n"]) is int
    assert p.id == agrame_vdb.passage_id("d", 3)


# --------------------------------------------------------------------------- retries


class _Flaky:
    """A stand-in qdrant-client that fails ``failures`` times with a transport error."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def collection_exists(self, name):
        from qdrant_client.http.exceptions import ResponseHandlingException

        self.calls += 1
        if self.calls <= self.failures:
            raise ResponseHandlingException(ConnectionError("connection refused"))
        return False

    def get_aliases(self):  # drop_collection looks for aliases first (not counted)
        from qdrant_client.http.models import CollectionsAliasesResponse

        return CollectionsAliasesResponse(aliases=[])

    def close(self):
        pass


def test_server_calls_are_retried():
    from agrame_vdb.repositories.qdrant import QdrantRepository

    flaky = _Flaky(2)
    repo = QdrantRepository(client=flaky, retries=3, retry_wait_max=0.01)  # type: ignore[arg-type]
    assert repo.drop_collection("c") is False
    assert flaky.calls == 3

    dead = _Flaky(100)
    repo = QdrantRepository(client=dead, retries=3, retry_wait_max=0.01)  # type: ignore[arg-type]
    with pytest.raises(TransientRepositoryError, match="after 3 attempts"):
        repo.drop_collection("c")
    assert dead.calls == 3


def test_unreachable_server_is_transient():
    repo = connect("http://127.0.0.1:9?retries=2&retry_wait_max=0.01&timeout=2")
    with pytest.raises(TransientRepositoryError):
        repo.count("anything")


def test_edge_panic_is_translated(tmp_path):
    from agrame_vdb.repositories.qdrant_edge import QdrantEdgeRepository

    class PanicException(BaseException):
        pass

    repo = QdrantEdgeRepository(tmp_path)
    err = repo._translate_error(PanicException("chunk size must be non-zero"), "upsert", "c")
    assert isinstance(err, RepositoryError) and "panicked" in str(err)
    assert repo._translate_error(KeyboardInterrupt(), "upsert", "c") is None


def test_api_key_comes_from_env(monkeypatch):
    from agrame_vdb.repositories import qdrant

    seen = {}

    class Client:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(qdrant, "QdrantClient", Client)
    monkeypatch.setenv("QDRANT_API_KEY", "secret")
    connect("https://example.invalid:6333")
    assert seen["api_key"] == "secret" and seen["url"] == "https://example.invalid:6333"


@pytest.mark.parametrize("module", ["qdrant", "milvus"])
def test_grpc_errors_are_retried_only_when_transient(module):
    grpc = pytest.importorskip("grpc")
    import importlib

    is_transient = importlib.import_module(f"agrame_vdb.repositories.{module}").is_transient

    class Rpc(grpc.RpcError):
        def __init__(self, code):
            self._code = code

        def code(self):
            return self._code

    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):
        assert is_transient(Rpc(code))
    assert not is_transient(Rpc(grpc.StatusCode.INVALID_ARGUMENT))
