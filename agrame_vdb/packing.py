"""Packing candidates for MaxSim: token vectors concatenated, units as pieces.

Candidates are not padded to the longest passage. Their token vectors are
concatenated into one ``tokens`` matrix ``[T, dim]`` and ``offsets`` ``[P+1]`` says
where each passage starts: passage ``p`` is rows ``offsets[p]:offsets[p+1]``.
Units are token ranges relative to their passage, so they may overlap (a proposition
inside a sentence) and be non-contiguous. :func:`pack` cuts each passage into
*pieces* at every passage and unit-range boundary: every token lies in exactly one
piece, a passage is a run of pieces, and a unit is a set of pieces of its passage.
:func:`~agrame_vdb.maxsim.granular_maxsim` scores a :class:`PackedPassages`.

Units are numbered passage after passage, in the order given:
``unit_offsets[p]:unit_offsets[p+1]`` are the units of passage ``p``. Three ways in,
one packing: :func:`pack` (one matrix per passage), :func:`pack_concatenated`
(tokens already concatenated, units as records or ranges) and
:func:`pack_token_ranges` (units as integer columns, from a
:class:`~agrame_vdb.unit_table.UnitTable`).

>>> p = pack([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0]]], [[[(0, 1)], [(0, 2)]], []])
>>> p.offsets.tolist(), p.unit_offsets.tolist(), p.piece_bounds.tolist()
([0, 2, 3], [0, 2, 2], [0, 1, 2, 3])
>>> p.pair_unit.tolist(), p.pair_piece.tolist()
([0, 1, 1], [0, 0, 1])
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
from .token_rows import EncodedTokens
from .units import Unit

__all__ = [
    "ArrayLike",
    "UnitLike",
    "PackedPassages",
    "pack",
    "pack_concatenated",
    "pack_token_ranges",
    "select_passages",
    "float_tensor",
]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Any]]
#: A unit: a :class:`Unit` with token ranges, a list of ``(start, end)`` token
#: ranges, or one ``(start, end)`` pair; positions relative to its passage.
UnitLike = Union[Unit, Sequence[Sequence[int]], Sequence[int]]


@dataclass(frozen=True, slots=True, eq=False)
class PackedPassages:
    """Candidates in the packed layout, with the index tensors the kernel needs.

    Built by :func:`pack` or :func:`pack_concatenated`. ``tokens`` and the index
    tensors live on the scoring device; the ``*offsets`` and ``piece_bounds`` are
    host arrays (they steer the chunk loop).
    """

    tokens: torch.Tensor | EncodedTokens  # [T, dim]: a float matrix, or rows as stored
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
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype scoring runs in: the matrix's, or what encoded rows decode to."""
        if isinstance(self.tokens, EncodedTokens):
            return self.tokens.dtype or torch.float32
        return self.tokens.dtype

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


def float_tensor(value: ArrayLike, what: str) -> torch.Tensor:
    """``value`` as a floating-point tensor (a numpy array shared, not copied, unless read-only)."""
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
    tokens: ArrayLike | EncodedTokens, offsets: ArrayLike, device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[torch.Tensor | EncodedTokens, np.ndarray, np.ndarray]:
    """The checked ``[T, dim]`` matrix (or encoded rows) on ``device``, its int64
    offsets and passage lengths."""
    matrix: torch.Tensor | EncodedTokens
    if isinstance(tokens, EncodedTokens):
        matrix = tokens.to(device, dtype)
    else:
        matrix = float_tensor(tokens, "tokens")
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
    matrix: torch.Tensor | EncodedTokens,
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
    return _on_device(
        matrix, bounds, unit_offsets, piece_bounds,
        unit_passage=unit_passage, token_piece=token_piece, piece_passage=piece_passage,
        pair_unit=pair_unit, pair_piece=pair_piece,
    )


def _on_device(
    tokens: torch.Tensor | EncodedTokens,
    offsets: np.ndarray,
    unit_offsets: np.ndarray,
    piece_bounds: np.ndarray,
    **index: np.ndarray,
) -> PackedPassages:
    """A packing whose index arrays (``unit_passage``, ``token_piece``,
    ``piece_passage``, ``pair_unit``, ``pair_piece``) go to the tokens' device as int64."""
    on = tokens.device
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)).to(on) for k, v in index.items()}
    return PackedPassages(tokens=tokens, offsets=offsets, unit_offsets=unit_offsets, piece_bounds=piece_bounds, **tensors)


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
    mats = [float_tensor(d, f"docs[{i}]") for i, d in enumerate(docs)]
    for i, m in enumerate(mats):
        if m.dim() != 2 or m.shape[0] == 0:
            raise InvalidInputError(f"docs[{i}] must be a non-empty [n, dim] matrix, got shape {tuple(m.shape)}")
        if m.shape[1] != mats[0].shape[1]:
            raise InvalidInputError(f"docs[{i}] has dim {m.shape[1]}, docs[0] has dim {mats[0].shape[1]}")
    common = dtype or functools.reduce(torch.promote_types, (m.dtype for m in mats))
    tokens = torch.cat([m.to(device=mats[0].device, dtype=common) for m in mats])  # then one copy to `device`
    offsets = np.concatenate([[0], np.cumsum([m.shape[0] for m in mats])])
    return pack_concatenated(tokens, offsets, units, device=device)


def select_passages(
    packed: PackedPassages, keep: ArrayLike, tokens: torch.Tensor | EncodedTokens | None = None
) -> tuple[PackedPassages, np.ndarray]:
    """The packing of passages ``keep`` (indices into ``packed``, increasing) alone,
    with all their units, as :func:`pack` of those passages would give; and the
    index in ``packed`` of each unit kept. ``tokens`` are the kept passages' token
    vectors, one after another (default: their rows of ``packed.tokens``), e.g. the
    exact copy a binary first pass reranks with.

    >>> p = pack([[[1.0]], [[2.0], [3.0]], [[4.0]]], [[[(0, 1)]], [[(0, 1)], [(1, 2)]], [[(0, 1)]]])
    >>> q, units = select_passages(p, [1, 2])
    >>> q.tokens.tolist(), q.offsets.tolist(), q.unit_offsets.tolist(), units.tolist()
    ([[2.0], [3.0], [4.0]], [0, 2, 3], [0, 2, 3], [1, 2, 3])
    """
    kept = np.asarray(keep, dtype=np.int64).reshape(-1)
    n = packed.n_passages
    if len(kept) == 0 or kept[0] < 0 or kept[-1] >= n or (np.diff(kept) <= 0).any():
        raise InvalidInputError(f"keep must be increasing passage indices within [0, {n}), got {kept.tolist()}")
    lengths = np.diff(packed.offsets)[kept]
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if tokens is None:
        if isinstance(packed.tokens, EncodedTokens):
            tokens = packed.tokens.select(kept)
        else:
            index = np.concatenate([np.arange(packed.offsets[k], packed.offsets[k + 1]) for k in kept])
            tokens = packed.tokens.index_select(0, torch.from_numpy(index).to(packed.device))
    if int(tokens.shape[0]) != int(offsets[-1]):
        raise InvalidInputError(f"tokens has {int(tokens.shape[0])} rows, the kept passages {int(offsets[-1])}")
    # the kept passages' pieces, in order; a piece keeps its length
    new_passage = np.full(n, -1, dtype=np.int64)
    new_passage[kept] = np.arange(len(kept))
    piece_passage = packed.piece_passage.cpu().numpy()
    piece_keep = np.flatnonzero(new_passage[piece_passage] >= 0)
    piece_len = np.diff(packed.piece_bounds)[piece_keep]
    piece_bounds = np.zeros(len(piece_keep) + 1, dtype=np.int64)
    np.cumsum(piece_len, out=piece_bounds[1:])
    new_piece = np.full(len(piece_passage), -1, dtype=np.int64)
    new_piece[piece_keep] = np.arange(len(piece_keep))
    # their units, numbered passage after passage as before
    unit_passage = packed.unit_passage.cpu().numpy()
    unit_keep = np.flatnonzero(new_passage[unit_passage] >= 0)
    new_unit = np.full(len(unit_passage), -1, dtype=np.int64)
    new_unit[unit_keep] = np.arange(len(unit_keep))
    unit_offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(np.diff(packed.unit_offsets)[kept], out=unit_offsets[1:])
    pair_unit, pair_piece = packed.pair_unit.cpu().numpy(), packed.pair_piece.cpu().numpy()
    pair_keep = new_unit[pair_unit] >= 0
    return _on_device(
        tokens, offsets, unit_offsets, piece_bounds,
        unit_passage=new_passage[unit_passage[unit_keep]],
        token_piece=np.repeat(np.arange(len(piece_keep), dtype=np.int64), piece_len),
        piece_passage=new_passage[piece_passage[piece_keep]],
        pair_unit=new_unit[pair_unit[pair_keep]],
        pair_piece=new_piece[pair_piece[pair_keep]],
    ), unit_keep
