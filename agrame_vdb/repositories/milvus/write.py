"""Writes: the two-generation upsert (token rows of the other generation, then the
passage row as the commit marker, then the old generation removed) and deletes
(passage rows first, then their token rows)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import RepositoryError
from ...filters import Filter
from ...records import StoredPassage
from ..base import RepositoryBase
from ...schema import CollectionSchema
from .._milvus_filter import filter_document, to_expr
from .layout import (
    _BLOCK_BITS,
    F,
    MAX_TOKENS,
    _PNUM_ATTEMPTS,
    STRUCT_MAX_TOKENS,
    TOK,
    TOKEN_BITS,
    TOKENS_SUFFIX,
    _check_limits,
    _chunks,
    pnum_candidates,
    _row_bytes,
    token_pk,
    _units_json,
)
from .lexical import Lexical, check_terms, lexical_fields
from .request import _handler, _token_upsert_request


class Writes(Lexical):
    """Upserts and deletes (reads the rows a write replaces)."""

    def _check_passage(self, p: Any, schema: CollectionSchema, versions: frozenset[int] | None = None) -> None:  # type: ignore[override]
        """The shared checks, then a Milvus server's limits (run for every passage before any write)."""
        RepositoryBase._check_passage(p, schema, versions)
        _check_limits(p, STRUCT_MAX_TOKENS if self._layout_of(schema) == "struct" else MAX_TOKENS)
        check_terms(p.id, self._lexical_vector(schema, p))

    def _step(self, name: str) -> None:
        if self._checkpoint is not None:
            self._checkpoint(name)

    def _upsert(self, schema: CollectionSchema, passages: Sequence[StoredPassage]) -> None:
        if self._layout_of(schema) == "struct":
            rows = [self._passage_row(schema, p, 0, 0) | {F.STRUCT: [{F.SVEC: v} for v in p.tokens.tolist()]} for p in passages]
            self._write_rows(schema.name, rows, [_row_bytes(r, schema.dim, p.n_tokens + 1) for r, p in zip(rows, passages)])
            return
        tokens_name = schema.name + TOKENS_SUFFIX
        ids = [p.id for p in passages]
        old = {r[F.ID]: (r[F.PNUM], r[F.BASE]) for r in self._rows(schema, ids, [F.ID, F.PNUM, F.BASE])}
        pnums = self._allocate(schema, [i for i in ids if i not in old], {v[0] for v in old.values()})
        plan = []
        for p in passages:
            if p.id in old:
                pnum, base = old[p.id]
                gen = 1 - ((base >> TOKEN_BITS) & 1)
            else:
                pnum, gen = pnums[p.id], 0
            plan.append((p, pnum, token_pk(pnum, gen, 0)))
        # 1. token rows of the new generation: invisible until their passage row names them
        self._write_tokens(tokens_name, schema.dim, plan)
        self._step("tokens-written")
        # 2. passage rows: the commit markers
        rows = [self._passage_row(schema, p, pnum, base) for p, pnum, base in plan]
        self._write_rows(schema.name, rows, [_row_bytes(r, schema.dim, 1) for r in rows])
        self._step("passages-written")
        # 3. everything else in the key block of each rewritten passage: the old generation
        # and stale tails (a new passage's block holds rows only after a failed write:
        # unreachable, and removed by collect_garbage)
        ranges = []
        for p, pnum, base in plan:
            if p.id not in old:
                continue
            block = pnum << _BLOCK_BITS
            if base > block:
                ranges.append((block, base))
            ranges.append((base + p.n_tokens, block + (1 << _BLOCK_BITS)))
        for chunk in _chunks(ranges, 200):
            self._delete_expr(tokens_name, " or ".join(f"({TOK.PK} >= {a} and {TOK.PK} < {b})" for a, b in chunk))
        self._step("cleaned")

    def _passage_row(self, schema: CollectionSchema, p: StoredPassage, pnum: int, base: int) -> dict[str, Any]:
        """A passage row; in a collection with lexical vectors, with them (:mod:`.lexical`)."""
        row = {
            F.ID: p.id,
            F.PNUM: pnum,
            F.BASE: base,
            F.NTOK: p.n_tokens,
            F.DOC: p.doc_id,
            F.INDEX: p.index,
            F.TEXT: p.text,
            F.UNITS: _units_json(p),
            F.META: dict(p.metadata),
            F.FX: filter_document(p.doc_id, p.index, p.metadata),
            F.VERSION: p.schema_version,
            F.POOLED: p.pooled,
        }
        if schema.lexical is not None:
            row |= lexical_fields(self._lexical_vector(schema, p))
        return row

    def _write_tokens(self, name: str, dim: int, plan: list[tuple[StoredPassage, int, int]]) -> None:
        pks = np.concatenate([np.arange(base, base + p.n_tokens, dtype=np.int64) for p, _, base in plan])
        pnums = np.concatenate([np.full(p.n_tokens, pnum, dtype=np.int64) for p, pnum, _ in plan])
        vecs = np.concatenate([p.tokens for p, _, _ in plan]).astype("<f4", copy=False)
        per_call = max(1, min(20_000, self._REQUEST_BYTES // (dim * 4 + 16)))
        conn = _handler(self._client)
        for start in range(0, len(pks), per_call):
            sl = slice(start, start + per_call)
            if conn is None:  # pymilvus without the handler: row dicts (slower)
                rows = [{TOK.PK: int(k), TOK.PNUM: int(n), TOK.VEC: v.tolist()} for k, n, v in zip(pks[sl], pnums[sl], vecs[sl])]
                self._call(self._client.upsert, name, rows, timeout=self._timeout)
                continue
            request = _token_upsert_request(name, pks[sl], pnums[sl], vecs[sl])
            self._call(conn.upsert, name, [], upsert_param=request, schema={"fields": []}, timeout=self._timeout)

    def _write_rows(self, name: str, rows: list[dict[str, Any]], sizes: list[int]) -> None:
        """Upsert row dicts, in requests of at most ``_REQUEST_BYTES`` (estimated)."""
        start, total = 0, 0
        for i, size in enumerate(sizes):
            if i > start and total + size > self._REQUEST_BYTES:
                self._call(self._client.upsert, name, rows[start:i], timeout=self._timeout)
                start, total = i, 0
            total += size
        if start < len(rows):
            self._call(self._client.upsert, name, rows[start:], timeout=self._timeout)

    def _allocate(self, schema: CollectionSchema, new_ids: list[str], taken_here: set[int]) -> dict[str, int]:
        """Passage numbers for ids without a row: the first free candidate of each."""
        out: dict[str, int] = {}
        gens = {i: iter(pnum_candidates(i)) for i in new_ids}
        want = {i: next(gens[i]) for i in new_ids}
        used = set(taken_here)
        while want:
            owners = {}
            for chunk in _chunks(sorted(set(want.values())), self._PK_CHUNK):
                expr = f"{F.PNUM} in [{', '.join(map(str, chunk))}]"
                for r in self._query(schema.name, [schema.name], expr, [F.ID, F.PNUM]):
                    owners[r[F.PNUM]] = r[F.ID]
            retry = {}
            for pid, num in sorted(want.items()):
                if num in used or num in owners:
                    try:
                        retry[pid] = next(gens[pid])
                    except StopIteration:  # pragma: no cover - 64 collisions in a row
                        raise RepositoryError(f"no free passage number for {pid} after {_PNUM_ATTEMPTS} tries") from None
                else:
                    out[pid] = num
                    used.add(num)
            want = retry
        return out

    def _delete_ids(self, name: str, ids: list[Any]) -> None:
        for chunk in _chunks(ids, self._IN_CHUNK if ids and isinstance(ids[0], str) else self._PK_CHUNK):
            self._deleted_at[name] = time.monotonic()
            self._call(self._client.delete, name, ids=chunk, timeout=self._timeout)
        self._deleted_at[name] = time.monotonic()

    def _delete_expr(self, name: str, expr: str) -> None:
        self._deleted_at[name] = time.monotonic()
        self._read([name], self._client.delete, name, filter=expr, write=True)
        self._deleted_at[name] = time.monotonic()

    def _delete(self, schema: CollectionSchema, ids: list[str]) -> None:
        if self._layout_of(schema) == "struct":
            self._delete_ids(schema.name, ids)
            return
        rows = self._rows(schema, ids, [F.ID, F.PNUM])
        self._delete_rows(schema, [(r[F.ID], r[F.PNUM]) for r in rows])

    def _delete_rows(self, schema: CollectionSchema, rows: list[tuple[str, int]]) -> None:
        if not rows:
            return
        self._delete_ids(schema.name, [i for i, _ in rows])  # passage rows first: invisible from here
        self._step("passages-deleted")
        tokens_name = schema.name + TOKENS_SUFFIX
        for chunk in _chunks(sorted({n for _, n in rows}), self._PK_CHUNK):
            self._delete_expr(tokens_name, f"{TOK.PNUM} in [{', '.join(map(str, chunk))}]")

    def _delete_where(self, schema: CollectionSchema, filter: Filter) -> None:
        expr = to_expr(filter)
        while True:
            rows = self._query(schema.name, [schema.name], expr, [F.ID, F.PNUM], limit=self._QUERY_CAP)
            if not rows:
                return
            if self._layout_of(schema) == "struct":
                self._delete_ids(schema.name, [r[F.ID] for r in rows])
            else:
                self._delete_rows(schema, [(r[F.ID], r[F.PNUM]) for r in rows])
            if len(rows) < self._QUERY_CAP:
                return
