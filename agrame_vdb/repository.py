"""The repository protocol: the one seam between agrame-vdb and a vector database.

Everything above this module (indexer, planner, CLI) talks to a :class:`Repository`;
engine specifics live only in :mod:`agrame_vdb.repositories`. A repository holds
named collections; each collection has a :class:`CollectionSchema` and holds
:class:`StoredPassage` records: one passage's token vectors (its multi-vector
encoding), a pooled vector for the first stage, its units, text and metadata.

Every input is validated in shared code before any engine is called, and engine
exceptions come out as :class:`~agrame_vdb.errors.RepositoryError` children.
Engines subclass :class:`RepositoryBase` and implement its ``_hooks``.

This module gathers the names of the modules the seam is made of, so one import
reaches them all: :mod:`agrame_vdb.validation` (the checks and their limits),
:mod:`agrame_vdb.schema` (:class:`CollectionSchema`, the layout version),
:mod:`agrame_vdb.filters` (the filters and their JSON form),
:mod:`agrame_vdb.records` (:class:`StoredPassage` and the other records),
:mod:`agrame_vdb.protocol` (:class:`Repository`, :class:`MigratableRepository`)
and :mod:`agrame_vdb.repositories.base` (:class:`RepositoryBase`).

>>> import numpy as np
>>> from agrame_vdb import connect
>>> repo = connect("memory://")
>>> schema = repo.create_collection(CollectionSchema("demo", dim=4))
>>> tokens = np.eye(4, dtype=np.float32)[:3]
>>> p = StoredPassage.create("doc-1", 0, tokens, text="a b c", metadata={"lang": "en"})
>>> repo.upsert("demo", [p])
1
>>> [c.id == p.id for c in repo.candidates("demo", tokens[0], filter=Eq("lang", "en"))]
[True]
>>> Filter.from_json({"lang": {"$in": ["en", "fr"]}, "year": {"$gte": 2000}})
And(filters=(In(field='lang', values=('en', 'fr')), Range(field='year', gt=None, gte=2000, lt=None, lte=None)))
"""

from __future__ import annotations

from .filters import MAX_FILTER_DEPTH, And, Eq, Filter, In, Not, Or, Range, Scalar
from .protocol import MigratableRepository, Repository
from .records import Candidate, Capabilities, FetchResult, IdPage, StoredPassage, TokenBatch, pool_tokens
from .repositories._aliases import ALIAS_TTL_S
from .repositories.base import RepositoryBase
from .schema import DTYPES, FIELD_TYPES, SCHEMA_VERSION, CollectionSchema, DType, newer_hint, upgrade_hint
from .validation import (
    BUILTIN_FIELDS,
    MAX_EXACT_INT,
    MAX_METADATA_BYTES,
    MAX_STRING_BYTES,
    check_name,
    validate_ids,
    validate_metadata,
)

__all__ = [
    "SCHEMA_VERSION",
    "DTYPES",
    "FIELD_TYPES",
    "BUILTIN_FIELDS",
    "DType",
    "CollectionSchema",
    "StoredPassage",
    "Candidate",
    "FetchResult",
    "TokenBatch",
    "IdPage",
    "Capabilities",
    "Filter",
    "Eq",
    "In",
    "Range",
    "And",
    "Or",
    "Not",
    "Repository",
    "MigratableRepository",
    "RepositoryBase",
    "pool_tokens",
    "upgrade_hint",
    "newer_hint",
    "check_name",
    "validate_ids",
    "validate_metadata",
    "MAX_EXACT_INT",
    "MAX_FILTER_DEPTH",
    "MAX_METADATA_BYTES",
    "MAX_STRING_BYTES",
    "ALIAS_TTL_S",
    "Scalar",
]
