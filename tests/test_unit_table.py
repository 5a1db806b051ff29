"""UnitTable (units as columns) and pack_token_ranges, against the Unit records and
pack_concatenated they stand for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agrame_vdb.errors import InvalidInputError, InvalidUnitError
from agrame_vdb.maxsim import granular_maxsim, pack_concatenated, pack_token_ranges
from agrame_vdb.unit_table import UnitTable
from agrame_vdb.units import Unit

KINDS = ("sentence", "proposition", "custom")


@st.composite
def passages_with_units(draw):
    """Token counts and per-passage units (unique (kind, index), sorted disjoint ranges)."""
    n_passages = draw(st.integers(1, 6))
    lengths, units = [], []
    for _ in range(n_passages):
        n = draw(st.integers(1, 12))
        lengths.append(n)
        mine = []
        for kind in draw(st.lists(st.sampled_from(KINDS), unique=True, max_size=3)):
            for index in draw(st.lists(st.integers(0, 40), unique=True, max_size=3)):
                cuts = sorted(draw(st.sets(st.integers(0, n), min_size=2, max_size=6)))
                ranges = tuple((a, b) for a, b in zip(cuts[::2], cuts[1::2]) if a < b)
                if not ranges:
                    continue
                spans = tuple((3 * a, 3 * b - 1) for a, b in ranges)
                mine.append(Unit(kind, index, spans, ranges))
        units.append(tuple(draw(st.permutations(mine))))
    return lengths, units


def _reference_ranges(units, kind):
    """(passage, unit index, token ranges) of every unit of ``kind``, in table order."""
    return [(p, u.index, list(u.token_ranges)) for p, us in enumerate(units) for u in us if u.kind == kind]


def _columns_as_list(cols):
    out = []
    for u in range(len(cols)):
        ranges = cols.ranges[cols.range_unit == u].tolist()
        out.append((int(cols.unit_passage[u]), int(cols.unit_index[u]), [tuple(r) for r in ranges]))
    return out


@settings(max_examples=150, deadline=None)
@given(passages_with_units())
def test_table_reads_back_the_units_it_was_built_from(case):
    _, units = case
    table = UnitTable.from_units(units)
    numbering = {k: i for i, k in enumerate(reversed(KINDS))}  # a store's own numbering
    stored = UnitTable.from_blobs([UnitTable.encode(us, numbering) for us in units], tuple(reversed(KINDS)))
    for t in (table, stored):
        assert len(t) == len(units)
        assert list(t) == [tuple(us) for us in units]
        for kind in (*KINDS, "absent"):
            assert _columns_as_list(t.token_ranges(kind)) == [
                (p, i, [tuple(r) for r in rs]) for p, i, rs in _reference_ranges(units, kind)
            ]
    for p, us in enumerate(units):
        for u in us:
            assert stored.unit(p, u.kind, u.index) == u


@settings(max_examples=150, deadline=None)
@given(passages_with_units(), st.sampled_from(KINDS))
def test_pack_token_ranges_scores_as_pack_concatenated(case, kind):
    lengths, units = case
    rng = np.random.default_rng(sum(lengths))
    tokens = rng.integers(-3, 4, size=(sum(lengths), 8)).astype(np.float32)  # exact in float32
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    q = rng.integers(-3, 4, size=(5, 8)).astype(np.float32)
    of_kind = [[u for u in us if u.kind == kind] for us in units]
    cols = UnitTable.from_units(units).token_ranges(kind)
    fast = pack_token_ranges(tokens, offsets, cols.unit_passage, cols.range_unit, cols.ranges)
    slow = pack_concatenated(tokens, offsets, of_kind)
    a, b = granular_maxsim(q, fast, q), granular_maxsim(q, slow, q)
    assert torch.equal(a.passage, b.passage)
    assert torch.equal(a.unit, b.unit) and torch.equal(a.unit_passage, b.unit_passage)
    assert fast.unit_offsets.tolist() == slow.unit_offsets.tolist()


def test_a_passages_units_are_built_once_and_only_when_asked_for():
    blob = UnitTable.encode((Unit("sentence", 0, ((0, 4),), ((1, 3),)),), {"sentence": 0})
    table = UnitTable.from_blobs([blob, blob], ("sentence",))
    assert table._built == {}
    first = table[1]
    assert table[1] is first and list(table._built) == [1]
    assert table[-1] is first and table[0:1] == (first,)
    with pytest.raises(IndexError):
        table[2]
    with pytest.raises(KeyError):
        table.unit(0, "sentence", 5)


@pytest.mark.parametrize(
    "blobs,kinds,message",
    [
        ([b"\x00" * 39], ("sentence",), "not whole rows"),
        ([np.array([[3, 0, 1, 0, 1]], "<i8").tobytes()], ("sentence",), "outside the 1 known kinds"),
    ],
)
def test_damaged_stored_units_are_a_typed_error(blobs, kinds, message):
    with pytest.raises(InvalidUnitError, match=message):
        UnitTable.from_blobs(blobs, kinds)


@pytest.mark.parametrize(
    "unit_passage,range_unit,ranges,message",
    [
        ([1, 0], [0, 1], [[0, 1], [0, 1]], "non-decreasing"),
        ([0, 0], [0], [[0, 1]], "unit 1 .* has no token range"),
        ([0], [1], [[0, 1]], "range_unit must be non-decreasing within"),
        ([0], [0], [[2, 5]], r"\[2, 5\) .* outside its passage's 3 tokens"),
        ([0], [0], [[1, 1]], "empty or outside"),
        ([0], [0, 0], [[0, 1]], "2 entries but there are 1 ranges"),
        ([[0]], [0], "ab", "integer arrays"),
    ],
)
def test_pack_token_ranges_rejects_bad_columns(unit_passage, range_unit, ranges, message):
    tokens = np.ones((5, 4), np.float32)
    with pytest.raises(InvalidInputError, match=message):
        pack_token_ranges(tokens, [0, 3, 5], unit_passage, range_unit, ranges)
