"""Shards and replicas of the collections a server connection creates: the URL options
``shard_number``, ``replication_factor``, ``write_consistency_factor`` (Qdrant) and
``shards_num``, ``replica_number`` (Milvus).

They are checked before any engine call (ints >= 1; a write cannot wait for more replicas
than there are), refused by the embedded engines, and handed to the engine's own
``create_collection`` / ``load_collection``: recorded here on a server connection whose
client is the engine's embedded one (qdrant-client local mode, Milvus Lite), so the
calls really run; read back from a real server's collection where one is there.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from agrame_vdb import connect
from agrame_vdb.errors import InvalidInputError
from agrame_vdb.repository import CollectionSchema

from .conformance._data import DIM, make_passages
from .engines import server_url

SECRET = "Zq7SecretValue42"

# a server connection over local mode creates the payload indexes local mode ignores
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")


class Recorder:
    """A client that passes every call on to ``inner`` and records the keyword
    arguments of ``create_collection`` and ``load_collection``; ``close`` is left to
    the fixture, so that a second connection sees what the first wrote."""

    _client = None  # not qdrant-client's local mode, as far as the repository can tell

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        if name == "close":
            return lambda: None
        attr = getattr(self.inner, name)
        if name not in ("create_collection", "load_collection"):
            return attr

        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return attr(*args, **kwargs)

        return record

    def kwargs(self, name: str) -> list[dict[str, Any]]:
        return [kw for call, _, kw in self.calls if call == name]


def _write_and_find(repo, name: str) -> None:
    """The collection takes passages and finds them: the placement changed nothing else."""
    passages = make_passages(6)
    repo.upsert(name, passages)
    assert repo.count(name) == 6
    top = repo.candidates(name, passages[2].pooled, limit=1)
    assert top[0].id == passages[2].id
    got = repo.fetch(name, [passages[2].id], strict=True)
    np.testing.assert_array_equal(np.asarray(got.passages[0].tokens), passages[2].tokens)


# --------------------------------------------------------------------------- Qdrant


@pytest.fixture
def qdrant_server(monkeypatch) -> Recorder:
    """Every Qdrant server URL opens qdrant-client's local mode in memory, recorded."""
    from qdrant_client import QdrantClient

    from agrame_vdb.repositories import qdrant

    recorder = Recorder(QdrantClient(location=":memory:"))
    monkeypatch.setattr(qdrant, "QdrantClient", lambda **kwargs: recorder)
    yield recorder
    recorder.inner.close()


def test_qdrant_server_options_go_to_create_collection(qdrant_server):
    url = "http://qdrant-0:6333?shard_number=6&replication_factor=2&write_consistency_factor=2"
    with connect(url) as repo:
        assert repo.engine == "qdrant-server"
        repo.create_collection(CollectionSchema("docs", dim=DIM))
        _write_and_find(repo, "docs")
    [kwargs] = qdrant_server.kwargs("create_collection")
    placement = {k: kwargs[k] for k in ("shard_number", "replication_factor", "write_consistency_factor")}
    assert placement == {"shard_number": 6, "replication_factor": 2, "write_consistency_factor": 2}
    assert all(type(v) is int for v in placement.values())
    assert "agrame" in kwargs["metadata"]  # the rest of the call as always


def test_qdrant_options_given_as_keywords_and_only_those(qdrant_server):
    with connect("https://qdrant.example:6333", shard_number="3") as repo:
        repo.create_collection(CollectionSchema("a", dim=DIM))
    with connect("https://qdrant.example:6333") as repo:
        repo.create_collection(CollectionSchema("b", dim=DIM))
    first, second = qdrant_server.kwargs("create_collection")
    assert first["shard_number"] == 3
    assert not {"replication_factor", "write_consistency_factor"} & set(first)  # the server's defaults
    assert not {"shard_number", "replication_factor", "write_consistency_factor"} & set(second)


def test_an_existing_collection_keeps_its_placement(qdrant_server):
    with connect("http://qdrant-0:6333") as repo:
        repo.create_collection(CollectionSchema("docs", dim=DIM))
    with connect("http://qdrant-0:6333?shard_number=4") as repo:
        repo.create_collection(CollectionSchema("docs", dim=DIM))  # opens it
        _write_and_find(repo, "docs")
    assert len(qdrant_server.kwargs("create_collection")) == 1


def test_a_blue_green_copy_reshards_a_collection(qdrant_server, tmp_path):
    """``migrate convert`` through a connection with other placement options copies the
    collection into one created with them, then switches the alias (docs/cluster.md)."""
    from agrame_vdb.migrations import convert_storage, digest

    with connect("http://qdrant-0:6333?shard_number=2") as repo:
        repo.create_collection(CollectionSchema("docs_v1", dim=DIM))
        repo.upsert("docs_v1", make_passages(8))
        repo.create_alias("docs", "docs_v1")
        before = digest(repo, "docs")
    with connect("http://qdrant-0:6333?shard_number=12&replication_factor=2") as repo:
        result = convert_storage(repo, "docs", dtype="float32", state_dir=tmp_path)
        target = repo.list_aliases()["docs"]
        assert (result.source, result.target) == ("docs_v1", target) and digest(repo, "docs") == before
    old, new = qdrant_server.kwargs("create_collection")
    assert old["shard_number"] == 2 and "replication_factor" not in old
    assert (new["shard_number"], new["replication_factor"]) == (12, 2)


BAD_QDRANT = [
    ("http://h?shard_number=0", "shard_number must be an int >= 1, got 0"),
    ("http://h?replication_factor=-2", "replication_factor must be an int >= 1, got -2"),
    ("http://h?write_consistency_factor=0", "write_consistency_factor must be an int >= 1, got 0"),
    ("http://h?shard_number=two", "option shard_number must be a int, got 'two'"),
    ("http://h?replication_factor=1.5", "option replication_factor must be a int, got '1.5'"),
    (
        "http://h?write_consistency_factor=2",
        "write_consistency_factor=2 exceeds replication_factor=1 (the default when not given): a write cannot "
        "wait for more replicas of a shard than there are",
    ),
    (
        f"http://h?api_key={SECRET}&replication_factor=2&write_consistency_factor=3",
        "write_consistency_factor=3 exceeds replication_factor=2: a write cannot wait for more replicas of a "
        "shard than there are",
    ),
]


@pytest.mark.parametrize("url,message", BAD_QDRANT)
def test_bad_qdrant_placement_is_refused_before_any_call(qdrant_server, url, message):
    with pytest.raises(InvalidInputError) as err:
        connect(url)
    assert str(err.value) == message and SECRET not in str(err.value)
    assert qdrant_server.calls == []


def test_a_direct_constructor_checks_them_too(tmp_path):
    from qdrant_client import QdrantClient

    from agrame_vdb.repositories.qdrant import QdrantRepository

    with pytest.raises(InvalidInputError, match="shard_number must be an int >= 1, got True"):
        QdrantRepository(url="http://h:6333", shard_number=True)
    with pytest.raises(InvalidInputError, match="qdrant-local is embedded"):
        QdrantRepository(path=str(tmp_path / "local"), shard_number=2)
    with pytest.raises(InvalidInputError, match="qdrant-local is embedded"):
        QdrantRepository(client=QdrantClient(location=":memory:"), replication_factor=2)
    assert not (tmp_path / "local").exists()  # refused before it was opened


# --------------------------------------------------------------------------- embedded engines

EMBEDDED = [
    ("qdrant-edge://{d}/edge?shard_number=2", "shard_number: qdrant-edge is embedded", "Qdrant server"),
    ("qdrant-local://{d}/local?replication_factor=2&write_consistency_factor=1",
     "replication_factor, write_consistency_factor: qdrant-local is embedded", "Qdrant server"),
    ("qdrant-local://:memory:?shard_number=1", "shard_number: qdrant-local is embedded", "Qdrant server"),
    ("milvus-lite://{d}/m.db?shards_num=2", "shards_num: Milvus Lite is embedded", "Milvus server"),
    ("milvus-lite://{d}/m.db?replica_number=1", "replica_number: Milvus Lite is embedded", "Milvus server"),
]


@pytest.mark.parametrize("url,start,server", EMBEDDED)
def test_embedded_engines_refuse_placement_naming_the_server_that_takes_it(tmp_path, url, start, server):
    if url.startswith("milvus"):
        pytest.importorskip("pymilvus", reason="the Milvus repository needs pymilvus")
    with pytest.raises(InvalidInputError) as err:
        connect(url.format(d=tmp_path))
    message = str(err.value)
    assert message.startswith(start) and "has no shards or replicas" in message
    assert f"options of a {server}" in message and "docs/cluster.md" in message
    assert list(tmp_path.iterdir()) == []  # nothing was opened or created


def test_qdrant_edge_refuses_them_as_keywords(tmp_path):
    with pytest.raises(InvalidInputError, match="write_consistency_factor: qdrant-edge is embedded"):
        connect(f"qdrant-edge://{tmp_path}/e", write_consistency_factor=1)


# --------------------------------------------------------------------------- Milvus


@pytest.fixture
def milvus_server(monkeypatch, tmp_path):
    """Every Milvus server URL opens a Milvus Lite process through pymilvus, recorded."""
    pytest.importorskip("milvus_lite", reason="Milvus Lite is not installed")
    from pymilvus import MilvusClient

    from agrame_vdb.repositories.milvus import base
    from agrame_vdb.repositories.milvus.lite import _lite_close, _lite_open

    path = str(tmp_path / "lite.db")
    recorder = Recorder(MilvusClient(uri=_lite_open(path)))
    # Lite answers "milvus_lite-3.x", which a server connection reads as an old server
    # (no INVERTED index): answer as a server with the indexes Lite has
    recorder.get_server_version = lambda **kwargs: "v2.5.0"
    monkeypatch.setattr(base, "MilvusClient", lambda **kwargs: recorder)
    yield recorder
    recorder.inner.close()
    _lite_close(path)


def test_milvus_server_options_go_to_create_and_load(milvus_server):
    with connect("milvus://milvus-proxy:19530?shards_num=4&replica_number=2") as repo:
        assert repo.engine == "milvus-server"
        repo.create_collection(CollectionSchema("docs", dim=DIM))
        _write_and_find(repo, "docs")
    created = milvus_server.kwargs("create_collection")
    assert len(created) == 2  # the passages and their token collection
    assert all(kw["shards_num"] == 4 and type(kw["shards_num"]) is int for kw in created)
    # Lite loads a collection when it is created; a server loads it on first use, as here:
    for name in ("docs", "docs__tokens"):
        milvus_server.inner.release_collection(name)
    with connect("milvus://milvus-proxy:19530", replica_number="2") as repo:
        _write_and_find(repo, "docs")
    loaded = milvus_server.kwargs("load_collection")
    assert len(loaded) == 2 and all(kw["replica_number"] == 2 for kw in loaded)


def test_milvus_without_options_leaves_the_server_defaults(milvus_server):
    with connect("milvus://milvus-proxy:19530") as repo:
        repo.create_collection(CollectionSchema("docs", dim=DIM))
    for name in ("docs", "docs__tokens"):
        milvus_server.inner.release_collection(name)
    with connect("milvus://milvus-proxy:19530") as repo:
        _write_and_find(repo, "docs")
    assert len(milvus_server.kwargs("load_collection")) == 2
    assert all("shards_num" not in kw for kw in milvus_server.kwargs("create_collection"))
    assert all("replica_number" not in kw for kw in milvus_server.kwargs("load_collection"))


BAD_MILVUS = [
    ("milvus://h?shards_num=0", "shards_num must be an int >= 1, got 0"),
    ("milvus://h?replica_number=-1", "replica_number must be an int >= 1, got -1"),
    ("milvus://h?shards_num=1.5", "option shards_num must be a int, got '1.5'"),
    (f"milvus://h?token=root:{SECRET}&replica_number=", "option replica_number must be a int, got ''"),
]


@pytest.mark.parametrize("url,message", BAD_MILVUS)
def test_bad_milvus_placement_is_refused_before_connecting(milvus_server, url, message):
    with pytest.raises(InvalidInputError) as err:
        connect(url)
    assert str(err.value) == message and SECRET not in str(err.value)
    assert milvus_server.calls == []


# --------------------------------------------------------------------------- real servers


def _with(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


@pytest.mark.server
def test_a_qdrant_server_creates_the_shards_asked():
    from qdrant_client import QdrantClient

    base = server_url("qdrant-server")
    name = f"pl_{uuid.uuid4().hex[:10]}"
    # one node takes several shards; more replicas than nodes would not all be placed
    with connect(_with(base, "shard_number=3&replication_factor=1&write_consistency_factor=1")) as repo:
        try:
            repo.create_collection(CollectionSchema(name, dim=DIM))
            _write_and_find(repo, name)
            params = QdrantClient(url=base.partition("?")[0], check_compatibility=False).get_collection(name).config.params
            assert (params.shard_number, params.replication_factor, params.write_consistency_factor) == (3, 1, 1)
        finally:
            repo.drop_collection(name)


@pytest.mark.server
@pytest.mark.parametrize("server", ["milvus-embedded", "milvus-server"])
def test_a_milvus_server_creates_the_shards_asked(server):
    pytest.importorskip("pymilvus", reason="the Milvus repository needs pymilvus")
    url = server_url(server)
    name = f"pl_{uuid.uuid4().hex[:10]}"
    with connect(_with(url, "shards_num=2&replica_number=1")) as repo:
        try:
            repo.create_collection(CollectionSchema(name, dim=DIM))
            _write_and_find(repo, name)
            for n in (name, f"{name}__tokens"):  # read back through pymilvus, the repository's own client
                assert repo._client.describe_collection(n)["num_shards"] == 2, n
        finally:
            repo.drop_collection(name)
