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
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..units import Unit

__all__ = ["encode_tokens", "decode_tokens", "units_to_json", "units_from_json", "copy_dtype"]

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


def units_to_json(units: Sequence[Unit]) -> list[list[Any]]:
    return [[u.kind, u.index, [list(s) for s in u.char_spans], [list(r) for r in u.token_ranges]] for u in units]


_new = object.__new__
_set_kind = Unit.kind.__set__  # type: ignore[attr-defined]
_set_index = Unit.index.__set__  # type: ignore[attr-defined]
_set_chars = Unit.char_spans.__set__  # type: ignore[attr-defined]
_set_tokens = Unit.token_ranges.__set__  # type: ignore[attr-defined]


def units_from_json(data: Sequence[Sequence[Any]]) -> tuple[Unit, ...]:
    """Units written by :func:`units_to_json`, rebuilt without re-validation (fetch path)."""
    out = []
    for kind, index, chars, tokens in data:
        u = _new(Unit)
        _set_kind(u, kind)
        _set_index(u, index)
        _set_chars(u, tuple(map(tuple, chars)))
        _set_tokens(u, tuple(map(tuple, tokens)))
        out.append(u)
    return tuple(out)
