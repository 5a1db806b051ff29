"""Engine-neutral encodings of what engines store beside the vectors.

Units become compact JSON lists; token vectors get a compact binary copy (base64 of
their rows in the collection's form, :mod:`agrame_vdb.token_rows`: float32, float16,
int8 with a float32 scale per token, sign bits with an int8 rerank copy) so a fetch
decodes them with one ``np.frombuffer`` instead of building millions of Python floats.

>>> import numpy as np
>>> x = np.array([[0.5, -1.0], [0.25, 2.0]], dtype=np.float32)
>>> np.array_equal(decode_tokens(encode_tokens(x, "f4"), 2, "f4"), x)
True
>>> bool(np.abs(decode_tokens(encode_tokens(x, "i8"), 2, "i8") - x).max() <= 2 * I8_ATOL)
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

from ..token_rows import ENCODED_CODES, I8_ATOL, STORAGE_CODES, EncodedTokens, RowFormat
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


def copy_dtype(schema_dtype: str) -> str:
    """The form of the binary token copy of a collection of ``schema_dtype``: float32,
    float16, int8 with a scale per token, or sign bits with an int8 rerank copy."""
    return STORAGE_CODES[schema_dtype]


def encode_tokens(tokens: np.ndarray, code: str) -> str:
    return base64.b64encode(RowFormat(code, int(np.shape(tokens)[-1])).encode(tokens)).decode("ascii")


def decode_tokens(data: str, dim: int, code: str) -> np.ndarray:
    """A [n, dim] float32 array (read-only for float32 copies; ``b1``: the values of
    its rerank copy)."""
    raw = np.frombuffer(base64.b64decode(data), dtype=np.uint8)
    if code == "f4":
        return raw.view("<f4").reshape(-1, dim)
    return RowFormat(code, dim).expand([raw])


def join_tokens(
    parts: Sequence[bytes | np.ndarray], lengths: Sequence[int], dim: int, code: str
) -> np.ndarray | EncodedTokens:
    """Per-passage token vectors given as raw bytes in ``code`` (a binary copy) or as
    float32 arrays, as one batch: float32 rows copied once into one writable,
    C-contiguous ``[sum(lengths), dim]`` buffer; float16, int8 and sign-bit rows, when
    every part is raw bytes, as one :class:`~agrame_vdb.token_rows.EncodedTokens`
    (scored unexpanded); a mix, expanded to float32 in one pass.

    >>> x = np.array([[0.5, -1.0]], dtype=np.float32)
    >>> join_tokens([x.tobytes(), np.array([[2.0, 3.0]], np.float32)], [1, 1], 2, "f4").tolist()
    [[0.5, -1.0], [2.0, 3.0]]
    >>> join_tokens([RowFormat("f2", 2).encode(x)], [1], 2, "f2").code
    'f2'
    """
    total = int(sum(lengths))
    fmt = RowFormat(code, dim)
    raw = all(type(p) is bytes for p in parts)
    if code in ENCODED_CODES and raw and parts:
        return fmt.encoded(parts)  # type: ignore[arg-type]
    if code == "f4" and raw:
        buf = bytearray(total * fmt.row_bytes)
        view = memoryview(buf)
        pos = 0
        for p in parts:
            view[pos : pos + len(p)] = p  # type: ignore[index]
            pos += len(p)  # type: ignore[arg-type]
        return np.frombuffer(buf, dtype="<f4").reshape(total, dim)
    out = np.empty((total, dim), dtype=np.float32)
    pos = 0
    for p, n in zip(parts, lengths):
        out[pos : pos + n] = fmt.expand([np.frombuffer(p, dtype=np.uint8)]) if isinstance(p, bytes) else p
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
