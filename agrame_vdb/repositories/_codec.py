"""Engine-neutral encodings of what engines store beside the vectors.

Units become compact JSON lists; token vectors get a compact binary copy (base64 of
little-endian float32 or float16 bytes) so a fetch decodes them with one
``np.frombuffer`` instead of building millions of Python floats.

>>> import numpy as np
>>> x = np.array([[0.5, -1.0], [0.25, 2.0]], dtype=np.float32)
>>> np.array_equal(decode_tokens(encode_tokens(x, "f4"), 2, "f4"), x)
True
>>> u = Unit("sentence", 0, ((0, 4),), ((1, 3),))
>>> units_from_json(units_to_json((u,))) == (u,)
True
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..units import Unit, trusted_unit

__all__ = [
    "encode_tokens",
    "decode_tokens",
    "join_tokens",
    "units_to_json",
    "units_from_json",
    "units_from_text",
    "copy_dtype",
]

_DTYPES = {"f4": np.dtype("<f4"), "f2": np.dtype("<f2")}


def copy_dtype(schema_dtype: str) -> str:
    """The dtype of the binary token copy: float16 for float16 collections, else float32
    (int8 collections keep float32 originals, so their copy is exact too)."""
    return "f2" if schema_dtype == "float16" else "f4"


def encode_tokens(tokens: np.ndarray, code: str) -> str:
    return base64.b64encode(np.ascontiguousarray(tokens, dtype=_DTYPES[code]).tobytes()).decode("ascii")


def decode_tokens(data: str, dim: int, code: str) -> np.ndarray:
    """A [n, dim] float32 array (read-only for float32 copies)."""
    arr = np.frombuffer(base64.b64decode(data), dtype=_DTYPES[code]).reshape(-1, dim)
    return arr if code == "f4" else arr.astype(np.float32)


def join_tokens(parts: Sequence[bytes | np.ndarray], lengths: Sequence[int], dim: int, code: str) -> np.ndarray:
    """One writable, C-contiguous float32 ``[sum(lengths), dim]`` array of per-passage
    token vectors given as raw bytes in ``code`` (a binary copy) or as float32 arrays.

    Raw float32 bytes are copied once into one buffer (no per-passage arrays); float16
    ones are converted in one pass.

    >>> x = np.array([[0.5, -1.0]], dtype=np.float32)
    >>> join_tokens([x.tobytes(), np.array([[2.0, 3.0]], np.float32)], [1, 1], 2, "f4").tolist()
    [[0.5, -1.0], [2.0, 3.0]]
    """
    total = int(sum(lengths))
    dtype = _DTYPES[code]
    row = dim * dtype.itemsize
    if code == "f4" and all(type(p) is bytes for p in parts):
        buf = bytearray(total * row)
        view = memoryview(buf)
        pos = 0
        for p in parts:
            view[pos : pos + len(p)] = p  # type: ignore[index]
            pos += len(p)  # type: ignore[arg-type]
        return np.frombuffer(buf, dtype=dtype).reshape(total, dim)
    out = np.empty((total, dim), dtype=np.float32)
    pos = 0
    for p, n in zip(parts, lengths):
        out[pos : pos + n] = np.frombuffer(p, dtype=dtype).reshape(n, dim) if isinstance(p, bytes) else p
        pos += n
    return out


def units_to_json(units: Sequence[Unit]) -> list[list[Any]]:
    return [[u.kind, u.index, [list(s) for s in u.char_spans], [list(r) for r in u.token_ranges]] for u in units]


def units_from_text(text: str) -> tuple[Unit, ...]:
    """Units from JSON text of :func:`units_to_json` (the Qdrant Edge side store's
    rows from before its binary form)."""
    return units_from_json(json.loads(text))


def units_from_json(data: Sequence[Sequence[Any]]) -> tuple[Unit, ...]:
    """Units written by :func:`units_to_json`, rebuilt without re-validation (fetch path)."""
    return tuple([_unit(kind, index, chars, tokens) for kind, index, chars, tokens in data])


def _unit(kind: str, index: int, chars: Sequence[Sequence[int]], tokens: Sequence[Sequence[int]]) -> Unit:
    # one span / one range is the common case: built directly (about twice as fast)
    return trusted_unit(
        kind,
        index,
        ((chars[0][0], chars[0][1]),) if len(chars) == 1 else tuple(map(tuple, chars)),  # type: ignore[arg-type]
        ((tokens[0][0], tokens[0][1]),) if len(tokens) == 1 else tuple(map(tuple, tokens)),  # type: ignore[arg-type]
    )
