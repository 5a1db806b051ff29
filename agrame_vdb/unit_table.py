"""The units of many passages as one integer table: what scoring reads, without objects.

Scoring needs, of each candidate's units, only the token ranges of one kind. Built
as :class:`~agrame_vdb.units.Unit` records, the ~1,000 units of 200 candidates
cost ~3 ms to rebuild from storage and ~1 ms more to turn back into index arrays
for :mod:`~agrame_vdb.maxsim`. A :class:`UnitTable` holds them as one ``int64``
array instead, filled from per-passage byte strings in one pass
(:meth:`UnitTable.from_blobs`), and answers :meth:`UnitTable.token_ranges` with
numpy alone; a passage's ``Unit`` records are built only when asked for (the
winners' results), so it still reads as a sequence of per-passage unit tuples.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from .errors import InvalidUnitError
from .units import Unit, trusted_unit

__all__ = ["UnitRanges", "UnitTable"]

#: the ``what`` column: a character span or a token range
CHAR_SPAN, TOKEN_RANGE = 0, 1
# columns of a row: passage, kind, unit index, what, start, end
_P, _KIND, _INDEX, _WHAT, _START, _END = range(6)
_STORED = 5  # a passage's blob has every column but the passage


@dataclass(frozen=True, slots=True)
class UnitRanges:
    """The units of one kind, as columns (what :func:`~agrame_vdb.maxsim.pack_token_ranges` takes).

    Unit ``u`` belongs to passage ``unit_passage[u]`` and has index ``unit_index[u]``;
    token range ``r`` (``ranges[r]``, ``[start, end)`` in its passage) belongs to
    unit ``range_unit[r]``. Units are in passage order, ranges in unit order.
    """

    unit_passage: np.ndarray
    unit_index: np.ndarray
    range_unit: np.ndarray
    ranges: np.ndarray

    def __len__(self) -> int:
        return len(self.unit_passage)


class UnitTable(Sequence[tuple[Unit, ...]]):
    """Units of ``n_passages`` passages: ``rows`` is int64 ``[R, 6]``, one row per
    character span or token range: passage, kind (a position in ``kinds``), unit
    index, what (0 character span, 1 token range), start, end. A passage's rows are
    together and in passage order; a unit's rows are together, its character spans
    before its token ranges.

    >>> t = UnitTable.from_units([(Unit("sentence", 0, ((0, 3),), ((2, 4),)),), ()])
    >>> len(t), t[0][0].token_ranges, t[1]
    (2, ((2, 4),), ())
    >>> r = t.token_ranges("sentence")
    >>> r.unit_passage.tolist(), r.ranges.tolist(), len(t.token_ranges("proposition"))
    ([0], [[2, 4]], 0)
    """

    __slots__ = ("kinds", "rows", "n_passages", "_bounds", "_built")

    def __init__(self, kinds: Sequence[str], rows: np.ndarray, n_passages: int) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 2 or rows.shape[1] != 6:
            raise InvalidUnitError(f"a unit table is an int64 [R, 6] array, got shape {rows.shape}")
        passages = rows[:, _P]
        if len(rows) and (passages[0] < 0 or passages[-1] >= n_passages or (np.diff(passages) < 0).any()):
            raise InvalidUnitError(f"a unit table's passage column must be sorted within [0, {n_passages})")
        self.kinds = tuple(kinds)
        self.rows = rows
        self.n_passages = n_passages
        self._bounds = np.searchsorted(passages, np.arange(n_passages + 1))
        self._built: dict[int, tuple[Unit, ...]] = {}

    # ----- building

    @classmethod
    def from_units(cls, units: Sequence[Sequence[Unit]]) -> UnitTable:
        """The table of passages' ``Unit`` records."""
        kind_ids: dict[str, int] = {}
        rows: list[tuple[int, int, int, int, int, int]] = []
        for p, passage_units in enumerate(units):
            for u in passage_units:
                k = kind_ids.setdefault(u.kind, len(kind_ids))
                rows.extend((p, k, u.index, CHAR_SPAN, s, e) for s, e in u.char_spans)
                rows.extend((p, k, u.index, TOKEN_RANGE, s, e) for s, e in u.token_ranges)
        table = cls(tuple(kind_ids), np.array(rows, dtype=np.int64).reshape(-1, 6), len(units))
        for p, passage_units in enumerate(units):  # already built: kept
            table._built[p] = tuple(passage_units)
        return table

    @staticmethod
    def encode(units: Sequence[Unit], kind_ids: Mapping[str, int]) -> bytes:
        """One passage's units as bytes (int64 rows without the passage column), its
        kinds numbered by ``kind_ids`` (a store's own numbering)."""
        rows = []
        for u in units:
            k = kind_ids[u.kind]
            rows.extend((k, u.index, CHAR_SPAN, s, e) for s, e in u.char_spans)
            rows.extend((k, u.index, TOKEN_RANGE, s, e) for s, e in u.token_ranges)
        return np.array(rows, dtype="<i8").reshape(-1, _STORED).tobytes()

    @classmethod
    def from_blobs(cls, blobs: Sequence[bytes], kinds: Sequence[str]) -> UnitTable:
        """The table of passages whose units :meth:`encode` wrote with kind ``i`` = ``kinds[i]``."""
        sizes = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        if (sizes % (8 * _STORED)).any():
            bad = int(np.flatnonzero(sizes % (8 * _STORED))[0])
            raise InvalidUnitError(f"stored units of passage {bad} are {sizes[bad]} bytes: not whole rows")
        stored = np.frombuffer(b"".join(blobs), dtype="<i8").reshape(-1, _STORED)
        rows = np.empty((len(stored), 6), dtype=np.int64)
        rows[:, _P] = np.repeat(np.arange(len(blobs), dtype=np.int64), sizes // (8 * _STORED))
        rows[:, 1:] = stored
        if len(rows) and (rows[:, _KIND].min() < 0 or rows[:, _KIND].max() >= len(kinds)):
            raise InvalidUnitError(f"stored units name kind ids outside the {len(kinds)} known kinds")
        return cls(kinds, rows, len(blobs))

    # ----- reading

    def token_ranges(self, kind: str) -> UnitRanges:
        """The token ranges of every unit of ``kind``, as columns."""
        rows = self.rows
        if kind in self.kinds:
            k = self.kinds.index(kind)
            sel = rows[(rows[:, _KIND] == k) & (rows[:, _WHAT] == TOKEN_RANGE)]
        else:
            sel = rows[:0]
        # a new unit wherever the passage or the unit index changes ((kind, index) is unique in a passage)
        new = np.ones(len(sel), dtype=bool)
        new[1:] = (sel[1:, _P] != sel[:-1, _P]) | (sel[1:, _INDEX] != sel[:-1, _INDEX])
        first = np.flatnonzero(new)
        return UnitRanges(
            unit_passage=sel[first, _P],
            unit_index=sel[first, _INDEX],
            range_unit=np.cumsum(new) - 1,
            ranges=np.ascontiguousarray(sel[:, _START:]),
        )

    def unit(self, p: int, kind: str, index: int) -> Unit:
        """Passage ``p``'s unit ``kind`` ``index``."""
        for u in self[p]:
            if u.kind == kind and u.index == index:
                return u
        raise KeyError(f"passage {p} has no {kind} {index}")

    def __len__(self) -> int:
        return self.n_passages

    @overload
    def __getitem__(self, i: int) -> tuple[Unit, ...]: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[tuple[Unit, ...], ...]: ...
    def __getitem__(self, i: int | slice) -> tuple[Unit, ...] | tuple[tuple[Unit, ...], ...]:
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(self.n_passages)))
        if i < 0:
            i += self.n_passages
        if not 0 <= i < self.n_passages:
            raise IndexError(f"passage {i} of a unit table of {self.n_passages}")
        built = self._built.get(i)
        if built is None:
            built = self._built[i] = self._build(i)
        return built

    def __iter__(self) -> Iterator[tuple[Unit, ...]]:
        return (self[i] for i in range(self.n_passages))

    def _build(self, p: int) -> tuple[Unit, ...]:
        rows = self.rows[self._bounds[p] : self._bounds[p + 1]].tolist()
        units: list[Unit] = []
        j = 0
        while j < len(rows):
            _, kind, index = rows[j][:3]
            chars, tokens = [], []
            while j < len(rows) and rows[j][1] == kind and rows[j][2] == index:
                (chars if rows[j][3] == CHAR_SPAN else tokens).append((rows[j][4], rows[j][5]))
                j += 1
            units.append(trusted_unit(self.kinds[kind], index, tuple(chars), tuple(tokens)))
        return tuple(units)

    def __repr__(self) -> str:
        return f"UnitTable({self.n_passages} passages, {len(self.rows)} rows, kinds {list(self.kinds)})"
