"""Qdrant Edge (qdrant-edge-py): the embedded default, on disk, the real Rust engine.

Layout on disk, one directory per collection under the root path::

    <root>/<collection>/collection.json    the CollectionSchema (written first)
    <root>/<collection>/shard/             the Edge shard (segments, WAL)
    <root>/<collection>/tokens.sqlite      the token copy's index (``token_copy``)
    <root>/<collection>/tokens.sqlite.<nonce>.bin   its vectors as raw bytes
    <root>/aliases.json                    aliases: {"aliases": {alias: collection}}

Edge has no collections of its own: each collection is one shard. Points follow
the layout shared with qdrant-client (``_qdrant_common``). Edge is beta and
unforgiving: bad input can panic the Rust side (a ``BaseException``) or be stored
as NaN, so everything is checked before it gets here; a panic that still happens
comes out as RepositoryError. A shard is locked by its WAL: a second process
opening it gets ConcurrentAccessError.

A collection with ``schema.lexical`` also has a named sparse vector ``lexical``
(``_lexical_vector``: BM25 term-frequency weights), written in the same point
write as the rest of the passage (an upsert replaces the whole point, so a rewrite
to a text without words drops the old terms), and searched with Edge's IDF
modifier, which counts the passages having a sparse vector, across segments. Edge
counts a deleted point (or the old copy of a rewritten one, left in an optimised
segment) in those statistics until its segment is vacuumed, so such collections
are created with optimizers that vacuum any segment with a deleted point:
``optimize()`` makes the IDF exact again (it can rebuild a large segment for one
delete). Hybrid candidates are one request: the pooled and lexical branches as
two filtered prefetches, fused by Edge's RRF, ``1 / (k' + position)`` with the
position from 0, so ``k' = rrf_k + 1`` gives :func:`agrame_vdb.fusion.rrf`'s
scores (in float32).

Edge has no aliases either: they live in ``<root>/aliases.json``, replaced
atomically under a file lock, so a reader in any process sees the old table or the
new one, and two processes changing aliases do not lose each other's change
(``_alias_file``).

Fetch path (``benchmarks/repositories.py``: 200 passages x 130 tokens x 128-d):
Edge hands multivectors back as nested Python lists, ~200 ms to build plus ~150 ms
into numpy. A base64 copy in the payload still cost ~75 ms (CPython decodes base64
at ~110 MB/s here), made writes ~35% slower and added ~1000 bytes per token on
disk. So with ``token_copy=True`` (the default) the token vectors also go, as raw
bytes, into a side store tied to the payload by a version stamp (``_token_store``:
a memory-mapped data file and a SQLite index): float32, float16 for float16
collections, int8 with a float32 scale per token for int8 collections
(``agrame_vdb.token_rows``: read back within 1/254 of values in [-1, 1]), sign bits
and an int8 rerank copy for binary collections (whose engine copy is Turbo8, as
int8's). Float16, int8 and binary rows reach the planner as stored
(:class:`~agrame_vdb.token_rows.EncodedTokens`), expanded a chunk at a time by the
MaxSim kernel (a batch that mixes in engine vectors is expanded). The engine's
vectors stay the truth: a row whose stamp does not match the payload (a crash
between the two writes, a restored snapshot) is ignored and the engine's vectors
are read instead. ``token_copy=False`` keeps only the engine's copy. Every write gets a new stamp (with or without the side store):
``fetch_tokens`` and ``candidates(with_versions=True)`` report it as the passage's
version.

``fetch_tokens`` (the planner's scoring read; 20k passages, 200 read, quiet
machine): ~5 ms. It takes the stamps the candidates carried (or reads only the
stamps from the engine, ~2 ms; the whole payload costs ~6.5 ms, ~4.4 of them for
Edge to build the units' nested lists), then the rows at those stamps: the vectors
gathered from the memory map into one array (~2 ms), the units into one
:class:`~agrame_vdb.unit_table.UnitTable` (~0.3 ms). Kept as SQLite blobs and JSON
units, the same read took ~9.5 ms.

Storage per dtype (``benchmarks/storage.py``: bytes per token on disk, 2,000
passages of ~130 128-d tokens): the engine keeps the token multivector as float32,
Float16 (float16 collections) or Turbo8 (int8 collections: TurboQuant 8-bit codes
and no float32 originals, ~133 bytes a token; Edge's MaxSim scores the codes; read
back, a value is off by up to ~0.045 * |x| / sqrt(dim), 0.003 for unit-norm
tokens). An int8 collection created before Turbo8 keeps its shard (float32
originals with int8 scalar quantization, rescored); its token copy moves from
float32 to the int8 form at the next ``optimize()`` (``migrate convert`` rebuilds
the shard). Measured in all: float32 1207, float16 695, int8 447, binary 463 bytes a token, of
which the engine's WAL is 163: a fixed ~40-60 MB a collection (two 32 MiB
segments, partly written), whatever the dtype. Edge has no setting for its size,
only ``wal_enabled``, which is left on: without a WAL, writes are durable only at
``flush()`` and the shard has no lock (a second process opens it unhindered).

Writes pass vectors as lists, which Edge converts about twice as fast as numpy
arrays. Edge never optimises by itself: writes run the engine's optimize every
``OPTIMIZE_BYTES`` (the appendable segment becomes an optimized one, with the pooled
HNSW index; what came since is searched by exact scan), and flush every
``WAL_FLUSH_BYTES``. With a token copy the engine's token multivector is created
``Memory.Cold`` (mapped, not read in): the query path reads the copy. ``optimize()``
optimizes what is left, drops orphaned rows of the
side store, fills in the units of rows written before the units column,
compacts the side store's data file (rows in the earlier form move to the current
one) and gives rows written before the checksum column one, where they equal the
engine's vectors and units (the others are dropped).

Each side-store row carries a checksum of its bytes and units, checked on read: a
damaged row (zeroed or overwritten bytes, damaged units) is read from the engine
instead, dropped, and counted in :attr:`QdrantEdgeRepository.diagnostics`
(``token_copy_fallbacks``); the first of a store is logged as a warning.
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

from ..atomic import atomic_write_text
from ..errors import (
    AgrameError,
    CollectionNotFoundError,
    ConcurrentAccessError,
    InvalidInputError,
    RepositoryError,
    SchemaMismatchError,
)
from ..filters import Filter
from ..lexical import SparseVector
from ..records import Candidate, Capabilities, IdPage, StoredPassage, TokenBatch
from ..schema import CollectionSchema
from ..unit_table import UnitTable
from . import DEFAULT_EDGE_PATH, StoreURL
from . import _qdrant_common as qc
from ._alias_file import AliasFile
from ._codec import copy_dtype, units_from_json, units_from_text
from . import _placement
from ._options import TokenCopyOptions, parse_options
from ..token_rows import I8_ATOL, EncodedTokens
from ._token_store import TokenStore, new_version
from .base import RepositoryBase

__all__ = ["QdrantEdgeRepository", "from_url"]

SCHEMA_FILE = "collection.json"
SHARD_DIR = "shard"
TOKEN_FILE = "tokens.sqlite"
#: a lexical collection's optimizers: vacuum every segment with a deleted point, so
#: that optimize() leaves no deleted point in the IDF statistics
_LEXICAL_OPTIMIZERS = {"deleted_threshold": 0.0, "vacuum_min_vector_number": 0}

#: the engine's storage of the token multivector per schema dtype (float32: Edge's
#: default): int8 collections keep only TurboQuant 8-bit codes (~dim + 4 bytes a
#: token, no float32 originals), which Edge's MaxSim scores directly
_TOKEN_DATATYPES = {
    "float16": qe.VectorStorageDatatype.Float16,
    "int8": qe.VectorStorageDatatype.Turbo8,
    # binary: the engine's copy is the truth the token copy gives way to, and what the
    # engine's own MaxSim (first_stage="maxsim") scores: Turbo8, as int8 (1-bit codes
    # alone would make that a binary MaxSim without a rerank)
    "binary": qe.VectorStorageDatatype.Turbo8,
}
#: the largest error of a token vector value in [-1, 1] read back from a Turbo8
#: multivector (int8 collections, where the engine's vectors are read: no token
#: copy, or a copy row that gives way): it grows with the vector's norm, about
#: 0.045 * |x| / sqrt(dim) at most, measured for dim 16 to 768 (0.041 for +-1
#: entries; 0.0033 for unit-norm 128-d tokens), rounded up
_TURBO8_ATOL = 0.05

#: float32 token bytes written to a shard between two flushes. Edge keeps every update in
#: its WAL until ``flush()`` and never flushes by itself: without one, a job's WAL grew by
#: ~640 bytes a 128-d token (~1.25x the float32 vectors, whatever the dtype) until the
#: ``optimize()`` at its end, so a store held twice its final size on disk at its peak
#: (200k passages, float32: ~58 GB for a 28 GB store; ``benchmarks/scale.py``). Flushed
#: every 256 MiB, the WAL stays under ~0.4 GB, for a flush of ~0.3-0.7 s per 256 MiB
#: (a few % of the write time; a Qdrant server flushes every 5 s)
WAL_FLUSH_BYTES = 256 << 20

#: token bytes, in the engine's own form (:data:`_ENGINE_VALUE_BYTES`), written to a shard
#: between two engine optimizations while a job writes. Edge never optimizes by itself:
#: a job's points pile up in appendable segments, which Edge keeps mapped and read in,
#: and the ``optimize()`` at the end rebuilds them all at once, which needs the old and
#: the new copy at the same time (200k passages in float32: 13 GB of engine vectors, twice,
#: beside the 13 GB token copy, in 23 GiB of RAM shared with other jobs: page-fault bound
#: at a few MB/s, stopped after 32 min; ``benchmarks/scale.py``). Optimized every 2 GiB,
#: each rebuild handles one bounded segment (~18 s for float32 on one core; Edge merges
#: small segments only up to its own size limit), and the final ``optimize()`` only what
#: came last: the 200k float32 store then wrote in ~8.5 min and optimized in ~5 s
OPTIMIZE_BYTES = 2 << 30
#: bytes a token value takes in the engine's copy per schema dtype (Turbo8 codes: one)
_ENGINE_VALUE_BYTES = {"float32": 4, "float16": 2, "int8": 1, "binary": 1}

#: a shard's payload files are read once when it is loaded, up to this many bytes
#: together (``_warm_payload``): larger payloads are left to the page cache
PAYLOAD_WARM_BYTES = 1 << 30

_INDEX_TYPES = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
}


def from_url(url: StoreURL, **options: Any) -> QdrantEdgeRepository:
    _placement.refuse_embedded(options, _placement.QDRANT, "qdrant-edge", _placement.QDRANT_SERVER)
    kwargs = parse_options(TokenCopyOptions, options, "qdrant-edge")
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


def _unit_table(sources: list[Any], kinds: Sequence[str]) -> UnitTable:
    """One table of passages' units, each given in the side store's binary form
    (bytes), as an old row's JSON text, or as Unit records (from the payload)."""
    if all(type(u) is bytes for u in sources):
        return UnitTable.from_blobs(sources, kinds)
    return UnitTable.from_units(
        [
            UnitTable.from_blobs([u], kinds)[0] if type(u) is bytes else units_from_text(u) if isinstance(u, str) else u
            for u in sources
        ]
    )


def _payload_files(shard_dir: Path) -> list[Path]:
    """The payload storage files of a shard's segments."""
    return [f for f in (shard_dir / "segments").glob("*/payload_storage/**/*") if f.is_file()]


def _warm_payload(shard_dir: Path) -> int:
    """Read a loaded shard's payload files once, in order, when they are at most
    ``PAYLOAD_WARM_BYTES`` together; the bytes read. Every search that carries
    versions reads each hit's stamp from the payload, which Edge keeps on disk, mapped
    and not read ahead (``Memory.Cold``): in a freshly opened store of 200k passages each
    first touch was a page fault to disk, ~18 ms more a search of 200 candidates
    (~21 ms against ~4.5 ms with the pages cached; ``benchmarks/scale.py``), until most
    pages had been touched. Reading the files (261 MB there) took ~0.25 s;
    ``posix_fadvise(WILLNEED)`` did not help."""
    try:
        files = _payload_files(shard_dir)
        if sum(f.stat().st_size for f in files) > PAYLOAD_WARM_BYTES:
            return 0
        read = 0
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while chunk := fh.read(1 << 22):
                    read += len(chunk)
        return read
    except OSError:  # only a warm-up: the engine reads the files itself
        return 0


def _is_panic(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"


class QdrantEdgeRepository(RepositoryBase):
    """Collections as Qdrant Edge shards under ``root``."""

    engine = "qdrant-edge"
    batch_size = 256

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_EDGE_PATH, *, token_copy: bool = True) -> None:
        super().__init__()
        if "\x00" in os.fspath(root):
            raise InvalidInputError(f"a Qdrant Edge path must not contain a NUL character, got {os.fspath(root)!r}")
        self._root = Path(root)
        self._token_copy = token_copy
        self._shards: dict[str, Any] = {}
        self._token_stores: dict[str, TokenStore] = {}
        self._unflushed: dict[str, int] = {}  # token bytes written since the shard's last flush
        self._unoptimized: dict[str, int] = {}  # engine token bytes written since its last optimize
        self._shard_lock = threading.RLock()
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RepositoryError(f"cannot create the Qdrant Edge directory {self._root}: {exc}") from exc
        self._alias_file = AliasFile(self._root)

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
            return CollectionNotFoundError(f"Qdrant Edge collection {collection!r} has no shard at {where}: {msg}", collection=collection)
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
            dtypes=frozenset(("float32", "float16", "int8", "binary")),
            storage_options_honoured=True,
            persistent=True,
            exclusive=True,
            filter_ops=frozenset(("eq", "in", "range", "and", "or", "not")),
            # int8: the token copy is within I8_ATOL, the engine's Turbo8 codes (read
            # where the copy gives way, or without one) within _TURBO8_ATOL
            fetch_atol={"float32": 0.0, "float16": 1e-3, "int8": max(I8_ATOL, _TURBO8_ATOL),
                        "binary": max(I8_ATOL, _TURBO8_ATOL)},
            approximate_first_stage=True,
            versions=True,
            lexical=True,
            hybrid_in_engine=True,
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
            datatype=_TOKEN_DATATYPES.get(schema.dtype),
            # with a token copy the query path never reads the engine's copy: kept mapped,
            # not read in (Memory.Cold), it no longer crowds the copy out of the page cache
            memory=qe.Memory.Cold if schema.on_disk or self._token_copy else None,
        )
        pooled = qe.EdgeVectorParams(
            size=schema.dim, distance=qe.Distance.Cosine, hnsw_config=qe.HnswIndexConfig(**qc.POOLED_HNSW)
        )
        if schema.lexical is None:
            return qe.EdgeConfig(vectors={qc.TOKENS: tokens, qc.POOLED: pooled})
        return qe.EdgeConfig(
            vectors={qc.TOKENS: tokens, qc.POOLED: pooled},
            sparse_vectors={qc.LEXICAL: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            optimizers=qe.EdgeOptimizersConfig(**_LEXICAL_OPTIMIZERS),
        )

    def _write_schema(self, schema: CollectionSchema) -> None:
        d = self._dir(schema.name)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / SCHEMA_FILE, json.dumps(schema.to_json(), indent=1), private=False)

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
                    _warm_payload(path)
                else:  # the schema was written but the shard never made it
                    shard = qe.EdgeShard.create(str(path), self._config(schema))
                    self._create_indexes(shard, qc.index_fields(schema))
                self._shards[schema.name] = shard
                if self._token_copy:
                    self._token_stores[schema.name] = self._open_token_store(schema)
            return shard

    def _open_token_store(self, schema: CollectionSchema) -> TokenStore:
        path = self._dir(schema.name) / TOKEN_FILE
        # int8 collections' copies were float32 before the i8 form: optimize() moves them
        code, legacy = copy_dtype(schema.dtype), "f2" if schema.dtype == "float16" else "f4"
        try:
            return TokenStore(path, schema.dim, code, legacy=legacy)
        except sqlite3.DatabaseError as exc:
            # only a copy: set it aside and start afresh (fetch reads the engine until rewritten)
            aside = path.with_name(f"{TOKEN_FILE}.unreadable-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{path}{suffix}").exists():
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            warnings.warn(f"token store {path} unreadable ({exc}); moved to {aside}, starting a new one", stacklevel=2)
            return TokenStore(path, schema.dim, code, legacy=legacy)

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
            self._unflushed.pop(name, None)
            self._unoptimized.pop(name, None)
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
        # every write gets a new version stamp: the side store's rows are tied to it,
        # and fetch_tokens / candidates(with_versions=True) report it
        versions = [new_version() for _ in passages]
        points = [
            qe.Point(p.id, self._point_vectors(schema, p), qc.build_payload(p, schema, version=v))
            for p, v in zip(passages, versions)
        ]
        shard = self._shard(schema)
        shard.update(qe.UpdateOperation.upsert_points(points))
        if store is not None:  # a row is used only while its stamp matches the payload's
            store.put((p.id, v, p.tokens, p.units) for p, v in zip(passages, versions))
        values = sum(p.tokens.size for p in passages)
        unflushed = self._unflushed.get(schema.name, 0) + 4 * values
        unoptimized = self._unoptimized.get(schema.name, 0) + _ENGINE_VALUE_BYTES[schema.dtype] * values
        optimize = unoptimized >= OPTIMIZE_BYTES
        if optimize:  # the appendable segments become one optimized segment
            shard.optimize()
            unoptimized = 0
        if optimize or unflushed >= WAL_FLUSH_BYTES:  # the WAL is cut back to what is not yet in the segments
            shard.flush()
            unflushed = 0
        self._unflushed[schema.name] = unflushed
        self._unoptimized[schema.name] = unoptimized

    def _point_vectors(self, schema: CollectionSchema, p: StoredPassage) -> dict[str, Any]:
        """A point's named vectors: tokens, pooled and (when it has one) the lexical vector."""
        vectors = qc.vectors_as_lists(p)
        lexical = self._lexical_vector(schema, p)
        if lexical is not None:
            vectors[qc.LEXICAL] = _sparse(lexical)
        return vectors

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
        *,
        versions: bool = False,
    ) -> list[Candidate]:
        # versions: the version stamp from the payload: measured ~1.3 ms more for 200 hits
        f = qc.translate_filter(filter, _DIALECT)
        shard = self._shard(schema)
        payload: Any = [qc.P_TV] if versions else False
        if tokens is None:
            req = qe.QueryRequest(
                limit=limit, query=qe.Query.Nearest(pooled.tolist(), using=qc.POOLED), filter=f, with_payload=payload
            )
            stage = "pooled"
        else:
            params = None
            if schema.dtype in ("int8", "binary"):
                params = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=2.0))
            req = qe.QueryRequest(
                limit=limit,
                prefetches=[
                    qe.Prefetch(limit=prefetch, query=qe.Query.Nearest(pooled.tolist(), using=qc.POOLED), filter=f)
                ],
                query=qe.Query.Nearest(tokens.tolist(), using=qc.TOKENS),
                with_payload=payload,
                params=params,
            )
            stage = "maxsim"
        return qc.candidates(shard.query(req), stage, versions)

    @staticmethod
    def _sparse_query(query: SparseVector) -> Any:
        return qe.Query.Nearest(_sparse(query), using=qc.LEXICAL)

    def _lexical_candidates(
        self, schema: CollectionSchema, query: SparseVector, limit: int, filter: Filter | None, *, versions: bool = False
    ) -> list[Candidate]:
        req = qe.QueryRequest(
            limit=limit,
            query=self._sparse_query(query),
            filter=qc.translate_filter(filter, _DIALECT),
            with_payload=[qc.P_TV] if versions else False,
        )
        return qc.candidates(self._shard(schema).query(req), "lexical", versions)

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
        f = qc.translate_filter(filter, _DIALECT)
        req = qe.QueryRequest(
            limit=limit,
            prefetches=[
                qe.Prefetch(limit=dense_limit, query=qe.Query.Nearest(pooled.tolist(), using=qc.POOLED), filter=f),
                qe.Prefetch(limit=lexical_limit, query=self._sparse_query(query), filter=f),
            ],
            query=qe.Fusion.Rrf(k=qc.rrf_constant(rrf_k)),
            with_payload=[qc.P_TV] if versions else False,
        )
        return qc.candidates(self._shard(schema).query(req), "hybrid", versions)

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

    def _fetch_tokens(
        self, schema: CollectionSchema, ids: list[str], versions: dict[str, Any] | None = None
    ) -> TokenBatch:
        """Version stamps from the engine (the truth), or the ones the caller just saw
        (``versions``, e.g. from the candidates); token vectors and units from the side
        store's rows at those stamps: the vectors gathered from its memory map into one
        array, the units as a :class:`~agrame_vdb.unit_table.UnitTable`. A row at
        another stamp (or every row, without a side store) gives way to the engine's
        own vectors, with the units and stamp of that same read, as in ``_fetch``; a
        row without units takes them from the payload.

        Measured for 200 passages: the stamps alone ~2-3 ms (skipped when given), the
        whole payload ~6.5 ms (Edge builds the units' nested lists as Python objects,
        ~4.4 ms).
        """
        shard = self._shard(schema)
        store = self._tokens(schema)
        tokens: dict[str, np.ndarray] = {}  # the engine's vectors of the passages it was read for
        copied: dict[str, slice] = {}  # where the side store's rows lie in ``flat``
        flat: np.ndarray | EncodedTokens = np.zeros((0, schema.dim), np.float32)
        units: dict[str, Any] = {}  # binary units (bytes), JSON text (an old row), or Unit tuples
        read: dict[str, Any] = {}  # the version each passage was read at
        if store is None:
            found, stale = list(ids), list(ids)
        else:
            stamps = {i: v for i, v in (versions or {}).items() if v is not None}
            ask = [i for i in ids if i not in stamps]
            if ask:
                stamps.update(
                    {str(r.id): (r.payload or {}).get(qc.P_TV) for r in shard.retrieve(ask, [qc.P_TV], False)}
                )
            found = [i for i in ids if i in stamps]
            rows = None
            try:
                rows = store.read(found)
            except sqlite3.Error as exc:  # the engine has the vectors: slower, still right
                warnings.warn(f"token store {store.path} unreadable ({exc}); reading the engine's vectors", stacklevel=4)
            stale, legacy, kept = [], [], []
            for pid in found:
                version, row = stamps[pid], rows.get(pid) if rows is not None else None
                if row is None or version is None or row[0] != version:
                    stale.append(pid)
                    continue
                read[pid] = version
                kept.append(pid)
                if row[2] is None:
                    legacy.append(pid)
                else:
                    units[pid] = row[2]
            if rows is not None and kept:  # float32, or the encoded rows (float16, int8, binary) unexpanded
                flat = store.batch(rows, kept)
                ends = np.cumsum([rows.rows[pid][1] for pid in kept]).tolist()
                copied = {pid: slice(end - rows.rows[pid][1], end) for pid, end in zip(kept, ends)}
            if legacy:
                for r in shard.retrieve(legacy, [qc.P_UNITS, qc.P_TV], False):
                    pid, payload = str(r.id), r.payload or {}
                    if payload.get(qc.P_TV) == read[pid]:
                        units[pid] = units_from_json(payload.get(qc.P_UNITS, ()))
                stale += [pid for pid in legacy if pid not in units]  # rewritten meanwhile
        if stale:  # the engine's vectors, with the units and stamp of the same read
            for r in shard.retrieve(stale, True, [qc.TOKENS]):
                vector = r.vector
                if not isinstance(vector, dict) or qc.TOKENS not in vector:
                    continue
                pid, payload = str(r.id), r.payload or {}
                tokens[pid] = np.asarray(vector[qc.TOKENS], dtype=np.float32).reshape(-1, schema.dim)
                units[pid] = units_from_json(payload.get(qc.P_UNITS, ()))
                read[pid] = payload.get(qc.P_TV)
        found = [pid for pid in found if pid in units]  # less any deleted between the reads
        vectors: np.ndarray | EncodedTokens
        if not tokens and found == list(copied):  # all from the side store: as read
            vectors = flat
            lengths = [copied[pid].stop - copied[pid].start for pid in found]
        else:  # some from the engine: all as float32
            if isinstance(flat, EncodedTokens):
                flat = flat.expand()
            parts = [tokens[pid] if pid in tokens else flat[copied[pid]] for pid in found]
            vectors = np.concatenate(parts) if parts else np.zeros((0, schema.dim), np.float32)
            lengths = [len(t) for t in parts]
        offsets = np.zeros(len(found) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        present = set(found)
        return TokenBatch(
            tuple(found),
            tuple(i for i in ids if i not in present),
            vectors,
            offsets,
            _unit_table([units[pid] for pid in found], store.kinds if store is not None else ()),
            tuple(read[pid] for pid in found),
        )

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
        self._unflushed.pop(schema.name, None)
        self._unoptimized.pop(schema.name, None)
        store = self._tokens(schema)
        if store is not None:
            orphans = store.ids() - set(self._iter_ids(schema, None))
            if orphans:
                store.delete(sorted(orphans))
            self._fill_units(shard, store)
            store.compact()
            self._fill_checksums(shard, store, schema.dim)
            store.checkpoint()

    @staticmethod
    def _fill_units(shard: Any, store: TokenStore) -> None:
        """Copy the payload's units into side-store rows written before the units column."""
        todo = store.without_units()
        for start in range(0, len(todo), 1000):
            rows = []
            for r in shard.retrieve(todo[start : start + 1000], [qc.P_UNITS, qc.P_TV], False):
                payload = r.payload or {}
                if payload.get(qc.P_TV) is not None:
                    rows.append((str(r.id), payload[qc.P_TV], units_from_json(payload.get(qc.P_UNITS, []))))
            store.set_units(rows)

    @staticmethod
    def _fill_checksums(shard: Any, store: TokenStore, dim: int) -> None:
        """Give side-store rows written before the checksum column one, once their
        vectors and units are found equal to the engine's (the others are dropped)."""
        todo = store.unchecked()
        for start in range(0, len(todo), 256):
            truth = {}
            for r in shard.retrieve(todo[start : start + 256], [qc.P_UNITS, qc.P_TV], [qc.TOKENS]):
                payload, vector = r.payload or {}, r.vector
                if isinstance(vector, dict) and qc.TOKENS in vector:
                    tokens = np.asarray(vector[qc.TOKENS], dtype=np.float32).reshape(-1, dim)
                    truth[str(r.id)] = (payload.get(qc.P_TV), tokens, units_from_json(payload.get(qc.P_UNITS, ())))
            store.seal(truth)

    @property
    def diagnostics(self) -> dict[str, int]:
        """Counters of this repository's open collections: ``token_copy_fallbacks``, the
        side-store rows found damaged (failing their checksum) and read from the engine."""
        with self._shard_lock:
            return {"token_copy_fallbacks": sum(store.damaged for store in self._token_stores.values())}

    # ----- aliases (emulated: a JSON file under the root, see ``_alias_file``)

    def _aliases(self) -> dict[str, str]:
        return self._alias_file.read()

    def _set_alias(self, alias: str, collection: str, previous: str | None) -> None:
        self._alias_file.change(lambda table: {**table, alias: collection})

    def _delete_alias(self, alias: str) -> None:
        self._alias_file.change(lambda table: {a: c for a, c in table.items() if a != alias})

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


def _sparse(vector: SparseVector) -> Any:
    return qe.SparseVector(list(vector.indices), list(vector.values))
