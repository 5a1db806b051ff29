"""The repository protocol: the one seam between agrame-vdb and a vector database.

Everything above this module (indexer, planner, CLI) talks to a :class:`Repository`;
engine specifics live only in :mod:`agrame_vdb.repositories`. A repository holds
named collections; each collection has a :class:`CollectionSchema` and holds
:class:`StoredPassage` records: one passage's token vectors (its multi-vector
encoding), a pooled vector for the first stage, its units, text and metadata.

Every input is validated here, in shared code, before any engine is called, and
engine exceptions come out as :class:`~agrame_vdb.errors.RepositoryError`
children. Engines subclass :class:`RepositoryBase` and implement its ``_hooks``.

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

import abc
import json
import math
import re
import reprlib
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from .errors import (
    AgrameError,
    AliasError,
    CollectionNotFoundError,
    InvalidFilterError,
    InvalidIdError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidSchemaError,
    InvalidUnitError,
    InvalidVectorError,
    MissingPassagesError,
    RepositoryError,
    SchemaMismatchError,
    UnsupportedOperationError,
)
from .redact import scrub_exception
from .units import Unit, passage_id

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
    "RepositoryBase",
    "pool_tokens",
    "upgrade_hint",
    "newer_hint",
    "validate_ids",
    "validate_metadata",
    "MAX_EXACT_INT",
    "MAX_FILTER_DEPTH",
    "MAX_METADATA_BYTES",
    "MAX_STRING_BYTES",
]

#: Version of the stored collection contract (schema record, payload mapping, vector
#: names). This library writes collections of this version only: a collection at an
#: older version is upgraded with ``agrame-vdb migrate up`` (see
#: :mod:`agrame_vdb.migrations`); one at a newer version is refused for writing.
#: 1: the first layout. 2: the schema records the model that encoded the collection.
SCHEMA_VERSION = 2

DType = Literal["float32", "float16", "int8"]
#: Storage types of token vectors: full float32, float16 (half the bytes, about
#: 2.4e-4 absolute error on unit-norm vectors), or int8 scalar quantization (the
#: engine keeps the float32 originals for rescoring and for fetch).
DTYPES: tuple[str, ...] = ("float32", "float16", "int8")
#: Types a metadata field can be indexed as (payload indexes) for fast filtering.
FIELD_TYPES: tuple[str, ...] = ("keyword", "integer", "float", "bool")
#: Filter fields that are not metadata keys: every collection indexes them.
BUILTIN_FIELDS: Mapping[str, str] = MappingProxyType({"doc_id": "keyword", "passage_index": "integer"})

# validators match whole strings (fullmatch, and \A..\Z: ``$`` would let a trailing
# newline through, and ``"docs\n"`` become a collection)
_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_SEGMENT = r"[A-Za-z_][A-Za-z0-9_-]*"
_FIELD_RE = re.compile(rf"\A{_SEGMENT}(\.{_SEGMENT})*\Z")
#: The largest magnitude of an integer in metadata or a filter: every engine compares
#: integers up to 2**53 exactly (Milvus's JSON and Qdrant's ranges compare as float64,
#: where 2**53 + 1 is 2**53), so larger ones are refused; store them as strings.
MAX_EXACT_INT = 2**53
_MAX_LIMIT = 100_000
#: seconds a shared server's alias look-up is reused (another client may move an
#: alias; an operation on a collection that has gone looks again at once)
ALIAS_TTL_S = 1.0
_MAX_DEPTH = 32
#: The deepest a filter may nest (a leaf is depth 1, ``Not(Eq(...))`` depth 2): deeper
#: ones are refused with InvalidFilterError when built or parsed, long before Python's
#: recursion limit or an engine's expression parser.
MAX_FILTER_DEPTH = 32
#: The most bytes a passage's metadata may take as compact JSON (``\uXXXX`` escapes
#: counted as written), on every engine: a Milvus server's JSON field limit.
MAX_METADATA_BYTES = 65536
#: The most UTF-8 bytes of a passage's text and of its doc id, on every engine: a
#: Milvus server's VARCHAR limit.
MAX_STRING_BYTES = 65535


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True, slots=True)
class CollectionSchema:
    """What a collection is: its name, vector dim, storage type and layout version.

    ``name`` is a letter or ``_`` then letters, digits and ``_`` (64 at most), so
    every engine (Milvus included) accepts it. ``dtype`` is one of :data:`DTYPES`.
    ``on_disk`` asks the engine to keep token vectors on disk (memory-mapped)
    instead of RAM. ``indexed_fields`` maps metadata fields (dotted paths) to one of
    :data:`FIELD_TYPES`; ``doc_id`` and ``passage_index`` are always indexed.
    ``model`` (schema version 2 on) names the model that encoded the passages (a
    model directory or name, as ``MultiVectorEncoder.load`` takes it), or None when
    unknown; migrations use it to re-tokenize stored text. Opening a collection
    does not compare it.
    """

    name: str
    dim: int
    dtype: str = "float32"
    on_disk: bool = False
    schema_version: int = SCHEMA_VERSION
    indexed_fields: tuple[tuple[str, str], ...] | Mapping[str, str] = ()
    model: str | None = None

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

    @property
    def indexes(self) -> dict[str, str]:
        """Every indexed field, the built-in ones included, with its type."""
        return {**BUILTIN_FIELDS, **dict(self.indexed_fields)}  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "dtype": self.dtype,
            "on_disk": self.on_disk,
            "schema_version": self.schema_version,
            "indexed_fields": dict(self.indexed_fields),  # type: ignore[arg-type]
            "model": self.model,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CollectionSchema:
        try:
            return cls(
                name=data["name"],
                dim=data["dim"],
                dtype=data.get("dtype", "float32"),
                on_disk=data.get("on_disk", False),
                schema_version=data["schema_version"],
                indexed_fields=data.get("indexed_fields", {}),
                model=data.get("model"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise SchemaMismatchError(f"stored collection schema is unreadable: {data!r}") from exc

    def check_compatible(self, stored: CollectionSchema) -> None:
        """Raise :class:`SchemaMismatchError` when ``stored`` differs in dim, dtype or version."""
        diffs = [
            f"{what}: stored {getattr(stored, what)!r}, requested {getattr(self, what)!r}"
            for what in ("dim", "dtype", "schema_version")
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


def check_name(name: Any, what: str = "collection") -> str:
    """``name`` when it is a valid collection or alias name (a letter or '_', then
    letters, digits or '_', 64 at most: never a path); InvalidSchemaError otherwise.
    Check a name with it before building a path from it.

    >>> check_name("docs__g2")
    'docs__g2'
    >>> check_name("../x", "alias")
    Traceback (most recent call last):
    ...
    agrame_vdb.errors.InvalidSchemaError: invalid alias name '../x': a letter or '_' followed by letters, digits or '_' (64 at most)
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidSchemaError(
            f"invalid {what} name {name!r}: a letter or '_' followed by letters, digits or '_' (64 at most)"
        )
    return name


def upgrade_hint(collection: str, version: int) -> str:
    """What to run to bring a collection at an older ``version`` up to this library's."""
    return (
        f"collection {collection!r} is at schema version {version}, older than this agrame-vdb's "
        f"{SCHEMA_VERSION}: upgrade it with `agrame-vdb migrate up --collection {collection} --store URL` "
        "(or agrame_vdb.migrations.upgrade)"
    )


def newer_hint(collection: str, version: int) -> str:
    """Why a collection at a newer ``version`` is not written, and what to do."""
    return (
        f"collection {collection!r} is at schema version {version}, newer than this agrame-vdb knows "
        f"({SCHEMA_VERSION}), so it refuses to write to it: upgrade agrame-vdb, or with the newer version "
        f"run `agrame-vdb migrate down --collection {collection} --to {SCHEMA_VERSION}`"
    )


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, eq=False)
class StoredPassage:
    """One passage as a repository stores it.

    ``tokens`` is the passage's multi-vector encoding, a ``[n_tokens, dim]`` float32
    array (n_tokens >= 1); ``pooled`` a ``[dim]`` float32 vector for the first stage
    (cosine similarity; only its direction matters). ``units`` carry token ranges
    inside ``[0, n_tokens)`` and character spans inside ``text``. ``metadata`` is
    JSON-safe (no NaN, no bytes); the keys ``doc_id`` and ``passage_index`` are
    reserved for the built-in filter fields. ``id`` is a UUID string, by default
    :func:`~agrame_vdb.units.passage_id` of ``doc_id`` and ``index``, so a rewrite
    of the same passage overwrites it.

    The record is checked when it is built; arrays are not copied, so do not change
    them in place afterwards (a repository checks them again before writing).
    Arrays of fetched passages may be read-only.
    """

    id: str
    doc_id: str
    index: int
    tokens: np.ndarray
    pooled: np.ndarray
    units: tuple[Unit, ...] = ()
    text: str = ""
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", _check_id(self.id))
        if not isinstance(self.doc_id, str) or not self.doc_id:
            raise InvalidInputError(f"doc_id must be a non-empty string, got {self.doc_id!r}")
        if not _is_int(self.index) or not 0 <= self.index <= MAX_EXACT_INT:
            raise InvalidInputError(f"passage index must be an int in [0, 2**53], got {self.index!r}")
        object.__setattr__(self, "index", int(self.index))
        if not isinstance(self.text, str):
            raise InvalidInputError(f"passage text must be a string, got {type(self.text).__name__}")
        tokens = _as_matrix(self.tokens, None, f"passage {self.id} tokens")
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "pooled", _as_vector(self.pooled, tokens.shape[1], f"passage {self.id} pooled"))
        object.__setattr__(self, "units", _check_units(self.units, tokens.shape[0], self.text, self.id))
        object.__setattr__(self, "metadata", MappingProxyType(validate_metadata(self.metadata, self.id)))
        if not _is_int(self.schema_version) or self.schema_version < 1:
            raise InvalidInputError(f"schema_version must be an int >= 1, got {self.schema_version!r}")

    @classmethod
    def create(
        cls,
        doc_id: str,
        index: int,
        tokens: Any,
        *,
        pooled: Any = None,
        units: Sequence[Unit] = (),
        text: str = "",
        metadata: Mapping[str, Any] | None = None,
        schema_version: int = SCHEMA_VERSION,
    ) -> StoredPassage:
        """A passage with the deterministic id; ``pooled`` defaults to :func:`pool_tokens`."""
        pid = passage_id(doc_id, index)  # checks doc_id and index first
        tokens = _as_matrix(tokens, None, f"passage {doc_id!r}/{index} tokens")
        return cls(
            id=pid,
            doc_id=doc_id,
            index=index,
            tokens=tokens,
            pooled=pool_tokens(tokens) if pooled is None else pooled,
            units=tuple(units),
            text=text,
            metadata=metadata if metadata is not None else {},
            schema_version=schema_version,
        )

    @classmethod
    def _trusted(
        cls,
        id: str,
        doc_id: str,
        index: int,
        tokens: np.ndarray,
        pooled: np.ndarray,
        units: tuple[Unit, ...],
        text: str,
        metadata: Mapping[str, Any],
        schema_version: int,
    ) -> StoredPassage:
        """Build without checks: for repositories returning what they stored."""
        self = object.__new__(cls)
        for name, value in (
            ("id", id),
            ("doc_id", doc_id),
            ("index", index),
            ("tokens", tokens),
            ("pooled", pooled),
            ("units", units),
            ("text", text),
            ("metadata", MappingProxyType(dict(metadata))),
            ("schema_version", schema_version),
        ):
            object.__setattr__(self, name, value)
        return self

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[1])

    def __repr__(self) -> str:
        return (
            f"StoredPassage(id={self.id!r}, doc_id={self.doc_id!r}, index={self.index}, "
            f"tokens=<{self.n_tokens}x{self.dim}>, units={len(self.units)}, text={self.text[:30]!r})"
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A first-stage hit: a passage id and its score.

    ``stage`` is ``"pooled"`` (cosine of pooled vectors) or ``"maxsim"`` (the
    engine's own MaxSim over the token vectors, after a pooled prefetch).
    ``version`` is the passage's write version (as :attr:`TokenBatch.versions`)
    when the engine reads it with the hit (``candidates(..., with_versions=True)``
    on an engine whose ``capabilities().versions`` is True), else None.
    """

    id: str
    score: float
    stage: str = "pooled"
    version: int | str | None = None


@dataclass(frozen=True, slots=True)
class FetchResult:
    """Fetched passages, in the order asked (duplicates repeated), and the ids not found."""

    passages: tuple[StoredPassage, ...]
    missing: tuple[str, ...] = ()

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.passages]

    def __len__(self) -> int:
        return len(self.passages)

    def __iter__(self) -> Iterator[StoredPassage]:
        return iter(self.passages)


@dataclass(frozen=True, slots=True, eq=False)
class TokenBatch:
    """What scoring needs of some passages, and nothing more: no text, no metadata.

    ``ids`` are the passages found, once each, in the order first asked, and
    ``missing`` the ids asked for that are not stored. Passage ``i``'s token
    vectors are rows ``offsets[i]:offsets[i+1]`` of ``tokens``, one C-contiguous,
    writable float32 ``[T, dim]`` array (``offsets`` is int64 ``[P+1]``), so the
    batch goes to :func:`~agrame_vdb.maxsim.pack_concatenated` without a copy;
    ``units[i]`` are its units (``units`` may be a
    :class:`~agrame_vdb.unit_table.UnitTable`, which the planner scores from without
    building ``Unit`` records). ``versions[i]`` is the passage's write version: it
    changes whenever the passage is written again, so a cache can key on
    ``(id, version)``; None where the engine keeps no version
    (``capabilities().versions`` is False) or the passage was written without one.

    >>> import numpy as np
    >>> a = StoredPassage.create("d", 0, np.eye(2, dtype=np.float32))
    >>> b = TokenBatch.from_passages([a], ("00000000-0000-4000-8000-000000000000",), dim=2)
    >>> b.ids == (a.id,), b.offsets.tolist(), b.tokens_of(0).shape
    (True, [0, 2], (2, 2))
    """

    ids: tuple[str, ...]
    missing: tuple[str, ...]
    tokens: np.ndarray
    offsets: np.ndarray
    units: Sequence[tuple[Unit, ...]]
    versions: tuple[int | str | None, ...]

    def __post_init__(self) -> None:
        n = len(self.ids)
        if (
            self.tokens.ndim != 2
            or self.offsets.shape != (n + 1,)
            or int(self.offsets[-1]) != self.tokens.shape[0]
            or len(self.units) != n
            or len(self.versions) != n
        ):
            raise RepositoryError(
                f"inconsistent token batch: {n} ids, tokens {self.tokens.shape}, offsets {self.offsets.shape}, "
                f"{len(self.units)} unit lists, {len(self.versions)} versions"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_tokens(self) -> np.ndarray:
        """Token count of each passage, int64 ``[P]``."""
        return np.diff(self.offsets)

    def tokens_of(self, i: int) -> np.ndarray:
        """Passage ``i``'s ``[n_i, dim]`` token vectors (a view into ``tokens``)."""
        return self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])]

    @classmethod
    def from_passages(
        cls,
        passages: Sequence[StoredPassage],
        missing: Sequence[str] = (),
        *,
        dim: int,
        versions: Sequence[int | str | None] | None = None,
    ) -> TokenBatch:
        """A batch of fetched passages (one copy of their token vectors)."""
        lengths = [p.tokens.shape[0] for p in passages]
        offsets = np.zeros(len(passages) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = (
            np.concatenate([p.tokens for p in passages]).astype(np.float32, copy=False)
            if passages
            else np.zeros((0, dim), dtype=np.float32)
        )
        return cls(
            tuple(p.id for p in passages),
            tuple(missing),
            np.ascontiguousarray(tokens),
            offsets,
            tuple(p.units for p in passages),
            tuple(versions) if versions is not None else (None,) * len(passages),
        )


@dataclass(frozen=True, slots=True)
class IdPage:
    """One page of ids in id order; pass ``next_offset`` back for the next page (None: done)."""

    ids: tuple[str, ...]
    next_offset: str | None = None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine can do, so callers can choose a plan without knowing the engine.

    - ``engine``: e.g. ``"memory"``, ``"qdrant-edge"``, ``"qdrant-local"``, ``"qdrant-server"``.
    - ``maxsim_rerank``: :meth:`Repository.candidates` accepts ``tokens`` and
      reranks its pooled prefetch by MaxSim inside the engine.
    - ``dtypes``: storage dtypes a schema may ask for.
    - ``storage_options_honoured``: float16, int8 and ``on_disk`` really change how
      vectors are stored (False where the engine accepts and ignores them).
    - ``persistent``: data survives ``close()`` and a new process.
    - ``exclusive``: one process at a time (a second opener gets ConcurrentAccessError).
    - ``filter_ops``: filter classes supported (all six everywhere so far).
    - ``fetch_atol``: per dtype, the largest absolute difference between written and
      fetched token vectors, for vectors with entries in [-1, 1].
    - ``approximate_first_stage``: the pooled search may use an ANN index (HNSW), so
      its order can differ from exact cosine on large collections.
    - ``versions``: every write stamps the passage with a new version, which
      :meth:`Repository.fetch_tokens` reports and ``candidates(with_versions=True)``
      puts on each hit; False where versions are None.
    """

    engine: str
    maxsim_rerank: bool
    dtypes: frozenset[str]
    storage_options_honoured: bool
    persistent: bool
    exclusive: bool
    filter_ops: frozenset[str]
    fetch_atol: Mapping[str, float]
    approximate_first_stage: bool = False
    versions: bool = False


# --------------------------------------------------------------------------- filters


class Filter(abc.ABC):
    """A backend-neutral condition over passage metadata.

    Fields are metadata keys (dotted paths reach into nested objects) or the
    built-ins ``doc_id`` and ``passage_index``. Semantics (as Qdrant's payload
    filters, which the memory reference copies): a field holding a list matches
    when any element matches; a missing field matches nothing, so ``Not`` of it
    matches; values compare with their JSON type (``1`` does not equal ``1.0``
    or ``True``). Combine with ``&``, ``|`` and ``~``. A filter nests at most
    :data:`MAX_FILTER_DEPTH` levels and compares integers within ±:data:`MAX_EXACT_INT`
    (InvalidFilterError otherwise, when it is built).
    """

    __slots__ = ()

    @staticmethod
    def from_json(obj: Mapping[str, Any] | str) -> Filter | None:
        """Parse the Mongo-like JSON form; ``{}`` means no filter (None).

        ``{"lang": "en"}`` (Eq), ``{"lang": {"$in": [...]}}``, ``{"$nin": [...]}``,
        ``{"$ne": v}``, ``{"year": {"$gte": 2000, "$lt": 2010}}`` (Range),
        ``{"$and": [...]}``, ``{"$or": [...]}``, ``{"$not": {...}}``; several keys
        in one object are and-ed. Filters nest at most :data:`MAX_FILTER_DEPTH` deep.
        """
        if isinstance(obj, str):
            try:
                obj = json.loads(obj)
            except ValueError as exc:  # JSONDecodeError, or an int of more than 4300 digits
                raise InvalidFilterError(f"filter is not valid JSON: {exc}") from exc
            except RecursionError:  # the decoder's own limit, far past ours
                raise InvalidFilterError(_too_deep()) from None
        if not isinstance(obj, Mapping):
            raise InvalidFilterError(f"a filter must be a JSON object, got {_short(obj)}")
        if not obj:
            return None
        return _parse_filter(obj, 1)

    @abc.abstractmethod
    def to_json(self) -> dict[str, Any]:
        """The Mongo-like JSON form :meth:`from_json` reads back."""

    @abc.abstractmethod
    def fields(self) -> set[str]:
        """Every field the filter reads."""

    def __and__(self, other: Filter) -> And:
        return And(self, other)

    def __or__(self, other: Filter) -> Or:
        return Or(self, other)

    def __invert__(self) -> Not:
        return Not(self)


Scalar = str | int | bool


@dataclass(frozen=True, slots=True)
class Eq(Filter):
    """``field == value``; value a str, int or bool (use :class:`Range` for floats)."""

    field: str
    value: Scalar

    def __post_init__(self) -> None:
        _check_field_name(self.field, InvalidFilterError)
        object.__setattr__(self, "value", _check_scalar(self.value, self.field, allow_bool=True))

    def to_json(self) -> dict[str, Any]:
        return {self.field: self.value}

    def fields(self) -> set[str]:
        return {self.field}


@dataclass(frozen=True, slots=True)
class In(Filter):
    """``field`` equals one of ``values``: all strings or all ints, at least one."""

    field: str
    values: tuple[str | int, ...]

    def __post_init__(self) -> None:
        _check_field_name(self.field, InvalidFilterError)
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, (Sequence, set, frozenset)):
            raise InvalidFilterError(f"In({self.field!r}) values must be a list of str or int, got {_short(self.values)}")
        values = tuple(_check_scalar(v, self.field, allow_bool=False) for v in self.values)
        if not values:
            raise InvalidFilterError(f"In({self.field!r}) needs at least one value")
        if len({type(v) for v in values}) != 1:
            raise InvalidFilterError(f"In({self.field!r}) values must be all strings or all ints, got {_short(values)}")
        object.__setattr__(self, "values", values)

    def to_json(self) -> dict[str, Any]:
        return {self.field: {"$in": list(self.values)}}

    def fields(self) -> set[str]:
        return {self.field}


@dataclass(frozen=True, slots=True)
class Range(Filter):
    """A numeric range on ``field``: any of ``gt``, ``gte``, ``lt``, ``lte`` (one at least)."""

    field: str
    gt: float | int | None = None
    gte: float | int | None = None
    lt: float | int | None = None
    lte: float | int | None = None

    def __post_init__(self) -> None:
        _check_field_name(self.field, InvalidFilterError)
        bounds = {k: getattr(self, k) for k in ("gt", "gte", "lt", "lte")}
        if all(v is None for v in bounds.values()):
            raise InvalidFilterError(f"Range({self.field!r}) needs at least one of gt, gte, lt, lte")
        for k, v in bounds.items():
            if v is None:
                continue
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, bool) or not isinstance(v, (int, float)) or isinstance(v, float) and not math.isfinite(v):
                raise InvalidFilterError(f"Range({self.field!r}) bound {k} must be a finite number, got {_short(v)}")
            if isinstance(v, int) and not -MAX_EXACT_INT <= v <= MAX_EXACT_INT:
                raise InvalidFilterError(
                    f"Range({self.field!r}) bound {k} ({_int_text(v)}) is outside ±2**53 (MAX_EXACT_INT), which not every "
                    "engine compares exactly; give a float bound, or store such numbers as strings"
                )
            object.__setattr__(self, k, v)

    def to_json(self) -> dict[str, Any]:
        return {self.field: {f"${k}": getattr(self, k) for k in ("gt", "gte", "lt", "lte") if getattr(self, k) is not None}}

    def fields(self) -> set[str]:
        return {self.field}


@dataclass(frozen=True, slots=True, init=False)
class And(Filter):
    """Every one of ``filters`` matches: ``And(a, b, ...)``."""

    filters: tuple[Filter, ...]
    _depth: int = field(default=1, init=False, repr=False, compare=False)

    def __init__(self, *filters: Filter) -> None:
        object.__setattr__(self, "filters", _check_children(filters, "And"))
        object.__setattr__(self, "_depth", _depth_over(self.filters))

    def to_json(self) -> dict[str, Any]:
        return {"$and": [f.to_json() for f in self.filters]}

    def fields(self) -> set[str]:
        return set().union(*(f.fields() for f in self.filters))


@dataclass(frozen=True, slots=True, init=False)
class Or(Filter):
    """At least one of ``filters`` matches: ``Or(a, b, ...)``."""

    filters: tuple[Filter, ...]
    _depth: int = field(default=1, init=False, repr=False, compare=False)

    def __init__(self, *filters: Filter) -> None:
        object.__setattr__(self, "filters", _check_children(filters, "Or"))
        object.__setattr__(self, "_depth", _depth_over(self.filters))

    def to_json(self) -> dict[str, Any]:
        return {"$or": [f.to_json() for f in self.filters]}

    def fields(self) -> set[str]:
        return set().union(*(f.fields() for f in self.filters))


@dataclass(frozen=True, slots=True)
class Not(Filter):
    """``filter`` does not match (a missing field does not match, so Not matches it)."""

    filter: Filter
    _depth: int = field(default=1, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.filter, Filter):
            raise InvalidFilterError(f"Not() takes a Filter, got {_short(self.filter)}")
        object.__setattr__(self, "_depth", _depth_over((self.filter,)))

    def to_json(self) -> dict[str, Any]:
        return {"$not": self.filter.to_json()}

    def fields(self) -> set[str]:
        return self.filter.fields()


def _short(value: Any) -> str:
    """A bounded repr for messages (a deeply nested value's repr would recurse)."""
    return reprlib.repr(value)


def _int_text(value: int) -> str:
    """An int for a message (Python refuses to print one of more than 4300 digits)."""
    return f"int {value}" if value.bit_length() <= 256 else f"an int of {value.bit_length()} bits"


def _too_deep() -> str:
    return (
        f"filter is nested deeper than {MAX_FILTER_DEPTH} levels (MAX_FILTER_DEPTH); "
        "flatten it: And/Or take many filters at one level, and Not(Not(f)) is f"
    )


def _depth_over(children: tuple[Filter, ...]) -> int:
    """The depth of a node over ``children`` (whose depths are known: no recursion)."""
    depth = 1 + max(getattr(c, "_depth", 1) for c in children)
    if depth > MAX_FILTER_DEPTH:
        raise InvalidFilterError(_too_deep())
    return depth


def _check_children(filters: tuple[Any, ...], what: str) -> tuple[Filter, ...]:
    if len(filters) == 1 and isinstance(filters[0], (list, tuple)):
        filters = tuple(filters[0])
    if not filters:
        raise InvalidFilterError(f"{what}() needs at least one filter")
    for f in filters:
        if not isinstance(f, Filter):
            raise InvalidFilterError(f"{what}() takes Filter objects, got {_short(f)}")
    return tuple(filters)


def _check_field_name(name: Any, error: type[InvalidInputError]) -> None:
    if not isinstance(name, str) or not _FIELD_RE.fullmatch(name):
        raise error(
            f"field name must be a dotted path of identifiers (letters, digits, '_' or '-', "
            f"not starting with a digit), got {_short(name)}"
        )


def _check_scalar(value: Any, fname: str, *, allow_bool: bool) -> Scalar:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        if allow_bool:
            return value
        raise InvalidFilterError(f"filter on {fname!r}: $in takes strings or ints, not bools; use Eq for a bool")
    if isinstance(value, int):
        if not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            raise InvalidFilterError(
                f"filter on {fname!r}: {_int_text(value)} is outside ±2**53 (MAX_EXACT_INT), which not every engine "
                "compares exactly; store and filter such numbers as strings"
            )
        return value
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        raise InvalidFilterError(
            f"filter on {fname!r}: equality on a float ({_short(value)}) is not supported; use Range(gte=, lte=)"
        )
    raise InvalidFilterError(f"filter on {fname!r}: value must be a str, int or bool, got {_short(value)}")


_RANGE_OPS = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}


def _parse_filter(obj: Mapping[str, Any], depth: int) -> Filter:
    # every JSON level adds a filter level at least: stop before Python's recursion limit
    if depth > MAX_FILTER_DEPTH:
        raise InvalidFilterError(_too_deep())
    parts: list[Filter] = []
    for key, value in obj.items():
        if not isinstance(key, str):
            raise InvalidFilterError(f"filter keys must be strings, got {key!r}")
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidFilterError(f"{key} takes a non-empty list of filters, got {_short(value)}")
            children = [_parse_child(v, key, depth + 1) for v in value]
            parts.append(And(*children) if key == "$and" else Or(*children))
        elif key == "$not":
            parts.append(Not(_parse_child(value, key, depth + 1)))
        elif key.startswith("$"):
            raise InvalidFilterError(f"unknown filter operator {key!r}; known: $and, $or, $not at the top level")
        else:
            parts.extend(_parse_field(key, value))
    return parts[0] if len(parts) == 1 else And(*parts)


def _parse_child(value: Any, op: str, depth: int) -> Filter:
    if not isinstance(value, Mapping) or not value:
        raise InvalidFilterError(f"{op} takes non-empty filter objects, got {_short(value)}")
    return _parse_filter(value, depth)


def _parse_field(fname: str, value: Any) -> list[Filter]:
    if isinstance(value, Mapping):
        if not value:
            raise InvalidFilterError(f"filter on {fname!r} is an empty object")
        out: list[Filter] = []
        bounds: dict[str, Any] = {}
        for op, arg in value.items():
            if op in _RANGE_OPS:
                bounds[_RANGE_OPS[op]] = arg
            elif op == "$eq":
                out.append(Eq(fname, arg))
            elif op == "$ne":
                out.append(Not(Eq(fname, arg)))
            elif op in ("$in", "$nin"):
                if not isinstance(arg, list):
                    raise InvalidFilterError(f"{op} on {fname!r} takes a list, got {_short(arg)}")
                f = In(fname, tuple(arg))
                out.append(f if op == "$in" else Not(f))
            else:
                raise InvalidFilterError(
                    f"unknown operator {op!r} on {fname!r}; known: $eq $ne $in $nin $gt $gte $lt $lte"
                )
        if bounds:
            out.append(Range(fname, **bounds))
        return out
    if isinstance(value, list):
        raise InvalidFilterError(f"filter on {fname!r} is a list; write {{{fname!r}: {{'$in': [...]}}}}")
    return [Eq(fname, value)]


# --------------------------------------------------------------------------- validation


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _check_id(value: Any) -> str:
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise InvalidIdError(f"passage ids are UUID strings (see passage_id()), got {type(value).__name__} {value!r}")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidIdError(f"passage id {value!r} is not a UUID string; build ids with passage_id(doc_id, index)") from None
    return str(parsed)


def validate_ids(ids: Any, *, allow_empty: bool = True) -> list[str]:
    """Canonical (lower-case, hyphenated) UUID strings of ``ids``, a list of ids."""
    if isinstance(ids, (str, bytes, uuid.UUID)) or not isinstance(ids, (Sequence, set, frozenset, Iterator)):
        raise InvalidIdError(f"ids must be a list of UUID strings, got {type(ids).__name__} {ids!r}")
    out = [_check_id(i) for i in ids]
    if not out and not allow_empty:
        raise InvalidIdError("ids must not be empty")
    return out


def _as_matrix(value: Any, dim: int | None, what: str) -> np.ndarray:
    arr = _as_float_array(value, what)
    if arr.ndim != 2:
        raise InvalidVectorError(f"{what} must be a 2-D [n_tokens, dim] array, got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise InvalidVectorError(f"{what} has no token: a passage needs at least one token vector")
    if arr.shape[1] < 1 or (dim is not None and arr.shape[1] != dim):
        raise InvalidVectorError(f"{what} has dim {arr.shape[1]}, the collection's dim is {dim}")
    if not np.isfinite(arr).all():
        raise InvalidVectorError(f"{what} contains NaN or infinite values")
    return arr


def _as_vector(value: Any, dim: int | None, what: str) -> np.ndarray:
    arr = _as_float_array(value, what)
    if arr.ndim != 1 or arr.shape[0] < 1 or (dim is not None and arr.shape[0] != dim):
        raise InvalidVectorError(f"{what} must be a [dim] vector with dim {dim}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidVectorError(f"{what} contains NaN or infinite values")
    if not np.any(arr):
        raise InvalidVectorError(f"{what} is all zeros: its cosine similarity is undefined")
    return arr


def _as_float_array(value: Any, what: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":
            raise InvalidVectorError(f"{what} must hold real numbers, got dtype {value.dtype}")
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise InvalidVectorError(f"{what} is ragged or not numeric: {exc}") from None
        if arr.dtype.kind not in "fiu":
            raise InvalidVectorError(f"{what} must be a rectangular array of numbers, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(arr, dtype=np.float32)


def _check_units(units: Any, n_tokens: int, text: str, pid: str) -> tuple[Unit, ...]:
    if isinstance(units, Unit) or not isinstance(units, (Sequence, Iterator)):
        raise InvalidUnitError(f"passage {pid}: units must be a sequence of Unit records, got {units!r}")
    out = tuple(units)
    seen: set[tuple[str, int]] = set()
    for u in out:
        if not isinstance(u, Unit):
            raise InvalidUnitError(f"passage {pid}: units must be Unit records, got {type(u).__name__}")
        if not u.token_ranges:
            raise InvalidUnitError(
                f"passage {pid}: {u.kind} {u.index} has no token ranges; align units with align_units() first"
            )
        if u.token_ranges[-1][1] > n_tokens:
            raise InvalidUnitError(
                f"passage {pid}: {u.kind} {u.index} token range ends at {u.token_ranges[-1][1]}, "
                f"past the passage's {n_tokens} token vectors"
            )
        if u.char_spans[-1][1] > len(text):
            raise InvalidUnitError(
                f"passage {pid}: {u.kind} {u.index} ends at char {u.char_spans[-1][1]}, "
                f"past the text's {len(text)} chars"
            )
        if (u.kind, u.index) in seen:
            raise InvalidUnitError(f"passage {pid}: two units are {u.kind} {u.index}")
        seen.add((u.kind, u.index))
    return out


def validate_metadata(metadata: Any, pid: str = "?") -> dict[str, Any]:
    """A JSON-native copy of ``metadata``: numpy scalars become Python, tuples lists.

    Rejects NaN and infinities, ints outside ±2**53 (:data:`MAX_EXACT_INT`), bytes,
    sets and other non-JSON values, non-string keys, the reserved top-level keys
    ``doc_id`` and ``passage_index``, and metadata taking more than
    :data:`MAX_METADATA_BYTES` as JSON (the same limits on every engine).
    """
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(f"passage {pid}: metadata must be a mapping, got {type(metadata).__name__}")
    for key in metadata:
        if key in BUILTIN_FIELDS:
            raise InvalidMetadataError(
                f"passage {pid}: metadata key {key!r} is reserved (it is the passage's own field); rename it"
            )
    out = _json_safe(metadata, f"passage {pid} metadata", 0)
    size = len(json.dumps(out, separators=(",", ":")))  # ASCII: \uXXXX escapes
    if size > MAX_METADATA_BYTES:
        raise InvalidMetadataError(
            f"passage {pid}: metadata takes {size} bytes as JSON; every engine holds at most "
            f"{MAX_METADATA_BYTES} (MAX_METADATA_BYTES): keep large values out of metadata"
        )
    return out


def _json_safe(value: Any, where: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise InvalidMetadataError(f"{where} is nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, bytes):
            raise InvalidMetadataError(f"{where} holds bytes; store text or base64 instead")
        return _json_safe(value, where, depth)
    if isinstance(value, int):
        if not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            raise InvalidMetadataError(
                f"{where} holds {_int_text(value)}, outside ±2**53 (MAX_EXACT_INT), which not every engine compares "
                "exactly; store it as a string"
            )
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMetadataError(f"{where} holds {value!r}; JSON has no NaN or infinity")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidMetadataError(f"{where} has a non-string key {k!r}")
            if not k:
                raise InvalidMetadataError(f"{where} has an empty key")
            out[k] = _json_safe(v, f"{where}.{k}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise InvalidMetadataError(
        f"{where} holds a {type(value).__name__}, not JSON (str, int, float, bool, None, list, dict)"
    )


def pool_tokens(tokens: Any) -> np.ndarray:
    """The default pooled vector: the L2-normalised mean of the token vectors.

    >>> [round(float(x), 4) for x in pool_tokens(np.array([[1.0, 0.0], [0.0, 1.0]]))]
    [0.7071, 0.7071]
    """
    arr = _as_matrix(tokens, None, "tokens")
    mean = arr.mean(axis=0, dtype=np.float64)
    norm = np.linalg.norm(mean)
    if not norm > 0:
        # opposite tokens cancel out: fall back on the first non-zero token
        nz = np.flatnonzero(np.linalg.norm(arr, axis=1))
        if not len(nz):
            raise InvalidVectorError("every token vector is zero: there is no pooled direction")
        mean, norm = arr[nz[0]].astype(np.float64), float(np.linalg.norm(arr[nz[0]]))
    return (mean / norm).astype(np.float32)


# --------------------------------------------------------------------------- protocol


@runtime_checkable
class Repository(Protocol):
    """A vector store of passages: the seam every engine implements.

    Collections are created or opened from a :class:`CollectionSchema`; every other
    call names the collection, or an alias of it (blue/green re-indexing switches
    an alias from one collection to its successor in one atomic step). Writes are idempotent by id. All inputs are checked
    before the engine sees them (InvalidInputError children); engine failures come
    out as RepositoryError children.
    """

    def capabilities(self) -> Capabilities:
        """What this engine can do."""
        ...

    def create_collection(self, schema: CollectionSchema) -> CollectionSchema:
        """Create the collection, or open it when it exists with the same dim, dtype and
        schema version (else SchemaMismatchError); new ``indexed_fields`` are added.
        Returns the stored schema."""
        ...

    def open_collection(self, name: str) -> CollectionSchema:
        """The stored schema of an existing collection (CollectionNotFoundError if none)."""
        ...

    def list_collections(self) -> list[str]:
        """Names of the collections this repository holds, sorted."""
        ...

    def drop_collection(self, name: str) -> bool:
        """Delete a collection and its data; False when it did not exist."""
        ...

    def upsert(self, collection: str, passages: Sequence[StoredPassage]) -> int:
        """Write passages, overwriting any with the same id; returns how many.
        All are checked before any is written: one bad passage writes nothing."""
        ...

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        """Delete passages by id; unknown ids are ignored."""
        ...

    def delete_by_doc_id(self, collection: str, doc_ids: str | Sequence[str]) -> int:
        """Delete every passage of the given document(s); returns how many there were."""
        ...

    def delete_where(self, collection: str, filter: Filter) -> int:
        """Delete every passage the filter matches; returns how many there were."""
        ...

    def count(self, collection: str, filter: Filter | None = None) -> int:
        """Exact number of passages (matching ``filter``)."""
        ...

    def candidates(
        self,
        collection: str,
        pooled: np.ndarray,
        *,
        tokens: np.ndarray | None = None,
        limit: int = 100,
        prefetch: int | None = None,
        filter: Filter | None = None,
        with_versions: bool = False,
    ) -> list[Candidate]:
        """First-stage candidates, best first.

        Without ``tokens``: the ``limit`` passages whose pooled vectors are most
        cosine-similar to ``pooled`` [dim]. With ``tokens`` [Lq, dim]: the top
        ``prefetch`` (default ``max(2*limit, 100)``) by pooled vector, reranked by
        the engine's MaxSim ``sum_i max_j q_i . d_j`` and cut to ``limit``
        (UnsupportedOperationError when ``capabilities().maxsim_rerank`` is False).
        ``with_versions`` asks for each hit's write version (``Candidate.version``)
        where the engine has it (``capabilities().versions``); it may cost a little.
        """
        ...

    def fetch_tokens(
        self, collection: str, ids: Sequence[str], *, versions: Sequence[int | str | None] | None = None
    ) -> TokenBatch:
        """Token vectors, units and write versions of ``ids`` (found ones once each, in
        the order first asked; the others in ``missing``): the lean read for scoring,
        with no text, metadata or pooled vector (use :meth:`fetch` for those).

        ``versions`` (one per id, None where unknown) are versions the caller has just
        seen, e.g. ``Candidate.version``: an engine may then read a passage at that
        version from a copy it keeps (Qdrant Edge's side store) without asking for
        the current one. The batch is then a snapshot as of those versions, and
        ``versions`` reports what was read; engines without such a copy ignore them.
        """
        ...

    def fetch(self, collection: str, ids: Sequence[str], *, strict: bool = False) -> FetchResult:
        """Token vectors, pooled vector, units, text and metadata of ``ids``, in that
        order; ids not found are listed in ``missing`` (MissingPassagesError when
        ``strict``)."""
        ...

    def list_ids(
        self, collection: str, *, filter: Filter | None = None, limit: int = 1000, offset: str | None = None
    ) -> IdPage:
        """One page of ids in id order, from ``offset`` (inclusive) on."""
        ...

    def optimize(self, collection: str) -> None:
        """Build indexes and compact now (after a bulk write); a no-op where the
        engine does it by itself."""
        ...

    def create_alias(self, alias: str, collection: str) -> None:
        """Make ``alias`` stand for ``collection``: every call that takes a collection
        name takes the alias too (``drop_collection`` excepted). AliasError when the
        alias exists or a collection has that name."""
        ...

    def switch_alias(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection`` atomically (creating it when missing);
        returns the collection it pointed at before, or None."""
        ...

    def delete_alias(self, alias: str) -> bool:
        """Remove an alias, never its collection; False when there was none."""
        ...

    def resolve(self, name: str) -> str:
        """The collection an alias points at, or ``name`` when it is a collection
        (CollectionNotFoundError when it is neither)."""
        ...

    def list_aliases(self) -> dict[str, str]:
        """Every alias of the store and its collection."""
        ...

    def close(self) -> None:
        """Release files, locks and connections; the repository is unusable after."""
        ...


# --------------------------------------------------------------------------- shared base


class RepositoryBase(abc.ABC):
    """Shared machinery of every engine: validation, batching, error translation.

    Engines implement the ``_hooks``; they receive checked, canonical inputs and the
    collection's stored schema. ``_translate_error`` maps an engine exception to the
    library's hierarchy (default: RepositoryError with the engine's message).
    """

    engine: ClassVar[str] = "base"
    #: passages per engine write call
    batch_size: ClassVar[int] = 256
    #: credentials this repository holds (from its URL, arguments or environment):
    #: scrubbed out of every error it raises (:func:`agrame_vdb.redact.scrub`)
    _secrets: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._schemas: dict[str, CollectionSchema] = {}
        self._closed = False
        self._lock = threading.RLock()
        self._alias_cache: tuple[float, dict[str, str]] | None = None
        self._alias_ttl_s: float | None = None

    # ----- engine hooks

    @abc.abstractmethod
    def _capabilities(self) -> Capabilities: ...

    @abc.abstractmethod
    def _load_schema(self, name: str) -> CollectionSchema | None:
        """The stored schema, opening what the engine needs; None if no such collection."""

    @abc.abstractmethod
    def _create(self, schema: CollectionSchema) -> None: ...

    @abc.abstractmethod
    def _add_indexes(self, schema: CollectionSchema, new_fields: dict[str, str]) -> None:
        """Create payload indexes for ``new_fields`` and store ``schema`` (which has them)."""

    @abc.abstractmethod
    def _list_collections(self) -> list[str]: ...

    @abc.abstractmethod
    def _drop(self, name: str) -> bool: ...

    @abc.abstractmethod
    def _upsert(self, schema: CollectionSchema, passages: Sequence[StoredPassage]) -> None: ...

    @abc.abstractmethod
    def _delete(self, schema: CollectionSchema, ids: list[str]) -> None: ...

    @abc.abstractmethod
    def _delete_where(self, schema: CollectionSchema, filter: Filter) -> None: ...

    @abc.abstractmethod
    def _count(self, schema: CollectionSchema, filter: Filter | None) -> int: ...

    @abc.abstractmethod
    def _candidates(
        self,
        schema: CollectionSchema,
        pooled: np.ndarray,
        tokens: np.ndarray | None,
        limit: int,
        prefetch: int,
        filter: Filter | None,
        *,
        versions: bool = False,
    ) -> list[Candidate]:
        """First-stage candidates; with ``versions``, engines that stamp writes fill
        ``Candidate.version`` (others leave it None)."""

    @abc.abstractmethod
    def _fetch(self, schema: CollectionSchema, ids: list[str]) -> dict[str, StoredPassage]:
        """The stored passages among the (unique) ``ids``, by id."""

    def _fetch_tokens(
        self, schema: CollectionSchema, ids: list[str], versions: dict[str, int | str] | None = None
    ) -> TokenBatch:
        """The :class:`TokenBatch` of the (unique, non-empty) ``ids``; ``versions``: the
        versions the caller saw, by id (see :meth:`Repository.fetch_tokens`). The
        default reads whole passages with ``_fetch`` (so every engine has it) and
        reports no versions; engines override it with a leaner read."""
        found = self._fetch(schema, ids)
        return TokenBatch.from_passages(
            [found[i] for i in ids if i in found], tuple(i for i in ids if i not in found), dim=schema.dim
        )

    @abc.abstractmethod
    def _list_ids(self, schema: CollectionSchema, filter: Filter | None, limit: int, offset: str | None) -> IdPage: ...

    def _optimize(self, schema: CollectionSchema) -> None:
        return None

    def _close(self) -> None:
        return None

    def _store_schema(self, schema: CollectionSchema) -> None:
        """Replace the stored schema of an existing collection (same dim and dtype)."""
        self._add_indexes(schema, {})

    # alias hooks: engines with aliases override all three (names given are checked,
    # targets exist and are collections, aliases never point at aliases)

    def _aliases(self) -> dict[str, str]:
        """Every alias of the store and the collection it points at."""
        return {}

    def _set_alias(self, alias: str, collection: str, previous: str | None) -> None:
        """Point ``alias`` at ``collection`` atomically: create it (``previous`` None)
        or move it from ``previous``; a reader sees the old target or the new one."""
        raise UnsupportedOperationError(f"{self.engine} has no collection aliases in this version of agrame-vdb")

    def _delete_alias(self, alias: str) -> None:
        raise UnsupportedOperationError(f"{self.engine} has no collection aliases in this version of agrame-vdb")

    def _translate_error(self, exc: BaseException, op: str, collection: str | None) -> AgrameError | None:
        """An AgrameError for an engine exception, or None to re-raise it untouched."""
        if isinstance(exc, Exception):
            where = f" on collection {collection!r}" if collection else ""
            return RepositoryError(f"{self.engine} failed to {op}{where}: {type(exc).__name__}: {exc}")
        return None

    @contextmanager
    def _engine(self, op: str, collection: str | None = None) -> Iterator[None]:
        try:
            yield
        except AgrameError as exc:
            raise scrub_exception(exc, self._secrets)
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # pyo3 panics are BaseExceptions
            translated = self._translate_error(exc, op, collection)
            if translated is None:
                raise scrub_exception(exc, self._secrets)
            raise scrub_exception(translated, self._secrets) from exc

    # ----- public API

    def __enter__(self) -> RepositoryBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def capabilities(self) -> Capabilities:
        return self._capabilities()

    def _check_open(self) -> None:
        if self._closed:
            raise RepositoryError(f"this {self.engine} repository is closed; connect() again")

    def _schema(self, name: str) -> CollectionSchema:
        """The stored schema of collection ``name``, or of the collection alias ``name`` points at."""
        self._check_open()
        check_name(name)
        target = self._alias_map().get(name, name)
        schema = self._schemas.get(target)
        if schema is not None:
            return schema
        with self._lock, self._engine("open collection", target):
            schema = self._load_schema(target)
        if schema is None and target != name:
            # the alias moved (another client) since the cached look-up: look again
            target = self._alias_map(refresh=True).get(name, name)
            with self._lock, self._engine("open collection", target):
                schema = self._load_schema(target)
        if schema is None:
            raise CollectionNotFoundError(
                f"collection {name!r} does not exist in this {self.engine} store"
                + (f" (alias {name!r} points at {target!r}, which is gone)" if target != name else "")
                + f"; create it with create_collection(CollectionSchema({name!r}, dim=...))"
            )
        # under the collection's own name: an engine that resolved an alias itself
        # (a look-up older than the alias) must not pin the alias to its target
        self._schemas[schema.name] = schema
        return schema

    # ----- aliases

    def _alias_map(self, *, refresh: bool = False) -> dict[str, str]:
        """alias -> collection, cached for ``alias_ttl`` seconds on shared servers
        (another client may move an alias), asked every time elsewhere."""
        ttl = self._alias_ttl()
        cached = self._alias_cache
        now = time.monotonic()
        if not refresh and ttl > 0 and cached is not None and now - cached[0] < ttl:
            return cached[1]
        with self._engine("list aliases"):
            found = dict(self._aliases())
        self._alias_cache = (now, found)
        return found

    def _alias_ttl(self) -> float:
        if self._alias_ttl_s is None:
            caps = self._capabilities()
            # one process owns an embedded store: its own look-ups are cheap and exact
            self._alias_ttl_s = 0.0 if caps.exclusive or not caps.persistent else ALIAS_TTL_S
        return self._alias_ttl_s

    def _check_alias_name(self, alias: Any) -> str:
        return check_name(alias, "alias")

    def _alias_target_collection(self, collection: str) -> str:
        """The concrete collection an alias will point at (an alias given resolves)."""
        return self._schema(collection).name

    def resolve(self, name: str) -> str:
        """The collection ``name`` stands for: the alias's target, or ``name`` itself
        when it is a collection (CollectionNotFoundError when it is neither)."""
        return self._schema(name).name

    def list_aliases(self) -> dict[str, str]:
        """Every alias and the collection it points at, sorted by alias."""
        self._check_open()
        return dict(sorted(self._alias_map(refresh=True).items()))

    def create_alias(self, alias: str, collection: str) -> None:
        """Make ``alias`` stand for ``collection`` in every collection-taking call.
        AliasError when the alias exists or a collection has that name."""
        self._check_open()
        alias = self._check_alias_name(alias)
        with self._lock:
            target = self._alias_target_collection(collection)
            current = self._alias_map(refresh=True)
            if alias in current:
                raise AliasError(
                    f"alias {alias!r} exists (it points at {current[alias]!r}); move it with switch_alias"
                )
            self._check_not_collection(alias)
            with self._engine("create alias", alias):
                self._set_alias(alias, target, None)
            self._alias_cache = None

    def switch_alias(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection`` in one atomic step (creating it when
        missing): searches through the alias answer from the old collection or the
        new one, never from neither. Returns the collection it pointed at before."""
        self._check_open()
        alias = self._check_alias_name(alias)
        with self._lock:
            target = self._alias_target_collection(collection)
            previous = self._alias_map(refresh=True).get(alias)
            if previous is None:
                self._check_not_collection(alias)
            if previous != target:
                with self._engine("switch alias", alias):
                    self._set_alias(alias, target, previous)
            self._alias_cache = None
            return previous

    def delete_alias(self, alias: str) -> bool:
        """Remove an alias (never its collection); False when there was none."""
        self._check_open()
        alias = self._check_alias_name(alias)
        with self._lock:
            if alias not in self._alias_map(refresh=True):
                return False
            with self._engine("delete alias", alias):
                self._delete_alias(alias)
            self._alias_cache = None
            return True

    def _check_not_collection(self, alias: str) -> None:
        with self._engine("open collection", alias):
            clash = alias in self._schemas or self._load_schema(alias) is not None
        if clash:
            raise AliasError(f"{alias!r} is a collection; an alias needs a name no collection has")

    # ----- migrations

    def update_schema(self, schema: CollectionSchema) -> CollectionSchema:
        """Store a new schema record for an existing collection (for migrations).

        Only ``schema_version``, ``indexed_fields`` (added ones get their indexes)
        and ``model`` may change; dim, dtype and storage are fixed at creation
        (change them by copying into a new collection: ``agrame-vdb migrate convert``).
        """
        self._check_open()
        if not isinstance(schema, CollectionSchema):
            raise InvalidSchemaError(f"update_schema takes a CollectionSchema, got {type(schema).__name__}")
        with self._lock:
            stored = self._schema(schema.name)
            if stored.name != schema.name:
                raise AliasError(f"update_schema needs the collection's own name, not the alias {schema.name!r}")
            if schema.schema_version > SCHEMA_VERSION:
                raise SchemaMismatchError(
                    f"this agrame-vdb knows schema versions up to {SCHEMA_VERSION}, not {schema.schema_version}"
                )
            fixed = [w for w in ("dim", "dtype", "on_disk") if getattr(stored, w) != getattr(schema, w)]
            if fixed:
                raise InvalidSchemaError(
                    f"update_schema cannot change {', '.join(fixed)} of collection {schema.name!r}; "
                    "copy it into a new collection (agrame-vdb migrate convert / reindex)"
                )
            new = {f: t for f, t in schema.indexed_fields if f not in dict(stored.indexed_fields)}  # type: ignore[misc]
            with self._engine("store the schema", schema.name):
                if new:
                    self._add_indexes(schema, new)
                else:
                    self._store_schema(schema)
            self._schemas[schema.name] = schema
            return schema

    def upsert_at_version(
        self, collection: str, passages: Sequence[StoredPassage], versions: Sequence[int], *, batch_size: int | None = None
    ) -> int:
        """Upsert passages whose schema version is one of ``versions`` (for migrations,
        which rewrite a collection's passages at the version they migrate to before
        the collection's own record says so). Every other check applies."""
        schema = self._schema(collection)
        allowed = frozenset(int(v) for v in versions)
        if not allowed or any(v > SCHEMA_VERSION or v < 1 for v in allowed):
            raise SchemaMismatchError(
                f"this agrame-vdb writes schema versions 1 to {SCHEMA_VERSION}, asked for {sorted(allowed)}"
            )
        return self._write(schema, passages, batch_size, allowed)

    def create_collection(self, schema: CollectionSchema) -> CollectionSchema:
        self._check_open()
        if not isinstance(schema, CollectionSchema):
            raise InvalidSchemaError(f"create_collection takes a CollectionSchema, got {type(schema).__name__}")
        if schema.schema_version > SCHEMA_VERSION:
            raise SchemaMismatchError(
                f"cannot create collection {schema.name!r} at schema version {schema.schema_version}: "
                f"this agrame-vdb writes versions up to {SCHEMA_VERSION}"
            )
        with self._lock:
            try:
                stored = self._schema(schema.name)
            except CollectionNotFoundError:
                with self._engine("create collection", schema.name):
                    self._create(schema)
                self._schemas[schema.name] = schema
                return schema
            schema.check_compatible(stored)
            new = {f: t for f, t in schema.indexed_fields if f not in dict(stored.indexed_fields)}
            clash = [f for f, t in schema.indexed_fields if dict(stored.indexed_fields).get(f, t) != t]
            if clash:
                raise SchemaMismatchError(
                    f"collection {schema.name!r} indexes {clash} with other types: stored {dict(stored.indexed_fields)}"
                )
            if new:
                self._check_writable(stored)
                merged = CollectionSchema(
                    stored.name,
                    stored.dim,
                    stored.dtype,
                    stored.on_disk,
                    stored.schema_version,
                    {**dict(stored.indexed_fields), **new},
                    stored.model,
                )
                with self._engine("add payload indexes", stored.name):
                    self._add_indexes(merged, new)
                self._schemas[stored.name] = stored = merged
            return stored

    def open_collection(self, name: str) -> CollectionSchema:
        return self._schema(name)

    def list_collections(self) -> list[str]:
        self._check_open()
        with self._lock, self._engine("list collections"):
            return sorted(self._list_collections())

    def drop_collection(self, name: str) -> bool:
        """Delete a collection and its data, and the aliases that point at it."""
        self._check_open()
        check_name(name)
        with self._lock:
            aliases = self._alias_map(refresh=True)
            if name in aliases:
                raise AliasError(
                    f"{name!r} is an alias of collection {aliases[name]!r}: drop_collection takes a collection's "
                    "own name (remove the alias with delete_alias)"
                )
            with self._engine("drop collection", name):
                for alias in sorted(a for a, target in aliases.items() if target == name):
                    self._delete_alias(alias)
                self._alias_cache = None
                self._schemas.pop(name, None)
                return self._drop(name)

    def upsert(self, collection: str, passages: Sequence[StoredPassage], *, batch_size: int | None = None) -> int:
        return self._write(self._schema(collection), passages, batch_size, None)

    def _check_writable(self, schema: CollectionSchema) -> None:
        if schema.schema_version > SCHEMA_VERSION:
            raise SchemaMismatchError(newer_hint(schema.name, schema.schema_version))

    def _write(
        self,
        schema: CollectionSchema,
        passages: Sequence[StoredPassage],
        batch_size: int | None,
        versions: frozenset[int] | None,
    ) -> int:
        collection = schema.name
        self._check_writable(schema)
        if isinstance(passages, StoredPassage):
            passages = [passages]
        passages = list(passages)
        seen: set[str] = set()
        for p in passages:
            self._check_passage(p, schema, versions)
            if p.id in seen:
                raise InvalidInputError(f"passage id {p.id} appears twice in one upsert; write each passage once")
            seen.add(p.id)
        size = batch_size or self.batch_size
        if not _is_int(size) or size < 1:
            raise InvalidInputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        with self._lock, self._engine("upsert", collection):
            for start in range(0, len(passages), size):
                self._upsert(schema, passages[start : start + size])
        return len(passages)

    @staticmethod
    def _check_passage(p: Any, schema: CollectionSchema, versions: frozenset[int] | None = None) -> None:
        if not isinstance(p, StoredPassage):
            raise InvalidInputError(f"upsert takes StoredPassage records, got {type(p).__name__}")
        what = f"passage {p.id}"
        # checked at construction; checked again here in case arrays were changed in place
        if not isinstance(p.tokens, np.ndarray) or p.tokens.dtype != np.float32 or p.tokens.ndim != 2:
            raise InvalidVectorError(f"{what} tokens must be a 2-D float32 array")
        if p.tokens.shape[1] != schema.dim or p.tokens.shape[0] < 1:
            raise InvalidVectorError(
                f"{what} tokens have shape {p.tokens.shape}; collection {schema.name!r} needs [n>=1, {schema.dim}]"
            )
        if not isinstance(p.pooled, np.ndarray) or p.pooled.shape != (schema.dim,):
            raise InvalidVectorError(f"{what} pooled vector must have shape ({schema.dim},)")
        if not np.isfinite(p.tokens).all():
            raise InvalidVectorError(f"{what} tokens contain NaN or infinite values")
        if not np.isfinite(p.pooled).all() or not np.any(p.pooled):
            raise InvalidVectorError(f"{what} pooled vector is not finite or is all zeros")
        if p.units and max(u.token_ranges[-1][1] for u in p.units) > p.tokens.shape[0]:
            raise InvalidUnitError(f"{what} has a unit past its {p.tokens.shape[0]} token vectors")
        _check_sizes(p)
        if versions is not None and p.schema_version in versions:
            return
        if p.schema_version != schema.schema_version:
            if schema.schema_version < p.schema_version == SCHEMA_VERSION:
                raise SchemaMismatchError(f"{what} cannot be written: " + upgrade_hint(schema.name, schema.schema_version))
            raise SchemaMismatchError(
                f"{what} has schema version {p.schema_version}; collection {schema.name!r} has {schema.schema_version}"
            )

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        schema = self._schema(collection)
        self._check_writable(schema)
        checked = list(dict.fromkeys(validate_ids(ids)))
        if not checked:
            return
        with self._lock, self._engine("delete", collection):
            self._delete(schema, checked)

    def delete_by_doc_id(self, collection: str, doc_ids: str | Sequence[str]) -> int:
        if isinstance(doc_ids, str):
            doc_ids = [doc_ids]
        docs = list(doc_ids)
        if not docs:
            return 0
        for d in docs:
            if not isinstance(d, str) or not d:
                raise InvalidInputError(f"doc ids must be non-empty strings, got {d!r}")
        return self.delete_where(collection, Eq("doc_id", docs[0]) if len(docs) == 1 else In("doc_id", tuple(docs)))

    def delete_where(self, collection: str, filter: Filter) -> int:
        schema = self._schema(collection)
        self._check_writable(schema)
        if not isinstance(filter, Filter):
            raise InvalidFilterError(f"delete_where needs a Filter, got {filter!r}")
        with self._lock, self._engine("delete", collection):
            n = self._count(schema, filter)
            if n:
                self._delete_where(schema, filter)
        return n

    def count(self, collection: str, filter: Filter | None = None) -> int:
        schema = self._schema(collection)
        _check_filter(filter)
        with self._engine("count", collection):
            return int(self._count(schema, filter))

    def candidates(
        self,
        collection: str,
        pooled: Any,
        *,
        tokens: Any = None,
        limit: int = 100,
        prefetch: int | None = None,
        filter: Filter | None = None,
        with_versions: bool = False,
    ) -> list[Candidate]:
        schema = self._schema(collection)
        q = _as_vector(pooled, schema.dim, "query pooled vector")
        qt = None
        if tokens is not None:
            if not self._capabilities().maxsim_rerank:
                raise UnsupportedOperationError(
                    f"{self.engine} cannot rerank by MaxSim inside the engine; "
                    "call candidates() without tokens and rerank with agrame_vdb.maxsim"
                )
            qt = _as_matrix(tokens, schema.dim, "query token vectors")
        if not _is_int(limit) or not 1 <= limit <= _MAX_LIMIT:
            raise InvalidInputError(f"limit must be an int in [1, {_MAX_LIMIT}], got {limit!r}")
        if prefetch is None:
            prefetch = min(max(2 * limit, 100), _MAX_LIMIT) if qt is not None else limit
        if not _is_int(prefetch) or not limit <= prefetch <= _MAX_LIMIT:
            raise InvalidInputError(f"prefetch must be an int in [limit={limit}, {_MAX_LIMIT}], got {prefetch!r}")
        _check_filter(filter)
        with self._engine("query candidates", collection):
            return self._candidates(schema, q, qt, int(limit), int(prefetch), filter, versions=bool(with_versions))

    def fetch_tokens(
        self, collection: str, ids: Sequence[str], *, versions: Sequence[int | str | None] | None = None
    ) -> TokenBatch:
        schema = self._schema(collection)
        wanted = validate_ids(ids)
        seen: dict[str, int | str] | None = None
        if versions is not None:
            if isinstance(versions, (str, bytes)) or not isinstance(versions, Sequence) or len(versions) != len(wanted):
                raise InvalidInputError(f"versions must be a list with one version (or None) per id, got {versions!r}")
            seen = {}
            for pid, v in zip(wanted, versions):
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, str)):
                    raise InvalidInputError(f"a version is an int or a str (as Candidate.version), got {v!r}")
                seen.setdefault(pid, v)
        unique = list(dict.fromkeys(wanted))
        if not unique:
            return TokenBatch.from_passages((), dim=schema.dim)
        with self._engine("fetch token vectors", collection):
            return self._fetch_tokens(schema, unique, seen or None)

    def fetch(self, collection: str, ids: Sequence[str], *, strict: bool = False) -> FetchResult:
        schema = self._schema(collection)
        wanted = validate_ids(ids)
        unique = list(dict.fromkeys(wanted))
        with self._engine("fetch", collection):
            found = self._fetch(schema, unique) if unique else {}
        missing = tuple(i for i in unique if i not in found)
        if missing and strict:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise MissingPassagesError(
                f"{len(missing)} of {len(unique)} ids are not in collection {collection!r}: {shown}", missing
            )
        return FetchResult(tuple(found[i] for i in wanted if i in found), missing)

    def list_ids(
        self, collection: str, *, filter: Filter | None = None, limit: int = 1000, offset: str | None = None
    ) -> IdPage:
        schema = self._schema(collection)
        _check_filter(filter)
        if not _is_int(limit) or not 1 <= limit <= _MAX_LIMIT:
            raise InvalidInputError(f"limit must be an int in [1, {_MAX_LIMIT}], got {limit!r}")
        off = None if offset is None else _check_id(offset)
        with self._engine("list ids", collection):
            return self._list_ids(schema, filter, int(limit), off)

    def iter_ids(self, collection: str, *, filter: Filter | None = None, page: int = 1000) -> Iterator[str]:
        """Every id (matching ``filter``), page by page."""
        offset = None
        while True:
            result = self.list_ids(collection, filter=filter, limit=page, offset=offset)
            yield from result.ids
            if result.next_offset is None:
                return
            offset = result.next_offset

    def optimize(self, collection: str) -> None:
        schema = self._schema(collection)
        with self._lock, self._engine("optimize", collection):
            self._optimize(schema)

    def close(self) -> None:
        if self._closed:
            return
        with self._lock:
            self._closed = True
            self._schemas.clear()
            with self._engine("close"):
                self._close()


def _check_sizes(p: StoredPassage) -> None:
    """The limits every engine holds a passage to (a Milvus server's): text and doc id
    strings, and metadata checked again (nested values may have changed in place)."""
    for what, value in (("text", p.text), ("doc_id", p.doc_id)):
        if isinstance(value, str) and len(value) * 4 > MAX_STRING_BYTES:  # else short enough
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > MAX_STRING_BYTES:
                raise InvalidInputError(
                    f"passage {p.id}: its {what} takes {size} UTF-8 bytes; every engine holds at most "
                    f"{MAX_STRING_BYTES} (MAX_STRING_BYTES)"
                )
    validate_metadata(p.metadata, p.id)


def _check_filter(filter: Any) -> None:
    if filter is not None and not isinstance(filter, Filter):
        raise InvalidFilterError(
            f"filter must be a Filter (Eq, In, Range, And, Or, Not) or None, got {_short(filter)}; "
            "parse JSON with Filter.from_json()"
        )
