"""The format of a schema migration: :class:`Migration` and its steps, and the chain of
them in ``migrations/versions/`` (installed as :mod:`agrame_vdb.migrations.versions`).

A version file defines ``MIGRATION = Migration(id, version, description,
upgrade=(steps), downgrade=(steps))``; its steps are :class:`Check` (before
anything is written), :class:`RewritePassages` (every passage, page by page) and
:class:`StoreSchema` (the collection's schema record). :mod:`agrame_vdb.migrate.runner`
runs them.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..protocol import MigratableRepository
from ..errors import MigrationError
from ..repository import SCHEMA_VERSION, CollectionSchema, StoredPassage

__all__ = ["MigrationContext", "RewritePassages", "StoreSchema", "Check", "Step", "Migration", "load_migrations"]

#: the package of the version files (the top-level ``migrations/`` folder of a checkout)
VERSIONS_PACKAGE = "agrame_vdb.migrations.versions"


@dataclass(frozen=True)
class MigrationContext:
    """What a step sees: the repository, the concrete collection, the versions it
    goes between and the options given to the run (``model=`` ...)."""

    repository: MigratableRepository
    collection: str
    from_version: int
    to_version: int
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RewritePassages:
    """Rewrite every passage in place: ``fn(passage, ctx)`` returns the passage to
    store (or None for the same one); the runner stamps it with the version the
    migration goes to. Token vectors are never re-encoded here."""

    name: str
    fn: Callable[[StoredPassage, MigrationContext], StoredPassage | None] | None = None


@dataclass(frozen=True)
class StoreSchema:
    """Replace the collection's schema record: ``fn(schema, ctx)`` returns the new
    one (or None for the same); the runner sets its version."""

    name: str
    fn: Callable[[CollectionSchema, MigrationContext], CollectionSchema | None] | None = None


@dataclass(frozen=True)
class Check:
    """A check before anything is written: ``fn(ctx)`` raises MigrationError to stop."""

    name: str
    fn: Callable[[MigrationContext], None]


Step = Check | RewritePassages | StoreSchema


@dataclass(frozen=True)
class Migration:
    """One version of the collection schema: ``upgrade`` takes a collection from
    ``version - 1`` to ``version``; ``downgrade`` (None: irreversible) back."""

    id: str
    version: int
    description: str
    upgrade: tuple[Step, ...] = ()
    downgrade: tuple[Step, ...] | None = ()


@lru_cache(maxsize=1)
def load_migrations() -> tuple[Migration, ...]:
    """Every migration in :data:`VERSIONS_PACKAGE`, ordered by version.

    Checks the chain: module name equals the id, versions run 1, 2, ... up to
    :data:`SCHEMA_VERSION` without gaps or repeats.
    """
    versions = importlib.import_module(VERSIONS_PACKAGE)
    found = []
    for info in pkgutil.iter_modules(versions.__path__):
        module = importlib.import_module(f"{versions.__name__}.{info.name}")
        m = getattr(module, "MIGRATION", None)
        if not isinstance(m, Migration):
            raise MigrationError(f"migration file {info.name} defines no MIGRATION = Migration(...)")
        if m.id != info.name:
            raise MigrationError(f"migration file {info.name} has id {m.id!r}; the id must be the file's name")
        found.append(m)
    found.sort(key=lambda m: m.version)
    versions_seen = [m.version for m in found]
    if versions_seen != list(range(1, SCHEMA_VERSION + 1)):
        raise MigrationError(
            f"the migration chain has versions {versions_seen}; it must be 1..{SCHEMA_VERSION} (SCHEMA_VERSION)"
        )
    return tuple(found)

