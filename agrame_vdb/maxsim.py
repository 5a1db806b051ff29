"""Granular MaxSim: passage and unit scores of many candidates in one pass.

The passage score is ``S(q, p) = sum_i max_{r in p} q_i . d_r`` with the ``[Q]``
query; a unit's score is the same sum with the max taken only over the unit's token
positions, with the ``[Q']`` query. Both come out of one matmul over the candidates'
tokens and one segment max.

The kernel scores candidates in the packed layout (:mod:`agrame_vdb.packing`:
token vectors concatenated, as a float matrix or as stored rows decoded one chunk
at a time, each passage cut into *pieces* at every passage and
unit-range boundary; :func:`pack`, :func:`pack_concatenated` and
:func:`pack_token_ranges` are importable from here too). It computes
``sim = tokens @ [Q; Q']^T`` in chunks of tokens, takes the
max of each piece with one ``scatter_reduce(amax)`` over a piece id per token, then
reduces the (few) pieces to passages and, through a ``(unit, piece)`` pair list,
to units. Positions outside a unit never enter its max (no ``0`` or ``-1e4`` fill:
scores can be negative). It runs on the candidates' device unless told another.

With ``coverage=True`` it also gives each unit's *coverage by the query*
``C(u, q') = mean over the unit's tokens t of max over the [Q'] rows i with weight > 0
of q'_i . d_t``: the max over rows of each token is taken in the same chunked loop
(one value per token and query, never a token-by-row matrix), then summed per unit
from prefix sums. Span MaxSim alone always prefers a unit that is a superset of
another; the coverage's mean does not.

A hand-computed case (2-d vectors, negative scores):

>>> q = [[1.0, 0.0], [0.0, 1.0]]
>>> docs = [[[0.5, -1.0], [-2.0, 0.25]], [[-1.0, -1.0]]]
>>> passage_scores(q, docs).tolist()  # 0.5 + 0.25 and -1 + -1
[0.75, -2.0]
>>> packed = pack(docs, [[[(0, 1)], [(1, 2)], [(0, 2)]], [[(0, 1)]]])
>>> r = granular_maxsim(q, packed, return_argmax=True)
>>> r.unit.tolist()  # 0.5 - 1, -2 + 0.25, the whole first passage, the second
[[-0.5, -1.75, 0.75, -2.0]]
>>> r.unit_passage.tolist(), r.passage_argmax.tolist()
([0, 0, 0, 1], [[[0, 1], [0, 0]]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InvalidInputError
from .packing import (
    ArrayLike,
    PackedPassages,
    UnitLike,
    float_tensor,
    pack,
    pack_concatenated,
    pack_token_ranges,
    select_passages,
)
from .token_rows import EncodedTokens

__all__ = [
    "PackedPassages",
    "MaxSimScores",
    "pack",
    "pack_concatenated",
    "pack_token_ranges",
    "select_passages",
    "granular_maxsim",
    "passage_scores",
    "unit_scores",
]

# Every matmul runs on a multiple of _ALIGN token rows (the last few rows are padded),
# so a token's dot products do not depend on how the tokens were chunked: BLAS takes
# another code path for a handful of remainder rows, which changes the last bit.
_ALIGN = 64
# Default bound on one chunk's similarity matrix, in elements (1 MiB in fp32; measured
# ~5% faster on CPU than 2 MiB for 26k tokens x 64 query rows: the chunk stays in L2).
_CHUNK_ELEMENTS = 1 << 18
_NO_POSITION = torch.iinfo(torch.int64).max


@dataclass(frozen=True, slots=True, eq=False)
class MaxSimScores:
    """Scores of ``B`` queries against ``P`` passages and their ``U`` units.

    Scores are float32 on the scoring device. Argmaxes (``return_argmax=True``) are
    token positions relative to the passage, one per query token: for each query
    token, the first position reaching its max.
    """

    passage: torch.Tensor  # [B, P] float32, with the [Q] query
    unit: torch.Tensor  # [B, U] float32, with the [Q'] query
    unit_passage: torch.Tensor  # [U] int64: passage index of each unit
    passage_argmax: torch.Tensor | None = None  # [B, P, Lq] int64
    unit_argmax: torch.Tensor | None = None  # [B, U, Lq'] int64
    unit_coverage: torch.Tensor | None = None  # [B, U] float32 (coverage=True): C(u, q')


def _query(value: ArrayLike, what: str, dim: int) -> torch.Tensor:
    tensor = float_tensor(value, what)
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise InvalidInputError(
            f"{what} must be [Lq, dim] or [B, Lq, dim] with Lq > 0, got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[2] != dim:
        raise InvalidInputError(f"{what} has dim {tensor.shape[2]} but the candidates' token vectors have dim {dim}")
    return tensor


def _weights(mask: ArrayLike | None, what: str, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Per query token weights [B, Lq] in float32 (a bool mask gives 0/1)."""
    if mask is None:
        return torch.ones(batch, length, device=device)
    tensor = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or tensor.shape[1] != length or tensor.shape[0] not in (1, batch):
        raise InvalidInputError(
            f"{what} must be [Lq] or [B, Lq] = [{batch}, {length}], got shape {tuple(tensor.shape)}"
        )
    if not (tensor.dtype == torch.bool or tensor.is_floating_point()):
        raise InvalidInputError(f"{what} must be a bool mask or float weights, got dtype {tensor.dtype}")
    return tensor.to(device=device, dtype=torch.float32).expand(batch, length)


def _segment_max_into(out: torch.Tensor, segment: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out[k] = max(out[k], max of the rows of values [N, R] whose segment [N] is k)``."""
    return out.scatter_reduce_(0, segment.unsqueeze(1).expand(-1, values.shape[1]), values, "amax", include_self=True)


def _segment_max(values: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    return _segment_max_into(values.new_full((n_segments, values.shape[1]), float("-inf")), segment, values)


def _first_at_max(
    values: torch.Tensor, best: torch.Tensor, segment: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Per segment and column, the smallest of ``positions`` [N, R] where ``values`` reach ``best``."""
    index = segment.unsqueeze(1).expand(-1, values.shape[1])
    candidates = torch.where(values == best.index_select(0, segment), positions, _NO_POSITION)
    first = positions.new_full(best.shape, _NO_POSITION)
    return first.scatter_reduce_(0, index, candidates, "amin", include_self=True)


def _chunk_rows(tokens: torch.Tensor | EncodedTokens, c0: int, c1: int, dtype: torch.dtype) -> torch.Tensor:
    """Token rows ``c0:c1`` as a ``[c1 - c0, dim]`` tensor: a view of a float matrix,
    or encoded rows decoded (the only expansion of an encoded batch: one chunk)."""
    if isinstance(tokens, EncodedTokens):
        return tokens.chunk(c0, c1, dtype)
    return tokens[c0:c1]


def _chunk_sim(rows: torch.Tensor, queries_t: torch.Tensor) -> torch.Tensor:
    """``rows @ queries_t``, every matmul on a multiple of ``_ALIGN`` rows."""
    n = rows.shape[0]
    body = n // _ALIGN * _ALIGN
    parts = [rows[:body] @ queries_t] if body > 0 else []
    if body < n:
        tail = rows.new_zeros((_ALIGN, rows.shape[1]))
        tail[: n - body] = rows[body:]
        parts.append((tail @ queries_t)[: n - body])
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass(frozen=True, slots=True)
class _Cover:
    """Which ``sim`` columns the coverage reads: ``batch`` sub-queries of ``length``
    rows from ``start``; ``valid`` [B, length] (None: every row) the rows with weight > 0."""

    start: int
    batch: int
    length: int
    valid: torch.Tensor | None

    def token_best(self, sim: torch.Tensor) -> torch.Tensor:
        """[N, R] similarities -> [N, B] float32: each token's max over each sub-query's valid rows."""
        rows = sim[:, self.start : self.start + self.batch * self.length].reshape(-1, self.batch, self.length)
        if self.valid is not None:
            rows = rows.masked_fill(~self.valid, float("-inf"))
        return rows.amax(-1).float()


def _piece_maxima(
    packed: PackedPassages, queries: torch.Tensor, chunk: int, with_argmax: bool, cover: _Cover | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Max over each piece's tokens of ``tokens @ queries.T``: [n_pieces, R], and the
    first global token position reaching it (``with_argmax``), ``chunk`` tokens at a time;
    with ``cover``, each token's max over each sub-query's rows too ([T, B] float32).
    Encoded candidates are decoded one chunk at a time."""
    tokens, bounds, device = packed.tokens, packed.piece_bounds, packed.device
    width, queries_t, n_tokens = queries.shape[0], queries.T, packed.n_tokens
    piece_max = torch.full((len(bounds) - 1, width), float("-inf"), dtype=queries.dtype, device=device)
    piece_arg = torch.full(piece_max.shape, _NO_POSITION, device=device) if with_argmax else None
    token_best = None if cover is None else torch.empty((n_tokens, cover.batch), device=device)
    for c0 in range(0, n_tokens, chunk):
        c1 = min(n_tokens, c0 + chunk)
        sim = _chunk_sim(_chunk_rows(tokens, c0, c1, queries.dtype), queries_t)  # [c1 - c0, R]
        if token_best is not None:
            token_best[c0:c1] = cover.token_best(sim)  # type: ignore[union-attr]
        p0 = int(np.searchsorted(bounds, c0, side="right")) - 1  # the pieces this chunk touches
        p1 = int(np.searchsorted(bounds, c1, side="left"))
        local = packed.token_piece[c0:c1] - p0
        if piece_arg is None:
            _segment_max_into(piece_max[p0:p1], local, sim)
            continue
        best = _segment_max(sim, local, p1 - p0)
        positions = torch.arange(c0, c1, device=device).unsqueeze(1).expand(-1, width)
        first = _first_at_max(sim, best, local, positions)
        better = best > piece_max[p0:p1]  # strictly: an earlier chunk keeps a tie
        piece_max[p0:p1] = torch.where(better, best, piece_max[p0:p1])
        piece_arg[p0:p1] = torch.where(better, first, piece_arg[p0:p1])
    return piece_max, piece_arg, token_best


def _distinct_pairs(packed: PackedPassages) -> tuple[torch.Tensor, torch.Tensor]:
    """The (unit, piece) pairs, each once and sorted (a unit given overlapping ranges
    lists a piece twice: its max does not mind, its mean would)."""
    n_pieces = len(packed.piece_bounds) - 1
    key = packed.pair_unit * n_pieces + packed.pair_piece
    if len(key) < 2 or bool((key[1:] > key[:-1]).all()):
        return packed.pair_unit, packed.pair_piece
    key = torch.unique(key)
    return key // n_pieces, key % n_pieces


def _unit_coverage(packed: PackedPassages, token_best: torch.Tensor, has_rows: torch.Tensor) -> torch.Tensor:
    """[T, B] per-token maxima -> [B, U] float32: the mean over each unit's tokens (0
    for a query without a row of weight > 0). Sums are differences of float64 prefix
    sums over all tokens, then over each unit's pieces: computed once, whatever the
    chunks were, and in one order on every device."""
    device, n_units = token_best.device, packed.n_units
    values = torch.where(has_rows, token_best, 0.0).double()  # a query without rows: -inf -> 0
    prefix = values.new_zeros((values.shape[0] + 1, values.shape[1]))
    torch.cumsum(values, 0, out=prefix[1:])
    bounds = torch.from_numpy(packed.piece_bounds).to(device)
    piece_sum = prefix[bounds[1:]] - prefix[bounds[:-1]]  # [n_pieces, B]
    piece_len = (bounds[1:] - bounds[:-1]).double().unsqueeze(1)
    pair_unit, pair_piece = _distinct_pairs(packed)
    per_pair = torch.cat([piece_sum, piece_len], 1)[pair_piece]  # [n_pairs, B + 1]
    if len(pair_unit) == n_units:  # one piece each: pair k is unit k
        sums = per_pair
    else:
        pair_prefix = per_pair.new_zeros((per_pair.shape[0] + 1, per_pair.shape[1]))
        torch.cumsum(per_pair, 0, out=pair_prefix[1:])
        ends = torch.cumsum(torch.bincount(pair_unit, minlength=n_units), 0)
        starts = torch.cat([ends.new_zeros(1), ends[:-1]])
        sums = pair_prefix[ends] - pair_prefix[starts]
    return (sums[:, :-1] / sums[:, -1:]).float().T.contiguous()


def granular_maxsim(
    query: ArrayLike,
    candidates: PackedPassages,
    subquery: ArrayLike | None = None,
    *,
    query_mask: ArrayLike | None = None,
    subquery_mask: ArrayLike | None = None,
    return_argmax: bool = False,
    coverage: bool = False,
    max_chunk_tokens: int | None = None,
    device: torch.device | str | None = None,
) -> MaxSimScores:
    """Passage scores with ``query`` ([Q]) and unit scores with ``subquery`` ([Q']).

    ``query`` and ``subquery`` are ``[Lq, dim]`` or ``[B, Lq, dim]`` (numpy or torch;
    an unbatched query gives ``B = 1``); ``subquery`` defaults to ``query``. The
    masks are ``[Lq]`` or ``[B, Lq]``: bool (which query tokens count) or float
    weights. The matmul and the max run in the candidates' dtype (queries are cast
    to it), the sums in float32, on ``device`` (default: the candidates' device).
    ``max_chunk_tokens`` bounds the tokens scored at once (rounded down to a
    multiple of 64, at least 64; default: about 256k similarities per chunk). On CPU
    the results are bit-identical for every chunk size; on CUDA, cuBLAS may pick
    another kernel for another shape, so they agree to rounding.

    The candidates' tokens may be encoded rows (:class:`~agrame_vdb.token_rows.EncodedTokens`:
    float16, int8 with a scale per token, sign bits): each chunk is decoded inside
    the chunk loop, so no more than one chunk is ever expanded (peak memory: one
    chunk in the scoring dtype, not every candidate), with the same values as
    expanding them all first (float16, int8) or as their sign vectors ``+-1 /
    sqrt(dim)`` (sign bits: the first pass of a binary collection's two).

    ``coverage=True`` adds ``unit_coverage`` [B, U]: each unit's mean over its tokens
    (every token of its pieces, once) of the max over the ``[Q']`` rows with weight > 0
    of ``token . row`` (0 for a sub-query without such a row).
    """
    target = torch.device(device) if device is not None else candidates.device
    packed = candidates.to(target)
    dim, dtype = packed.dim, packed.dtype
    q = _query(query, "query", dim)
    batch, lq = q.shape[0], q.shape[1]
    q_weights = _weights(query_mask, "query_mask", batch, lq, target)
    shared = subquery is None or subquery is query
    if shared:
        sq, sq_mask = q, subquery_mask if subquery_mask is not None else query_mask
    else:
        sq, sq_mask = _query(subquery, "subquery", dim), subquery_mask
        if sq.shape[0] != batch:
            raise InvalidInputError(f"query has batch size {batch} but subquery has {sq.shape[0]}")
    lsq = sq.shape[1]
    sq_weights = _weights(sq_mask, "subquery_mask", batch, lsq, target)

    n_units = packed.n_units
    rows = [q.reshape(-1, dim)]
    if not shared and n_units:
        rows.append(sq.reshape(-1, dim))
    queries = torch.cat(rows).to(device=target, dtype=dtype)  # [R, dim]
    n_q = batch * lq  # rows of [Q]; the [Q'] rows start at sub_row
    sub_row = 0 if shared else n_q
    width = queries.shape[0]

    if max_chunk_tokens is None:
        max_chunk_tokens = _CHUNK_ELEMENTS // width
    if max_chunk_tokens < 1:
        raise InvalidInputError(f"max_chunk_tokens must be >= 1, got {max_chunk_tokens}")
    chunk = max(_ALIGN, max_chunk_tokens // _ALIGN * _ALIGN)

    cover = None
    if coverage and n_units:
        valid = sq_weights > 0
        cover = _Cover(sub_row, batch, lsq, None if bool(valid.all()) else valid)
    piece_max, piece_arg, token_best = _piece_maxima(packed, queries, chunk, return_argmax, cover)
    p_max = _segment_max(piece_max[:, :n_q], packed.piece_passage, packed.n_passages)
    sub_rows = slice(sub_row, sub_row + batch * lsq)
    u_max = piece_max[packed.pair_piece, sub_rows]
    one_piece_each = len(packed.pair_unit) == n_units  # then pair k is unit k: nothing to reduce
    if not one_piece_each:
        u_max = _segment_max(u_max, packed.pair_unit, n_units)

    passage = _weighted_sum(p_max, q_weights)
    unit = _weighted_sum(u_max, sq_weights)
    if not (torch.isfinite(passage).all() and torch.isfinite(unit).all()):
        raise InvalidInputError("scores are not finite: the query or candidate token vectors hold NaN or inf")
    passage_argmax = unit_argmax = None
    if piece_arg is not None:
        p_arg = _first_at_max(piece_max[:, :n_q], p_max, packed.piece_passage, piece_arg[:, :n_q])
        u_arg = piece_arg[packed.pair_piece, sub_rows]
        if not one_piece_each:
            u_arg = _first_at_max(piece_max[packed.pair_piece, sub_rows], u_max, packed.pair_unit, u_arg)
        starts = torch.from_numpy(packed.offsets[:-1]).to(target)
        passage_argmax = _per_query(p_arg - starts.unsqueeze(1), batch, lq)
        unit_argmax = _per_query(u_arg - starts[packed.unit_passage].unsqueeze(1), batch, lsq)
    unit_coverage = None
    if coverage:
        if token_best is None:  # no units
            unit_coverage = passage.new_zeros((batch, 0))
        else:
            unit_coverage = _unit_coverage(packed, token_best, (sq_weights > 0).any(1))
    return MaxSimScores(passage, unit, packed.unit_passage, passage_argmax, unit_argmax, unit_coverage)


def _per_query(values: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """[N, B*L] -> [B, N, L]."""
    return values.reshape(values.shape[0], batch, length).permute(1, 0, 2)


def _weighted_sum(maxima: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum over query tokens of [N, B*L] maxima, in float32, weighted by [B, L] -> [B, N]."""
    per_query = _per_query(maxima.float(), *weights.shape)  # [B, N, L]
    return (per_query * weights.unsqueeze(1)).sum(-1)


def passage_scores(query: ArrayLike, docs: Sequence[ArrayLike]) -> np.ndarray:
    """MaxSim of ``query`` ``[Lq, dim]`` against each of ``docs`` (``[n_i, dim]``).

    Returns float32 ``[P]`` (``[B, P]`` for a batched query ``[B, Lq, dim]``).

    >>> passage_scores(np.array([[1.0, -1.0]]), [np.array([[0.5, 0.5], [-1.0, 0.25]])]).tolist()
    [0.0]
    """
    result = granular_maxsim(query, pack(docs)).passage.cpu().numpy()
    return result[0] if float_tensor(query, "query").dim() == 2 else result


def unit_scores(query: ArrayLike, docs: Sequence[ArrayLike], units: Sequence[Sequence[UnitLike]]) -> list[np.ndarray]:
    """Unit scores of ``query`` (a ``[Q']`` encoding) for each passage's units.

    One float32 array per passage: ``[U_p]`` (``[B, U_p]`` for a batched query).

    >>> unit_scores([[1.0, 0.0]], [[[-1.0, 0.0], [-3.0, 1.0]]], [[[(0, 1)], [(1, 2)]]])
    [array([-1., -3.], dtype=float32)]
    """
    packed = pack(docs, units)
    result = granular_maxsim(query, packed).unit.cpu().numpy()
    if float_tensor(query, "query").dim() == 2:
        result = result[0]
    return list(np.split(result, packed.unit_offsets[1:-1], axis=-1))
