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
    "InvalidVectorError",
    "InvalidIdError",
    "InvalidMetadataError",
    "InvalidFilterError",
    "InvalidSchemaError",
    "MissingPassagesError",
    "StoreUnavailableError",
    "UnsupportedOperationError",
    "LexicalUnavailableError",
    "InvalidRecordError",
    "CheckpointMismatchError",
    "JobInterruptedError",
    "AliasError",
    "MigrationError",
]


class AgrameError(Exception):
    """Base class of every error agrame-vdb raises on purpose."""


class InvalidInputError(AgrameError, ValueError):
    """Input was rejected before it reached a model or an engine."""


class InvalidUnitError(InvalidInputError):
    """A unit (sentence, proposition, custom span) does not fit its passage."""


class InvalidVectorError(InvalidInputError):
    """A token-vector matrix or a pooled vector has the wrong shape, dtype or values."""


class InvalidIdError(InvalidInputError):
    """A passage id is not a UUID string (see :func:`agrame_vdb.units.passage_id`)."""


class InvalidMetadataError(InvalidInputError):
    """Passage metadata is not JSON-safe (NaN, bytes, sets, huge ints, reserved keys)."""


class InvalidFilterError(InvalidInputError):
    """A metadata filter is malformed (unknown operator, bad field name or value)."""


class InvalidSchemaError(InvalidInputError):
    """A collection schema is malformed (name, dim, dtype, indexed fields)."""


class InvalidRecordError(InvalidInputError):
    """A document record of an indexing job is malformed; the job rejects it and goes on."""


class ModelLoadError(AgrameError):
    """A model directory is missing, unreadable, or in no format we accept."""


class RepositoryError(AgrameError):
    """A vector database refused or failed an operation."""


class CollectionNotFoundError(RepositoryError):
    """The named collection does not exist in the store. ``collection`` is the name asked
    for and ``existing`` the collections the store has (None when it was not asked)."""

    def __init__(self, message: str, *, collection: str | None = None, existing: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.collection = collection
        self.existing = None if existing is None else tuple(existing)


class SchemaMismatchError(RepositoryError):
    """A collection exists but with another dim, dtype or schema version."""


class ConcurrentAccessError(RepositoryError):
    """The store is already opened by another process (embedded engines)."""


class TransientRepositoryError(RepositoryError):
    """A failure worth retrying: the engine is unreachable, busy or timed out."""


class MissingPassagesError(RepositoryError, KeyError):
    """Some requested passage ids are not in the collection; ``.ids`` lists them."""

    def __init__(self, message: str, ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.ids = ids

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StoreUnavailableError(RepositoryError):
    """A store URL names a known engine whose repository or client is not installed."""


class AliasError(RepositoryError):
    """An alias operation clashes with the store: the alias exists already, its name is
    a collection's, it is missing, or a collection-only operation was given an alias."""


class MigrationError(AgrameError):
    """A collection migration cannot start or go on (another one is in progress, the
    chain has a gap, a check failed); the message says how to resume or undo it."""


class UnsupportedOperationError(RepositoryError):
    """The engine cannot do what was asked (see the repository's capabilities)."""


class LexicalUnavailableError(UnsupportedOperationError):
    """The collection has no lexical vectors (made before them, or with ``lexical=None``);
    the message names the migration that adds them."""


class UnknownStoreError(AgrameError, ValueError):
    """A store URL names a scheme no repository serves."""


class CheckpointMismatchError(AgrameError):
    """A job checkpoint was written by another job (other input, arguments or model)."""


class JobInterruptedError(RepositoryError):
    """An indexing job stopped because its repository failed; its checkpoint lets it resume.

    ``checkpoint`` is the checkpoint file (None when the job kept none).
    """

    def __init__(self, message: str, checkpoint: object = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
