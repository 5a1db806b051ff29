"""Granular MaxSim: passage and unit scores of many candidates in one pass.

The passage score is ``S(q, p) = sum_i max_{r in p} q_i . d_r`` with the ``[Q]``
query; a unit's score is the same sum with the max taken only over the unit's token
positions, with the ``[Q']`` query. Both come out of one matmul over the candidates'
tokens and one segment max.

Packed layout
-------------
Candidates are not padded to the longest passage. Their token vectors are
concatenated into one ``tokens`` matrix ``[T, dim]`` and ``offsets`` ``[P+1]`` says
where each passage starts: passage ``p`` is rows ``offsets[p]:offsets[p+1]``.
Units are token ranges relative to their passage, so they may overlap (a proposition
inside a sentence) and be non-contiguous. :func:`pack` cuts each passage into
*pieces* at every passage and unit-range boundary: every token lies in exactly one
piece, a passage is a run of pieces, and a unit is a set of pieces of its passage.
The kernel computes ``sim = tokens @ [Q; Q']^T`` in chunks of tokens, takes the
max of each piece with one ``scatter_reduce(amax)`` over a piece id per token, then
reduces the (few) pieces to passages and, through a ``(unit, piece)`` pair list,
to units. Positions outside a unit never enter its max (no ``0`` or ``-1e4`` fill:
scores can be negative).

Units are numbered passage after passage, in the order given:
``unit_offsets[p]:unit_offsets[p+1]`` are the units of passage ``p``.

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

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Union

import numpy as np
import torch

from .errors import InvalidInputError
from .units import Unit

__all__ = [
    "PackedPassages",
    "MaxSimScores",
    "pack",
    "pack_concatenated",
    "pack_token_ranges",
    "granular_maxsim",
    "passage_scores",
    "unit_scores",
]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Any]]
#: A unit: a :class:`Unit` with token ranges, a list of ``(start, end)`` token
#: ranges, or one ``(start, end)`` pair; positions relative to its passage.
UnitLike = Union[Unit, Sequence[Sequence[int]], Sequence[int]]

# Every matmul runs on a multiple of _ALIGN token rows (the last few rows are padded),
# so a token's dot products do not depend on how the tokens were chunked: BLAS takes
# another code path for a handful of remainder rows, which changes the last bit.
_ALIGN = 64
# Default bound on one chunk's similarity matrix, in elements (1 MiB in fp32; measured
# ~5% faster on CPU than 2 MiB for 26k tokens x 64 query rows: the chunk stays in L2).
_CHUNK_ELEMENTS = 1 << 18
_NO_POSITION = torch.iinfo(torch.int64).max


@dataclass(frozen=True, slots=True, eq=False)
class PackedPassages:
    """Candidates in the packed layout, with the index tensors the kernel needs.

    Built by :func:`pack` or :func:`pack_concatenated`. ``tokens`` and the index
    tensors live on the scoring device; the ``*offsets`` and ``piece_bounds`` are
    host arrays (they steer the chunk loop).
    """

    tokens: torch.Tensor  # [T, dim]
    offsets: np.ndarray  # [P+1] int64: passage p is tokens[offsets[p]:offsets[p+1]]
    unit_offsets: np.ndarray  # [P+1] int64: units of passage p
    unit_passage: torch.Tensor  # [U] int64: passage of each unit
    piece_bounds: np.ndarray  # [n_pieces+1] int64: token where each piece starts, then T
    token_piece: torch.Tensor  # [T] int64: piece of each token
    piece_passage: torch.Tensor  # [n_pieces] int64: passage of each piece
    pair_unit: torch.Tensor  # [n_pairs] int64, sorted: the unit of each (unit, piece) pair
    pair_piece: torch.Tensor  # [n_pairs] int64: the piece of each pair

    @property
    def n_passages(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_units(self) -> int:
        return int(self.unit_offsets[-1])

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def to(self, device: torch.device | str) -> PackedPassages:
        """The same candidates with their tensors on ``device``."""
        device = torch.device(device)
        if device == self.device:
            return self
        return replace(
            self,
            tokens=self.tokens.to(device),
            unit_passage=self.unit_passage.to(device),
            token_piece=self.token_piece.to(device),
            piece_passage=self.piece_passage.to(device),
            pair_unit=self.pair_unit.to(device),
            pair_piece=self.pair_piece.to(device),
        )


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


def _tensor(value: ArrayLike, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value
    elif isinstance(value, np.ndarray):
        if not value.flags.writeable:
            # torch.from_numpy shares memory and warns on a read-only array (a tensor
            # cannot be read-only): copy it once; the kernels never write to it
            value = np.array(value)
        tensor = torch.from_numpy(value)
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"{what} must be a numpy array or torch tensor, got {type(value).__name__}"
            ) from exc
    if not tensor.is_floating_point():
        raise InvalidInputError(f"{what} must hold floating-point vectors, got dtype {tensor.dtype}")
    return tensor


def _unit_ranges(unit: UnitLike, n_tokens: int, passage: int, j: int) -> Sequence[tuple[int, int]]:
    """The unit's token ranges, checked against its passage, sorted and merged."""
    if isinstance(unit, Unit):  # token_ranges are sorted, merged and non-empty already
        raw: Any = unit.token_ranges
        if raw and raw[-1][1] <= n_tokens:
            return raw
        if not raw:
            raise InvalidInputError(
                f"unit {j} of passage {passage} ({unit.kind} {unit.index}) has no token ranges: "
                "align it with align_units first"
            )
    else:
        raw = unit
        if isinstance(raw, (tuple, list)) and len(raw) == 2 and all(isinstance(x, (int, np.integer)) for x in raw):
            raw = [raw]
        elif isinstance(raw, (tuple, list)) and len(raw) == 1:  # the common case: one range
            first = raw[0]
            if isinstance(first, (tuple, list)) and len(first) == 2:
                s, e = first
                if type(s) is int and type(e) is int and 0 <= s < e <= n_tokens:
                    return ((s, e),)
    where = f"unit {j} of passage {passage}"
    try:
        pairs = sorted((int(s), int(e)) for s, e in raw)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{where} must be a Unit or a list of (start, end) token ranges, got {unit!r}") from exc
    if not pairs:
        raise InvalidInputError(f"{where} is empty: a unit needs at least one token")
    merged: list[tuple[int, int]] = []
    for s, e in pairs:
        if s < 0 or e > n_tokens or s >= e:
            raise InvalidInputError(
                f"{where} has token range [{s}, {e}) that is empty or outside its passage's "
                f"{n_tokens} tokens; ranges are half-open [start, end) positions in the passage"
            )
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _check_unit_ranges(
    flat: list[Unit],
    relative: np.ndarray,
    range_unit: np.ndarray,
    ranges_per_unit: np.ndarray,
    unit_passage: np.ndarray,
    unit_offsets: np.ndarray,
    lengths: np.ndarray,
) -> None:
    """Every Unit has a token range, and each range is non-empty and inside its passage
    (what :func:`_unit_ranges` checks one unit at a time), for all units at once."""
    starts, ends = relative[:, 0], relative[:, 1]
    bad_range = (starts < 0) | (starts >= ends) | (ends > lengths[unit_passage[range_unit]])
    bad_units = np.flatnonzero(ranges_per_unit == 0)
    if not bad_range.any() and not len(bad_units):
        return
    k = int(range_unit[np.flatnonzero(bad_range)[0]]) if bad_range.any() else len(flat)
    u = min(k, int(bad_units[0])) if len(bad_units) else k
    p = int(unit_passage[u])
    j = u - int(unit_offsets[p])
    unit = flat[u]
    if not unit.token_ranges:
        raise InvalidInputError(
            f"unit {j} of passage {p} ({unit.kind} {unit.index}) has no token ranges: align it with align_units first"
        )
    n = int(lengths[p])
    s, e = next((s, e) for s, e in unit.token_ranges if s < 0 or s >= e or e > n)
    raise InvalidInputError(
        f"unit {j} of passage {p} has token range [{s}, {e}) that is empty or outside its passage's "
        f"{n} tokens; ranges are half-open [start, end) positions in the passage"
    )


def pack_concatenated(
    tokens: ArrayLike,
    offsets: ArrayLike,
    units: Sequence[Sequence[UnitLike]] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> PackedPassages:
    """Pack candidates whose token vectors are already concatenated.

    ``tokens`` is ``[T, dim]``, ``offsets`` ``[P+1]`` (``0``, increasing, ending at
    ``T``; every passage has a token); ``units[p]`` are passage ``p``'s units (see
    :data:`UnitLike`), or ``None`` for no units at all.
    """
    matrix, bounds, lengths = _concatenated(tokens, offsets, device, dtype)
    n_passages = len(lengths)
    if units is None:
        units = [()] * n_passages
    if len(units) != n_passages:
        raise InvalidInputError(f"units must hold one list per passage: {n_passages} passages, {len(units)} lists")

    unit_counts = np.fromiter(map(len, units), dtype=np.int64, count=n_passages)
    unit_offsets = np.concatenate([[0], np.cumsum(unit_counts)]).astype(np.int64)
    unit_passage = np.repeat(np.arange(n_passages, dtype=np.int64), unit_counts)
    flat = [unit for passage_units in units for unit in passage_units]
    if not flat or set(map(type, flat)) == {Unit}:
        # Unit records (the planner's case): their ranges as they are, checked with numpy
        token_ranges = [unit.token_ranges for unit in flat]
        ranges_per_unit = np.fromiter(map(len, token_ranges), dtype=np.int64, count=len(flat))
        n_values = 2 * int(ranges_per_unit.sum())
        values = itertools.chain.from_iterable(itertools.chain.from_iterable(token_ranges))
        relative = np.fromiter(values, dtype=np.int64, count=n_values).reshape(-1, 2)
        range_unit = np.repeat(np.arange(len(flat), dtype=np.int64), ranges_per_unit)
        _check_unit_ranges(flat, relative, range_unit, ranges_per_unit, unit_passage, unit_offsets, lengths)
    else:
        ranges: list[tuple[int, int]] = []  # every unit's ranges, relative to its passage
        per_unit: list[int] = []
        for p, (passage_units, n) in enumerate(zip(units, lengths.tolist())):
            for j, unit in enumerate(passage_units):
                unit_ranges = _unit_ranges(unit, n, p, j)
                ranges.extend(unit_ranges)
                per_unit.append(len(unit_ranges))
        range_unit = np.repeat(np.arange(len(unit_passage), dtype=np.int64), per_unit)
        relative = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    return _packed(matrix, bounds, unit_offsets, unit_passage, range_unit, relative)


def pack_token_ranges(
    tokens: ArrayLike,
    offsets: ArrayLike,
    unit_passage: ArrayLike,
    range_unit: ArrayLike,
    ranges: ArrayLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> PackedPassages:
    """Pack concatenated candidates whose units come as columns, not records (the
    planner's fast path, from a :class:`~agrame_vdb.unit_table.UnitTable`).

    ``tokens`` and ``offsets`` as in :func:`pack_concatenated`. Unit ``u`` belongs
    to passage ``unit_passage[u]`` (non-decreasing); token range ``r``,
    ``ranges[r] = (start, end)`` relative to its passage, belongs to unit
    ``range_unit[r]`` (non-decreasing, every unit has a range). Passages may have no
    unit. Gives the same packing as :func:`pack_concatenated` with the same units as
    records.

    >>> import numpy as np
    >>> p = pack_token_ranges(np.eye(3, dtype=np.float32), [0, 2, 3], [0, 0], [0, 1], [[0, 1], [1, 2]])
    >>> p.unit_offsets.tolist(), p.pair_piece.tolist()
    ([0, 2, 2], [0, 1])
    """
    matrix, bounds, lengths = _concatenated(tokens, offsets, device, dtype)
    n_passages = len(lengths)
    try:
        up = np.asarray(unit_passage, dtype=np.int64).reshape(-1)
        ru = np.asarray(range_unit, dtype=np.int64).reshape(-1)
        rel = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"unit columns must be integer arrays: {exc}") from exc
    n_units = len(up)
    if len(ru) != len(rel):
        raise InvalidInputError(f"range_unit has {len(ru)} entries but there are {len(rel)} ranges")
    if n_units and (up[0] < 0 or up[-1] >= n_passages or (np.diff(up) < 0).any()):
        raise InvalidInputError(f"unit_passage must be non-decreasing within [0, {n_passages})")
    if len(ru) and (ru[0] < 0 or ru[-1] >= n_units or (np.diff(ru) < 0).any()):
        raise InvalidInputError(f"range_unit must be non-decreasing within [0, {n_units})")
    without = np.flatnonzero(np.bincount(ru, minlength=n_units) == 0) if n_units else ()
    if len(without):
        raise InvalidInputError(f"unit {int(without[0])} (passage {int(up[without[0]])}) has no token range")
    n_of = lengths[up[ru]] if len(ru) else np.zeros(0, np.int64)
    bad = (rel[:, 0] < 0) | (rel[:, 0] >= rel[:, 1]) | (rel[:, 1] > n_of)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        p = int(up[ru[r]])
        raise InvalidInputError(
            f"token range [{rel[r, 0]}, {rel[r, 1]}) of unit {int(ru[r])} (passage {p}) is empty or outside its "
            f"passage's {int(lengths[p])} tokens; ranges are half-open [start, end) positions in the passage"
        )
    unit_offsets = np.zeros(n_passages + 1, dtype=np.int64)
    np.cumsum(np.bincount(up, minlength=n_passages), out=unit_offsets[1:])
    return _packed(matrix, bounds, unit_offsets, up, ru, rel)


def _concatenated(
    tokens: ArrayLike, offsets: ArrayLike, device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The checked ``[T, dim]`` matrix on ``device``, its int64 offsets and passage lengths."""
    matrix = _tensor(tokens, "tokens")
    if matrix.dim() != 2 or matrix.shape[1] == 0:
        raise InvalidInputError(f"tokens must be a [T, dim] matrix, got shape {tuple(matrix.shape)}")
    matrix = matrix.to(device=device, dtype=dtype)
    try:
        bounds = np.asarray(offsets.cpu() if isinstance(offsets, torch.Tensor) else offsets)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"offsets must be a list of ints, got {type(offsets).__name__}") from exc
    n_tokens = matrix.shape[0]
    if bounds.ndim != 1 or bounds.size == 0 or bounds.dtype.kind not in "iu":
        raise InvalidInputError(f"offsets must be a 1-d array of ints [P+1], got {bounds!r}")
    bounds = bounds.astype(np.int64)
    if bounds[0] != 0 or bounds[-1] != n_tokens:
        raise InvalidInputError(
            f"offsets must start at 0 and end at the token count {n_tokens}, got {bounds[0]} .. {bounds[-1]}"
        )
    lengths = np.diff(bounds)
    if (lengths <= 0).any():
        bad = int(np.flatnonzero(lengths <= 0)[0])
        raise InvalidInputError(
            f"offsets must increase strictly: passage {bad} spans [{bounds[bad]}, {bounds[bad + 1]}); "
            "every passage needs at least one token"
        )
    return matrix, bounds, lengths


def _packed(
    matrix: torch.Tensor,
    bounds: np.ndarray,
    unit_offsets: np.ndarray,
    unit_passage: np.ndarray,
    range_unit: np.ndarray,
    relative: np.ndarray,
) -> PackedPassages:
    """The pieces of checked candidates and units (ranges relative to their passage)."""
    base = bounds[unit_passage[range_unit]]
    range_starts, range_ends = base + relative[:, 0], base + relative[:, 1]

    piece_bounds = np.unique(np.concatenate([bounds, range_starts, range_ends]))
    n_pieces = len(piece_bounds) - 1
    token_piece = np.repeat(np.arange(n_pieces, dtype=np.int64), np.diff(piece_bounds))
    piece_passage = np.searchsorted(bounds, piece_bounds[:-1], side="right") - 1
    first = np.searchsorted(piece_bounds, range_starts)
    counts = np.searchsorted(piece_bounds, range_ends) - first
    pair_unit = np.repeat(range_unit, counts)
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    pair_piece = np.repeat(first, counts) + within

    on = matrix.device

    def index(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)).to(on)

    return PackedPassages(
        tokens=matrix,
        offsets=bounds,
        unit_offsets=unit_offsets,
        unit_passage=index(unit_passage),
        piece_bounds=piece_bounds,
        token_piece=index(token_piece),
        piece_passage=index(piece_passage),
        pair_unit=index(pair_unit),
        pair_piece=index(pair_piece),
    )


def pack(
    docs: Sequence[ArrayLike],
    units: Sequence[Sequence[UnitLike]] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> PackedPassages:
    """Pack per-passage token matrices ``[n_i, dim]`` (numpy or torch) and their units.

    ``units[p]`` lists passage ``p``'s units: :class:`Unit` records with token
    ranges, or lists of ``(start, end)`` token ranges relative to the passage.
    """
    if isinstance(docs, (np.ndarray, torch.Tensor)) or len(docs) == 0:
        raise InvalidInputError(
            "docs must be a non-empty list of [n_i, dim] token matrices, one per passage "
            "(for already concatenated tokens use pack_concatenated)"
        )
    mats = [_tensor(d, f"docs[{i}]") for i, d in enumerate(docs)]
    for i, m in enumerate(mats):
        if m.dim() != 2 or m.shape[0] == 0:
            raise InvalidInputError(f"docs[{i}] must be a non-empty [n, dim] matrix, got shape {tuple(m.shape)}")
        if m.shape[1] != mats[0].shape[1]:
            raise InvalidInputError(f"docs[{i}] has dim {m.shape[1]}, docs[0] has dim {mats[0].shape[1]}")
    common = dtype or functools.reduce(torch.promote_types, (m.dtype for m in mats))
    tokens = torch.cat([m.to(device=mats[0].device, dtype=common) for m in mats])  # then one copy to `device`
    offsets = np.concatenate([[0], np.cumsum([m.shape[0] for m in mats])])
    return pack_concatenated(tokens, offsets, units, device=device)


def _query(value: ArrayLike, what: str, dim: int) -> torch.Tensor:
    tensor = _tensor(value, what)
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


def _chunk_sim(tokens: torch.Tensor, c0: int, c1: int, queries_t: torch.Tensor) -> torch.Tensor:
    """``tokens[c0:c1] @ queries_t``, every matmul on a multiple of ``_ALIGN`` rows."""
    body = c0 + (c1 - c0) // _ALIGN * _ALIGN
    parts = [tokens[c0:body] @ queries_t] if body > c0 else []
    if body < c1:
        tail = tokens.new_zeros((_ALIGN, tokens.shape[1]))
        tail[: c1 - body] = tokens[body:c1]
        parts.append((tail @ queries_t)[: c1 - body])
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _piece_maxima(
    packed: PackedPassages, queries: torch.Tensor, chunk: int, with_argmax: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Max over each piece's tokens of ``tokens @ queries.T``: [n_pieces, R], and the
    first global token position reaching it (``with_argmax``), ``chunk`` tokens at a time."""
    tokens, bounds = packed.tokens, packed.piece_bounds
    width, queries_t = queries.shape[0], queries.T
    piece_max = tokens.new_full((len(bounds) - 1, width), float("-inf"))
    piece_arg = torch.full(piece_max.shape, _NO_POSITION, device=tokens.device) if with_argmax else None
    for c0 in range(0, tokens.shape[0], chunk):
        c1 = min(tokens.shape[0], c0 + chunk)
        sim = _chunk_sim(tokens, c0, c1, queries_t)  # [c1 - c0, R]
        p0 = int(np.searchsorted(bounds, c0, side="right")) - 1  # the pieces this chunk touches
        p1 = int(np.searchsorted(bounds, c1, side="left"))
        local = packed.token_piece[c0:c1] - p0
        if piece_arg is None:
            _segment_max_into(piece_max[p0:p1], local, sim)
            continue
        best = _segment_max(sim, local, p1 - p0)
        positions = torch.arange(c0, c1, device=tokens.device).unsqueeze(1).expand(-1, width)
        first = _first_at_max(sim, best, local, positions)
        better = best > piece_max[p0:p1]  # strictly: an earlier chunk keeps a tie
        piece_max[p0:p1] = torch.where(better, best, piece_max[p0:p1])
        piece_arg[p0:p1] = torch.where(better, first, piece_arg[p0:p1])
    return piece_max, piece_arg


def granular_maxsim(
    query: ArrayLike,
    candidates: PackedPassages,
    subquery: ArrayLike | None = None,
    *,
    query_mask: ArrayLike | None = None,
    subquery_mask: ArrayLike | None = None,
    return_argmax: bool = False,
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
    """
    target = torch.device(device) if device is not None else candidates.device
    packed = candidates.to(target)
    dim, dtype = packed.dim, packed.tokens.dtype
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

    piece_max, piece_arg = _piece_maxima(packed, queries, chunk, return_argmax)
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
    return MaxSimScores(passage, unit, packed.unit_passage, passage_argmax, unit_argmax)


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
    return result[0] if _tensor(query, "query").dim() == 2 else result


def unit_scores(query: ArrayLike, docs: Sequence[ArrayLike], units: Sequence[Sequence[UnitLike]]) -> list[np.ndarray]:
    """Unit scores of ``query`` (a ``[Q']`` encoding) for each passage's units.

    One float32 array per passage: ``[U_p]`` (``[B, U_p]`` for a batched query).

    >>> unit_scores([[1.0, 0.0]], [[[-1.0, 0.0], [-3.0, 1.0]]], [[[(0, 1)], [(1, 2)]]])
    [array([-1., -3.], dtype=float32)]
    """
    packed = pack(docs, units)
    result = granular_maxsim(query, packed).unit.cpu().numpy()
    if _tensor(query, "query").dim() == 2:
        result = result[0]
    return list(np.split(result, packed.unit_offsets[1:-1], axis=-1))
