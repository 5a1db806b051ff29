"""Scoring and ranking: the candidates' token vectors packed on the scoring device,
granular MaxSim over them, and units ranked across passages by
``S(q',u) + alpha * S(q,p)``, plus ``beta * W * C(u,q')`` where the plan sets a
coverage weight ``beta`` (``C``: the unit's coverage by the ``[Q']`` query, the mean
over its tokens of their best query token; ``W``: the query's real tokens, the rows
that are not all zero, so ``W * C`` is on the scale of ``S``). Candidates stored as
sign bits (binary collections) are ranked in two passes: their sign vectors, then
the best ``rerank`` passages' int8 copy."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..maxsim import granular_maxsim, pack_concatenated, pack_token_ranges, select_passages
from ..repository import Candidate, TokenBatch
from ..token_rows import EncodedTokens
from ..unit_table import UnitTable
from ..units import Unit
from .cache import Entry
from .fetch import Loaded
from .plan import Plan

__all__ = ["RankedRow", "Scorer", "query_rows"]


class RankedRow(NamedTuple):
    """One ranked passage (``unit`` None) or unit, before its passage is read whole.

    ``score`` is what the ranking sorts on (``passage_score`` for a passage,
    ``unit_score + alpha * passage_score + coverage`` for a unit); ``stage_score``
    and ``stage`` are the first-stage candidate's score and kind; ``coverage`` the
    term ``beta * W * C(u,q')`` (None where the plan ranks without it).
    """

    passage_id: str
    unit: Unit | None
    unit_score: float | None
    passage_score: float
    score: float
    stage_score: float | None
    stage: str
    coverage: float | None = None


def query_rows(query: np.ndarray) -> np.ndarray:
    """A ``[Lq, dim]`` query's token weights: 1 for a real token, 0 for a row of zeros
    (the padding a model without query augmentation zeroes), float32 ``[Lq]``."""
    return np.any(query != 0, axis=-1).astype(np.float32)


class _Totals(NamedTuple):
    """One scoring's numbers, float64 on the host: passage scores [P], and for units
    their scores, passages, ranking totals and coverage terms [U] (None for passages)."""

    passage: np.ndarray
    unit: np.ndarray | None = None
    unit_passage: np.ndarray | None = None
    total: np.ndarray | None = None
    coverage: np.ndarray | None = None


class Scorer:
    """Where and how scoring runs: ``device``, ``dtype``, the kernel's ``max_chunk_tokens``."""

    def __init__(self, device: torch.device, dtype: torch.dtype, max_chunk_tokens: int | None = None) -> None:
        self.device = device
        self.dtype = dtype
        self.max_chunk_tokens = max_chunk_tokens

    def tensor(self, batch: TokenBatch) -> torch.Tensor | EncodedTokens:
        """A fetched batch's token vectors on the scoring device (one copy): as a float
        matrix, or, for a batch of encoded rows, those rows (decoded a chunk at a time
        by the kernel)."""
        if batch.encoded is not None:
            return batch.encoded.to(self.device, self.dtype)
        tokens = batch.tokens if batch.tokens.flags.writeable else np.array(batch.tokens)
        return torch.from_numpy(tokens).to(self.device, self.dtype)

    def pack(self, entries: Sequence[Entry], units: list[list[Unit]] | None) -> Any:
        """Entries' token vectors (and ``units``: their units to score) packed for the
        kernel: encoded rows of one code stay encoded; a mix is expanded."""
        lengths = [int(e.tokens.shape[0]) for e in entries]
        offsets = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        encoded = [e.tokens for e in entries if isinstance(e.tokens, EncodedTokens)]
        if encoded and len(encoded) == len(entries) and len({t.code for t in encoded}) == 1:
            return pack_concatenated(EncodedTokens.concat(encoded).to(self.device, self.dtype), offsets, units)
        if all(isinstance(e.tokens, np.ndarray) for e in entries):
            tokens = torch.from_numpy(np.concatenate([e.tokens for e in entries])).to(self.device, self.dtype)
        else:
            parts = [
                e.tokens if isinstance(e.tokens, torch.Tensor)
                else torch.from_numpy(_floats(e.tokens)).to(self.device, self.dtype)
                for e in entries
            ]
            tokens = torch.cat(parts)
        return pack_concatenated(tokens, offsets, units)

    def maxsim(
        self, q: Any, packed: Any, sq: Any = None, *, return_argmax: bool = False, subquery_mask: Any = None,
        coverage: bool = False,
    ) -> Any:
        return granular_maxsim(
            q, packed, sq, subquery_mask=subquery_mask, return_argmax=return_argmax, coverage=coverage,
            max_chunk_tokens=self.max_chunk_tokens,
        )

    def rank(self, plan: Plan, cands: list[Candidate], loaded: Loaded, q: np.ndarray, sq: np.ndarray | None) -> list[RankedRow]:
        """The candidates' passages (or their units of the plan's kind) scored, best first, ``plan.k`` at most.

        Ties break on passage id, then unit index: the same order on every engine.
        Candidates held as sign bits (a binary collection) are scored twice: all of
        them against their sign vectors, then the ``plan.rerank`` passages ranked best
        by that pass (by their best unit, for units) again on their int8 copy, whose
        scores rank them (where there are no more candidates than that, once, on the copy).
        """
        stage_of: dict[str, tuple[float | None, str]] = {}
        for c in cands:
            stage_of.setdefault(c.id, (c.score, c.stage))
        ids = sorted(i for i in stage_of if loaded.has(i))  # canonical order: same scores on every engine
        if not ids:
            return []
        batch = loaded.batch
        kind = plan.granularity
        unit_index: np.ndarray | None = None
        # the candidates are exactly the fetched batch, in the same (id) order: scored without a copy
        if batch is not None and len(ids) == len(batch.ids) and tuple(ids) == batch.ids:
            if loaded.batch_tokens is None:
                loaded.batch_tokens = self.tensor(batch)
            if plan.units:  # the units as columns: Unit records only for the winners
                table = batch.units if isinstance(batch.units, UnitTable) else UnitTable.from_units(batch.units)
                columns = table.token_ranges(kind)
                if not len(columns):
                    return []
                packed = pack_token_ranges(
                    loaded.batch_tokens, batch.offsets, columns.unit_passage, columns.range_unit, columns.ranges
                )
                unit_index = columns.unit_index
                unit_of = lambda j: table.unit(int(columns.unit_passage[j]), kind, int(columns.unit_index[j]))  # noqa: E731
            else:
                packed = pack_concatenated(loaded.batch_tokens, batch.offsets)
        else:
            unit_lists: list[list[Unit]] = []
            if plan.units:
                unit_lists = [[u for u in loaded.entry(i).units if u.kind == kind] for i in ids]
                keep = [j for j, us in enumerate(unit_lists) if us]
                ids = [ids[j] for j in keep]
                unit_lists = [unit_lists[j] for j in keep]
                flat_units = [u for us in unit_lists for u in us]
                unit_index = np.array([u.index for u in flat_units], dtype=np.int64)
                unit_of = flat_units.__getitem__
            if not ids:
                return []
            packed = self.pack([loaded.entry(i) for i in ids], unit_lists if plan.units else None)
        beta = plan.coverage if plan.units else 0.0
        weights = query_rows(sq if sq is not None else q) if beta > 0 else None
        sub = sq if plan.units and sq is not None else None
        tokens = packed.tokens
        if isinstance(tokens, EncodedTokens) and tokens.rerank is not None:  # sign bits: two passes
            if packed.n_passages > plan.rerank:
                first = self._totals(plan, self.maxsim(q, packed, sub, subquery_mask=weights, coverage=beta > 0), weights)
                keep = _best_passages(first, packed.n_passages, plan.rerank)
                packed, kept_units = select_passages(packed, keep, tokens.select(keep).floats())
                ids = [ids[j] for j in keep.tolist()]
                if plan.units:
                    unit_index = unit_index[kept_units]  # type: ignore[index]
                    unit_of = _renumbered(unit_of, kept_units)
            else:
                packed = dataclasses.replace(packed, tokens=tokens.floats())
        totals = self._totals(plan, self.maxsim(q, packed, sub, subquery_mask=weights, coverage=beta > 0), weights)
        p_scores = totals.passage
        rank_of = np.arange(len(ids))  # ids are sorted: position is the id order
        if not plan.units:
            order = np.lexsort((rank_of, -p_scores))[: plan.k]
            return [
                RankedRow(ids[j], None, None, float(p_scores[j]), float(p_scores[j]), *stage_of[ids[j]])
                for j in order.tolist()
            ]
        u_scores, u_passage, total, coverage = totals.unit, totals.unit_passage, totals.total, totals.coverage
        order = np.lexsort((unit_index, u_passage, -total))[: plan.k]
        return [
            RankedRow(
                ids[u_passage[j]], unit_of(j), float(u_scores[j]), float(p_scores[u_passage[j]]),
                float(total[j]), *stage_of[ids[u_passage[j]]], None if coverage is None else float(coverage[j]),
            )
            for j in order.tolist()
        ]

    @staticmethod
    def _totals(plan: Plan, scores: Any, weights: np.ndarray | None) -> _Totals:
        """The ranking numbers of one kernel call: ``S(q,p)``; for units ``S(q',u)``,
        their passage, and ``S(q',u) + alpha * S(q,p)`` plus the coverage term."""
        p_scores = scores.passage[0].float().cpu().numpy().astype(np.float64)
        if not plan.units:
            return _Totals(p_scores)
        u_scores = scores.unit[0].float().cpu().numpy().astype(np.float64)
        u_passage = scores.unit_passage.cpu().numpy()
        total = u_scores + plan.alpha * p_scores[u_passage]
        coverage = None
        if weights is not None:
            c_scores = scores.unit_coverage[0].float().cpu().numpy().astype(np.float64)
            coverage = plan.coverage * float(weights.sum()) * c_scores
            total = total + coverage
        return _Totals(p_scores, u_scores, u_passage, total, coverage)


def _best_passages(first: _Totals, n_passages: int, n: int) -> np.ndarray:
    """The ``n`` passages a first pass ranks best (by score, or by their best unit's
    total; ties: the earlier passage), in passage order."""
    if first.total is None:
        best = first.passage
    else:
        best = np.full(n_passages, -np.inf)
        np.maximum.at(best, first.unit_passage, first.total)
    order = np.lexsort((np.arange(n_passages), -best))[:n]
    return np.sort(order)


def _renumbered(unit_of: Any, kept: np.ndarray) -> Any:
    """``unit_of`` for units numbered among ``kept`` (their old numbers)."""
    return lambda j: unit_of(int(kept[j]))


def _floats(tokens: Any) -> np.ndarray:
    """An entry's token vectors as a float32 host array (encoded rows expanded)."""
    if isinstance(tokens, EncodedTokens):
        return tokens.expand()
    return np.array(tokens, dtype=np.float32)
