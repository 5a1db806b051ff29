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

from . import filters as _filters
from . import protocol as _protocol
from . import records as _records
from . import schema as _schema
from . import validation as _validation
from .filters import *  # noqa: F403
from .protocol import *  # noqa: F403
from .records import *  # noqa: F403
from .repositories import base as _base
from .repositories._aliases import ALIAS_TTL_S  # noqa: F401
from .repositories.base import *  # noqa: F403
from .schema import *  # noqa: F403
from .validation import *  # noqa: F403

__all__ = ["ALIAS_TTL_S"]
__all__ += _schema.__all__
__all__ += _records.__all__
__all__ += _filters.__all__
__all__ += _protocol.__all__
__all__ += _base.__all__
__all__ += _validation.__all__
