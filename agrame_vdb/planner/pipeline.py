"""One search from encoded queries to responses: candidates → token vectors → rerank →
the top ``k`` read whole and checked against what was scored (a passage rewritten
between the two reads is scored again)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..repository import Candidate, StoredPassage
from ..units import Span
from .cache import Entry
from .explain import Explainer
from .fetch import Loaded, Reader
from .plan import Plan, pool_query
from .rank import RankedRow, Scorer
from .results import SearchResponse, SearchResult, Timings

__all__ = ["Pipeline"]


class Pipeline:
    """The steps of a planner's searches over its ``reader``; ``score_atol`` is how far
    an engine's MaxSim may be from ours before a cached passage is read again."""

    def __init__(self, reader: Reader, scorer: Scorer, explainer: Explainer, score_atol: float) -> None:
        self.reader = reader
        self.scorer = scorer
        self.explainer = explainer
        self.score_atol = score_atol

    def run(
        self,
        plan: Plan,
        texts: Sequence[str | None],
        q: np.ndarray,
        sq: np.ndarray | None,
        start: float,
        encode_s: float,
        lexical_texts: Sequence[str | None] | None = None,
    ) -> list[SearchResponse]:
        """Responses to the queries ``q`` ``[B, Lq, dim]`` (``sq``: their ``[Q']``
        vectors), one fetch for the union of their candidates. ``start`` is when the
        search began (``time.perf_counter``), ``encode_s`` the seconds encoding took;
        ``lexical_texts`` what a lexical or hybrid first stage searches (default ``texts``)."""
        reader = self.reader
        n = len(texts)
        words = texts if lexical_texts is None else lexical_texts
        cand_s = [0.0] * n
        all_cands: list[list[Candidate]] = []
        pooled = [pool_query(q[b]) for b in range(n)]
        for b in range(n):
            t = time.perf_counter()
            all_cands.append(reader.candidates(plan, pooled[b], q[b], words[b]))
            cand_s[b] = time.perf_counter() - t
        fetch_s = 0.0
        rerank_s = [0.0] * n
        carry: dict[str, Entry] = {}
        fresh: dict[str, StoredPassage] = {}
        read: set[str] = set()
        for attempt in range(2):
            t = time.perf_counter()
            union = list(dict.fromkeys(c.id for cands in all_cands for c in cands))
            loaded = reader.lookup(plan, union, all_cands, pooled, carry, fresh, read)
            # at the versions the candidates saw; a passage found stale is read afresh
            seen = {c.id: c.version for cands in all_cands for c in cands} if attempt == 0 else {}
            reader.load_missing(plan, loaded, seen)
            fetch_s += time.perf_counter() - t
            ranked = []
            for b in range(n):
                t = time.perf_counter()
                ranked.append(self.scorer.rank(plan, all_cands[b], loaded, q[b], sq[b] if sq is not None else None))
                rerank_s[b] += time.perf_counter() - t
            # the result passages, read whole (they carry text and metadata)
            t = time.perf_counter()
            winners = list(dict.fromkeys(r.passage_id for rows in ranked for r in rows if r.passage_id not in loaded.fresh))
            if winners:
                more = reader.fresh(plan, winners)
                loaded.fresh.update(more)
                loaded.read.update(more)
            fetch_s += time.perf_counter() - t
            stale = set(reader.stale(ranked, loaded, self.score_atol))
            if not stale:
                break
            if reader.cache is not None:
                reader.cache.reject(plan.collection, sorted(stale))
            if attempt == 1:  # rewritten again meanwhile: never a score of other vectors than shown
                ranked = [[r for r in rows if r.passage_id not in stale] for rows in ranked]
                break
            # read the stale passages again, keep the rest (the cache keeps its own)
            carry = {i: loaded.entry(i) for i in loaded.ids() if i not in stale and i not in loaded.hits}
            fresh = {i: p for i, p in loaded.fresh.items() if i not in stale}
            read = loaded.read
        responses = []
        n_fetched = len(loaded.read)
        for b in range(n):
            t = time.perf_counter()
            results = self._results(plan, ranked[b], loaded, texts[b], q[b], sq[b] if sq is not None else None)
            rerank_s[b] += time.perf_counter() - t
            responses.append((results, len(all_cands[b]), len({c.id for c in all_cands[b]} & loaded.hits)))
        total = time.perf_counter() - start
        out = []
        for b, (results, n_cands, hits) in enumerate(responses):
            timings = Timings(
                encode_ms=encode_s * 1e3 / n,
                candidates_ms=cand_s[b] * 1e3,
                fetch_ms=fetch_s * 1e3 / n,
                rerank_ms=rerank_s[b] * 1e3,
                total_ms=total * 1e3 / n,
                n_candidates=n_cands,
                n_fetched=n_fetched,
                cache_hits=hits,
                first_stage=plan.first_stage,
                batch_size=n,
            )
            out.append(SearchResponse(texts[b], plan.granularity, plan.k, tuple(results), timings))
        return out

    def _results(
        self, plan: Plan, rows: list[RankedRow], loaded: Loaded, text: str | None, q: np.ndarray, sq: np.ndarray | None,
    ) -> list[SearchResult]:
        rows = [r for r in rows if r.passage_id in loaded.fresh]  # deleted between the steps: dropped
        passages = [loaded.fresh[r.passage_id] for r in rows]
        matches = self.explainer.matches(plan, rows, passages, text, q, sq) if plan.matches and rows else None
        out: list[SearchResult] = []
        for rank, (row, p) in enumerate(zip(rows, passages), 1):
            unit = row.unit
            if unit is None:
                spans: tuple[Span, ...] = ((0, len(p.text)),) if p.text else ()
                unit_text = p.text
            else:
                spans, unit_text = unit.char_spans, unit.text_in(p.text)
            out.append(
                SearchResult(
                    rank=rank,
                    passage_id=row.passage_id,
                    doc_id=p.doc_id,
                    passage_index=p.index,
                    granularity=plan.granularity,
                    unit_kind=None if unit is None else unit.kind,
                    unit_index=None if unit is None else unit.index,
                    score=row.score,
                    passage_score=row.passage_score,
                    unit_score=row.unit_score,
                    alpha=plan.alpha if unit is not None else 0.0,
                    text=unit_text,
                    char_spans=spans,
                    passage_text=p.text,
                    metadata=p.metadata,
                    first_stage_score=row.stage_score,
                    coverage=row.coverage,
                    matches=None if matches is None else matches[rank - 1],
                )
            )
        return out
