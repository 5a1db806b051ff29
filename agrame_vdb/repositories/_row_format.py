"""How the token copy lays out a passage's token vectors as bytes, per storage code.

- ``f4``: little-endian float32, ``dim`` values a token (exact).
- ``f2``: little-endian float16 (float16 collections: what the engine stores too).
- ``i8``: int8 collections: per token, a little-endian float32 scale ``s`` (the
  row's largest absolute value) then ``dim`` int8 codes ``q = round(x / s * 127)``,
  so a token is ``dim + 4`` bytes; read back as ``q * (s / 127)`` in float32.
  The error of a value is at most ``s / 254`` (half a step), plus float32
  rounding of ``s / 127`` and of the product (each 2**-24 relative): within
  ``s * (1 / 254 + 2.4e-7)``, so ``1 / 254 + 2.4e-7`` for values in [-1, 1]
  (:data:`I8_ATOL`). A row of zeros has ``s = 0`` and reads back as zeros.

>>> import numpy as np
>>> x = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]], dtype=np.float32)
>>> fmt = RowFormat("i8", 3)
>>> raw = np.frombuffer(fmt.encode(x), dtype=np.uint8)
>>> len(raw) == 2 * fmt.row_bytes == 14
True
>>> bool(np.abs(fmt.expand([raw]) - x).max() <= I8_ATOL)
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["CODES", "I8_ATOL", "RowFormat"]

CODES = ("f4", "f2", "i8")
#: the largest error of an ``i8`` value in [-1, 1] once read back
I8_ATOL = 1 / 254 + 2.4e-7
_FLOATS = {"f4": np.dtype("<f4"), "f2": np.dtype("<f2")}


def _half_to_single(x: np.ndarray) -> np.ndarray:
    """float16 -> float32, exact (every value, NaN stays NaN), through torch's vectorised
    conversion: numpy's took ~18 ms for a fetch of 200 128-d passages (3.3M values) here,
    torch's ~1.6 ms (``benchmarks/scale.py``). torch is imported here, on the first read
    of a float16 row, so opening a store does not load it."""
    import torch

    return torch.from_numpy(x).float().numpy()


class RowFormat:
    """The byte layout of ``code`` rows of ``dim`` values: encode, and read back as float32."""

    def __init__(self, code: str, dim: int) -> None:
        if code not in CODES:
            raise ValueError(f"unknown token row code {code!r}")
        self.code = code
        self.dim = dim
        if code == "i8":
            self.dtype = np.dtype([("scale", "<f4"), ("q", "i1", (dim,))])  # packed: dim + 4 bytes
        else:
            self.dtype = np.dtype((_FLOATS[code], (dim,)))
        self.row_bytes = self.dtype.itemsize

    def encode(self, tokens: np.ndarray) -> bytes:
        """The bytes of ``[n, dim]`` vectors (float32 values)."""
        if self.code != "i8":
            return np.ascontiguousarray(tokens, dtype=self.dtype.base).tobytes()
        x = np.asarray(tokens, dtype=np.float32).reshape(-1, self.dim)
        rows = np.empty(len(x), dtype=self.dtype)
        scale = np.abs(x).max(axis=1) if x.size else np.zeros(len(x), np.float32)
        rows["scale"] = scale
        step = scale.astype(np.float64) / 127
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.rint(np.where(step[:, None] > 0, x / step[:, None], 0.0))
        rows["q"] = np.clip(q, -127, 127)  # |x| <= s: only float rounding could pass 127
        return rows.tobytes()

    def view(self, part: np.ndarray) -> np.ndarray:
        """A passage's raw bytes (uint8) as its stored rows: ``[n, dim]`` floats, or
        ``n`` records of ``(scale, q)``."""
        rows = part.view(self.dtype)
        return rows if self.code == "i8" else rows.reshape(-1, self.dim)

    def expand(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """One C-contiguous float32 ``[sum n, dim]`` array of passages given as raw bytes
        (uint8), in one pass over them."""
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.code == "f4":
            return np.concatenate([p.view(self.dtype.base) for p in parts]).reshape(-1, self.dim)
        if self.code == "f2":  # gathered as float16 (a copy of bytes), widened in one pass
            return _half_to_single(np.concatenate([p.view(self.dtype.base) for p in parts])).reshape(-1, self.dim)
        rows = (parts[0] if len(parts) == 1 else np.concatenate(parts)).view(self.dtype)
        step = rows["scale"] / np.float32(127)
        return np.multiply(rows["q"], step[:, None], dtype=np.float32)
