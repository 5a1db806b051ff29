"""The engine under test: how to reach it (:class:`EngineCase`), one store per test
(:class:`Store`), and the fixtures every conformance class is built on
(:class:`EngineFixtures`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..repositories import connect
from ..repository import CollectionSchema, RepositoryBase, StoredPassage
from .data import DIM, make_passages

#: passages in the collections of ``loaded`` and ``readonly``
N = 30


@dataclass(frozen=True)
class EngineCase:
    """How to reach one engine in a test.

    ``url`` builds the store URL from a fresh temporary directory (servers ignore
    it; it may call ``pytest.skip`` with the reason there is no server).
    ``persistent``: a second ``connect`` of the same URL sees the data.
    ``exclusive``: a second process opening it must get ConcurrentAccessError.
    ``shared``: the store outlives the test (a server): collections get unique
    names and are dropped after the test. ``marks``: pytest marks of its cases.
    """

    id: str
    url: Callable[[Path], str]
    persistent: bool = False
    exclusive: bool = False
    shared: bool = False
    marks: tuple[Any, ...] = ()

    def param(self) -> Any:
        """This engine as a ``pytest.param`` (its id and marks), for ``params=`` or ``parametrize``."""
        return pytest.param(self, id=self.id, marks=self.marks)


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


def _opened(case: EngineCase, tmp: Path) -> Iterator[Store]:
    s = Store(case, tmp)
    try:
        yield s
    finally:
        s.close_all()


def fill(repo: RepositoryBase, name: str) -> list[StoredPassage]:
    """Create ``name`` (lang and year indexed) and write the N passages of the suite into it."""
    repo.create_collection(CollectionSchema(name, DIM, indexed_fields={"lang": "keyword", "year": "integer"}))
    passages = make_passages(N)
    assert repo.upsert(name, passages) == N
    return passages


class EngineFixtures:
    """The fixtures of the conformance classes. A subclass overrides ``engine``."""

    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls) -> EngineCase:
        """The engine under test: override it in the subclass, with ``scope="class"``,
        as a classmethod (``params=`` of several cases runs the suite on each)."""
        raise NotImplementedError(
            f"{cls.__name__} must override the fixture `engine` (scope='class') to return an EngineCase"
        )

    @pytest.fixture
    def store(self, engine: EngineCase, tmp_path: Path) -> Iterator[Store]:
        """A fresh store for a test that writes."""
        yield from _opened(engine, tmp_path)

    @pytest.fixture(scope="class")
    @classmethod
    def shared_store(cls, engine: EngineCase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
        """One store per engine and class, for tests that only read (or must not write)."""
        yield from _opened(engine, tmp_path_factory.mktemp(engine.id))

    @pytest.fixture(scope="class")
    @classmethod
    def shared_repo(cls, shared_store: Store) -> RepositoryBase:
        """The one connection to ``shared_store`` (an exclusive store takes one opener)."""
        return shared_store.connect()

    @pytest.fixture
    def repo(self, store: Store) -> RepositoryBase:
        return store.connect()

    @pytest.fixture
    def loaded(self, store: Store, repo: RepositoryBase) -> tuple[RepositoryBase, list[StoredPassage]]:
        """The repository with N passages written, and those passages."""
        return repo, fill(repo, store.collection)

    @pytest.fixture(scope="class")
    @classmethod
    def readonly(cls, shared_store: Store, shared_repo: RepositoryBase) -> tuple[Store, RepositoryBase, list]:
        """(store, repository, passages) with N passages, shared by the tests that do not write."""
        return shared_store, shared_repo, fill(shared_repo, shared_store.collection)
