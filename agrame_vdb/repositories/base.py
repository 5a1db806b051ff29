"""What every engine shares: :class:`RepositoryBase`.

It checks every input once, before the engine sees it, batches writes, caches
collection schemas and alias look-ups, translates engine exceptions into the
library's errors (with credentials scrubbed out), and holds the writes only
migrations use. Engines subclass it and implement its ``_hooks``, which receive
checked, canonical inputs and the collection's stored schema.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np

from ..errors import (
    AgrameError,
    AliasError,
    CollectionNotFoundError,
    InvalidFilterError,
    InvalidInputError,
    InvalidSchemaError,
    InvalidUnitError,
    InvalidVectorError,
    LexicalUnavailableError,
    MissingPassagesError,
    RepositoryError,
    SchemaMismatchError,
    UnsupportedOperationError,
)
from ..filters import Eq, Filter, In
from ..fusion import RRF_K, check_rrf_k, rrf
from ..lexical import SparseVector, check_query_text, document_vector, query_vector
from ..records import Candidate, Capabilities, FetchResult, IdPage, StoredPassage, TokenBatch
from ..redact import scrub_exception
from ..schema import SCHEMA_VERSION, CollectionSchema, newer_hint, no_lexical_hint, upgrade_hint
from ..validation import (
    MAX_STRING_BYTES,
    _as_matrix,
    _as_vector,
    _check_id,
    _is_int,
    _short,
    check_name,
    validate_ids,
    validate_metadata,
)
from ._aliases import AliasMixin

__all__ = ["RepositoryBase"]

#: the most ids, candidates or prefetched hits one call may ask for
_MAX_LIMIT = 100_000


class RepositoryBase(AliasMixin, abc.ABC):
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

    def _lexical_candidates(
        self, schema: CollectionSchema, query: SparseVector, limit: int, filter: Filter | None, *, versions: bool = False
    ) -> list[Candidate]:
        """The ``limit`` passages with the best BM25 score for ``query`` (its term
        counts; the engine weighs them by IDF over the whole collection), best first;
        only passages sharing a term with the query. Engines with
        ``capabilities().lexical`` implement it."""
        raise UnsupportedOperationError(f"{self.engine} has no lexical search")

    def _hybrid_candidates(
        self,
        schema: CollectionSchema,
        pooled: np.ndarray,
        query: SparseVector,
        limit: int,
        dense_limit: int,
        lexical_limit: int,
        rrf_k: int,
        filter: Filter | None,
        *,
        versions: bool = False,
    ) -> list[Candidate]:
        """Reciprocal rank fusion of the pooled top ``dense_limit`` and the lexical top
        ``lexical_limit``, cut to ``limit``. This default fuses in the library; an
        engine that fuses itself (``hybrid_in_engine``) overrides it with the same formula."""
        dense = self._candidates(schema, pooled, None, dense_limit, dense_limit, filter, versions=versions)
        lexical = self._lexical_candidates(schema, query, lexical_limit, filter, versions=versions)
        return rrf([dense, lexical], limit=limit, k=rrf_k)

    @staticmethod
    def _lexical_vector(schema: CollectionSchema, p: StoredPassage) -> SparseVector | None:
        """The lexical vector an engine writes with ``p`` (None: the collection has none,
        or the text has no word, when the passage is written without one)."""
        if schema.lexical is None:
            return None
        vector = document_vector(p.text, schema.lexical)
        return vector if len(vector) else None

    @abc.abstractmethod
    def _fetch(self, schema: CollectionSchema, ids: list[str]) -> dict[str, StoredPassage]:
        """The stored passages among the (unique) ``ids``, by id."""

    def _fetch_tokens(
        self, schema: CollectionSchema, ids: list[str], versions: dict[str, int | str] | None = None
    ) -> TokenBatch:
        """The :class:`TokenBatch` of the (unique, non-empty) ``ids``; ``versions``: the
        versions the caller saw, by id (see :meth:`~agrame_vdb.protocol.Repository.fetch_tokens`). The
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
            existing = self._existing_collections()
            raise CollectionNotFoundError(
                f"collection {name!r} does not exist in this {self.engine} store"
                + (f" (alias {name!r} points at {target!r}, which is gone)" if target != name else "")
                + (f"; it has {_named(existing)}" if existing is not None else "")
                + f"; create it with create_collection(CollectionSchema({name!r}, dim=...))",
                collection=name, existing=existing,
            )
        # under the collection's own name: an engine that resolved an alias itself
        # (a look-up older than the alias) must not pin the alias to its target
        self._schemas[schema.name] = schema
        return schema

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
            fixed = [w for w in ("dim", "dtype", "on_disk", "lexical", "token_pooling")
                     if getattr(stored, w) != getattr(schema, w)]
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
        if schema.dtype not in self._capabilities().dtypes:
            raise UnsupportedOperationError(
                f"{self.engine} cannot store token vectors as {schema.dtype!r} (collection {schema.name!r}); "
                f"it offers {sorted(self._capabilities().dtypes)}"
            )
        if schema.lexical is not None and not self._capabilities().lexical:
            raise UnsupportedOperationError(
                f"{self.engine} has no sparse vectors for lexical search: create collection {schema.name!r} "
                "with lexical=None (agrame-vdb index --no-lexical)"
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
                merged = dataclasses.replace(stored, indexed_fields={**dict(stored.indexed_fields), **new})
                with self._engine("add payload indexes", stored.name):
                    self._add_indexes(merged, new)
                self._schemas[stored.name] = stored = merged
            return stored

    def open_collection(self, name: str) -> CollectionSchema:
        return self._schema(name)

    def _existing_collections(self) -> tuple[str, ...] | None:
        """The store's collections for an error message, or None when it cannot say."""
        try:
            return tuple(sorted(self.list_collections()))
        except AgrameError:
            return None

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
        limit = self._check_limit(limit, "limit")
        if prefetch is None:
            prefetch = min(max(2 * limit, 100), _MAX_LIMIT) if qt is not None else limit
        if not _is_int(prefetch) or not limit <= prefetch <= _MAX_LIMIT:
            raise InvalidInputError(f"prefetch must be an int in [limit={limit}, {_MAX_LIMIT}], got {prefetch!r}")
        _check_filter(filter)
        with self._engine("query candidates", collection):
            return self._candidates(schema, q, qt, int(limit), int(prefetch), filter, versions=bool(with_versions))

    def _lexical_query(self, schema: CollectionSchema, text: Any) -> SparseVector:
        if not self._capabilities().lexical:
            raise UnsupportedOperationError(f"{self.engine} has no lexical search; use the pooled first stage")
        if schema.lexical is None:
            raise LexicalUnavailableError(no_lexical_hint(schema.name))
        return query_vector(check_query_text(text), schema.lexical)

    @staticmethod
    def _check_limit(value: Any, name: str) -> int:
        if not _is_int(value) or not 1 <= value <= _MAX_LIMIT:
            raise InvalidInputError(f"{name} must be an int in [1, {_MAX_LIMIT}], got {value!r}")
        return int(value)

    def lexical_candidates(
        self,
        collection: str,
        text: str,
        *,
        limit: int = 100,
        filter: Filter | None = None,
        with_versions: bool = False,
    ) -> list[Candidate]:
        schema = self._schema(collection)
        query = self._lexical_query(schema, text)
        limit = self._check_limit(limit, "limit")
        _check_filter(filter)
        if not len(query):
            return []
        with self._engine("query lexical candidates", collection):
            return self._lexical_candidates(schema, query, limit, filter, versions=bool(with_versions))

    def hybrid_candidates(
        self,
        collection: str,
        pooled: Any,
        text: str,
        *,
        limit: int = 100,
        dense_limit: int | None = None,
        lexical_limit: int | None = None,
        rrf_k: int = RRF_K,
        filter: Filter | None = None,
        with_versions: bool = False,
    ) -> list[Candidate]:
        schema = self._schema(collection)
        q = _as_vector(pooled, schema.dim, "query pooled vector")
        query = self._lexical_query(schema, text)
        limit = self._check_limit(limit, "limit")
        dense_limit = self._check_limit(limit if dense_limit is None else dense_limit, "dense_limit")
        lexical_limit = self._check_limit(limit if lexical_limit is None else lexical_limit, "lexical_limit")
        rrf_k = check_rrf_k(rrf_k)
        _check_filter(filter)
        with self._engine("query hybrid candidates", collection):
            if not len(query):  # no word in the query: the pooled branch alone
                dense = self._candidates(schema, q, None, dense_limit, dense_limit, filter, versions=bool(with_versions))
                return rrf([dense], limit=limit, k=rrf_k)
            return self._hybrid_candidates(
                schema, q, query, limit, dense_limit, lexical_limit, rrf_k, filter, versions=bool(with_versions)
            )

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

    def iter_id_pages(
        self, collection: str, *, filter: Filter | None = None, page: int = 1000, start: str | None = None
    ) -> Iterator[IdPage]:
        """Every page of ids (matching ``filter``) in id order, from ``start`` (inclusive)
        on, each read with :meth:`list_ids`: a page's ``next_offset`` is where the next
        one starts (None on the last), so a caller can resume from it."""
        return _pages(lambda offset: self.list_ids(collection, filter=filter, limit=page, offset=offset), start)

    def iter_ids(self, collection: str, *, filter: Filter | None = None, page: int = 1000) -> Iterator[str]:
        """Every id (matching ``filter``), page by page."""
        for result in self.iter_id_pages(collection, filter=filter, page=page):
            yield from result.ids

    def _iter_ids(self, schema: CollectionSchema, filter: Filter | None, page: int = 10_000) -> Iterator[str]:
        """Every id (matching ``filter``) read with the engine's ``_list_ids``: for engine
        code, whose inputs are checked already."""
        for result in _pages(lambda offset: self._list_ids(schema, filter, page, offset)):
            yield from result.ids

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


def _pages(read: Callable[[str | None], IdPage], start: str | None = None) -> Iterator[IdPage]:
    """The pages ``read(offset)`` gives from ``start`` on, each from the one before's
    ``next_offset``, until a page has none: the one loop that pages through ids."""
    offset = start
    while True:
        result = read(offset)
        yield result
        if result.next_offset is None:
            return
        offset = result.next_offset


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


def _named(collections: tuple[str, ...], most: int = 10) -> str:
    """"no collections", "the collection 'a'", "the collections 'a', 'b'" (the first ``most``)."""
    if not collections:
        return "no collections"
    shown = ", ".join(repr(c) for c in collections[:most]) + (f" and {len(collections) - most} more" if len(collections) > most else "")
    return f"the collection {shown}" if len(collections) == 1 else f"the collections {shown}"
