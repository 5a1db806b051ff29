"""The exact, numpy-backed repository: the reference every engine is tested against.

First stage: exact cosine of pooled vectors; exact BM25 of the lexical vectors
(:class:`~agrame_vdb.lexical.LexicalIndex`, IDF over the whole collection); hybrid
fuses the two in the library. Rerank: exact MaxSim
``sum_i max_j q_i . d_j`` over the stored token vectors. Filters follow Qdrant's
payload semantics (see :class:`~agrame_vdb.filters.Filter`). float16
collections store float16-rounded token vectors; int8 ones keep float32 (as the
engines keep their originals for rescoring). Binary collections keep each passage's
``b1`` rows (:mod:`agrame_vdb.token_rows`: sign bits and an int8 rerank copy), which
``fetch_tokens`` hands over unexpanded, and the int8 copy's values as the passage's
token vectors (what ``fetch`` returns; the engine's MaxSim scores them). Aliases are
a dict, replaced whole on each change. Nothing persists.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..filters import And, Eq, Filter, In, Not, Or, Range
from ..lexical import LexicalIndex, SparseVector
from ..records import Candidate, Capabilities, IdPage, StoredPassage, TokenBatch
from ..schema import CollectionSchema
from ..token_rows import I8_ATOL, RowFormat
from . import StoreURL
from .base import RepositoryBase

__all__ = ["MemoryRepository", "from_url", "matches"]

_MISSING = object()


def from_url(url: StoreURL, **options: Any) -> MemoryRepository:
    if url.location or options:
        from ..errors import InvalidInputError

        raise InvalidInputError(f"memory:// takes no path or options, got {url.shown!r}")
    return MemoryRepository()


class _Collection:
    def __init__(self, schema: CollectionSchema) -> None:
        self.schema = schema
        self.rows: dict[str, StoredPassage] = {}
        self.versions: dict[str, int] = {}  # a random stamp per write, as Qdrant's
        self.encoded: dict[str, np.ndarray] = {}  # binary collections: each passage's b1 row bytes
        self.lexical = LexicalIndex()
        self._matrix: tuple[list[str], np.ndarray] | None = None

    def changed(self) -> None:
        self._matrix = None

    def pooled_matrix(self) -> tuple[list[str], np.ndarray]:
        if self._matrix is None:
            ids = sorted(self.rows)
            if ids:
                m = np.stack([self.rows[i].pooled for i in ids]).astype(np.float64)
                m /= np.linalg.norm(m, axis=1, keepdims=True)
            else:
                m = np.zeros((0, self.schema.dim))
            self._matrix = (ids, m)
        return self._matrix


class MemoryRepository(RepositoryBase):
    """Collections in a dict; exact scores; the conformance reference."""

    engine = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._collections: dict[str, _Collection] = {}
        self._alias_table: dict[str, str] = {}

    def _capabilities(self) -> Capabilities:
        return Capabilities(
            engine=self.engine,
            maxsim_rerank=True,
            dtypes=frozenset(("float32", "float16", "int8", "binary")),
            storage_options_honoured=False,
            persistent=False,
            exclusive=False,
            filter_ops=frozenset(("eq", "in", "range", "and", "or", "not")),
            fetch_atol={"float32": 0.0, "float16": 1e-3, "int8": 0.0, "binary": I8_ATOL},
            versions=True,
            lexical=True,
        )

    def _load_schema(self, name: str) -> CollectionSchema | None:
        c = self._collections.get(name)
        return None if c is None else c.schema

    def _create(self, schema: CollectionSchema) -> None:
        self._collections[schema.name] = _Collection(schema)

    def _add_indexes(self, schema: CollectionSchema, new_fields: dict[str, str]) -> None:
        self._collections[schema.name].schema = schema

    def _list_collections(self) -> list[str]:
        return list(self._collections)

    def _drop(self, name: str) -> bool:
        return self._collections.pop(name, None) is not None

    def _upsert(self, schema: CollectionSchema, passages: Sequence[StoredPassage]) -> None:
        c = self._collections[schema.name]
        binary = RowFormat("b1", schema.dim) if schema.dtype == "binary" else None
        for p in passages:
            if binary is not None:
                row = np.frombuffer(binary.encode(p.tokens), dtype=np.uint8)
                c.encoded[p.id] = row
                tokens = binary.expand([row])
            elif schema.dtype == "float16":
                tokens = p.tokens.astype(np.float16).astype(np.float32)
            else:
                tokens = p.tokens.copy()
            pooled = p.pooled.copy()
            tokens.setflags(write=False)
            pooled.setflags(write=False)
            c.rows[p.id] = StoredPassage._trusted(
                p.id,
                p.doc_id,
                p.index,
                tokens,
                pooled,
                p.units,
                p.text,
                json.loads(json.dumps(dict(p.metadata))),
                p.schema_version,
            )
            c.versions[p.id] = secrets.randbits(63)
            vector = self._lexical_vector(schema, p)
            if vector is None:
                c.lexical.remove(p.id)
            else:
                c.lexical.add(p.id, vector)
        c.changed()

    def _delete(self, schema: CollectionSchema, ids: list[str]) -> None:
        c = self._collections[schema.name]
        for i in ids:
            c.rows.pop(i, None)
            c.versions.pop(i, None)
            c.encoded.pop(i, None)
            c.lexical.remove(i)
        c.changed()

    def _delete_where(self, schema: CollectionSchema, filter: Filter) -> None:
        c = self._collections[schema.name]
        for i in [i for i, p in c.rows.items() if matches(filter, p)]:
            del c.rows[i]
            c.versions.pop(i, None)
            c.encoded.pop(i, None)
            c.lexical.remove(i)
        c.changed()

    def _count(self, schema: CollectionSchema, filter: Filter | None) -> int:
        rows = self._collections[schema.name].rows
        if filter is None:
            return len(rows)
        return sum(1 for p in rows.values() if matches(filter, p))

    def _candidates(
        self,
        schema: CollectionSchema,
        pooled: np.ndarray,
        tokens: np.ndarray | None,
        limit: int,
        prefetch: int,
        filter: Filter | None,
        *,
        versions: bool = False,  # no version stamps on candidates: Candidate.version stays None
    ) -> list[Candidate]:
        c = self._collections[schema.name]
        ids, matrix = c.pooled_matrix()
        if not ids:
            return []
        q = pooled.astype(np.float64)
        scores = matrix @ (q / np.linalg.norm(q))
        keep = np.arange(len(ids))
        if filter is not None:
            keep = np.array([k for k in keep if matches(filter, c.rows[ids[k]])], dtype=np.int64)
        order = sorted(keep.tolist(), key=lambda k: (-scores[k], ids[k]))
        if tokens is None:  # versions are at hand: always given
            return [Candidate(ids[k], float(scores[k]), "pooled", c.versions.get(ids[k])) for k in order[:limit]]
        first = [ids[k] for k in order[:prefetch]]
        qt = tokens.astype(np.float64)
        reranked = [(float((qt @ c.rows[i].tokens.T.astype(np.float64)).max(axis=1).sum()), i) for i in first]
        reranked.sort(key=lambda t: (-t[0], t[1]))
        return [Candidate(i, s, "maxsim", c.versions.get(i)) for s, i in reranked[:limit]]

    def _lexical_candidates(
        self, schema: CollectionSchema, query: SparseVector, limit: int, filter: Filter | None, *, versions: bool = False
    ) -> list[Candidate]:
        c = self._collections[schema.name]
        scores = c.lexical.scores(query)
        keep = [i for i in scores if filter is None or matches(filter, c.rows[i])]
        keep.sort(key=lambda i: (-scores[i], i))
        return [Candidate(i, scores[i], "lexical", c.versions.get(i)) for i in keep[:limit]]

    def _fetch(self, schema: CollectionSchema, ids: list[str]) -> dict[str, StoredPassage]:
        rows = self._collections[schema.name].rows
        return {i: rows[i] for i in ids if i in rows}

    def _fetch_tokens(self, schema: CollectionSchema, ids: list[str], versions: Any = None) -> TokenBatch:
        c = self._collections[schema.name]
        found = [c.rows[i] for i in ids if i in c.rows]
        missing = tuple(i for i in ids if i not in c.rows)
        versions = [c.versions.get(p.id) for p in found]
        if schema.dtype == "binary" and found:  # the rows as stored: sign bits, int8 rerank rows
            encoded = RowFormat("b1", schema.dim).encoded([c.encoded[p.id] for p in found])
            return TokenBatch(
                tuple(p.id for p in found), missing, encoded, encoded.offsets, tuple(p.units for p in found), tuple(versions)
            )
        return TokenBatch.from_passages(found, missing, dim=schema.dim, versions=versions)

    def _list_ids(self, schema: CollectionSchema, filter: Filter | None, limit: int, offset: str | None) -> IdPage:
        rows = self._collections[schema.name].rows
        ids = sorted(i for i, p in rows.items() if (offset is None or i >= offset) and (filter is None or matches(filter, p)))
        return IdPage(tuple(ids[:limit]), ids[limit] if len(ids) > limit else None)

    def _close(self) -> None:
        self._collections.clear()

    def _aliases(self) -> dict[str, str]:
        return self._alias_table

    def _set_alias(self, alias: str, collection: str, previous: str | None) -> None:
        self._alias_table = {**self._alias_table, alias: collection}  # readers see one table or the other

    def _delete_alias(self, alias: str) -> None:
        self._alias_table = {a: c for a, c in self._alias_table.items() if a != alias}


# --------------------------------------------------------------------------- filters


def _values(p: StoredPassage, field: str) -> list[Any]:
    if field == "doc_id":
        return [p.doc_id]
    if field == "passage_index":
        return [p.index]
    node: Any = p.metadata
    for part in field.split("."):
        if not isinstance(node, dict) and not hasattr(node, "keys"):
            return []
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return []
    if node is None:
        return []
    return [v for v in node if v is not None] if isinstance(node, list) else [node]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return isinstance(a, str) and isinstance(b, str) and a == b


def _in_range(v: Any, r: Range) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return (
        (r.gt is None or v > r.gt)
        and (r.gte is None or v >= r.gte)
        and (r.lt is None or v < r.lt)
        and (r.lte is None or v <= r.lte)
    )


def matches(f: Filter, p: StoredPassage) -> bool:
    """Whether passage ``p`` matches filter ``f`` (the reference semantics)."""
    if isinstance(f, Eq):
        return any(_same(v, f.value) for v in _values(p, f.field))
    if isinstance(f, In):
        return any(_same(v, x) for v in _values(p, f.field) for x in f.values)
    if isinstance(f, Range):
        return any(_in_range(v, f) for v in _values(p, f.field))
    if isinstance(f, And):
        return all(matches(c, p) for c in f.filters)
    if isinstance(f, Or):
        return any(matches(c, p) for c in f.filters)
    if isinstance(f, Not):
        return not matches(f.filter, p)
    raise TypeError(f"unknown filter {f!r}")
