"""The protocols, on every repository: each engine is a MigratableRepository, and pages
through ids alike (what migrations resume from)."""

from __future__ import annotations

import inspect

from ..protocol import MigratableRepository, Repository
from ..repository import Eq, In
from .engines import EngineFixtures

MIGRATION_METHODS = ("update_schema", "upsert_at_version", "iter_id_pages", "iter_ids")


def _parameters(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


class ProtocolTests(EngineFixtures):
    """Repository and MigratableRepository, and the one id-paging iterator."""

    def test_every_engine_is_a_migratable_repository(self, readonly):
        _, repo, _ = readonly
        assert isinstance(repo, Repository) and isinstance(repo, MigratableRepository)
        for name in MIGRATION_METHODS:
            assert _parameters(getattr(type(repo), name)) == _parameters(getattr(MigratableRepository, name)), name

    def test_id_pages_follow_next_offset(self, readonly):
        store, repo, passages = readonly
        name = store.collection
        pages = list(repo.iter_id_pages(name, page=8))
        assert [len(p.ids) for p in pages] == [8, 8, 8, 6]
        assert [i for p in pages for i in p.ids] == sorted(p.id for p in passages)
        assert [p.next_offset for p in pages] == [q.ids[0] for q in pages[1:]] + [None]
        # resumable: from a page's next_offset on, the pages that follow it
        assert list(repo.iter_id_pages(name, page=8, start=pages[1].next_offset)) == pages[2:]
        assert list(repo.iter_ids(name, page=8)) == [i for p in pages for i in p.ids]

    def test_id_pages_with_a_filter(self, readonly):
        store, repo, passages = readonly
        name = store.collection
        flt = In("lang", ("en", "fr"))
        expected = sorted(p.id for p in passages if p.metadata["lang"] in ("en", "fr"))
        pages = list(repo.iter_id_pages(name, filter=flt, page=7))
        assert all(len(p.ids) <= 7 for p in pages) and pages[-1].next_offset is None
        assert [i for p in pages for i in p.ids] == expected
        assert [p.ids for p in repo.iter_id_pages(name, filter=Eq("lang", "none"))] == [()]
