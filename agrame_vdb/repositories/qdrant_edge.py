"""Qdrant Edge (qdrant-edge-py): the embedded default, on disk, the real Rust engine.

Layout on disk, one directory per collection under the root path::

    <root>/<collection>/collection.json    the CollectionSchema (written first)
    <root>/<collection>/shard/             the Edge shard (segments, WAL)
    <root>/<collection>/tokens.sqlite      token vectors as bytes (``token_copy``)

Edge has no collections of its own: each collection is one shard. Points follow
the layout shared with qdrant-client (``_qdrant_common``). Edge is beta and
unforgiving: bad input can panic the Rust side (a ``BaseException``) or be stored
as NaN, so everything is checked before it gets here; a panic that still happens
comes out as RepositoryError. A shard is locked by its WAL: a second process
opening it gets ConcurrentAccessError.

Fetch path (``benchmarks/repositories.py``: 200 passages x 130 tokens x 128-d):
Edge hands multivectors back as nested Python lists, ~200 ms to build plus ~150 ms
into numpy. A base64 copy in the payload still cost ~75 ms (CPython decodes base64
at ~110 MB/s here), made writes ~35% slower and added ~1000 bytes per token on
disk. So with ``token_copy=True`` (the default) the token vectors also go, as raw
float32 (float16 for float16 collections) bytes, into a SQLite side store tied to
the payload by a version stamp (``_token_store``). Measured at 20k passages: fetch
of 200 in 18-48 ms against 230-610 ms from the engine's vectors (quiet / loaded
machine), writes at 0.83x raw engine calls (0.95x without the copy), ~556 more
bytes per token on disk (float32). The engine's vectors stay the truth: a row
whose stamp does not match the payload (a crash between the two writes, a restored
snapshot) is ignored and the engine's vectors are read instead.
``token_copy=False`` keeps only the engine's copy.

Writes pass vectors as lists, which Edge converts about twice as fast as numpy
arrays. ``optimize()`` builds the pooled HNSW index (Edge never optimises by
itself; until then the first stage is an exact scan) and drops orphaned rows of
the side store.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from ..errors import (
    AgrameError,
    CollectionNotFoundError,
    ConcurrentAccessError,
    InvalidInputError,
    RepositoryError,
    SchemaMismatchError,
)
from ..repository import (
    Candidate,
    Capabilities,
    CollectionSchema,
    Filter,
    IdPage,
    RepositoryBase,
    StoredPassage,
)
from . import DEFAULT_EDGE_PATH, StoreURL, _option_bool
from . import _qdrant_common as qc
from ._codec import copy_dtype
from ._token_store import TokenStore, new_version

__all__ = ["QdrantEdgeRepository", "from_url"]

SCHEMA_FILE = "collection.json"
SHARD_DIR = "shard"
TOKEN_FILE = "tokens.sqlite"

_INDEX_TYPES = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
}


def from_url(url: StoreURL, **options: Any) -> QdrantEdgeRepository:
    kwargs: dict[str, Any] = {}
    if "token_copy" in options:
        kwargs["token_copy"] = _option_bool(options.pop("token_copy"), "token_copy")
    if options:
        raise InvalidInputError(f"unknown options for qdrant-edge: {sorted(options)}; known: token_copy")
    return QdrantEdgeRepository(url.location or DEFAULT_EDGE_PATH, **kwargs)


class _Dialect:
    def match_value(self, key: str, value: Any) -> Any:
        # qdrant-edge-py 0.9 turns a Python bool into the int 1/0 (which matches no
        # bool); a numpy bool comes through as a bool
        return qe.FieldCondition(key=key, match=qe.MatchValue(np.bool_(value) if isinstance(value, bool) else value))

    def match_any(self, key: str, values: list[Any]) -> Any:
        return qe.FieldCondition(key=key, match=qe.MatchAny(values))

    def range(self, key: str, gt: Any, gte: Any, lt: Any, lte: Any) -> Any:
        f = lambda v: None if v is None else float(v)  # noqa: E731
        return qe.FieldCondition(key=key, range=qe.RangeFloat(gte=f(gte), gt=f(gt), lte=f(lte), lt=f(lt)))

    def combine(self, must: Any = None, should: Any = None, must_not: Any = None) -> Any:
        return qe.Filter(must=must, should=should, must_not=must_not)


_DIALECT = _Dialect()


def _is_panic(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"


class QdrantEdgeRepository(RepositoryBase):
    """Collections as Qdrant Edge shards under ``root``."""

    engine = "qdrant-edge"
    batch_size = 256

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_EDGE_PATH, *, token_copy: bool = True) -> None:
        super().__init__()
        self._root = Path(root)
        self._token_copy = token_copy
        self._shards: dict[str, Any] = {}
        self._token_stores: dict[str, TokenStore] = {}
        self._shard_lock = threading.RLock()
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RepositoryError(f"cannot create the Qdrant Edge directory {self._root}: {exc}") from exc

    @property
    def root(self) -> Path:
        return self._root

    def _translate_error(self, exc: BaseException, op: str, collection: str | None) -> AgrameError | None:
        msg = str(exc)
        where = self._root / collection if collection else self._root
        if "WouldBlock" in msg or "Resource temporarily unavailable" in msg:
            return ConcurrentAccessError(
                f"the Qdrant Edge collection at {where} is open in another process (its WAL is locked); "
                "close it there first: an embedded store has one writer process at a time"
            )
        if "incompatible" in msg.lower():
            return SchemaMismatchError(f"Qdrant Edge refused {where}: {msg}")
        if "does not exist" in msg and collection:
            return CollectionNotFoundError(f"Qdrant Edge collection {collection!r} has no shard at {where}: {msg}")
        if _is_panic(exc):
            return RepositoryError(
                f"Qdrant Edge panicked during {op} on {where} (an engine bug the input checks did not "
                f"prevent): {msg}"
            )
        return super()._translate_error(exc, op, collection)

    def _capabilities(self) -> Capabilities:
        return Capabilities(
            engine=self.engine,
            maxsim_rerank=True,
            dtypes=frozenset(("float32", "float16", "int8")),
            storage_options_honoured=True,
            persistent=True,
            exclusive=True,
            filter_ops=frozenset(("eq", "in", "range", "and", "or", "not")),
            fetch_atol={"float32": 0.0, "float16": 1e-3, "int8": 0.0},
            approximate_first_stage=True,
        )

    # ----- collections

    def _dir(self, name: str) -> Path:
        return self._root / name

    def _config(self, schema: CollectionSchema) -> Any:
        tokens = qe.EdgeVectorParams(
            size=schema.dim,
            distance=qe.Distance.Dot,
            multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
            hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10000),
            datatype=qe.VectorStorageDatatype.Float16 if schema.dtype == "float16" else None,
            quantization_config=(
                qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=qc.SCALAR_QUANTILE, always_ram=True)
                if schema.dtype == "int8"
                else None
            ),
            memory=qe.Memory.Cold if schema.on_disk else None,
        )
        pooled = qe.EdgeVectorParams(
            size=schema.dim, distance=qe.Distance.Cosine, hnsw_config=qe.HnswIndexConfig(**qc.POOLED_HNSW)
        )
        return qe.EdgeConfig(vectors={qc.TOKENS: tokens, qc.POOLED: pooled})

    def _write_schema(self, schema: CollectionSchema) -> None:
        d = self._dir(schema.name)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (SCHEMA_FILE + ".tmp")
        tmp.write_text(json.dumps(schema.to_json(), indent=1))
        os.replace(tmp, d / SCHEMA_FILE)

    def _load_schema(self, name: str) -> CollectionSchema | None:
        d = self._dir(name)
        f = d / SCHEMA_FILE
        if not f.exists():
            if (d / SHARD_DIR).exists():
                raise SchemaMismatchError(f"{d} holds a shard but no {SCHEMA_FILE}: not an agrame-vdb collection")
            return None
        try:
            schema = CollectionSchema.from_json(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise SchemaMismatchError(f"cannot read {f}: {exc}") from exc
        if schema.name != name:
            raise SchemaMismatchError(f"{f} describes collection {schema.name!r}, not {name!r}")
        self._shard(schema)
        return schema

    def _shard(self, schema: CollectionSchema) -> Any:
        with self._shard_lock:
            shard = self._shards.get(schema.name)
            if shard is None:
                path = self._dir(schema.name) / SHARD_DIR
                if (path / "edge_config.json").exists() or (path / "segments").exists():
                    shard = qe.EdgeShard.load(str(path))
                else:  # the schema was written but the shard never made it
                    shard = qe.EdgeShard.create(str(path), self._config(schema))
                    self._create_indexes(shard, qc.index_fields(schema))
                self._shards[schema.name] = shard
                if self._token_copy:
                    self._token_stores[schema.name] = self._open_token_store(schema)
            return shard

    def _open_token_store(self, schema: CollectionSchema) -> TokenStore:
        path = self._dir(schema.name) / TOKEN_FILE
        try:
            return TokenStore(path, schema.dim, copy_dtype(schema.dtype))
        except sqlite3.DatabaseError as exc:
            # only a copy: set it aside and start afresh (fetch reads the engine until rewritten)
            aside = path.with_name(f"{TOKEN_FILE}.unreadable-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{path}{suffix}").exists():
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            warnings.warn(f"token store {path} unreadable ({exc}); moved to {aside}, starting a new one", stacklevel=2)
            return TokenStore(path, schema.dim, copy_dtype(schema.dtype))

    def _tokens(self, schema: CollectionSchema) -> TokenStore | None:
        self._shard(schema)
        return self._token_stores.get(schema.name)

    def _create(self, schema: CollectionSchema) -> None:
        self._write_schema(schema)
        self._shard(schema)

    def _create_indexes(self, shard: Any, fields: dict[str, str]) -> None:
        for key, ftype in fields.items():
            shard.update(qe.UpdateOperation.create_field_index(key, _INDEX_TYPES[ftype]))

    def _add_indexes(self, schema: CollectionSchema, new_fields: dict[str, str]) -> None:
        self._create_indexes(self._shard(schema), qc.index_fields(schema, new_fields))
        self._write_schema(schema)

    def _list_collections(self) -> list[str]:
        return [d.name for d in self._root.iterdir() if (d / SCHEMA_FILE).exists()]

    def _drop(self, name: str) -> bool:
        with self._shard_lock:
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()
            store = self._token_stores.pop(name, None)
            if store is not None:
                store.close()
            d = self._dir(name)
            if not (d / SCHEMA_FILE).exists():
                return False
            (d / SCHEMA_FILE).unlink()  # first, so a half-deleted directory is no collection
            shutil.rmtree(d)
            return True

    # ----- points

    def _upsert(self, schema: CollectionSchema, passages: Sequence[StoredPassage]) -> None:
        store = self._tokens(schema)
        versions = [new_version() for _ in passages] if store is not None else [None] * len(passages)
        points = [
            qe.Point(p.id, qc.vectors_as_lists(p), qc.build_payload(p, schema, version=v))
            for p, v in zip(passages, versions)
        ]
        self._shard(schema).update(qe.UpdateOperation.upsert_points(points))
        if store is not None:  # a row is used only while its stamp matches the payload's
            store.put((p.id, v, p.tokens) for p, v in zip(passages, versions))  # type: ignore[misc]

    def _delete(self, schema: CollectionSchema, ids: list[str]) -> None:
        self._shard(schema).update(qe.UpdateOperation.delete_points(ids))
        store = self._tokens(schema)
        if store is not None:
            store.delete(ids)

    def _delete_where(self, schema: CollectionSchema, filter: Filter) -> None:
        store = self._tokens(schema)
        ids = list(self._iter_ids(schema, filter)) if store is not None else []
        f = qc.translate_filter(filter, _DIALECT)
        self._shard(schema).update(qe.UpdateOperation.delete_points_by_filter(f))
        if store is not None:
            store.delete(ids)

    def _iter_ids(self, schema: CollectionSchema, filter: Filter | None) -> Any:
        offset = None
        while True:
            page = self._list_ids(schema, filter, 10_000, offset)
            yield from page.ids
            if page.next_offset is None:
                return
            offset = page.next_offset

    def _count(self, schema: CollectionSchema, filter: Filter | None) -> int:
        f = qc.translate_filter(filter, _DIALECT)
        return self._shard(schema).count(qe.CountRequest(exact=True, filter=f))

    def _candidates(
        self,
        schema: CollectionSchema,
        pooled: np.ndarray,
        tokens: np.ndarray | None,
        limit: int,
        prefetch: int,
        filter: Filter | None,
    ) -> list[Candidate]:
        f = qc.translate_filter(filter, _DIALECT)
        shard = self._shard(schema)
        if tokens is None:
            req = qe.QueryRequest(
                limit=limit, query=qe.Query.Nearest(pooled.tolist(), using=qc.POOLED), filter=f, with_payload=False
            )
            return [Candidate(str(h.id), float(h.score), "pooled") for h in shard.query(req)]
        params = None
        if schema.dtype == "int8":
            params = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=2.0))
        req = qe.QueryRequest(
            limit=limit,
            prefetches=[qe.Prefetch(limit=prefetch, query=qe.Query.Nearest(pooled.tolist(), using=qc.POOLED), filter=f)],
            query=qe.Query.Nearest(tokens.tolist(), using=qc.TOKENS),
            with_payload=False,
            params=params,
        )
        return [Candidate(str(h.id), float(h.score), "maxsim") for h in shard.query(req)]

    def _fetch(self, schema: CollectionSchema, ids: list[str]) -> dict[str, StoredPassage]:
        shard = self._shard(schema)
        store = self._tokens(schema)
        records = shard.retrieve(ids, True, False if store is not None else [qc.TOKENS])
        if store is None:
            return {str(r.id): qc.passage_from_record(r.id, r.payload or {}, schema, r.vector) for r in records}
        try:
            rows = store.get([str(r.id) for r in records])
        except sqlite3.Error as exc:  # the engine has the vectors: slower, still right
            warnings.warn(f"token store {store.path} unreadable ({exc}); reading the engine's vectors", stacklevel=4)
            rows = {}
        out: dict[str, StoredPassage] = {}
        stale = []
        for r in records:
            pid, payload = str(r.id), r.payload or {}
            row = rows.get(pid)
            if row is None or row[0] != payload.get(qc.P_TV):
                stale.append((pid, payload))
                continue
            out[pid] = qc.passage_from_record(pid, payload, schema, tokens=row[1])
        if stale:  # the side store lags the engine: read the engine's own vectors
            vectors = {str(r.id): r.vector for r in shard.retrieve([pid for pid, _ in stale], False, [qc.TOKENS])}
            for pid, payload in stale:
                out[pid] = qc.passage_from_record(pid, payload, schema, vectors.get(pid))
        return out

    def _list_ids(self, schema: CollectionSchema, filter: Filter | None, limit: int, offset: str | None) -> IdPage:
        req = qe.ScrollRequest(
            offset=offset, limit=limit, filter=qc.translate_filter(filter, _DIALECT), with_payload=False, with_vector=False
        )
        records, nxt = self._shard(schema).scroll(req)
        return IdPage(tuple(str(r.id) for r in records), None if nxt is None else str(nxt))

    def _optimize(self, schema: CollectionSchema) -> None:
        shard = self._shard(schema)
        shard.optimize()
        shard.flush()
        store = self._tokens(schema)
        if store is not None:
            orphans = store.ids() - set(self._iter_ids(schema, None))
            if orphans:
                store.delete(sorted(orphans))
            store.checkpoint()

    def _close(self) -> None:
        with self._shard_lock:
            shards, self._shards = self._shards, {}
            stores, self._token_stores = self._token_stores, {}
            errors = []
            for name, closable in [*shards.items(), *stores.items()]:
                try:
                    closable.close()
                except Exception as exc:  # close the others anyway
                    errors.append(f"{name}: {exc}")
            if errors:
                raise RepositoryError("closing Qdrant Edge shards failed: " + "; ".join(errors))
