"""What qdrant-client (server, local mode) and Qdrant Edge share: layout and payload.

Collection layout (one per agrame collection):

- named vector ``tokens``: the passage's token vectors as a multivector, Dot
  similarity with the MAX_SIM comparator, HNSW off (``m=0``): used only to rerank
  a prefetch, never searched by HNSW (building it costs minutes per thousand
  passages). Its storage follows the schema dtype and ``on_disk``: float16; int8
  is scalar quantization with rescoring on float32 originals (qdrant-client), or
  Turbo8 codes alone (Qdrant Edge, see ``qdrant_edge``); binary is 1-bit binary
  quantization with rescoring on float32 originals (qdrant-client) or Turbo8 codes
  (Qdrant Edge).
- named vector ``pooled``: Cosine, HNSW: the first stage.
- named sparse vector ``lexical`` (only in collections whose schema has
  ``lexical``): the passage's BM25 term-frequency weights
  (:func:`agrame_vdb.lexical.document_vector`) with Qdrant's ``Modifier.IDF``, so
  the engine weighs a query's term counts by IDF. A passage without a word has none.
- payload: ``doc_id``, ``passage_index``, ``text``, ``units`` (compact JSON),
  ``metadata`` (the user's JSON), ``schema_version``, ``n_tokens``,
  ``pooled_b64`` (the pooled vector's float32 bytes, so fetch returns it exactly
  and without engine vectors), and a binary copy of the token vectors so a fetch
  avoids per-float Python objects: in the payload (``tokens_b64`` and
  ``tokens_dtype``, qdrant-client) or in a side store whose rows are tied to the
  payload by ``tokens_version`` (Qdrant Edge, see ``_token_store``), both in the
  collection's form (``token_rows.STORAGE_CODES``, :mod:`agrame_vdb.token_rows`: float32,
  float16, int8 with a scale per token, sign bits and an int8 rerank copy). The engine's
  own vectors stay the source of truth for MaxSim. ``tokens_version`` is a new
  random stamp at every write, on both clients: the passage's write version
  (``TokenBatch.versions``, ``Candidate.version``).

Payload indexes: ``doc_id`` (keyword), ``passage_index`` (integer), and the
schema's ``indexed_fields`` under ``metadata.<field>``.

Filters are translated once, here, against a small dialect object each client
module supplies (the two Python APIs spell the same conditions differently).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..filters import And, Eq, Filter, In, Not, Or, Range
from ..records import Candidate, StoredPassage
from ..schema import CollectionSchema
from ..validation import BUILTIN_FIELDS
from ._codec import copy_dtype, decode_tokens, encode_tokens, units_from_json, units_to_json

TOKENS = "tokens"
POOLED = "pooled"
LEXICAL = "lexical"

P_DOC = "doc_id"
P_INDEX = "passage_index"
P_TEXT = "text"
P_UNITS = "units"
P_META = "metadata"
P_VERSION = "schema_version"
P_NTOK = "n_tokens"
P_TOK = "tokens_b64"
P_TOKDT = "tokens_dtype"
P_POOLED = "pooled_b64"
P_TV = "tokens_version"

#: the schema is stored under this key of the collection metadata (server, local)
META_KEY = "agrame"
#: HNSW of the pooled first-stage vector
POOLED_HNSW = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000}
SCALAR_QUANTILE = 0.99


def field_key(field: str) -> str:
    """The payload path of a filter field."""
    return field if field in BUILTIN_FIELDS else f"{P_META}.{field}"


def index_fields(schema: CollectionSchema, fields: dict[str, str] | None = None) -> dict[str, str]:
    """Payload path -> field type for the payload indexes to create."""
    wanted = schema.indexes if fields is None else fields
    return {field_key(f): t for f, t in wanted.items()}


def build_payload(
    p: StoredPassage, schema: CollectionSchema, *, token_copy: bool = False, version: int | None = None
) -> dict[str, Any]:
    """The payload of a point; ``token_copy`` adds base64 token bytes, ``version`` a side-store stamp."""
    payload: dict[str, Any] = {
        P_DOC: p.doc_id,
        P_INDEX: p.index,
        P_TEXT: p.text,
        P_UNITS: units_to_json(p.units),
        P_META: dict(p.metadata),
        P_VERSION: p.schema_version,
        P_NTOK: p.n_tokens,
        P_POOLED: encode_tokens(p.pooled, "f4"),
    }
    if token_copy:
        code = copy_dtype(schema.dtype)
        payload[P_TOK] = encode_tokens(p.tokens, code)
        payload[P_TOKDT] = code
    if version is not None:
        payload[P_TV] = version
    return payload


def vectors_as_lists(p: StoredPassage) -> dict[str, Any]:
    """Named vectors for a point; lists are faster than numpy for both clients."""
    return {TOKENS: p.tokens.tolist(), POOLED: p.pooled.tolist()}


def passage_from_record(
    pid: Any,
    payload: dict[str, Any],
    schema: CollectionSchema,
    vectors: dict[str, Any] | None = None,
    tokens: np.ndarray | None = None,
) -> StoredPassage:
    """A stored passage from an engine record.

    Token vectors come from ``tokens`` when given (a side store), else the payload's
    copy, else the engine's ``vectors``; the pooled vector from the payload's copy,
    else the engine's (which Cosine normalised).
    """
    if tokens is None:
        if P_TOK in payload:
            tokens = decode_tokens(payload[P_TOK], schema.dim, payload.get(P_TOKDT, "f4"))
        elif vectors and TOKENS in vectors:
            tokens = np.asarray(vectors[TOKENS], dtype=np.float32).reshape(-1, schema.dim)
        else:
            raise KeyError(f"point {pid} has no token vectors and no token copy")
    if P_POOLED in payload:
        pooled = decode_tokens(payload[P_POOLED], schema.dim, "f4").reshape(schema.dim)
    elif vectors and POOLED in vectors:
        pooled = np.asarray(vectors[POOLED], dtype=np.float32)
    else:
        raise KeyError(f"point {pid} has no pooled vector")
    return StoredPassage._trusted(
        str(pid),
        payload[P_DOC],
        payload[P_INDEX],
        tokens,
        pooled,
        units_from_json(payload.get(P_UNITS, ())),
        payload.get(P_TEXT, ""),
        payload.get(P_META) or {},
        payload.get(P_VERSION, schema.schema_version),
    )


class FilterDialect(Protocol):
    """How one client spells conditions; ``combine`` builds a (nested) filter."""

    def match_value(self, key: str, value: Any) -> Any: ...

    def match_any(self, key: str, values: list[Any]) -> Any: ...

    def range(self, key: str, gt: Any, gte: Any, lt: Any, lte: Any) -> Any: ...

    def combine(self, must: list[Any] | None = None, should: list[Any] | None = None, must_not: list[Any] | None = None) -> Any: ...


def translate_filter(f: Filter | None, d: FilterDialect) -> Any:
    """The client's filter object for ``f`` (None stays None)."""
    if f is None:
        return None
    if isinstance(f, And):
        return d.combine(must=[_condition(c, d) for c in f.filters])
    if isinstance(f, Or):
        return d.combine(should=[_condition(c, d) for c in f.filters])
    if isinstance(f, Not):
        return d.combine(must_not=[_condition(f.filter, d)])
    return d.combine(must=[_condition(f, d)])


def _condition(f: Filter, d: FilterDialect) -> Any:
    if isinstance(f, Eq):
        return d.match_value(field_key(f.field), f.value)
    if isinstance(f, In):
        return d.match_any(field_key(f.field), list(f.values))
    if isinstance(f, Range):
        return d.range(field_key(f.field), f.gt, f.gte, f.lt, f.lte)
    return translate_filter(f, d)


def candidates(points: Any, stage: str, versions: bool) -> list[Candidate]:
    """Candidates from a query's scored points, with each one's write version (the
    payload's ``tokens_version``) where ``versions`` asked for it."""
    return [Candidate(str(p.id), float(p.score), stage, (p.payload or {}).get(P_TV) if versions else None) for p in points]


def rrf_constant(k: int) -> int:
    """Qdrant's RRF constant for the library's ``k`` (:func:`agrame_vdb.fusion.rrf`): Qdrant
    scores a hit at position ``i`` (from 0) ``1 / (k' + i)``, the library at rank ``i + 1``
    ``1 / (k + i + 1)``, so ``k' = k + 1`` gives the same scores."""
    return k + 1
