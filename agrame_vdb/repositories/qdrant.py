"""Qdrant through qdrant-client: a server (``http(s)://host:6333``) or local mode.

One class serves both. Local mode (``qdrant-local:///path`` or
``qdrant-local://:memory:``) is qdrant-client's pure-Python engine: exact and
convenient for tests and small corpora, but it scores every multivector in a
Python loop, and it accepts and ignores float16, int8 and binary quantization and
``on_disk`` (``capabilities().storage_options_honoured`` is False). A server
honours them: int8 collections keep their token vectors as scalar int8 codes in RAM,
binary ones as 1-bit binary quantization in RAM, both with the float32 originals on
disk for rescoring. The payload's token copy (``token_copy``) has the collection's
form on both (:mod:`agrame_vdb.token_rows`): float32, float16, int8 with a float32
scale per token (``dim + 4`` bytes a token), or sign bits and an int8 rerank copy
(binary), and ``fetch_tokens`` hands float16, int8 and binary copies to the planner
unexpanded (:class:`~agrame_vdb.token_rows.EncodedTokens`). The layout is shared with Qdrant Edge (see ``_qdrant_common``); the
schema is stored in the collection's metadata under ``"agrame"``. Aliases are
Qdrant's own; a switch is one ``update_collection_aliases`` call (delete and
create), which a server applies atomically.

Lexical search (collections with ``schema.lexical``) is Qdrant's own: a sparse
vector ``lexical`` with ``Modifier.IDF``, written in the same point upsert as the
rest of the passage. Hybrid candidates are one ``query_points`` call: the pooled and
the lexical branches as two filtered prefetches, fused by Qdrant's RRF. Qdrant
scores a hit at 0-based position ``i`` as ``1 / (k' + i)``, the library
(:func:`agrame_vdb.fusion.rrf`) at rank ``i + 1`` as ``1 / (k + i + 1)``, so the
engine gets ``k' = rrf_k + 1`` and both give the same scores. A server's IDF counts
the points of its sparse index, deleted ones included until Qdrant's optimizer
rebuilds their segment; local mode counts live points only.

On a server the URL options ``shard_number``, ``replication_factor`` and
``write_consistency_factor`` (``http://qdrant-0:6333?shard_number=6&replication_factor=2``)
place the collections this connection creates on the nodes of a cluster
(docs/cluster.md); they are checked before any call and refused by local mode.

Server calls are retried with tenacity on transport errors, timeouts and
429/5xx answers (``retries`` attempts, exponential back-off); what still fails
comes out as TransientRepositoryError.
"""

from __future__ import annotations

import base64
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from tenacity import wait_exponential, wait_random

from ..errors import (
    AgrameError,
    CollectionNotFoundError,
    ConcurrentAccessError,
    InvalidInputError,
    SchemaMismatchError,
    TransientRepositoryError,
)
from ..filters import Filter
from ..lexical import SparseVector
from ..records import Candidate, Capabilities, IdPage, StoredPassage, TokenBatch
from ..schema import CollectionSchema
from .base import RepositoryBase
from ..redact import redact_url, secret_parts, url_secrets
from . import StoreURL, _grpc_transient
from . import _placement
from . import _qdrant_common as qc
from ._retry import call_with_retries
from ._options import Bool, Float, Int, TokenCopyOptions, parse_options
from ._codec import copy_dtype, decode_tokens, join_tokens, units_from_json
from ..token_rows import I8_ATOL, RowFormat
from ._token_store import new_version

__all__ = ["QdrantRepository", "from_url", "is_transient"]

T = TypeVar("T")

_TRANSIENT_STATUS = frozenset((408, 429, 500, 502, 503, 504))
_INDEX_TYPES = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
}


class ServerOptions(TokenCopyOptions):
    """The options of a Qdrant server (``http://``, ``https://``)."""

    retries: Int = None
    timeout: Int = None
    retry_wait_max: Float = None
    prefer_grpc: Bool = None
    api_key: Any = None
    shard_number: Int = None
    replication_factor: Int = None
    write_consistency_factor: Int = None


def from_url(url: StoreURL, **options: Any) -> QdrantRepository:
    if url.scheme == "qdrant-local":
        _placement.refuse_embedded(options, _placement.QDRANT, "qdrant-local", _placement.QDRANT_SERVER)
        kwargs = parse_options(TokenCopyOptions, options, "qdrant-local")
        loc = url.location
        if loc in ("", ":memory:"):
            return QdrantRepository(location=":memory:", **kwargs)
        return QdrantRepository(path=loc, **kwargs)
    return QdrantRepository(url=url.base, **parse_options(ServerOptions, options, "a Qdrant server"))


def is_transient(exc: BaseException) -> bool:
    """Whether an exception from qdrant-client is worth retrying."""
    if isinstance(exc, ResponseHandlingException):
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in _TRANSIENT_STATUS
    try:
        import httpx

        if isinstance(exc, (httpx.TransportError, httpx.TimeoutException)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return _grpc_transient(exc)


class _Dialect:
    def match_value(self, key: str, value: Any) -> Any:
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))

    def match_any(self, key: str, values: list[Any]) -> Any:
        return models.FieldCondition(key=key, match=models.MatchAny(any=values))

    def range(self, key: str, gt: Any, gte: Any, lt: Any, lte: Any) -> Any:
        return models.FieldCondition(key=key, range=models.Range(gt=gt, gte=gte, lt=lt, lte=lte))

    def combine(self, must: Any = None, should: Any = None, must_not: Any = None) -> Any:
        return models.Filter(must=must, should=should, must_not=must_not)


_DIALECT = _Dialect()


class QdrantRepository(RepositoryBase):
    """Qdrant via qdrant-client: give ``url`` (server), ``path`` or ``location=":memory:"``.

    ``token_copy`` (default True) stores a binary copy of the token vectors in the
    payload so fetch decodes bytes instead of JSON floats; False reads the engine's
    vectors (slower, less disk).

    On a server (a cluster: docs/cluster.md), ``shard_number``, ``replication_factor``
    and ``write_consistency_factor`` are passed to ``create_collection`` for the
    collections this repository creates (None: the server's default); each is an int
    >= 1, and ``write_consistency_factor`` at most ``replication_factor`` (1 when not
    given). Local mode refuses them.
    """

    batch_size = 64

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | None = None,
        location: str | None = None,
        api_key: str | None = None,
        token_copy: bool = True,
        retries: int = 5,
        retry_wait_max: float = 5.0,
        timeout: int | None = None,
        prefer_grpc: bool = False,
        client: QdrantClient | None = None,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
    ) -> None:
        super().__init__()
        if sum(x is not None for x in (url, path, location, client)) != 1:
            raise InvalidInputError("give exactly one of url=, path=, location=':memory:' or client=")
        if not isinstance(retries, int) or retries < 1:
            raise InvalidInputError(f"retries must be an int >= 1, got {retries!r}")
        self._server = url is not None or (client is not None and not _is_local(client))
        self._placement = _placement_of(
            self._server, shard_number=shard_number, replication_factor=replication_factor,
            write_consistency_factor=write_consistency_factor,
        )
        self._persistent = self._server or path is not None
        self.engine = "qdrant-server" if self._server else "qdrant-local"
        self._token_copy = token_copy
        self._retries = retries
        self._retry_wait_max = retry_wait_max
        self._where = redact_url(url) if url is not None else path or location or "client"
        if url is not None:
            key = api_key if api_key is not None else os.environ.get("QDRANT_API_KEY") or None
            self._secrets = frozenset(url_secrets(url) | secret_parts(key))
        with self._engine("connect"):
            if client is not None:
                self._client = client
            elif url is not None:
                self._client = QdrantClient(
                    url=url,
                    api_key=key,
                    timeout=timeout,
                    prefer_grpc=prefer_grpc,
                    check_compatibility=False,
                )
            elif path is not None:
                os.makedirs(path, exist_ok=True)
                self._client = QdrantClient(path=path)
            else:
                self._client = QdrantClient(location=":memory:")

    # ----- plumbing

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self._server:
            return fn(*args, **kwargs)
        wait = wait_exponential(multiplier=0.2, max=self._retry_wait_max) + wait_random(0, min(0.2, self._retry_wait_max))
        return call_with_retries(fn, args, kwargs, attempts=self._retries, wait=wait, transient=is_transient,
                                 server=f"Qdrant server at {self._where}", short=_short)

    def _translate_error(self, exc: BaseException, op: str, collection: str | None) -> AgrameError | None:
        if isinstance(exc, UnexpectedResponse) and exc.status_code == 404 and collection:
            return CollectionNotFoundError(f"collection {collection!r} does not exist on {self._where}", collection=collection)
        if isinstance(exc, RuntimeError) and "already accessed by another instance" in str(exc):
            return ConcurrentAccessError(
                f"the Qdrant local store at {self._where} is open in another process or client; "
                "close it there, or use a Qdrant server for concurrent access"
            )
        if isinstance(exc, ValueError) and collection and "not found" in str(exc).lower():
            return CollectionNotFoundError(f"collection {collection!r} does not exist in {self._where}", collection=collection)
        if is_transient(exc):
            return TransientRepositoryError(f"{self.engine} at {self._where} failed to {op}: {_short(exc)}")
        return super()._translate_error(exc, op, collection)

    def _capabilities(self) -> Capabilities:
        return Capabilities(
            engine=self.engine,
            maxsim_rerank=True,
            dtypes=frozenset(("float32", "float16", "int8", "binary")),
            storage_options_honoured=self._server,
            persistent=self._persistent,
            exclusive=not self._server and self._persistent,
            filter_ops=frozenset(("eq", "in", "range", "and", "or", "not")),
            # int8 and binary: the payload copy's int8 rows (the engine's float32
            # originals, read without a copy, are exact)
            fetch_atol={"float32": 0.0, "float16": 1e-3, "int8": I8_ATOL, "binary": I8_ATOL},
            approximate_first_stage=self._server,
            versions=True,
            lexical=True,
            hybrid_in_engine=True,
        )

    # ----- collections

    def _load_schema(self, name: str) -> CollectionSchema | None:
        if not self._call(self._client.collection_exists, name):
            return None
        info = self._call(self._client.get_collection, name)
        meta = getattr(info.config, "metadata", None) or {}
        if qc.META_KEY not in meta:
            raise SchemaMismatchError(
                f"collection {name!r} at {self._where} was not created by agrame-vdb (no '{qc.META_KEY}' "
                "metadata; Qdrant servers older than 1.16 do not keep collection metadata)"
            )
        return CollectionSchema.from_json(meta[qc.META_KEY])

    def _create(self, schema: CollectionSchema) -> None:
        self._call(
            self._client.create_collection,
            schema.name,
            vectors_config=self._vector_params(schema),
            sparse_vectors_config=self._sparse_params(schema),
            metadata={qc.META_KEY: schema.to_json()},
            **self._placement,
        )
        self._create_indexes(schema.name, qc.index_fields(schema))

    @staticmethod
    def _vector_params(schema: CollectionSchema) -> dict[str, models.VectorParams]:
        """The named vectors of a new collection. The token multivector follows the
        dtype: float16 originals for float16; for int8 and binary the codes Qdrant
        scores (scalar int8 quantization, 1-bit binary quantization) in RAM and the
        float32 originals it rescores with on disk (memory-mapped), whatever
        ``on_disk`` says, so the RAM a collection holds is that of its dtype."""
        quantization: Any = None
        if schema.dtype == "int8":
            quantization = models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=qc.SCALAR_QUANTILE, always_ram=True)
            )
        elif schema.dtype == "binary":
            quantization = models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
        tokens = models.VectorParams(
            size=schema.dim,
            distance=models.Distance.DOT,
            multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
            hnsw_config=models.HnswConfigDiff(m=0),
            on_disk=(schema.on_disk or quantization is not None) or None,
            datatype=models.Datatype.FLOAT16 if schema.dtype == "float16" else None,
            quantization_config=quantization,
        )
        pooled = models.VectorParams(
            size=schema.dim, distance=models.Distance.COSINE, hnsw_config=models.HnswConfigDiff(**qc.POOLED_HNSW)
        )
        return {qc.TOKENS: tokens, qc.POOLED: pooled}

    @staticmethod
    def _sparse_params(schema: CollectionSchema) -> dict[str, models.SparseVectorParams] | None:
        if schema.lexical is None:
            return None
        return {
            qc.LEXICAL: models.SparseVectorParams(
                index=models.SparseIndexParams(on_disk=schema.on_disk or None), modifier=models.Modifier.IDF
            )
        }

    def _create_indexes(self, name: str, fields: dict[str, str]) -> None:
        if not self._server:
            return  # local mode has no payload indexes (it warns and ignores them)
        for key, ftype in fields.items():
            self._call(self._client.create_payload_index, name, key, field_schema=_INDEX_TYPES[ftype], wait=True)

    def _add_indexes(self, schema: CollectionSchema, new_fields: dict[str, str]) -> None:
        self._create_indexes(schema.name, qc.index_fields(schema, new_fields))
        self._call(self._client.update_collection, schema.name, metadata={qc.META_KEY: schema.to_json()})

    def _list_collections(self) -> list[str]:
        return [c.name for c in self._call(self._client.get_collections).collections]

    def _drop(self, name: str) -> bool:
        if not self._call(self._client.collection_exists, name):
            return False
        self._call(self._client.delete_collection, name)
        return True

    # ----- points

    def _upsert(self, schema: CollectionSchema, passages: Sequence[StoredPassage]) -> None:
        points = [
            models.PointStruct(
                id=p.id,
                vector=self._vectors(schema, p),
                payload=qc.build_payload(p, schema, token_copy=self._token_copy, version=new_version()),
            )
            for p in passages
        ]
        self._call(self._client.upsert, schema.name, points=points, wait=True)

    def _vectors(self, schema: CollectionSchema, p: StoredPassage) -> dict[str, Any]:
        """A point's named vectors: an upsert replaces the whole point, so a passage
        written without a lexical vector (no word) loses the one it had."""
        vectors = qc.vectors_as_lists(p)
        lexical = self._lexical_vector(schema, p)
        if lexical is not None:
            vectors[qc.LEXICAL] = _sparse(lexical)
        return vectors

    def _delete(self, schema: CollectionSchema, ids: list[str]) -> None:
        self._call(self._client.delete, schema.name, points_selector=models.PointIdsList(points=ids), wait=True)

    def _delete_where(self, schema: CollectionSchema, filter: Filter) -> None:
        selector = models.FilterSelector(filter=qc.translate_filter(filter, _DIALECT))
        self._call(self._client.delete, schema.name, points_selector=selector, wait=True)

    def _count(self, schema: CollectionSchema, filter: Filter | None) -> int:
        f = qc.translate_filter(filter, _DIALECT)
        return self._call(self._client.count, schema.name, count_filter=f, exact=True).count

    def _search_params(self, schema: CollectionSchema) -> models.SearchParams | None:
        if schema.dtype in ("int8", "binary") and self._server:  # local mode warns that it ignores them
            return models.SearchParams(quantization=models.QuantizationSearchParams(rescore=True, oversampling=2.0))
        return None

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
        f = qc.translate_filter(filter, _DIALECT)
        payload: Any = [qc.P_TV] if versions else False
        if tokens is None:
            res = self._call(
                self._client.query_points,
                schema.name,
                query=pooled.tolist(),
                using=qc.POOLED,
                query_filter=f,
                limit=limit,
                with_payload=payload,
            )
            stage = "pooled"
        else:
            res = self._call(
                self._client.query_points,
                schema.name,
                prefetch=models.Prefetch(query=pooled.tolist(), using=qc.POOLED, limit=prefetch, filter=f),
                query=tokens.tolist(),
                using=qc.TOKENS,
                limit=limit,
                with_payload=payload,
                search_params=self._search_params(schema),
            )
            stage = "maxsim"
        return qc.candidates(res.points, stage, versions)

    def _lexical_candidates(
        self, schema: CollectionSchema, query: SparseVector, limit: int, filter: Filter | None, *, versions: bool = False
    ) -> list[Candidate]:
        res = self._call(
            self._client.query_points,
            schema.name,
            query=_sparse(query),
            using=qc.LEXICAL,
            query_filter=qc.translate_filter(filter, _DIALECT),
            limit=limit,
            with_payload=[qc.P_TV] if versions else False,
        )
        return qc.candidates(res.points, "lexical", versions)

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
        res = self._call(
            self._client.query_points,
            schema.name,
            prefetch=[
                models.Prefetch(query=pooled.tolist(), using=qc.POOLED, filter=f, limit=dense_limit,
                                params=self._search_params(schema)),
                models.Prefetch(query=_sparse(query), using=qc.LEXICAL, filter=f, limit=lexical_limit),
            ],
            query=models.RrfQuery(rrf=models.Rrf(k=qc.rrf_constant(rrf_k))),
            limit=limit,
            with_payload=[qc.P_TV] if versions else False,
        )
        return qc.candidates(res.points, "hybrid", versions)

    def _fetch(self, schema: CollectionSchema, ids: list[str]) -> dict[str, StoredPassage]:
        records = self._call(
            self._client.retrieve,
            schema.name,
            ids=ids,
            with_payload=True,
            with_vectors=False if self._token_copy else [qc.TOKENS],
        )
        out = {}
        for r in records:
            p = qc.passage_from_record(r.id, r.payload or {}, schema, r.vector)  # type: ignore[arg-type]
            out[p.id] = p
        return out

    def _fetch_tokens(self, schema: CollectionSchema, ids: list[str], versions: Any = None) -> TokenBatch:
        """Units, version and the payload's binary token copy (no text, metadata or
        pooled vector), decoded into one array; points without a copy (written with
        ``token_copy=False``) are read again with the engine's vectors. The versions a
        caller saw are not used: the payload is read anyway."""
        selection = [qc.P_UNITS, qc.P_TV, qc.P_TOK, qc.P_TOKDT]
        records = self._call(
            self._client.retrieve,
            schema.name,
            ids=ids,
            with_payload=selection,
            with_vectors=False if self._token_copy else [qc.TOKENS],
        )
        by_id = {str(r.id): r for r in records}
        no_copy = [i for i, r in by_id.items() if qc.P_TOK not in (r.payload or {}) and not r.vector]
        if no_copy:
            again = self._call(
                self._client.retrieve, schema.name, ids=no_copy, with_payload=selection, with_vectors=[qc.TOKENS]
            )
            by_id.update({str(r.id): r for r in again})
        code = copy_dtype(schema.dtype)
        row_bytes = RowFormat(code, schema.dim).row_bytes
        found, parts, lengths, units, versions = [], [], [], [], []
        for pid in ids:
            r = by_id.get(pid)
            if r is None:
                continue
            payload = r.payload or {}
            if qc.P_TOK in payload and payload.get(qc.P_TOKDT, "f4") == code:
                raw = base64.b64decode(payload[qc.P_TOK])
                part: Any = raw
                n = len(raw) // row_bytes
            elif qc.P_TOK in payload:
                part = decode_tokens(payload[qc.P_TOK], schema.dim, payload.get(qc.P_TOKDT, "f4"))
                n = part.shape[0]
            elif isinstance(r.vector, dict) and qc.TOKENS in r.vector:
                part = np.asarray(r.vector[qc.TOKENS], dtype=np.float32).reshape(-1, schema.dim)
                n = part.shape[0]
            else:
                continue  # deleted between the two reads
            found.append(pid)
            parts.append(part)
            lengths.append(n)
            units.append(units_from_json(payload.get(qc.P_UNITS, ())))
            versions.append(payload.get(qc.P_TV))
        offsets = np.zeros(len(found) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        present = set(found)
        return TokenBatch(
            tuple(found),
            tuple(i for i in ids if i not in present),
            join_tokens(parts, lengths, schema.dim, code),
            offsets,
            tuple(units),
            tuple(versions),
        )

    def _list_ids(self, schema: CollectionSchema, filter: Filter | None, limit: int, offset: str | None) -> IdPage:
        records, nxt = self._call(
            self._client.scroll,
            schema.name,
            scroll_filter=qc.translate_filter(filter, _DIALECT),
            limit=limit,
            offset=offset,
            with_payload=False,
            with_vectors=False,
        )
        return IdPage(tuple(str(r.id) for r in records), None if nxt is None else str(nxt))

    # ----- aliases (Qdrant's own: a server applies one change list atomically)

    def _aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self._call(self._client.get_aliases).aliases}

    def _set_alias(self, alias: str, collection: str, previous: str | None) -> None:
        ops: list[Any] = []
        if previous is not None:
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))
        )
        self._call(self._client.update_collection_aliases, change_aliases_operations=ops)

    def _delete_alias(self, alias: str) -> None:
        op = models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
        self._call(self._client.update_collection_aliases, change_aliases_operations=[op])

    def _close(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._client.close()


def _placement_of(server: bool, **given: int | None) -> dict[str, int]:
    """The placement arguments of ``create_collection``, checked (see the class docs)."""
    placement = _placement.counts(given)
    if placement and not server:
        _placement.refuse_embedded(placement, _placement.QDRANT, "qdrant-local", _placement.QDRANT_SERVER)
    writes, replicas = placement.get("write_consistency_factor", 1), placement.get("replication_factor")
    if writes > (replicas or 1):
        shown = replicas if replicas is not None else "1 (the default when not given)"
        raise InvalidInputError(
            f"write_consistency_factor={writes} exceeds replication_factor={shown}: a write cannot wait for more "
            "replicas of a shard than there are"
        )
    return placement


def _sparse(vector: SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=list(vector.indices), values=list(vector.values))


def _is_local(client: QdrantClient) -> bool:
    return type(getattr(client, "_client", None)).__name__ == "QdrantLocal"


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc) or repr(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."
