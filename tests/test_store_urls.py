"""Store URLs and their options: every form the docs show opens the engine it names
with the arguments it always did, and what is refused is refused with a typed error
that names what is wrong (an unknown option: the known ones) and never a credential.

The repositories are replaced by recorders: nothing is opened, nothing connects.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from agrame_vdb import connect
from agrame_vdb.errors import InvalidInputError, UnknownStoreError
from agrame_vdb.repositories import DEFAULT_EDGE_PATH, parse_url
from agrame_vdb.repositories.memory import MemoryRepository

SECRET = "Zq7SecretValue42"

#: engine module -> the repository class its from_url builds
_CLASSES = {
    "qdrant_edge": "QdrantEdgeRepository",
    "qdrant": "QdrantRepository",
    "milvus": "MilvusRepository",
}


@pytest.fixture
def opened(monkeypatch) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """(engine module, args, kwargs) of every repository the URLs open."""
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    for module, cls in _CLASSES.items():
        try:
            mod = importlib.import_module(f"agrame_vdb.repositories.{module}")
        except ModuleNotFoundError:  # pragma: no cover - pymilvus missing: its rows skip
            continue

        def record(*args: Any, _module: str = module, **kwargs: Any) -> str:
            calls.append((_module, args, kwargs))
            return _module

        monkeypatch.setattr(mod, cls, record)
    return calls


def _needs(module: str) -> None:
    if module == "milvus":
        pytest.importorskip("pymilvus", reason="the Milvus repository needs pymilvus")


# --------------------------------------------------------------------------- what opens what

#: (URL, keyword arguments of connect, engine module, args, kwargs of its repository)
OPENS = [
    # README "Stores" and DESIGN.md
    ("qdrant-edge://./agrame-data", {}, "qdrant_edge", ("./agrame-data",), {}),
    ("qdrant-edge:///var/agrame", {}, "qdrant_edge", ("/var/agrame",), {}),
    ("qdrant-local:///path", {}, "qdrant", (), {"path": "/path"}),
    ("qdrant-local://:memory:", {}, "qdrant", (), {"location": ":memory:"}),
    ("http://host:6333", {}, "qdrant", (), {"url": "http://host:6333"}),
    ("http://qdrant:6333", {}, "qdrant", (), {"url": "http://qdrant:6333"}),
    ("milvus-lite:///path.db", {}, "milvus", (), {"path": "/path.db"}),
    ("milvus-lite:///agrame.db", {}, "milvus", (), {"path": "/agrame.db"}),
    ("milvus://host:19530", {}, "milvus", (), {"uri": "http://host:19530"}),
    ("milvus://milvus:19530", {}, "milvus", (), {"uri": "http://milvus:19530"}),
    # agrame_vdb.repositories: relative and default paths, paths with an '@'
    ("qdrant-edge://rel/path", {}, "qdrant_edge", ("rel/path",), {}),
    ("qdrant-edge:", {}, "qdrant_edge", (DEFAULT_EDGE_PATH,), {}),
    ("qdrant-edge:rel/a@b", {}, "qdrant_edge", ("rel/a@b",), {}),
    ("qdrant-edge:///abs/a@b", {}, "qdrant_edge", ("/abs/a@b",), {}),
    ("qdrant-local:", {}, "qdrant", (), {"location": ":memory:"}),
    ("https://host", {}, "qdrant", (), {"url": "https://host"}),
    ("http://user:pass@host", {}, "qdrant", (), {"url": "http://user:pass@host"}),
    # options: from the query string (strings) or as keyword arguments (values)
    ("qdrant-edge:///data?token_copy=0", {}, "qdrant_edge", ("/data",), {"token_copy": False}),
    ("qdrant-edge:///data", {"token_copy": False}, "qdrant_edge", ("/data",), {"token_copy": False}),
    ("qdrant-edge:///data?token_copy=No", {"token_copy": True}, "qdrant_edge", ("/data",), {"token_copy": True}),
    ("qdrant-local:///p?token_copy=yes", {}, "qdrant", (), {"path": "/p", "token_copy": True}),
    (
        "http://h:6333?api_key=k&retries=2&timeout=5&retry_wait_max=0.5&prefer_grpc=on&token_copy=OFF",
        {},
        "qdrant",
        (),
        {
            "url": "http://h:6333", "api_key": "k", "retries": 2, "timeout": 5, "retry_wait_max": 0.5,
            "prefer_grpc": True, "token_copy": False,
        },
    ),
    ("http://h", {"retries": 4, "timeout": "7", "prefer_grpc": False}, "qdrant", (),
     {"url": "http://h", "retries": 4, "timeout": 7, "prefer_grpc": False}),
    # a cluster (docs/cluster.md): shards and replicas of the collections created
    ("http://qdrant-0:6333?shard_number=6&replication_factor=2&write_consistency_factor=2", {}, "qdrant", (),
     {"url": "http://qdrant-0:6333", "shard_number": 6, "replication_factor": 2, "write_consistency_factor": 2}),
    ("https://h?replication_factor=3", {"shard_number": "4"}, "qdrant", (),
     {"url": "https://h", "replication_factor": 3, "shard_number": 4}),
    # Milvus servers: port, database, TLS, token; IPv6
    ("milvus://h", {}, "milvus", (), {"uri": "http://h"}),
    ("milvus://h/", {}, "milvus", (), {"uri": "http://h"}),
    ("milvus://h:19530/db", {}, "milvus", (), {"uri": "http://h:19530/db"}),
    ("milvus://h:19530/my_db1/", {}, "milvus", (), {"uri": "http://h:19530/my_db1"}),
    ("milvus://[::1]:19530", {}, "milvus", (), {"uri": "http://[::1]:19530"}),
    ("milvus://[::1]", {}, "milvus", (), {"uri": "http://[::1]"}),
    ("milvus://10.0.0.5:19531", {}, "milvus", (), {"uri": "http://10.0.0.5:19531"}),
    ("milvus://h:65535?secure=1", {}, "milvus", (), {"uri": "https://h:65535"}),
    ("milvus://h?secure=true&token=root:pw&db_name=d", {}, "milvus", (),
     {"uri": "https://h", "token": "root:pw", "db_name": "d"}),
    ("milvus://h?secure=0", {}, "milvus", (), {"uri": "http://h"}),
    (
        "milvus://h?layout=struct&first_stage=tokens&pooled_index=hnsw&token_index=FLAT&token_k=8"
        "&consistency=Strong&retries=2&timeout=1.5",
        {},
        "milvus",
        (),
        {
            "uri": "http://h", "layout": "struct", "first_stage": "tokens", "pooled_index": "hnsw",
            "token_index": "FLAT", "token_k": 8, "consistency": "Strong", "retries": 2, "timeout": 1.5,
        },
    ),
    ("milvus://h", {"timeout": 3, "token_k": "5", "secure": True}, "milvus", (),
     {"uri": "https://h", "timeout": 3.0, "token_k": 5}),
    ("milvus://milvus-proxy:19530?shards_num=4&replica_number=2", {}, "milvus", (),
     {"uri": "http://milvus-proxy:19530", "shards_num": 4, "replica_number": 2}),
    ("milvus://h", {"shards_num": "2"}, "milvus", (), {"uri": "http://h", "shards_num": 2}),
    ("milvus-lite:///x.db?layout=tokens&retries=1", {}, "milvus", (),
     {"path": "/x.db", "layout": "tokens", "retries": 1}),
    ("milvus-lite:///x.db?secure=0", {}, "milvus", (), {"path": "/x.db"}),
    ("milvus-lite://rel/x.db", {}, "milvus", (), {"path": "rel/x.db"}),
]


@pytest.mark.parametrize("url,kwargs,module,args,expected", OPENS, ids=[f"{u} {k}" if k else u for u, k, *_ in OPENS])
def test_every_documented_url_opens_its_engine_as_before(opened, url, kwargs, module, args, expected):
    _needs(module)
    assert connect(url, **kwargs) == module
    assert opened == [(module, args, expected)]
    got = opened[0][2]
    for name, value in expected.items():  # the types too: 5 and 5.0 are equal
        assert type(got[name]) is type(value), name


def test_memory_url_opens_the_reference():
    assert isinstance(connect("memory://"), MemoryRepository)
    assert isinstance(connect("MEMORY://"), MemoryRepository)  # schemes are case-insensitive


def test_parsed_url_parts():
    p = parse_url("Milvus://h:19530/db?token=a%3Ab&layout=tokens&empty=")
    assert (p.scheme, p.location, p.base) == ("milvus", "h:19530/db", "milvus://h:19530/db")
    assert p.options == {"token": "a:b", "layout": "tokens", "empty": ""}
    assert "a:b" not in repr(p) and "a%3Ab" not in repr(p)


# --------------------------------------------------------------------------- what is refused

UNKNOWN = [
    ("qdrant-edge://x?colour=red", "unknown options for qdrant-edge: ['colour']; known: token_copy"),
    ("qdrant-local:///p?retries=1", "unknown options for qdrant-local: ['retries']; known: token_copy"),
    (
        "http://h?colour=red&size=2",
        "unknown options for a Qdrant server: ['colour', 'size']; known: token_copy, retries, timeout, "
        "retry_wait_max, prefer_grpc, api_key, shard_number, replication_factor, write_consistency_factor",
    ),
    (
        "milvus://h?colour=red",
        "unknown options for Milvus: ['colour']; known: layout, first_stage, pooled_index, token_index, "
        "token_k, consistency, retries, timeout, token, db_name, secure, shards_num, replica_number",
    ),
    (
        "milvus-lite:///x.db?api-key=" + SECRET,
        "unknown options for Milvus: ['api-key']; known: layout, first_stage, pooled_index, token_index, "
        "token_k, consistency, retries, timeout, token, db_name, secure, shards_num, replica_number",
    ),
    (f"qdrant-edge://x?token={SECRET}", "unknown options for qdrant-edge: ['token']; known: token_copy"),
]


@pytest.mark.parametrize("url,message", UNKNOWN)
def test_an_unknown_option_is_refused_naming_the_known_ones(opened, url, message):
    _needs("milvus" if url.startswith("milvus") else "")
    with pytest.raises(InvalidInputError) as err:
        connect(url)
    assert str(err.value) == message
    assert opened == []


BAD_VALUES = [
    ("qdrant-edge://x?token_copy=maybe", "option token_copy must be a boolean (1/0, true/false), got 'maybe'"),
    ("qdrant-edge://x?token_copy=t", "option token_copy must be a boolean (1/0, true/false), got 't'"),
    ("http://h?retries=many", "option retries must be a int, got 'many'"),
    ("http://h?timeout=1.5", "option timeout must be a int, got '1.5'"),
    ("http://h?retry_wait_max=soon", "option retry_wait_max must be a float, got 'soon'"),
    ("http://h?prefer_grpc=2", "option prefer_grpc must be a boolean (1/0, true/false), got '2'"),
    ("milvus://h?timeout=x", "option timeout must be a float, got 'x'"),
    ("milvus://h?token_k=", "option token_k must be a int, got ''"),
    ("milvus://h?secure=sometimes", "option secure must be a boolean (1/0, true/false), got 'sometimes'"),
    ("http://h?shard_number=six", "option shard_number must be a int, got 'six'"),
    ("milvus://h?shards_num=", "option shards_num must be a int, got ''"),
    ("milvus://h?replica_number=2.0", "option replica_number must be a int, got '2.0'"),
    # embedded engines have no shards or replicas (tests/test_placement.py checks the rest)
    ("qdrant-edge://x?shard_number=2",
     "shard_number: qdrant-edge is embedded (one process, one machine) and has no shards or replicas; "
     "shard_number, replication_factor, write_consistency_factor are options of a Qdrant server "
     "(http://qdrant-0:6333?shard_number=6&replication_factor=2) (see docs/cluster.md)"),
    ("qdrant-local:///p?replication_factor=2",
     "replication_factor: qdrant-local is embedded (one process, one machine) and has no shards or replicas; "
     "shard_number, replication_factor, write_consistency_factor are options of a Qdrant server "
     "(http://qdrant-0:6333?shard_number=6&replication_factor=2) (see docs/cluster.md)"),
    ("milvus-lite:///x.db?shards_num=2&replica_number=1",
     "shards_num, replica_number: Milvus Lite is embedded (one process, one machine) and has no shards or "
     "replicas; shards_num, replica_number are options of a Milvus server "
     "(milvus://milvus-proxy:19530?shards_num=4&replica_number=2) (see docs/cluster.md)"),
    ("milvus-lite:", "milvus-lite needs a path, as in milvus-lite:///data/agrame.db; got 'milvus-lite:'"),
    ("milvus-lite:///x.db?secure=1", "secure, token and db_name are server options; Milvus Lite takes none"),
    (f"milvus-lite:///x.db?token={SECRET}", "secure, token and db_name are server options; Milvus Lite takes none"),
    ("milvus-lite:///x.db?db_name=d", "secure, token and db_name are server options; Milvus Lite takes none"),
]


@pytest.mark.parametrize("url,message", BAD_VALUES)
def test_a_bad_option_value_is_refused_with_what_it_should_be(opened, url, message):
    _needs("milvus" if url.startswith("milvus") else "")
    with pytest.raises(InvalidInputError) as err:
        connect(url)
    assert str(err.value) == message and SECRET not in str(err.value)
    assert opened == []


def test_a_bad_keyword_option_is_refused_too(opened):
    with pytest.raises(InvalidInputError, match="option token_copy must be a boolean"):
        connect("qdrant-edge://x", token_copy=None)
    with pytest.raises(InvalidInputError, match="option retries must be a int, got None"):
        connect("http://h", retries=None)
    with pytest.raises(InvalidInputError, match=r"unknown options for qdrant-edge: \['colour'\]"):
        connect("qdrant-edge://x", colour="red")
    assert opened == []


BAD_MILVUS_SERVERS = [
    "milvus://",
    "milvus://h:0",
    "milvus://h:65536",
    "milvus://h:",
    "milvus://h:port",
    "milvus://h:1:2",
    "milvus://h/db/x",
    "milvus://h/d-b",
    "milvus://[::1",
    "milvus://::1]",
    "milvus://[::1]x",
    "milvus://[zz]:19530",
    "milvus://h\t:19530",
    "milvus://localhost:19530\n",
    f"milvus://root:{SECRET}@h:19530",
    f"milvus://h:19530?token=root:{SECRET}&x=\n",
]


@pytest.mark.parametrize("url", BAD_MILVUS_SERVERS)
def test_a_malformed_milvus_server_url_is_refused_without_credentials(opened, url):
    _needs("milvus")
    with pytest.raises(InvalidInputError) as err:
        connect(url)
    assert "looks like milvus://host:19530[/db_name]" in str(err.value) or "unknown options" in str(err.value)
    assert SECRET not in str(err.value)
    assert opened == []


@pytest.mark.parametrize(
    "url",
    [
        "milvus://user@h:19530",  # a credential before the host: it goes in ?token=
        f"milvus://{SECRET}@h",
        "milvus://h#frag",  # urlsplit would cut it off: refused rather than dropped
        "milvus://[1.2.3.4]",  # brackets hold an IPv6 address only
    ],
)
def test_what_the_old_host_pattern_let_through_is_refused(opened, url):
    """The hand-written pattern took these as host names and passed them to pymilvus."""
    _needs("milvus")
    with pytest.raises(InvalidInputError, match="looks like milvus://host") as err:
        connect(url)
    assert SECRET not in str(err.value)
    assert opened == []


def test_unknown_schemes_and_non_urls():
    with pytest.raises(UnknownStoreError, match="known schemes: http, https, memory, milvus"):
        connect("nope://x")
    with pytest.raises(UnknownStoreError, match="a store URL looks like"):
        connect("no-scheme-here")
    with pytest.raises(InvalidInputError, match="memory:// takes no path or options"):
        connect("memory://?token_copy=0")
