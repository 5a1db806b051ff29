"""The lexical first stage on Milvus: BM25 over sparse vectors, with the IDF applied
on the query side from document frequencies counted in the collection itself.

Milvus's own BM25 function is not used: its analyzer tokenises differently from the
collection's stated tokenisation (:class:`~agrame_vdb.lexical.LexicalSpec`), and one
tokenisation must serve documents and queries. So a passage row of a collection with
lexical vectors holds three more fields, written in the same upsert as the rest of it:

- ``lexical``, a SPARSE_FLOAT_VECTOR (SPARSE_INVERTED_INDEX, metric IP): the BM25
  term-frequency part of each term (:func:`agrame_vdb.lexical.document_vector`);
- ``lex_terms``, an ARRAY<INT64> of the same term ids (ids are in [0, 2**32 - 1),
  which INT64 holds), for document frequencies: ``count(*)`` where
  ``array_contains(lex_terms, t)`` (INVERTED index on a server >= 2.5; Milvus Lite
  indexes no ARRAY field);
- ``lex_n``, an INT64 with an INVERTED index: the number of terms.

A passage without words has ``lex_terms = []``, ``lex_n = 0`` and, since Milvus Lite
refuses an empty sparse vector (a server takes one from 2.4.12 on), the placeholder
sparse vector ``{NO_TERM: 1.0}``. It is in no ``lex_terms``, so no document frequency
counts it, nor does ``N`` (the passages with ``lex_n > 0``); a query holding the term
``NO_TERM`` itself searches with ``lex_n > 0`` added to its filter, so the
placeholder never scores.

A query with ``d`` distinct terms makes ``d + 3`` requests: ``N`` as all passages
(``count(*)`` without a filter, which Milvus Lite answers from its row count) less
those with ``lex_n == 0`` (a Lite count with a filter materialises every matching
row, so ``lex_n > 0`` would cost a read of the collection); one count per term (terms
in no passage are dropped); then the sparse search with values ``count * idf(df, N)``
(:func:`agrame_vdb.lexical.idf`, Qdrant's formula), the filter applied. The counts are
over the whole collection, not the filtered part, read at the repository's consistency
level (Session: this client's writes are seen); the requests are not one snapshot, so
a concurrent writer can move them apart (``df`` is clamped to ``N``). The array holds
at most :data:`MAX_TERMS` ids (a server's ARRAY ``max_capacity``): a passage with more
distinct words is refused before any write. On Milvus Lite each term count is a
Python scan of the collection that also materialises every passage holding the term,
so common query words cost most there; a server answers them from the array's index.

Hybrid: the library fuses the pooled and lexical branches (``hybrid_in_engine`` is
False). Milvus Lite's ``hybrid_search`` with ``RRFRanker(k)`` has the library's formula
(``1 / (k + rank)``, rank from 1) and filters each branch, but does not equal
:func:`agrame_vdb.fusion.rrf` of the two branches: it answers the fused score as
float32, and ranks a branch's tied hits in storage order where the candidates rank
them by id, so passages tied in BM25 score swap ranks (RRF scores off by up to ~5% on
the conformance corpus). Fusing in the engine would save one request of ``d + 4``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidInputError
from ...filters import Filter
from ...lexical import SparseVector, idf
from ...records import Candidate
from ...schema import CollectionSchema
from .._milvus_filter import to_expr
from .layout import F, MAX_TOPK, _hit_key
from .read import Reads

#: distinct terms per passage: the ARRAY max_capacity of a Milvus server
MAX_TERMS = 4096
#: the index of the placeholder sparse vector of a passage without words
NO_TERM = 0xFFFFFFFE
#: passages that have a word (those counted in N)
HAS_TERMS = f"{F.NTERMS} > 0"
#: passages without a word (their placeholder vector is not counted)
NO_TERMS = f"{F.NTERMS} == 0"


def sparse_index() -> dict[str, Any]:
    """The sparse vector's index: exact (the default drop ratios, 0), metric IP."""
    return {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "IP", "params": {}}


def lexical_fields(vector: SparseVector | None) -> dict[str, Any]:
    """The lexical fields of a passage row (``vector`` None: the passage has no word)."""
    if vector is None or not len(vector):
        return {F.TERMS: [], F.NTERMS: 0, F.LEX: {NO_TERM: 1.0}}
    return {F.TERMS: list(vector.indices), F.NTERMS: len(vector), F.LEX: vector.as_dict()}


def check_terms(pid: str, vector: SparseVector | None) -> None:
    if vector is not None and len(vector) > MAX_TERMS:
        raise InvalidInputError(
            f"passage {pid} has {len(vector)} distinct words; a Milvus passage with lexical vectors holds at "
            f"most {MAX_TERMS} (split the passage)"
        )


def _and(*exprs: str) -> str:
    parts = [e for e in exprs if e]
    return " and ".join(f"({e})" for e in parts)


class Lexical(Reads):
    """The lexical first stage (hybrid: the library's fusion of it and the pooled stage)."""

    def _count_where(self, schema: CollectionSchema, expr: str) -> int:
        res = self._read([schema.name], self._client.query, schema.name, filter=expr, output_fields=["count(*)"])
        return int(res[0]["count(*)"]) if res else 0

    def _lexical_statistics(self, schema: CollectionSchema, terms: tuple[int, ...]) -> tuple[int, list[int]]:
        """``N`` (passages with a word) and each term's document frequency."""
        n = self._count_where(schema, "") - self._count_where(schema, NO_TERMS)
        if n == 0:
            return 0, [0] * len(terms)
        return n, [min(n, self._count_where(schema, f"array_contains({F.TERMS}, {t})")) for t in terms]

    def _lexical_candidates(
        self, schema: CollectionSchema, query: SparseVector, limit: int, filter: Filter | None, *, versions: bool = False
    ) -> list[Candidate]:
        if limit > MAX_TOPK:
            raise InvalidInputError(f"Milvus returns at most {MAX_TOPK} hits per search; got limit {limit}")
        n, dfs = self._lexical_statistics(schema, query.indices)
        kept = [(t, v, df) for t, v, df in zip(query.indices, query.values, dfs) if df > 0]
        if not kept:
            return []
        weights = np.asarray([v for _, v, _ in kept]) * idf(np.asarray([df for _, _, df in kept]), n)
        data = {t: float(w) for (t, _, _), w in zip(kept, weights.tolist())}
        expr = _and(to_expr(filter), HAS_TERMS if NO_TERM in data else "")
        res = self._read(
            [schema.name],
            self._client.search,
            schema.name,
            data=[data],
            anns_field=F.LEX,
            limit=limit,
            filter=expr,
            output_fields=[F.ID],
            search_params={"metric_type": "IP", "params": {}},
        )
        hits = [(str(_hit_key(h, F.ID)), float(h["distance"])) for h in (res[0] if res else [])]
        hits = sorted((h for h in hits if h[1] > 0), key=lambda t: (-t[1], t[0]))
        return [Candidate(i, s, "lexical") for i, s in hits]
