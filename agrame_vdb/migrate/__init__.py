"""Collection migrations: what keeps a deployed index usable across agrame-vdb versions.

A collection records its schema version in the collection itself (the schema
record every engine keeps: collection metadata on a Qdrant server and in local
mode, ``<collection>/collection.json`` on Qdrant Edge, a collection property on
Milvus, the collection object in memory). This library writes collections of
:data:`~agrame_vdb.repository.SCHEMA_VERSION` only: an older one is refused for
writing with a message naming ``agrame-vdb migrate up``, a newer one with a
message naming ``migrate down`` (run by the newer library).

Two kinds of migration, both resumable, both written against the repository
protocol (engine specifics stay in :mod:`agrame_vdb.repositories`):

- **Schema migrations**, one file per version in the top-level
  ``migrations/versions/`` folder (``v0002_model_reference.py`` ...; installed as
  :mod:`agrame_vdb.migrations.versions`, see ``migrations/README.md``), as
  Alembic's versions: each defines ``MIGRATION = Migration(id, version,
  description, upgrade=(steps), downgrade=(steps))`` taking a collection from
  ``version - 1`` to ``version`` in place, and back. :func:`upgrade` runs every
  pending one in order, :func:`downgrade` undoes them down to a version.
- **Collection operations** (:mod:`agrame_vdb.migrate.operations`): add a
  unit kind to stored passages without re-encoding them (:func:`add_units`);
  re-index into a new collection with another model or dim (:func:`reindex`),
  or copy into one with other storage (:func:`convert_storage`), then switch an
  alias to it in one atomic step, so searches through the alias answer
  throughout (blue/green); :func:`rollback` switches the alias back.

Steps are :class:`Check` (before anything is written), :class:`RewritePassages`
(every passage, page by page in id order) and :class:`StoreSchema` (the
collection's schema record), all in :mod:`~agrame_vdb.migrate.steps`. After
each page the state (:class:`MigrationState`: operation, step, the id to go on
from, counts) is replaced atomically in ``<state_dir>/<collection>.json``; a
migration that was killed or failed goes on from there when run again with the
same arguments (:mod:`~agrame_vdb.migrate.state`, :mod:`~agrame_vdb.migrate.runner`).
Rewrites are idempotent (same ids), so a page done twice is harmless. Finished
migrations are appended to ``<collection>.history.jsonl`` beside it. :func:`digest`
checks that a migration lost nothing (:mod:`~agrame_vdb.migrate.digest`).

The same names are importable from :mod:`agrame_vdb.migrations` (the package of
the version files), as they were before the runner moved here.

>>> from agrame_vdb import connect, CollectionSchema
>>> repo = connect("memory://")
>>> _ = repo.create_collection(CollectionSchema("docs", dim=4, schema_version=1))
>>> [m.id for m in pending(repo, "docs")]
['v0002_model_reference']
>>> upgrade(repo, "docs").to_version
2
>>> status(repo, "docs").pending
()
"""

from __future__ import annotations

from .digest import Digest, digest, digest_passages
from .operations import add_units, convert_storage, reindex, rollback
from .reports import MigrationResult, MigrationStatus
# DEFAULT_PAGE, STATE_FORMAT and Step stay importable from here, as before, outside __all__
from .runner import DEFAULT_PAGE, abort, downgrade, pending, status, upgrade  # noqa: F401
from .state import STATE_FORMAT, MigrationState, default_state_dir  # noqa: F401
from .steps import Check, Migration, MigrationContext, RewritePassages, Step, StoreSchema, load_migrations  # noqa: F401

__all__ = [
    "Migration",
    "MigrationContext",
    "Check",
    "RewritePassages",
    "StoreSchema",
    "MigrationState",
    "MigrationStatus",
    "MigrationResult",
    "Digest",
    "load_migrations",
    "pending",
    "status",
    "upgrade",
    "downgrade",
    "abort",
    "digest",
    "digest_passages",
    "default_state_dir",
    "add_units",
    "reindex",
    "convert_storage",
    "rollback",
]
