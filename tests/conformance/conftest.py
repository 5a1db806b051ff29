"""Fixtures of the conformance suite: one fresh store per test, for every engine.

To add an engine, append an :class:`EngineCase` to ``ENGINES`` (or to
``SERVER_ENGINES`` with a function that finds the server's URL or a reason to
skip). Every test in this folder then runs on it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agrame_vdb import connect
from agrame_vdb.repository import RepositoryBase

from .. import milvus_servers
from ..containers import testcontainer_url


@dataclass(frozen=True)
class EngineCase:
    """How to reach one engine in a test.

    ``url`` builds the store URL from a fresh temporary directory (servers ignore
    it). ``persistent``: a second ``connect`` of the same URL sees the data.
    ``exclusive``: a second process opening it must get ConcurrentAccessError.
    ``shared``: the store outlives the test (a server): collections get unique
    names and are dropped after the test.
    """

    id: str
    url: Callable[[Path], str]
    persistent: bool = False
    exclusive: bool = False
    shared: bool = False
    marks: tuple = field(default_factory=tuple)


def _milvus_lite_marks() -> tuple:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError as exc:
        return (pytest.mark.skip(reason=f"Milvus Lite needs pymilvus and milvus-lite ({exc})"),)
    return ()


ENGINES: list[EngineCase] = [
    EngineCase("memory", lambda d: "memory://"),
    EngineCase("qdrant-local-memory", lambda d: "qdrant-local://:memory:"),
    EngineCase("qdrant-local-path", lambda d: f"qdrant-local://{d}/local", persistent=True, exclusive=True),
    EngineCase("qdrant-edge", lambda d: f"qdrant-edge://{d}/edge", persistent=True, exclusive=True),
    EngineCase(
        "qdrant-edge-nocopy", lambda d: f"qdrant-edge://{d}/edge?token_copy=0", persistent=True, exclusive=True
    ),
    EngineCase(
        "milvus-lite",
        lambda d: f"milvus-lite://{d}/milvus.db",
        persistent=True,
        exclusive=True,
        marks=_milvus_lite_marks(),
    ),
]


def _qdrant_server_url() -> tuple[str | None, str]:
    """The URL of a Qdrant server for tests, or None and why there is none."""
    if os.environ.get("QDRANT_URL"):
        return os.environ["QDRANT_URL"], ""
    return testcontainer_url("QDRANT_URL", "Qdrant", "qdrant", "QdrantContainer", "qdrant/qdrant:v1.16.0", 6333, "http")


_server_cache: dict[str, tuple[str | None, str]] = {}


def _server(name: str, finder: Callable[[], tuple[str | None, str]]) -> Callable[[Path], str]:
    def url(_: Path) -> str:
        if name not in _server_cache:
            _server_cache[name] = finder()
        found, reason = _server_cache[name]
        if found is None:
            pytest.skip(reason)
        return found

    return url


SERVER_ENGINES: list[EngineCase] = [
    EngineCase(
        "qdrant-server",
        _server("qdrant", _qdrant_server_url),
        persistent=True,
        shared=True,
        marks=(pytest.mark.server,),
    ),
    # the real C++ Milvus 2.3.5 of the PyPI package `milvus`, started once per session
    EngineCase(
        "milvus-embedded",
        _server("milvus-embedded", milvus_servers.embedded),
        persistent=True,
        shared=True,
        marks=(pytest.mark.server,),
    ),
    # MILVUS_URI or testcontainers; the struct layout only on Milvus >= 2.6.4
    EngineCase(
        "milvus-server", _server("milvus", milvus_servers.external), persistent=True, shared=True, marks=(pytest.mark.server,)
    ),
    EngineCase(
        "milvus-server-struct",
        _server("milvus-struct", milvus_servers.external_struct),
        persistent=True,
        shared=True,
        marks=(pytest.mark.server,),
    ),
]

ALL_ENGINES = ENGINES + SERVER_ENGINES


@pytest.fixture(scope="session", autouse=True)
def _stop_embedded_milvus() -> Iterator[None]:
    """Stop the embedded Milvus server (if a test started it) when the session ends."""
    yield
    milvus_servers.stop_embedded()


class Store:
    """One engine for one test: ``connect()`` opens it (again), ``collection`` is a fresh name."""

    def __init__(self, case: EngineCase, tmp: Path) -> None:
        self.case = case
        self.url = case.url(tmp)
        self.collection = f"t_{uuid.uuid4().hex[:12]}" if case.shared else "passages"
        self._opened: list[RepositoryBase] = []

    def connect(self) -> RepositoryBase:
        repo = connect(self.url)
        self._opened.append(repo)
        return repo

    def close_all(self) -> None:
        if self.case.shared:
            try:
                repo = connect(self.url)
                for name in repo.list_collections():
                    if name.startswith(self.collection):
                        repo.drop_collection(name)
                repo.close()
            except Exception:
                pass
        for repo in self._opened:
            try:
                repo.close()
            except Exception:
                pass


ENGINE_PARAMS = [pytest.param(c, id=c.id, marks=c.marks) for c in ALL_ENGINES]


@pytest.fixture(params=ENGINE_PARAMS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh store for a test that writes."""
    s = Store(request.param, tmp_path)
    try:
        yield s
    finally:
        s.close_all()


@pytest.fixture(scope="module", params=ENGINE_PARAMS)
def shared_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One store per engine and module, for tests that only read (or must not write)."""
    s = Store(request.param, tmp_path_factory.mktemp(request.param.id))
    try:
        yield s
    finally:
        s.close_all()


@pytest.fixture
def repo(store: Store) -> RepositoryBase:
    return store.connect()
