"""Aliases, on every repository: an alias stands for its collection in every call,
and a switch is atomic for readers (what blue/green migrations rely on)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ..errors import AliasError, CollectionNotFoundError
from ..repository import CollectionSchema, Eq

from .data import DIM, make_passages, unit_vectors
from .engines import EngineFixtures


class AliasTests(EngineFixtures):
    """Aliases stand for their collections; switches are atomic."""

    @pytest.fixture
    def two(self, store, repo):
        """Collections <name>_a (6 passages) and <name>_b (9), and an alias name."""
        a, b = f"{store.collection}_a", f"{store.collection}_b"
        repo.create_collection(CollectionSchema(a, DIM, indexed_fields={"lang": "keyword"}))
        repo.create_collection(CollectionSchema(b, DIM, indexed_fields={"lang": "keyword"}))
        repo.upsert(a, make_passages(6, seed=1))
        repo.upsert(b, make_passages(9, seed=2))
        return repo, a, b, f"{store.collection}_live"

    def test_alias_stands_for_its_collection(self, two):
        repo, a, b, alias = two
        repo.create_alias(alias, a)
        assert repo.resolve(alias) == a and repo.resolve(a) == a
        assert repo.list_aliases()[alias] == a
        assert alias not in repo.list_collections()
        assert repo.open_collection(alias).name == a
        assert repo.create_collection(CollectionSchema(alias, DIM)).name == a  # what an indexer does first
        assert repo.count(alias) == 6
        q = unit_vectors(np.random.default_rng(3), 1)[0]
        assert [c.id for c in repo.candidates(alias, q, limit=3)] == [c.id for c in repo.candidates(a, q, limit=3)]
        ids = list(repo.iter_ids(alias))
        assert ids == list(repo.iter_ids(a)) and len(ids) == 6
        assert [p.id for p in repo.fetch(alias, ids[:2])] == ids[:2]
        extra = make_passages(8, seed=1)[6:]
        repo.upsert(alias, extra)
        assert repo.count(a) == 8
        repo.delete(alias, [extra[0].id])
        assert repo.delete_where(alias, Eq("lang", extra[1].metadata["lang"])) >= 1
        assert repo.count(alias) == repo.count(a) < 8
        repo.optimize(alias)
        assert repo.switch_alias(alias, b) == a
        assert repo.count(alias) == 9 and repo.resolve(alias) == b
        assert repo.delete_alias(alias) is True and repo.delete_alias(alias) is False
        with pytest.raises(CollectionNotFoundError):
            repo.count(alias)

    def test_alias_rules(self, two):
        repo, a, b, alias = two
        with pytest.raises(CollectionNotFoundError):
            repo.create_alias(alias, f"{a}_missing")
        repo.create_alias(alias, a)
        with pytest.raises(AliasError, match="exists"):
            repo.create_alias(alias, b)
        with pytest.raises(AliasError, match="is a collection"):
            repo.create_alias(b, a)
        with pytest.raises(AliasError, match="is an alias"):
            repo.drop_collection(alias)
        second = alias + "2"
        repo.create_alias(second, alias)  # an alias of an alias points at the collection
        assert repo.list_aliases()[second] == a
        assert repo.drop_collection(a) is True  # its aliases go with it
        assert alias not in repo.list_aliases() and second not in repo.list_aliases()
        assert repo.count(b) == 9

    def test_switch_is_atomic_for_readers(self, two):
        repo, a, b, alias = two
        repo.create_alias(alias, a)
        seen: set[int] = set()
        errors: list[BaseException] = []
        halt = threading.Event()

        def read() -> None:
            while not halt.is_set():
                try:
                    seen.add(repo.count(alias))
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

        t = threading.Thread(target=read, daemon=True)
        t.start()
        try:
            for i in range(6):
                repo.switch_alias(alias, b if i % 2 == 0 else a)
        finally:
            halt.set()
            t.join(10)
        assert not errors, errors[:3]
        assert seen <= {6, 9}

    def test_aliases_persist(self, store, two):
        repo, a, b, alias = two
        if not store.case.persistent:
            pytest.skip("this store does not persist")
        repo.create_alias(alias, b)
        repo.close()
        again = store.connect()
        assert again.resolve(alias) == b and again.count(alias) == 9
