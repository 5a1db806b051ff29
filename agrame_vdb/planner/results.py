"""What a search returns: ranked results, matched tokens, timings; all of it as JSON.

The records are plain frozen dataclasses; :func:`to_json` turns any of them into
JSON-native values with pydantic's serialiser (tuples become lists, read-only
mappings dicts), each field as its annotation says (timings in milliseconds
rounded to 3 places).

>>> Timings(encode_ms=1.23456, n_candidates=3).to_json()["encode_ms"]
1.235
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import PlainSerializer, TypeAdapter

from ..units import Span

__all__ = ["SearchResponse", "SearchResult", "Timings", "TokenMatch", "to_json"]


def _plain(value: Any) -> Any:
    """A JSON-native copy (read-only mappings become dicts)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


#: A mapping of JSON values (metadata), written as a plain dict.
JsonMapping = Annotated[Mapping[str, Any], PlainSerializer(_plain)]
#: A duration in milliseconds, written rounded to the microsecond.
Millis = Annotated[float, PlainSerializer(lambda ms: round(ms, 3))]


@functools.cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def to_json(record: Any, *, exclude: set[str] | None = None) -> dict[str, Any]:
    """A dataclass record as JSON-native values, its fields in their order (``exclude``: left out)."""
    return _adapter(type(record)).dump_python(record, mode="json", exclude=exclude)


@dataclass(frozen=True, slots=True)
class TokenMatch:
    """A passage token that some query tokens matched best (MaxSim's argmax).

    ``position`` is the row in the passage's token matrix, ``char_span`` its
    ``[start, end)`` characters in the passage text (None for ``[CLS]``, ``[D]``,
    ``[SEP]``, or when the passage cannot be re-tokenized to the stored length),
    ``query_tokens`` the indices of the query tokens whose max it is, with their
    token strings in ``query_texts``, and ``score`` the best of their similarities.
    """

    position: int
    char_span: Span | None
    query_tokens: tuple[int, ...]
    query_texts: tuple[str, ...]
    score: float

    def to_json(self) -> dict[str, Any]:
        return to_json(self)


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One ranked passage or unit.

    ``score`` is what the ranking sorts on: ``passage_score`` (``S(q,p)`` with
    ``[Q]``) at passage granularity, ``unit_score + alpha * passage_score`` for
    units (``unit_score`` is ``S(q',u)`` with ``[Q']``), plus ``coverage`` where the
    units are ranked with it: the term ``beta * W * C(u,q')`` (None, and left out of
    the JSON, where they are not). ``text`` is the unit's
    text (its spans joined by a space) or the passage text; ``char_spans`` are the
    half-open ``[start, end)`` offsets of the unit (or ``[(0, len)]`` for a passage)
    into ``passage_text``. ``first_stage_score`` is the candidate's score from the
    repository (cosine of pooled vectors, or the engine's MaxSim).
    """

    rank: int
    passage_id: str
    doc_id: str
    passage_index: int
    granularity: str
    unit_kind: str | None
    unit_index: int | None
    score: float
    passage_score: float
    unit_score: float | None
    alpha: float
    text: str
    char_spans: tuple[Span, ...]
    passage_text: str
    metadata: JsonMapping
    first_stage_score: float | None = None
    coverage: float | None = None
    matches: tuple[TokenMatch, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """Every field; ``coverage`` only where units are ranked with it, ``matches``
        only when they were asked for."""
        left_out = {name for name in ("coverage", "matches") if getattr(self, name) is None}
        return to_json(self, exclude=left_out or None)


@dataclass(frozen=True, slots=True)
class Timings:
    """Where one query's time went, in milliseconds.

    In a batch, ``encode_ms`` and ``fetch_ms`` are shared work divided by the batch
    size; ``total_ms`` is then the batch's wall time divided by its size.
    ``n_fetched`` counts passages read from the repository (candidates the cache
    missed, and result passages re-read fresh), ``cache_hits`` the candidates
    served by the cache.
    """

    encode_ms: Millis = 0.0
    candidates_ms: Millis = 0.0
    fetch_ms: Millis = 0.0
    rerank_ms: Millis = 0.0
    total_ms: Millis = 0.0
    n_candidates: int = 0
    n_fetched: int = 0
    cache_hits: int = 0
    first_stage: str = "pooled"
    batch_size: int = 1

    def to_json(self) -> dict[str, Any]:
        return to_json(self)


@dataclass(frozen=True, slots=True)
class SearchResponse:
    """The ranked results of one query, and its timings. Iterates over the results."""

    query: str | None
    granularity: str
    k: int
    results: tuple[SearchResult, ...]
    timings: Timings

    def __iter__(self) -> Iterator[SearchResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> SearchResult:
        return self.results[i]

    def to_json(self, *, timings: bool = True) -> dict[str, Any]:
        out = to_json(self, exclude={"results", "timings"})
        out["results"] = [r.to_json() for r in self.results]  # each leaves out matches not asked for
        if timings:
            out["timings"] = self.timings.to_json()
        return out
