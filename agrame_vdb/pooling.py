"""Unit-aware token pooling: fewer token rows per passage, unit boundaries kept.

Token pooling (Clavié et al., "Reducing the footprint of multi-vector retrieval with
minimal performance impact via token pooling", arXiv 2409.14683) merges similar token
vectors of a passage by hierarchical clustering (Ward linkage) and stores each
cluster's mean. Here a merge never crosses a unit boundary, so every sentence and
proposition is still scored over exactly its own tokens:

- the passage's rows are cut into **cells**: the tokens contained in the same set of
  units (a token of sentence 0 and proposition 2 is in cell {s0, p2}; the text outside
  every unit is one cell). ``protected`` rows (the indexer's: ``[CLS]``, ``[D]``,
  ``[SEP]``, which belong to no unit) are cells of their own, kept as they are;
- each cell of ``n`` tokens is clustered to ``ceil(n / factor)`` clusters by Ward's
  method on the token vectors (:func:`ward_clusters`, agglomerative, deterministic:
  ties go to the lowest positions);
- a pooled row is its cluster's mean, L2-normalised (a cluster of one token is that
  token's row unchanged);
- rows are reordered so every cell's rows are contiguous (cells in the order of their
  first token, clusters in the order of their first token), and each unit's token
  ranges are rewritten to the rows of its cells (a unit is the union of its cells).

A unit's score over the pooled rows is therefore MaxSim over its own pooled tokens:
no row of another unit's tokens can win its max. ``factor`` 1 returns the input itself.

>>> import numpy as np
>>> from agrame_vdb.units import Unit
>>> x = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 2, 3]]  # rows 0,1 alike, 3,4 alike
>>> units = (Unit("sentence", 0, ((0, 5),), ((0, 3),)), Unit("sentence", 1, ((6, 9),), ((3, 6),)))
>>> rows, pooled = pool_unit_tokens(x, units, 2)
>>> rows.shape, [u.token_ranges for u in pooled]
((4, 4), [((0, 2),), ((2, 4),)])
>>> [g.tolist() for g in token_groups(x, units, 2)]
[[0, 1], [2], [3, 4], [5]]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import InvalidInputError, InvalidUnitError, InvalidVectorError
from .units import Unit

__all__ = ["check_factor", "token_cells", "ward_clusters", "token_groups", "pool_unit_tokens", "pool_encoded"]


def check_factor(factor: Any) -> int:
    """``factor`` as the pooling factor it must be: an int >= 1 (1: no pooling).

    >>> check_factor(2)
    2
    >>> check_factor(0)
    Traceback (most recent call last):
    ...
    agrame_vdb.errors.InvalidInputError: token pooling factor must be an int >= 1 (1: no pooling), got 0
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise InvalidInputError(f"token pooling factor must be an int >= 1 (1: no pooling), got {factor!r}")
    return int(factor)


def _matrix(vectors: Any) -> np.ndarray:
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1 or not np.issubdtype(arr.dtype, np.floating):
        raise InvalidVectorError(
            f"token vectors must be a floating-point [n_tokens >= 1, dim] array, got {arr.dtype} {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise InvalidVectorError("token vectors hold NaN or infinite values")
    return arr


def token_cells(n_tokens: int, units: Sequence[Unit], protected: Iterable[int] = ()) -> list[np.ndarray]:
    """The cells of a passage of ``n_tokens`` rows: the positions contained in the same
    set of ``units``, each cell sorted, cells in the order of their first position; a
    ``protected`` position is a cell of its own.

    >>> u = (Unit("sentence", 0, ((0, 3),), ((1, 4),)), Unit("proposition", 0, ((0, 1),), ((1, 2), (3, 4))))
    >>> [c.tolist() for c in token_cells(5, u, protected=[0])]
    [[0], [1, 3], [2], [4]]
    """
    member = np.zeros((n_tokens, len(units)), dtype=bool)
    for j, u in enumerate(units):
        if not isinstance(u, Unit):
            raise InvalidUnitError(f"units must be Unit records, got {type(u).__name__}")
        if not u.token_ranges:
            raise InvalidUnitError(f"{u.kind} {u.index} has no token ranges; align units with align_units() first")
        if u.token_ranges[-1][1] > n_tokens:
            raise InvalidUnitError(
                f"{u.kind} {u.index} token range ends at {u.token_ranges[-1][1]}, past the passage's {n_tokens} rows"
            )
        for s, e in u.token_ranges:
            member[s:e, j] = True
    kept = sorted({int(p) for p in protected})
    if kept and (kept[0] < 0 or kept[-1] >= n_tokens):
        raise InvalidInputError(f"protected positions must lie in [0, {n_tokens}), got {kept[0]}..{kept[-1]}")
    if any(member[p].any() for p in kept):
        raise InvalidInputError("a protected position lies inside a unit: only rows outside every unit can be kept apart")
    # a unit-membership signature per row; protected rows get a signature of their own
    keys = [member[t].tobytes() for t in range(n_tokens)]
    for p in kept:
        keys[p] = b"protected:%d" % p
    cells: dict[bytes, list[int]] = {}
    for t, key in enumerate(keys):  # dicts keep insertion order: cells by their first position
        cells.setdefault(key, []).append(t)
    return [np.asarray(c, dtype=np.int64) for c in cells.values()]


def ward_clusters(x: np.ndarray, k: int) -> list[np.ndarray]:
    """``x``'s rows clustered into ``k`` clusters by Ward's agglomerative method (each
    step merges the two clusters whose union adds the least to the within-cluster sum
    of squares, ``|A||B|/(|A|+|B|)·‖c_A − c_B‖²``; ties: the lowest pair of first rows).
    Clusters are sorted row indices, in the order of their first row.

    >>> [c.tolist() for c in ward_clusters(np.array([[0.0], [10.0], [0.1], [9.0]]), 2)]
    [[0, 2], [1, 3]]
    """
    n = len(x)
    if k >= n:
        return [np.array([i], dtype=np.int64) for i in range(n)]
    if k <= 1:
        return [np.arange(n, dtype=np.int64)]
    c = np.asarray(x, dtype=np.float64).copy()  # cluster centroids, a cluster kept at its lowest row
    size = np.ones(n)
    sq = np.einsum("ij,ij->i", c, c)
    cost = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (c @ c.T), 0.0) * 0.5
    np.fill_diagonal(cost, np.inf)
    alive = np.ones(n, dtype=bool)
    members: list[list[int]] = [[i] for i in range(n)]
    for _ in range(n - k):
        i, j = divmod(int(np.argmin(cost)), n)  # cost is symmetric: the first minimum has i < j
        total = size[i] + size[j]
        c[i] = (size[i] * c[i] + size[j] * c[j]) / total
        size[i] = total
        members[i].extend(members[j])
        alive[j] = False
        cost[j, :] = cost[:, j] = np.inf
        diff = c - c[i]
        row = size[i] * size / (size[i] + size) * np.einsum("ij,ij->i", diff, diff)
        row[~alive] = np.inf
        row[i] = np.inf
        cost[i, :] = cost[:, i] = row
    return [np.asarray(sorted(members[i]), dtype=np.int64) for i in np.flatnonzero(alive)]


def token_groups(vectors: Any, units: Sequence[Unit], factor: int, *, protected: Iterable[int] = ()) -> list[np.ndarray]:
    """The original positions each pooled row is the mean of, in pooled row order: each
    cell (:func:`token_cells`) of ``n`` positions cut by :func:`ward_clusters` into
    ``ceil(n / factor)`` groups; protected cells stay single."""
    factor = check_factor(factor)
    arr = _matrix(vectors)
    groups: list[np.ndarray] = []
    for cell in token_cells(arr.shape[0], units, protected):
        k = math.ceil(len(cell) / factor)
        groups.extend(cell[g] for g in ward_clusters(arr[cell], k))
    return groups


def pool_unit_tokens(
    vectors: Any, units: Sequence[Unit], factor: int, *, protected: Iterable[int] = ()
) -> tuple[np.ndarray, tuple[Unit, ...]]:
    """``(rows, units)``: the passage's token ``vectors`` pooled by ``factor`` within
    its cells (see the module docs), and its ``units`` with token ranges over those
    rows (character spans unchanged). ``factor`` 1 returns ``vectors`` and ``units``
    themselves. A pure function: the same input gives the same rows."""
    factor = check_factor(factor)
    units = tuple(units)
    if factor == 1:
        token_cells(_matrix(vectors).shape[0], units, protected)  # the same checks
        return vectors, units
    arr = _matrix(vectors)
    groups = token_groups(arr, units, factor, protected=protected)
    out = np.empty((len(groups), arr.shape[1]), dtype=arr.dtype)
    row_of = np.empty(arr.shape[0], dtype=np.int64)  # the pooled row of each original position
    for r, g in enumerate(groups):
        row_of[g] = r
        if len(g) == 1:
            out[r] = arr[g[0]]
            continue
        mean = arr[g].astype(np.float64).mean(axis=0)
        norm = float(np.linalg.norm(mean))
        out[r] = mean / norm if norm > 0 else arr[g[0]]  # opposite tokens cancelled: keep the first
    pooled = []
    for u in units:
        rows = np.unique(row_of[[t for s, e in u.token_ranges for t in range(s, e)]])
        pooled.append(dataclasses.replace(u, token_ranges=tuple((int(r), int(r) + 1) for r in rows)))
    return out, tuple(pooled)


def pool_encoded(encoded: Any, factor: int) -> tuple[np.ndarray, tuple[Unit, ...]]:
    """An :class:`~agrame_vdb.encoder.EncodedPassage`'s token vectors and units pooled by
    ``factor``, its special rows (``[CLS]``, markers, ``[SEP]``: no character span)
    kept apart and unchanged."""
    protected = [i for i, off in enumerate(encoded.token_offsets) if off is None]
    return pool_unit_tokens(encoded.token_vectors, encoded.units, factor, protected=protected)
