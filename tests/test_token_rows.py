"""The token copy's row forms (``agrame_vdb.token_rows``) against independent numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from agrame_vdb.token_rows import I8_ATOL, RowFormat


def _int8_reference(x: np.ndarray) -> np.ndarray:
    """Symmetric int8 per row, in float64: s = max |x|, q = round(x / s * 127), q * s / 127."""
    x = x.astype(np.float64)
    s = np.abs(x).max(axis=1, keepdims=True)
    q = np.round(np.divide(x, s, out=np.zeros_like(x), where=s > 0) * 127)
    return q * s / 127


def _roundtrip(fmt: RowFormat, x: np.ndarray) -> np.ndarray:
    raw = np.frombuffer(fmt.encode(x), dtype=np.uint8)
    assert len(raw) == len(x) * fmt.row_bytes
    return fmt.expand([raw])


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: _unit(rng, 130, 128),
        lambda rng: rng.uniform(-1, 1, (50, 96)).astype(np.float32),
        lambda rng: rng.choice([-1.0, 1.0], (20, 64)).astype(np.float32),
        lambda rng: (rng.standard_normal((20, 32)) * 1e3).astype(np.float32),
        lambda rng: (rng.standard_normal((20, 32)) * 1e-30).astype(np.float32),
        lambda rng: np.vstack([np.zeros((2, 16)), rng.uniform(-1, 1, (3, 16)), np.eye(16)[:2]]).astype(np.float32),
        lambda rng: rng.uniform(-1, 1, (1, 1)).astype(np.float32),
    ],
    ids=["unit-128d", "uniform", "plus-minus-one", "large", "tiny", "zeros-and-one-hot", "one-value"],
)
def test_int8_rows_read_back_as_the_reference_within_half_a_step(make):
    x = make(np.random.default_rng(0))
    fmt = RowFormat("i8", x.shape[1])
    assert fmt.row_bytes == x.shape[1] + 4
    got = _roundtrip(fmt, x)
    assert got.dtype == np.float32 and got.shape == x.shape and got.flags.c_contiguous and got.flags.writeable
    s = np.abs(x.astype(np.float64)).max(axis=1, keepdims=True)
    assert np.all(np.abs(got - _int8_reference(x)) <= 2.4e-7 * s)  # the same codes: only float32 rounding apart
    assert np.all(np.abs(got - x) <= s * I8_ATOL)  # half a step, plus rounding
    assert not np.any(got[s[:, 0] == 0])  # a row of zeros stays zeros


def test_int8_error_bound_for_values_in_minus_one_one():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.uniform(-1, 1, (2000, 128)), _unit(rng, 2000, 128)]).astype(np.float32)
    err = np.abs(_roundtrip(RowFormat("i8", 128), x) - x).max()
    assert 1 / 300 < err <= I8_ATOL  # the bound is tight: some value is close to half a step off


@pytest.mark.parametrize("code, dtype", [("f4", np.float32), ("f2", np.float16)])
def test_float_rows_read_back_as_numpy_casts(code, dtype):
    x = _unit(np.random.default_rng(2), 40, 24)
    got = _roundtrip(RowFormat(code, 24), x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x.astype(dtype).astype(np.float32))


def test_every_float16_value_reads_back_as_numpys_cast():
    """All 65,536 float16 bit patterns (subnormals, infinities, NaNs), as numpy widens
    them: the same float32 bits, NaN as NaN."""
    half = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(-1, 64)
    got = RowFormat("f2", 64).expand([half.view(np.uint8).reshape(-1)])
    want = half.astype(np.float32)
    assert got.dtype == np.float32 and got.shape == want.shape and got.flags.c_contiguous and got.flags.writeable
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("code", ["f4", "f2", "i8"])
def test_expanding_several_passages_equals_expanding_each(code):
    rng = np.random.default_rng(3)
    fmt = RowFormat(code, 16)
    passages = [rng.uniform(-1, 1, (n, 16)).astype(np.float32) for n in (3, 1, 7)]
    parts = [np.frombuffer(fmt.encode(p), dtype=np.uint8) for p in passages]
    np.testing.assert_array_equal(fmt.expand(parts), np.concatenate([fmt.expand([p]) for p in parts]))
    assert fmt.expand([]).shape == (0, 16)


def test_an_unknown_code_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        RowFormat("u8", 4)


def test_the_module_examples_hold():
    import doctest

    from agrame_vdb import token_rows

    result = doctest.testmod(token_rows)
    assert result.failed == 0 and result.attempted > 0
