"""The one exception hierarchy of agrame-vdb.

Every error the library raises on purpose is an :class:`AgrameError`. Errors about
what the caller passed in are also :class:`ValueError` (or :class:`TypeError`), so
code that already catches those keeps working. Messages say what was wrong and what
to do about it.

>>> try:
...     raise InvalidInputError("units must not be empty")
... except ValueError as exc:
...     isinstance(exc, AgrameError)
True
"""

from __future__ import annotations

__all__ = [
    "AgrameError",
    "InvalidInputError",
    "InvalidUnitError",
    "ModelLoadError",
    "RepositoryError",
    "CollectionNotFoundError",
    "SchemaMismatchError",
    "ConcurrentAccessError",
    "TransientRepositoryError",
    "UnknownStoreError",
]


class AgrameError(Exception):
    """Base class of every error agrame-vdb raises on purpose."""


class InvalidInputError(AgrameError, ValueError):
    """Input was rejected before it reached a model or an engine."""


class InvalidUnitError(InvalidInputError):
    """A unit (sentence, proposition, custom span) does not fit its passage."""


class ModelLoadError(AgrameError):
    """A model directory is missing, unreadable, or in no format we accept."""


class RepositoryError(AgrameError):
    """A vector database refused or failed an operation."""


class CollectionNotFoundError(RepositoryError):
    """The named collection does not exist in the store."""


class SchemaMismatchError(RepositoryError):
    """A collection exists but with another dim, dtype or schema version."""


class ConcurrentAccessError(RepositoryError):
    """The store is already opened by another process (embedded engines)."""


class TransientRepositoryError(RepositoryError):
    """A failure worth retrying: the engine is unreachable, busy or timed out."""


class UnknownStoreError(AgrameError, ValueError):
    """A store URL names a scheme no repository serves."""
