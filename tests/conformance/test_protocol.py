"""Every engine's repository is a MigratableRepository, and pages through ids alike."""

from __future__ import annotations

import inspect

import pytest

from agrame_vdb.protocol import MigratableRepository, Repository
from agrame_vdb.repository import CollectionSchema, Eq, In

from ._data import make_passages

N = 30
MIGRATION_METHODS = ("update_schema", "upsert_at_version", "iter_id_pages", "iter_ids")


@pytest.fixture(scope="module")
def readonly(shared_store):
    repo = shared_store.connect()
    repo.create_collection(CollectionSchema(shared_store.collection, 16, indexed_fields={"lang": "keyword"}))
    passages = make_passages(N)
    repo.upsert(shared_store.collection, passages)
    return shared_store, repo, passages


def _parameters(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_every_engine_is_a_migratable_repository(readonly):
    _, repo, _ = readonly
    assert isinstance(repo, Repository) and isinstance(repo, MigratableRepository)
    for name in MIGRATION_METHODS:
        assert _parameters(getattr(type(repo), name)) == _parameters(getattr(MigratableRepository, name)), name


def test_id_pages_follow_next_offset(readonly):
    store, repo, passages = readonly
    name = store.collection
    pages = list(repo.iter_id_pages(name, page=8))
    assert [len(p.ids) for p in pages] == [8, 8, 8, 6]
    assert [i for p in pages for i in p.ids] == sorted(p.id for p in passages)
    assert [p.next_offset for p in pages] == [q.ids[0] for q in pages[1:]] + [None]
    # resumable: from a page's next_offset on, the pages that follow it
    assert list(repo.iter_id_pages(name, page=8, start=pages[1].next_offset)) == pages[2:]
    assert list(repo.iter_ids(name, page=8)) == [i for p in pages for i in p.ids]


def test_id_pages_with_a_filter(readonly):
    store, repo, passages = readonly
    name = store.collection
    flt = In("lang", ("en", "fr"))
    expected = sorted(p.id for p in passages if p.metadata["lang"] in ("en", "fr"))
    pages = list(repo.iter_id_pages(name, filter=flt, page=7))
    assert all(len(p.ids) <= 7 for p in pages) and pages[-1].next_offset is None
    assert [i for p in pages for i in p.ids] == expected
    assert [p.ids for p in repo.iter_id_pages(name, filter=Eq("lang", "none"))] == [()]
