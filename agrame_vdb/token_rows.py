"""Token vectors as stored: the row forms of each storage code, and a batch of rows
scored as it is (:class:`EncodedTokens`), expanded a chunk at a time.

Row forms (``RowFormat``), per token of ``dim`` values:

- ``f4``: little-endian float32 (exact), ``4 * dim`` bytes.
- ``f2``: little-endian float16 (float16 collections), ``2 * dim`` bytes.
- ``i8``: int8 collections: a little-endian float32 scale ``s`` (the row's largest
  absolute value) then ``dim`` int8 codes ``q = round(x / s * 127)``, so a token is
  ``dim + 4`` bytes; read back as ``q * (s / 127)`` in float32. The error of a value
  is at most ``s / 254`` (half a step), plus float32 rounding of ``s / 127`` and of
  the product (each 2**-24 relative): within ``s * (1 / 254 + 2.4e-7)``, so
  ``1 / 254 + 2.4e-7`` for values in [-1, 1] (:data:`I8_ATOL`). A row of zeros has
  ``s = 0`` and reads back as zeros.
- ``b1``: binary collections: a passage's ``n`` tokens as their sign bits first
  (``ceil(dim / 8)`` bytes a token: bit ``j`` is ``x_j > 0``, packed as
  ``np.packbits``, first value in the high bit), then the same ``n`` tokens in the
  ``i8`` form, the rerank copy: ``ceil(dim / 8) + dim + 4`` bytes a token. The
  first MaxSim pass scores every candidate against the sign vectors, ``+-1 /
  sqrt(dim)`` (unit norm, so scores stay on the cosine scale; a common factor does
  not change a ranking); the top candidates are scored again on the ``i8`` rows.
  Read back (``expand``), a ``b1`` row gives its ``i8`` values.

>>> x = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]], dtype=np.float32)
>>> fmt = RowFormat("i8", 3)
>>> raw = np.frombuffer(fmt.encode(x), dtype=np.uint8)
>>> len(raw) == 2 * fmt.row_bytes == 14
True
>>> bool(np.abs(fmt.expand([raw]) - x).max() <= I8_ATOL)
True
>>> b = RowFormat("b1", 3)
>>> enc = b.encoded([np.frombuffer(b.encode(x), dtype=np.uint8)])
>>> enc.rows.tolist(), np.sign(enc.signs()).tolist()  # 0b10100000: x_0 and x_2 are > 0
([[160], [0]], [[1.0, -1.0, 1.0], [-1.0, -1.0, -1.0]])
>>> np.array_equal(enc.expand(), fmt.expand([raw]))  # the rerank copy: the i8 values
True
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where a batch is scored, not by the light commands
    import torch

__all__ = ["CODES", "ENCODED_CODES", "I8_ATOL", "STORAGE_CODES", "RowFormat", "EncodedTokens", "row_bytes", "sign_bytes"]

CODES = ("f4", "f2", "i8", "b1")
#: the row form of each collection storage type (``CollectionSchema.dtype``)
STORAGE_CODES = {"float32": "f4", "float16": "f2", "int8": "i8", "binary": "b1"}
#: the codes an :class:`EncodedTokens` batch holds (``f4`` batches travel as float32 arrays)
ENCODED_CODES = ("f2", "i8", "b1")
#: the largest error of an ``i8`` value in [-1, 1] once read back
I8_ATOL = 1 / 254 + 2.4e-7
_FLOATS = {"f4": np.dtype("<f4"), "f2": np.dtype("<f2")}
_LITTLE = sys.byteorder == "little"


def sign_bytes(dim: int) -> int:
    """Bytes of one token's sign bits."""
    return (dim + 7) // 8


def row_bytes(storage: str, dim: int) -> int:
    """The bytes one token row of ``dim`` values takes in a collection of ``storage``
    (4d, 2d, d + 4, or d/8 + d + 4 for binary's sign bits and int8 rerank copy).

    >>> [row_bytes(s, 384) for s in ("float32", "float16", "int8", "binary")]
    [1536, 768, 388, 436]
    """
    return RowFormat(STORAGE_CODES[storage], dim).row_bytes


def _i8_dtype(dim: int) -> np.dtype:
    return np.dtype([("scale", "<f4"), ("q", "i1", (dim,))])  # packed: dim + 4 bytes


def half_to_single(x: np.ndarray) -> np.ndarray:
    """float16 -> float32, exact (every value, NaN stays NaN), through torch's vectorised
    conversion: numpy's took ~18 ms for a fetch of 200 128-d passages (3.3M values) here,
    torch's ~1.6 ms (``benchmarks/scale.py``). torch is imported on the first float16
    read, so opening a store does not load it."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).float().numpy()


class RowFormat:
    """The byte layout of ``code`` rows of ``dim`` values: encode, and read back as float32."""

    def __init__(self, code: str, dim: int) -> None:
        if code not in CODES:
            raise ValueError(f"unknown token row code {code!r}")
        self.code = code
        self.dim = dim
        if code in ("i8", "b1"):
            self.dtype = _i8_dtype(dim)
        else:
            self.dtype = np.dtype((_FLOATS[code], (dim,)))
        self.sign_bytes = sign_bytes(dim) if code == "b1" else 0
        self.row_bytes = self.dtype.itemsize + self.sign_bytes

    def encode(self, tokens: np.ndarray) -> bytes:
        """The bytes of ``[n, dim]`` vectors (float32 values): one passage."""
        if self.code in _FLOATS:
            return np.ascontiguousarray(tokens, dtype=self.dtype.base).tobytes()
        x = np.asarray(tokens, dtype=np.float32).reshape(-1, self.dim)
        rows = np.empty(len(x), dtype=self.dtype)
        scale = np.abs(x).max(axis=1) if x.size else np.zeros(len(x), np.float32)
        rows["scale"] = scale
        step = scale.astype(np.float64) / 127
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.rint(np.where(step[:, None] > 0, x / step[:, None], 0.0))
        rows["q"] = np.clip(q, -127, 127)  # |x| <= s: only float rounding could pass 127
        if self.code == "i8":
            return rows.tobytes()
        return np.packbits(x > 0, axis=1).tobytes() + rows.tobytes()

    def _float_part(self, part: np.ndarray) -> np.ndarray:
        """A passage's raw bytes less its sign bits (``b1``): its ``i8`` rows."""
        if self.code != "b1":
            return part
        return part[len(part) // self.row_bytes * self.sign_bytes :]

    def view(self, part: np.ndarray) -> np.ndarray:
        """A passage's raw bytes (uint8) as its stored rows: ``[n, dim]`` floats, or
        ``n`` records of ``(scale, q)`` (``b1``: those of its rerank copy)."""
        rows = self._float_part(part).view(self.dtype)
        return rows if self.code in ("i8", "b1") else rows.reshape(-1, self.dim)

    def expand(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """One C-contiguous float32 ``[sum n, dim]`` array of passages given as raw bytes
        (uint8), in one pass over them (``b1``: the values of the rerank copy)."""
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.code == "f4":
            return np.concatenate([p.view(self.dtype.base) for p in parts]).reshape(-1, self.dim)
        if self.code == "f2":  # gathered as float16 (a copy of bytes), widened in one pass
            return half_to_single(np.concatenate([p.view(self.dtype.base) for p in parts])).reshape(-1, self.dim)
        floats = [self._float_part(p) for p in parts]
        return _expand_i8((floats[0] if len(floats) == 1 else np.concatenate(floats)).view(self.dtype))

    def encoded(self, parts: Sequence[np.ndarray | bytes]) -> EncodedTokens:
        """Passages given as raw bytes, as one :class:`EncodedTokens` batch, unexpanded
        (``f2``, ``i8``, ``b1``): the rows gathered into one array (``b1``: the sign
        bits, its rerank rows kept per passage as views of ``parts``)."""
        if self.code not in ENCODED_CODES:
            raise ValueError(f"{self.code!r} rows are read as float32 arrays, not encoded batches")
        raw = [np.frombuffer(p, dtype=np.uint8) if isinstance(p, (bytes, bytearray, memoryview)) else p for p in parts]
        lengths = [len(p) // self.row_bytes for p in raw]
        offsets = np.zeros(len(raw) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if self.code != "b1":
            rows = np.concatenate(raw) if raw else np.zeros(0, np.uint8)
            return EncodedTokens(self.code, self.dim, rows.reshape(-1, self.row_bytes), offsets)
        width = self.sign_bytes
        bits = [p[: n * width].reshape(n, width) for p, n in zip(raw, lengths)]
        rerank = tuple(p[n * width :].reshape(n, self.dtype.itemsize) for p, n in zip(raw, lengths))
        signs = np.concatenate(bits) if bits else np.zeros((0, width), np.uint8)
        return EncodedTokens("b1", self.dim, signs, offsets, rerank)


def _expand_i8(rows: np.ndarray) -> np.ndarray:
    """``(scale, q)`` records as float32 ``q * (scale / 127)``."""
    step = rows["scale"] / np.float32(127)
    return np.multiply(rows["q"], step[:, None], dtype=np.float32)


@dataclass(frozen=True, slots=True, eq=False)
class EncodedTokens:
    """Passages' token rows as stored, to be scored without expanding them all at once.

    ``rows`` is ``[T, width]`` uint8 (numpy, or a torch tensor on the scoring device):
    the ``code`` rows of :class:`RowFormat` (``f2``, ``i8``), or for ``b1`` the sign
    bits, whose rerank rows (``i8``, ``[n_p, dim + 4]`` uint8, host arrays) are kept
    per passage in ``rerank``. Passage ``p`` is rows ``offsets[p]:offsets[p+1]``.
    ``dtype`` is the torch dtype :meth:`chunk` decodes to (None: float32).

    :meth:`chunk` decodes rows ``c0:c1`` (what the MaxSim kernel does inside its
    chunk loop: peak memory is one chunk in float32); :meth:`expand` decodes them all.
    """

    code: str
    dim: int
    rows: Any  # np.ndarray | torch.Tensor, uint8 [T, width]
    offsets: np.ndarray
    rerank: tuple[np.ndarray, ...] | None = None
    dtype: Any = None  # torch.dtype | None

    def __post_init__(self) -> None:
        if self.code not in ENCODED_CODES:
            raise ValueError(f"unknown encoded token code {self.code!r}")
        width = sign_bytes(self.dim) if self.code == "b1" else RowFormat(self.code, self.dim).row_bytes
        if len(self.rows.shape) != 2 or self.rows.shape[1] != width or int(self.offsets[-1]) != self.rows.shape[0]:
            raise ValueError(
                f"inconsistent {self.code} rows: shape {tuple(self.rows.shape)} for dim {self.dim} "
                f"(width {width}), offsets ending at {int(self.offsets[-1])}"
            )
        if (self.code == "b1") != (self.rerank is not None) or (
            self.rerank is not None and len(self.rerank) != len(self.offsets) - 1
        ):
            raise ValueError("b1 rows need one rerank part per passage, other codes none")

    # ----- shape

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.rows.shape[0]), self.dim)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def n_passages(self) -> int:
        return len(self.offsets) - 1

    @property
    def device(self) -> torch.device:
        import torch

        return self.rows.device if isinstance(self.rows, torch.Tensor) else torch.device("cpu")

    @property
    def nbytes(self) -> int:
        """Bytes held: the rows, and the rerank rows."""
        rows = self.rows.numel() if hasattr(self.rows, "numel") else self.rows.nbytes
        return int(rows) + sum(int(p.nbytes) for p in self.rerank or ())

    # ----- moving, selecting, joining

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> EncodedTokens:
        """The same rows as a torch tensor on ``device`` (default: the CPU), decoding to ``dtype``."""
        import torch

        rows = self.rows if isinstance(self.rows, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(self.rows))
        rows = rows.to(device if device is not None else rows.device)
        return replace(self, rows=rows, dtype=dtype if dtype is not None else self.dtype)

    def select(self, passages: Sequence[int]) -> EncodedTokens:
        """The rows of ``passages`` (indices, in that order), as one batch."""
        keep = np.asarray(passages, dtype=np.int64).reshape(-1)
        starts, ends = self.offsets[keep], self.offsets[keep + 1]
        offsets = np.zeros(len(keep) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        index = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if len(keep) else np.zeros(0, np.int64)
        if isinstance(self.rows, np.ndarray):
            rows = self.rows[index]
        else:
            import torch

            rows = self.rows.index_select(0, torch.from_numpy(index).to(self.rows.device))
        rerank = None if self.rerank is None else tuple(self.rerank[int(k)] for k in keep)
        return replace(self, rows=rows, offsets=offsets, rerank=rerank)

    @classmethod
    def concat(cls, items: Sequence[EncodedTokens]) -> EncodedTokens:
        """Batches of one code, dim and device, one after another."""
        first = items[0]
        if any(e.code != first.code or e.dim != first.dim for e in items):
            raise ValueError("only batches of one code and dim join")
        lengths = np.concatenate([np.diff(e.offsets) for e in items])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if all(isinstance(e.rows, np.ndarray) for e in items):
            rows = np.concatenate([e.rows for e in items])
        else:
            import torch

            rows = torch.cat([e.to(first.device).rows for e in items])
        rerank = None if first.rerank is None else tuple(p for e in items for p in e.rerank)  # type: ignore[union-attr]
        return replace(first, rows=rows, offsets=offsets, rerank=rerank)

    def floats(self) -> EncodedTokens:
        """The batch to score exactly: the ``i8`` rerank rows of a ``b1`` batch (on the
        device its sign bits are on), else itself."""
        if self.rerank is None:
            return self
        parts = list(self.rerank)
        rows = np.concatenate(parts) if parts else np.zeros((0, self.dim + 4), np.uint8)
        out = EncodedTokens("i8", self.dim, rows, self.offsets, None, self.dtype)
        return out if isinstance(self.rows, np.ndarray) else out.to(self.device)

    # ----- decoding

    def chunk(self, c0: int, c1: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows ``c0:c1`` decoded to a ``[c1 - c0, dim]`` tensor (``dtype``, else the
        batch's, else float32) on the rows' device: the values (``f2``, ``i8``), or the
        sign vectors ``+-1 / sqrt(dim)`` (``b1``), bit for bit as :meth:`expand` / :meth:`signs`."""
        import torch

        rows = self.rows[c0:c1]
        if isinstance(rows, np.ndarray):
            rows = torch.from_numpy(np.ascontiguousarray(rows))
        out_dtype = dtype or self.dtype or torch.float32
        if self.code == "b1":  # each byte looked up in a [256, 8] table of its bits' signs
            table = _sign_table(self.dim, rows.device)
            signs = torch.nn.functional.embedding(rows.reshape(-1).long(), table)
            return signs.reshape(rows.shape[0], -1)[:, : self.dim].to(out_dtype)
        if not _LITTLE:  # pragma: no cover - the bytes are little-endian
            return torch.from_numpy(self._expand_numpy(rows.cpu().numpy())).to(rows.device, out_dtype)
        if self.code == "f2":
            return rows.contiguous().view(torch.float16).to(out_dtype)
        scale = rows[:, :4].contiguous().view(torch.float32)  # [n, 1]
        step = scale / torch.tensor(127.0, dtype=torch.float32, device=rows.device)
        return (rows[:, 4:].view(torch.int8).to(torch.float32) * step).to(out_dtype)

    def _expand_numpy(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows)
        if self.code == "f2":
            return half_to_single(rows.view("<f2"))
        return _expand_i8(rows.view(_i8_dtype(self.dim)).reshape(-1))

    def expand(self) -> np.ndarray:
        """Every row as one float32 ``[T, dim]`` host array: the values (``b1``: of its
        rerank copy)."""
        source = self.floats() if self.rerank is not None else self
        rows = source.rows
        if not isinstance(rows, np.ndarray):
            rows = rows.cpu().numpy()
        return source._expand_numpy(rows).reshape(-1, self.dim)

    def signs(self) -> np.ndarray:
        """A ``b1`` batch's sign vectors ``+-1 / sqrt(dim)`` as one float32 ``[T, dim]`` host array."""
        if self.code != "b1":
            raise ValueError(f"{self.code} rows have no sign bits")
        rows = self.rows if isinstance(self.rows, np.ndarray) else self.rows.cpu().numpy()
        bits = np.unpackbits(rows, axis=1)[:, : self.dim]
        value = np.float32(_sign_value(self.dim))
        return np.where(bits == 1, value, -value)


@functools.lru_cache(maxsize=16)
def _sign_table(dim: int, device: Any) -> torch.Tensor:
    """``[256, 8]`` float32: row ``b`` holds the sign values of byte ``b``'s bits, the
    high bit first (``np.packbits``' order). Looking bytes up in it decoded the sign
    bits of 26k 128-d tokens in ~1.4 ms against ~16-20 ms for shifting and masking them
    (one torch thread, AMD EPYC); the values are the same, bit for bit."""
    import torch

    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
    value = np.float32(_sign_value(dim))
    return torch.from_numpy(np.where(bits == 1, value, -value)).to(device)


def _sign_value(dim: int) -> float:
    """The magnitude of a sign vector's values: ``1 / sqrt(dim)`` in float32 (unit norm)."""
    return float(np.float32(1 / math.sqrt(dim)))
