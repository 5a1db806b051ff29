"""Reads: queries by id and by filter, counts, id pages, fetches (a passage row and
exactly the token rows it names), the pooled and token first stages, exact MaxSim."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import InvalidInputError, RepositoryError
from ...filters import Filter
from ...records import Candidate, IdPage, StoredPassage
from ...schema import CollectionSchema
from .._codec import units_from_json
from .._milvus_filter import TRUE, to_expr
from .base import MilvusBase
from .layout import _BLOCK_BITS, F, MAX_TOPK, _READ_FIELDS, TOK, TOKENS_SUFFIX, _chunks, _hit_key, _id_bound
from .request import _columns


class Reads(MilvusBase):
    """Everything that reads passages and token rows."""

    def _query(
        self, name: str, load: Sequence[str], expr: str, fields: list[str], limit: int | None = None
    ) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"filter": expr, "output_fields": fields}
        if limit is not None:
            kwargs["limit"] = limit
        return list(self._read(load, self._client.query, name, **kwargs))

    def _rows(self, schema: CollectionSchema, ids: list[str], fields: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for chunk in _chunks(ids, self._IN_CHUNK):
            expr = f"{F.ID} in [{', '.join(json.dumps(i) for i in chunk)}]"
            out.extend(self._query(schema.name, [schema.name], expr, fields))
        return out

    def _count(self, schema: CollectionSchema, filter: Filter | None) -> int:
        res = self._read([schema.name], self._client.query, schema.name, filter=to_expr(filter), output_fields=["count(*)"])
        return int(res[0]["count(*)"]) if res else 0

    def _search_params(self, index: str, metric: str, limit: int) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if index == "HNSW":
            params["ef"] = min(max(limit, 64), 32768)
        elif index == "IVF_FLAT":
            params["nprobe"] = 32
        return {"metric_type": metric, "params": params}

    def _pooled_search(self, schema: CollectionSchema, q: np.ndarray, limit: int, expr: str) -> list[Candidate]:
        if limit > MAX_TOPK:
            raise InvalidInputError(f"Milvus returns at most {MAX_TOPK} hits per search; got limit/prefetch {limit}")
        qn = (q.astype(np.float64) / np.linalg.norm(q)).astype(np.float32)
        res = self._read(
            [schema.name],
            self._client.search,
            schema.name,
            data=[qn.tolist()],
            anns_field=F.POOLED,
            limit=limit,
            filter=expr,
            output_fields=[F.ID],
            search_params=self._search_params(self._pooled_index, "COSINE", limit),
        )
        hits = [(str(_hit_key(h, F.ID)), float(h["distance"])) for h in (res[0] if res else [])]
        hits.sort(key=lambda t: (-t[1], t[0]))
        return [Candidate(i, s, "pooled") for i, s in hits]

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
        expr = to_expr(filter)
        if tokens is None:
            return self._pooled_search(schema, pooled, limit, expr)
        if limit > MAX_TOPK or prefetch > MAX_TOPK:
            raise InvalidInputError(f"Milvus returns at most {MAX_TOPK} hits per search; got limit {limit}, prefetch {prefetch}")
        if self._layout_of(schema) == "struct":
            first = self._pooled_search(schema, pooled, prefetch, expr)
            return self._engine_maxsim(schema, tokens, [c.id for c in first], limit)
        if self._first_stage == "tokens":
            ids = self._token_first_stage(schema, tokens, prefetch, expr)
            if len(ids) < limit:  # few token hits pass the filter: complete with the pooled stage
                ids += [c.id for c in self._pooled_search(schema, pooled, prefetch, expr) if c.id not in set(ids)]
        else:
            ids = [c.id for c in self._pooled_search(schema, pooled, prefetch, expr)]
        return self._rerank(schema, tokens, ids, limit)

    def _rerank(self, schema: CollectionSchema, qt: np.ndarray, ids: list[str], limit: int) -> list[Candidate]:
        """Exact MaxSim ``sum_i max_j q_i . d_j`` over the candidates' stored token vectors."""
        if not ids:
            return []
        found = self._read_passages(schema, ids, with_fields=False)
        order = [i for i in ids if i in found]
        if not order:
            return []
        mats = [found[i][1] for i in order]
        offsets = np.cumsum([0] + [m.shape[0] for m in mats[:-1]])
        sims = np.concatenate(mats).astype(np.float64) @ qt.astype(np.float64).T  # [sum n, Lq]
        scores = np.maximum.reduceat(sims, offsets, axis=0).sum(axis=1)
        ranked = sorted(zip(order, scores.tolist()), key=lambda t: (-t[1], t[0]))
        return [Candidate(i, float(s), "maxsim") for i, s in ranked[:limit]]

    def _engine_maxsim(self, schema: CollectionSchema, qt: np.ndarray, ids: list[str], limit: int) -> list[Candidate]:
        """The server's MAX_SIM_IP over the Array-of-Structs field, restricted to ``ids``."""
        if not ids:
            return []
        from pymilvus.client.embedding_list import EmbeddingList

        expr = f"{F.ID} in [{', '.join(json.dumps(i) for i in ids)}]"
        res = self._read(
            [schema.name],
            self._client.search,
            schema.name,
            data=[EmbeddingList(np.ascontiguousarray(qt, dtype=np.float32))],
            anns_field=F.STRUCT_ANNS,
            limit=min(limit, len(ids)),
            filter=expr,
            output_fields=[F.ID],
            search_params={"metric_type": "MAX_SIM_IP", "params": {"ef": min(max(len(ids), 64), 32768)}},
        )
        hits = [(str(_hit_key(h, F.ID)), float(h["distance"])) for h in (res[0] if res else [])]
        hits.sort(key=lambda t: (-t[1], t[0]))
        return [Candidate(i, s, "maxsim") for i, s in hits]

    def _token_first_stage(self, schema: CollectionSchema, qt: np.ndarray, prefetch: int, expr: str) -> list[str]:
        """colbert-live: ANN per query token, hits aggregated per passage (sum of per-token maxima)."""
        tokens_name = schema.name + TOKENS_SUFFIX
        k = min(MAX_TOPK, max(self._token_k, 1))
        res = self._read(
            [tokens_name],
            self._client.search,
            tokens_name,
            data=[np.ascontiguousarray(v, dtype=np.float32).tolist() for v in qt],
            anns_field=TOK.VEC,
            limit=k,
            output_fields=[],
            search_params=self._search_params(self._token_index, "IP", k),
        )
        hits: list[list[tuple[int, float]]] = [[(int(_hit_key(h, TOK.PK)), float(h["distance"])) for h in row] for row in res]
        pnums = sorted({pk >> _BLOCK_BITS for row in hits for pk, _ in row})
        if not pnums:
            return []
        owners: dict[int, tuple[str, int, int]] = {}
        for chunk in _chunks(pnums, self._PK_CHUNK):
            where = f"{F.PNUM} in [{', '.join(map(str, chunk))}]"
            if expr:
                where = f"({where}) and {expr}"
            for r in self._query(schema.name, [schema.name], where, [F.ID, F.PNUM, F.BASE, F.NTOK]):
                owners[r[F.PNUM]] = (r[F.ID], r[F.BASE], r[F.NTOK])
        best: dict[str, np.ndarray] = {}
        floor = np.zeros(len(hits))
        for qi, row in enumerate(hits):
            valid = []
            for pk, score in row:
                owner = owners.get(pk >> _BLOCK_BITS)
                if owner is None or not owner[1] <= pk < owner[1] + owner[2]:
                    continue  # filtered out, or not a current token row
                valid.append(score)
                arr = best.setdefault(owner[0], np.full(len(hits), np.nan))
                if np.isnan(arr[qi]) or score > arr[qi]:
                    arr[qi] = score
            floor[qi] = min(valid) if valid else 0.0
        approx = {pid: float(np.where(np.isnan(a), floor, a).sum()) for pid, a in best.items()}
        return [pid for pid, _ in sorted(approx.items(), key=lambda t: (-t[1], t[0]))[:prefetch]]

    def _read_passages(
        self, schema: CollectionSchema, ids: list[str], *, with_fields: bool
    ) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
        """Rows and token matrices of the stored ``ids`` (re-reading rows a concurrent write moved)."""
        fields = _READ_FIELDS if with_fields else [F.ID, F.BASE, F.NTOK]
        struct = self._layout_of(schema) == "struct"
        if struct:
            fields = [*fields, F.STRUCT]
        out: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
        todo = ids
        for _attempt in range(4):
            rows = self._rows(schema, todo, fields)
            if struct:
                for r in rows:
                    mat = np.asarray([e[F.SVEC] for e in r[F.STRUCT]], dtype=np.float32).reshape(-1, schema.dim)
                    out[r[F.ID]] = (r, mat)
                return out
            spans = {r[F.ID]: (int(r[F.BASE]), int(r[F.NTOK])) for r in rows}
            mats, short = self._read_tokens(schema, spans)
            for r in rows:
                if r[F.ID] not in short:
                    out[r[F.ID]] = (r, mats[r[F.ID]])
            if not short:
                return out
            todo = sorted(short)
        raise RepositoryError(
            f"token rows of {len(todo)} passages of {schema.name!r} kept changing while being read "
            "(concurrent rewrites?); try again"
        )

    def _read_tokens(
        self, schema: CollectionSchema, spans: dict[str, tuple[int, int]]
    ) -> tuple[dict[str, np.ndarray], set[str]]:
        """Token matrices by id, in token order, and the ids whose rows were not all there."""
        if not spans:
            return {}, set()
        tokens_name = schema.name + TOKENS_SUFFIX
        order = list(spans)
        total = sum(n for _, n in spans.values())
        wanted = np.empty(total, dtype=np.int64)
        pos = 0
        for pid in order:
            base, n = spans[pid]
            wanted[pos : pos + n] = np.arange(base, base + n, dtype=np.int64)
            pos += n
        sort = np.argsort(wanted, kind="stable")
        keys = wanted[sort]
        vecs = np.zeros((total, schema.dim), dtype=np.float32)
        seen = np.zeros(total, dtype=bool)
        per = max(1, min(self._PK_CHUNK, self._REQUEST_BYTES // (schema.dim * 4 + 16)))
        for start in range(0, total, per):
            chunk = keys[start : start + per]
            expr = f"{TOK.PK} in [{', '.join(map(str, chunk.tolist()))}]"
            res = self._read([tokens_name], self._client.query, tokens_name, filter=expr, output_fields=[TOK.PK, TOK.VEC])
            pks, mat = _columns(res, TOK.PK, TOK.VEC, schema.dim)
            if not len(pks):
                continue
            at = np.searchsorted(keys, pks)
            ok = (at < total) & (keys[np.minimum(at, total - 1)] == pks)
            vecs[sort[at[ok]]] = mat[ok]
            seen[sort[at[ok]]] = True
        out: dict[str, np.ndarray] = {}
        short: set[str] = set()
        pos = 0
        for pid in order:
            n = spans[pid][1]
            if not seen[pos : pos + n].all():
                short.add(pid)
            else:
                m = vecs[pos : pos + n]
                m.setflags(write=False)
                out[pid] = m
            pos += n
        return out, short

    def _fetch(self, schema: CollectionSchema, ids: list[str]) -> dict[str, StoredPassage]:
        found = self._read_passages(schema, ids, with_fields=True)
        out = {}
        for pid, (r, tokens) in found.items():
            pooled = np.asarray(r[F.POOLED], dtype=np.float32)
            pooled.setflags(write=False)
            out[pid] = StoredPassage._trusted(
                pid,
                r[F.DOC],
                int(r[F.INDEX]),
                tokens,
                pooled,
                units_from_json(json.loads(r[F.UNITS])) if r[F.UNITS] else (),
                r[F.TEXT],
                r[F.META] or {},
                int(r[F.VERSION]),
            )
        return out

    def _list_ids(self, schema: CollectionSchema, filter: Filter | None, limit: int, offset: str | None) -> IdPage:
        """Ids in id order, by windows of the id space (ids are near-uniform UUIDs)."""
        total = self._count(schema, filter)
        if total == 0:
            return IdPage(())
        expr = to_expr(filter)
        want = limit + 1
        space = 1 << 48
        lo = 0 if offset is None else int(offset.replace("-", "")[:12], 16)
        width = max(1, space * min(2 * want, 8000) // total)
        cur = offset
        got: list[str] = []
        while True:
            hi = lo + width
            bound = None if hi >= space else _id_bound(hi)
            conds = [f'({F.ID} >= "{cur}")'] if cur is not None else []
            if bound is not None:
                conds.append(f'({F.ID} < "{bound}")')
            if expr:
                conds.append(expr)
            rows = self._query(schema.name, [schema.name], " and ".join(conds) or TRUE, [F.ID], limit=self._QUERY_CAP)
            if len(rows) >= self._QUERY_CAP and width > 1:
                width = max(1, width // 4)  # too dense: a narrower window from the same start
                continue
            got.extend(r[F.ID] for r in rows)
            if len(got) >= want or bound is None:
                break
            cur, lo = bound, hi
            width *= 2
        got.sort()
        return IdPage(tuple(got[:limit]), got[limit] if len(got) > limit else None)
