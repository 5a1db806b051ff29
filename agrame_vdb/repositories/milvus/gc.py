"""Maintenance: ``optimize`` (flush, build indexes) and ``collect_garbage`` (token rows
no passage row reaches, left by a failed write or delete; it reads every token key,
so it is not part of ``optimize``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...schema import CollectionSchema
from .layout import _BLOCK_BITS, F, TOK, TOKENS_SUFFIX, _chunks
from .write import Writes


class Maintenance(Writes):
    """Flushing, index builds and garbage collection of token rows."""

    def _optimize(self, schema: CollectionSchema) -> None:
        names = self._names(schema)
        for n in names:
            self._call(self._client.flush, n, timeout=self._timeout)
        if self._lite:  # indexes of the flushed segments are built by load (retry-safe)
            for n in names:
                self._call(self._client.load_collection, n, timeout=self._timeout)

    def collect_garbage(self, collection: str) -> int:
        """Delete token rows no passage row reaches (left by failed writes); how many."""
        schema = self._schema(collection)
        if self._layout_of(schema) != "tokens":
            return 0
        with self._lock, self._engine("collect garbage", collection):
            tokens_name = schema.name + TOKENS_SUFFIX
            pks = self._all_values(tokens_name, [tokens_name], TOK.PK)
            if not len(pks):
                return 0
            spans: dict[int, tuple[int, int]] = {}
            for chunk in _chunks(sorted({int(p) >> _BLOCK_BITS for p in pks}), self._PK_CHUNK):
                expr = f"{F.PNUM} in [{', '.join(map(str, chunk))}]"
                for r in self._query(schema.name, [schema.name], expr, [F.PNUM, F.BASE, F.NTOK]):
                    spans[int(r[F.PNUM])] = (int(r[F.BASE]), int(r[F.NTOK]))
            bad = []
            for pk in pks.tolist():
                span = spans.get(pk >> _BLOCK_BITS)
                if span is None or not span[0] <= pk < span[0] + span[1]:
                    bad.append(pk)
            self._delete_ids(tokens_name, bad)
            return len(bad)

    def _all_values(self, name: str, load: Sequence[str], field: str) -> np.ndarray:
        """Every value of the INT64 primary key ``field``, by key windows (one query answers
        at most 16384 rows, and not necessarily the smallest keys)."""
        res = self._read(load, self._client.query, name, filter="", output_fields=["count(*)"])
        total = int(res[0]["count(*)"]) if res else 0
        out: list[int] = []
        top = 1 << 63
        lo = 0
        width = max(1, top // max(1, total) * max(1, self._QUERY_CAP // 2))
        while lo < top and total:
            hi = min(top, lo + width)
            expr = f"{field} >= {lo}" + (f" and {field} < {hi}" if hi < top else "")  # 2**63 is no int64
            rows = self._query(name, load, expr, [field], limit=self._QUERY_CAP)
            if len(rows) >= self._QUERY_CAP and width > 1:
                width = max(1, width // 4)  # too dense: a narrower window from the same start
                continue
            out.extend(int(r[field]) for r in rows)
            lo = hi
            width = width * 2 if len(rows) < self._QUERY_CAP // 4 else width
        return np.asarray(sorted(out), dtype=np.int64)
