"""What a collection is: its :class:`CollectionSchema`, the layout version, and the
hints for a collection at another version.

>>> s = CollectionSchema("docs", dim=4, indexed_fields={"lang": "keyword"})
>>> CollectionSchema.from_json(s.to_json()) == s
True
>>> s.indexes
{'doc_id': 'keyword', 'passage_index': 'integer', 'lang': 'keyword'}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import InvalidSchemaError, SchemaMismatchError
from .lexical import LexicalSpec
from .validation import BUILTIN_FIELDS, _check_field_name, _is_int, _NAME_RE

__all__ = [
    "SCHEMA_VERSION",
    "DTYPES",
    "FIELD_TYPES",
    "DType",
    "CollectionSchema",
    "upgrade_hint",
    "newer_hint",
    "no_lexical_hint",
]


#: Version of the stored collection contract (schema record, payload mapping, vector
#: names). This library writes collections of this version only: a collection at an
#: older version is upgraded with ``agrame-vdb migrate up`` (see
#: :mod:`agrame_vdb.migrations`); one at a newer version is refused for writing.
#: 1: the first layout. 2: the schema records the model that encoded the collection.
SCHEMA_VERSION = 2

DType = Literal["float32", "float16", "int8", "binary"]
#: Storage types of token vectors: full float32, float16 (half the bytes, about
#: 2.4e-4 absolute error on unit-norm vectors), int8 (8-bit codes with a float32
#: scale per token in the token copy, read back within 1/254: Qdrant Edge keeps
#: Turbo8 codes in the engine, Qdrant server and local mode scalar quantization
#: beside float32 originals), or binary (the token copy keeps each token's sign bits,
#: dim / 8 bytes, for a first MaxSim pass over the candidates, and an int8 copy for a
#: float rerank of the top ones: ``Planner(rerank=...)``; Qdrant Edge, Qdrant server
#: and local mode, memory). docs/storage.md measures them.
DTYPES: tuple[str, ...] = ("float32", "float16", "int8", "binary")
#: the storage a new collection of an index job or an evaluation gets unless told
#: (``CollectionSchema`` itself defaults to float32): float16 halves the token bytes at
#: the same development P@1 as float32 (docs/storage.md)
DEFAULT_STORAGE = "float16"
#: Types a metadata field can be indexed as (payload indexes) for fast filtering.
FIELD_TYPES: tuple[str, ...] = ("keyword", "integer", "float", "bool")
#: fields a stored schema record must have (the others default as in the class)
_REQUIRED_IN_RECORD = frozenset(("name", "dim", "schema_version"))


@dataclass(frozen=True, slots=True)
class CollectionSchema:
    """What a collection is: its name, vector dim, storage type and layout version.

    ``name`` is a letter or ``_`` then letters, digits and ``_`` (64 at most), so
    every engine (Milvus included) accepts it. ``dtype`` is one of :data:`DTYPES`.
    ``on_disk`` asks the engine to keep token vectors on disk (memory-mapped)
    instead of RAM (Qdrant Edge does so with its own copy whenever a token copy
    serves the queries). ``indexed_fields`` maps metadata fields (dotted paths) to one of
    :data:`FIELD_TYPES`; ``doc_id`` and ``passage_index`` are always indexed.
    ``model`` (schema version 2 on) names the model that encoded the passages (a
    model directory or name, as ``MultiVectorEncoder.load`` takes it), or None when
    unknown; migrations use it to re-tokenize stored text. Opening a collection
    does not compare it. ``lexical`` (a :class:`~agrame_vdb.lexical.LexicalSpec`, or
    None) gives every passage a BM25 sparse vector of its text, written with it, for
    the lexical and hybrid first stages; the spec's tokenisation is the one queries
    use. It is fixed at creation (a collection gains it by a copy:
    ``agrame-vdb migrate convert --lexical``); a record without it has none.
    ``token_pooling`` (an int >= 2, or None) says the token rows are pooled by that
    factor within the passages' units (:mod:`agrame_vdb.pooling`): fewer rows than
    tokens, unit token ranges over the pooled rows. 1 is stored as None (no pooling);
    a record without it is not pooled. Rows of another factor cannot be added to it.
    """

    name: str
    dim: int
    dtype: str = "float32"
    on_disk: bool = False
    schema_version: int = SCHEMA_VERSION
    indexed_fields: tuple[tuple[str, str], ...] | Mapping[str, str] = ()
    model: str | None = None
    lexical: LexicalSpec | None = None
    token_pooling: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise InvalidSchemaError(
                f"collection name must be a letter or '_' followed by letters, digits or '_' "
                f"(64 at most), got {self.name!r}"
            )
        if not _is_int(self.dim) or not 1 <= self.dim <= 65536:
            raise InvalidSchemaError(f"dim must be an int in [1, 65536], got {self.dim!r}")
        if self.dtype not in DTYPES:
            raise InvalidSchemaError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not isinstance(self.on_disk, bool):
            raise InvalidSchemaError(f"on_disk must be a bool, got {self.on_disk!r}")
        if not _is_int(self.schema_version) or self.schema_version < 1:
            raise InvalidSchemaError(f"schema_version must be an int >= 1, got {self.schema_version!r}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip() or len(self.model) > 4096):
            raise InvalidSchemaError(f"model must be None or a non-empty string (4096 chars at most), got {self.model!r}")
        items = self.indexed_fields.items() if isinstance(self.indexed_fields, Mapping) else self.indexed_fields
        fields: dict[str, str] = {}
        try:
            pairs = [(f, t) for f, t in items]
        except (TypeError, ValueError) as exc:
            raise InvalidSchemaError(
                f"indexed_fields must map field names to types, got {self.indexed_fields!r}"
            ) from exc
        for fname, ftype in pairs:
            _check_field_name(fname, InvalidSchemaError)
            if fname in BUILTIN_FIELDS:
                raise InvalidSchemaError(f"{fname!r} is always indexed; leave it out of indexed_fields")
            if ftype not in FIELD_TYPES:
                raise InvalidSchemaError(f"indexed field {fname!r} type must be one of {FIELD_TYPES}, got {ftype!r}")
            if fields.get(fname, ftype) != ftype:
                raise InvalidSchemaError(f"indexed field {fname!r} given twice with different types")
            fields[fname] = ftype
        object.__setattr__(self, "indexed_fields", tuple(sorted(fields.items())))
        if self.lexical is not None:
            object.__setattr__(self, "lexical", LexicalSpec.from_json(self.lexical))
        if self.token_pooling is not None:
            if not _is_int(self.token_pooling) or self.token_pooling < 1:
                raise InvalidSchemaError(f"token_pooling must be None or an int >= 1, got {self.token_pooling!r}")
            object.__setattr__(self, "token_pooling", None if self.token_pooling == 1 else int(self.token_pooling))

    @property
    def indexes(self) -> dict[str, str]:
        """Every indexed field, the built-in ones included, with its type."""
        return {**BUILTIN_FIELDS, **dict(self.indexed_fields)}  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        """The schema record engines store: every field, ``indexed_fields`` as an object."""
        record = dataclasses.asdict(self) | {"indexed_fields": dict(self.indexed_fields)}  # type: ignore[arg-type]
        if self.lexical is None:  # the record of a collection without lexical vectors is as before them
            del record["lexical"]
        if self.token_pooling is None:  # and that of a collection without pooled rows too
            del record["token_pooling"]
        return record

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CollectionSchema:
        """The schema a stored record describes (SchemaMismatchError when it is unreadable);
        fields the record leaves out take their defaults, keys it adds are ignored."""
        try:
            return cls(
                **{
                    f.name: data[f.name] if f.name in _REQUIRED_IN_RECORD else data.get(f.name, f.default)
                    for f in dataclasses.fields(cls)
                }
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise SchemaMismatchError(f"stored collection schema is unreadable: {data!r}") from exc

    def check_compatible(self, stored: CollectionSchema) -> None:
        """Raise :class:`SchemaMismatchError` when ``stored`` differs in dim, dtype, version
        or token pooling (rows pooled otherwise would be mixed with its rows)."""
        diffs = [
            f"{what}: stored {getattr(stored, what)!r}, requested {getattr(self, what)!r}"
            for what in ("dim", "dtype", "schema_version", "token_pooling")
            if getattr(stored, what) != getattr(self, what)
        ]
        if diffs:
            if stored.schema_version < self.schema_version:
                hint = " (" + upgrade_hint(stored.name, stored.schema_version) + ")"
            elif stored.schema_version > self.schema_version:
                hint = " (" + newer_hint(stored.name, stored.schema_version) + ")"
            else:
                hint = (
                    " (use another collection name, or re-index into a new collection and switch an alias: "
                    "agrame-vdb migrate reindex / migrate convert)"
                )
            raise SchemaMismatchError(f"collection {self.name!r} exists with another schema: " + "; ".join(diffs) + hint)


def upgrade_hint(collection: str, version: int) -> str:
    """What to run to bring a collection at an older ``version`` up to this library's."""
    return (
        f"collection {collection!r} is at schema version {version}, older than this agrame-vdb's "
        f"{SCHEMA_VERSION}: upgrade it with `agrame-vdb migrate up --collection {collection} --store URL` "
        "(or agrame_vdb.migrations.upgrade)"
    )


def no_lexical_hint(collection: str) -> str:
    """Why collection ``collection`` has no lexical first stage, and the migration that adds it."""
    return (
        f"collection {collection!r} has no lexical vectors (it was made without them), so the lexical and "
        f"hybrid first stages cannot search it: add them without re-encoding with `agrame-vdb migrate convert "
        f"--collection ALIAS --lexical --store URL` (a blue/green copy behind the alias; agrame_vdb.migrations."
        f"convert_storage(repo, alias, lexical=LexicalSpec())), or search it with first_stage='pooled'"
    )


def newer_hint(collection: str, version: int) -> str:
    """Why a collection at a newer ``version`` is not written, and what to do."""
    return (
        f"collection {collection!r} is at schema version {version}, newer than this agrame-vdb knows "
        f"({SCHEMA_VERSION}), so it refuses to write to it: upgrade agrame-vdb, or with the newer version "
        f"run `agrame-vdb migrate down --collection {collection} --to {SCHEMA_VERSION}`"
    )

