"""The checks every input passes once, at the repository seam, and their limits.

Names (collections, aliases), filter field paths, passage ids, vectors, units and
metadata are checked here before any engine sees them; a bad value is refused
with an :class:`~agrame_vdb.errors.InvalidInputError` child. The limits are the
same on every engine (the tightest engine's: a Milvus server's).

>>> validate_ids(["6BA7B810-9DAD-11D1-80B4-00C04FD430C8"])
['6ba7b810-9dad-11d1-80b4-00c04fd430c8']
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import (
    InvalidIdError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidSchemaError,
    InvalidUnitError,
    InvalidVectorError,
)
from .units import Unit

__all__ = [
    "BUILTIN_FIELDS",
    "MAX_EXACT_INT",
    "MAX_METADATA_BYTES",
    "MAX_STRING_BYTES",
    "check_name",
    "validate_ids",
    "validate_metadata",
]

#: Filter fields that are not metadata keys: every collection indexes them.
BUILTIN_FIELDS: Mapping[str, str] = MappingProxyType({"doc_id": "keyword", "passage_index": "integer"})

# validators match whole strings (fullmatch, and \A..\Z: ``$`` would let a trailing
# newline through, and ``"docs\n"`` become a collection)
_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_SEGMENT = r"[A-Za-z_][A-Za-z0-9_-]*"
_FIELD_RE = re.compile(rf"\A{_SEGMENT}(\.{_SEGMENT})*\Z")
#: The largest magnitude of an integer in metadata or a filter: every engine compares
#: integers up to 2**53 exactly (Milvus's JSON and Qdrant's ranges compare as float64,
#: where 2**53 + 1 is 2**53), so larger ones are refused; store them as strings.
MAX_EXACT_INT = 2**53
#: the deepest metadata may nest
_MAX_DEPTH = 32
#: The most bytes a passage's metadata may take as compact JSON (``\uXXXX`` escapes
#: counted as written), on every engine: a Milvus server's JSON field limit.
MAX_METADATA_BYTES = 65536
#: The most UTF-8 bytes of a passage's text and of its doc id, on every engine: a
#: Milvus server's VARCHAR limit.
MAX_STRING_BYTES = 65535


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _short(value: Any) -> str:
    """A bounded repr for messages (a deeply nested value's repr would recurse)."""
    return reprlib.repr(value)


def _int_text(value: int) -> str:
    """An int for a message (Python refuses to print one of more than 4300 digits)."""
    return f"int {value}" if value.bit_length() <= 256 else f"an int of {value.bit_length()} bits"


def check_name(name: Any, what: str = "collection") -> str:
    """``name`` when it is a valid collection or alias name (a letter or '_', then
    letters, digits or '_', 64 at most: never a path); InvalidSchemaError otherwise.
    Check a name with it before building a path from it.

    >>> check_name("docs__g2")
    'docs__g2'
    >>> check_name("../x", "alias")
    Traceback (most recent call last):
    ...
    agrame_vdb.errors.InvalidSchemaError: invalid alias name '../x': a letter or '_' followed by letters, digits or '_' (64 at most)
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidSchemaError(
            f"invalid {what} name {name!r}: a letter or '_' followed by letters, digits or '_' (64 at most)"
        )
    return name


def _check_field_name(name: Any, error: type[InvalidInputError]) -> None:
    if not isinstance(name, str) or not _FIELD_RE.fullmatch(name):
        raise error(
            f"field name must be a dotted path of identifiers (letters, digits, '_' or '-', "
            f"not starting with a digit), got {_short(name)}"
        )


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _check_id(value: Any) -> str:
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise InvalidIdError(f"passage ids are UUID strings (see passage_id()), got {type(value).__name__} {value!r}")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidIdError(f"passage id {value!r} is not a UUID string; build ids with passage_id(doc_id, index)") from None
    return str(parsed)


def validate_ids(ids: Any, *, allow_empty: bool = True) -> list[str]:
    """Canonical (lower-case, hyphenated) UUID strings of ``ids``, a list of ids."""
    if isinstance(ids, (str, bytes, uuid.UUID)) or not isinstance(ids, (Sequence, set, frozenset, Iterator)):
        raise InvalidIdError(f"ids must be a list of UUID strings, got {type(ids).__name__} {ids!r}")
    out = [_check_id(i) for i in ids]
    if not out and not allow_empty:
        raise InvalidIdError("ids must not be empty")
    return out


def _as_matrix(value: Any, dim: int | None, what: str) -> np.ndarray:
    arr = _as_float_array(value, what)
    if arr.ndim != 2:
        raise InvalidVectorError(f"{what} must be a 2-D [n_tokens, dim] array, got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise InvalidVectorError(f"{what} has no token: a passage needs at least one token vector")
    if arr.shape[1] < 1 or (dim is not None and arr.shape[1] != dim):
        raise InvalidVectorError(f"{what} has dim {arr.shape[1]}, the collection's dim is {dim}")
    if not np.isfinite(arr).all():
        raise InvalidVectorError(f"{what} contains NaN or infinite values")
    return arr


def _as_vector(value: Any, dim: int | None, what: str) -> np.ndarray:
    arr = _as_float_array(value, what)
    if arr.ndim != 1 or arr.shape[0] < 1 or (dim is not None and arr.shape[0] != dim):
        raise InvalidVectorError(f"{what} must be a [dim] vector with dim {dim}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidVectorError(f"{what} contains NaN or infinite values")
    if not np.any(arr):
        raise InvalidVectorError(f"{what} is all zeros: its cosine similarity is undefined")
    return arr


def _as_float_array(value: Any, what: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":
            raise InvalidVectorError(f"{what} must hold real numbers, got dtype {value.dtype}")
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise InvalidVectorError(f"{what} is ragged or not numeric: {exc}") from None
        if arr.dtype.kind not in "fiu":
            raise InvalidVectorError(f"{what} must be a rectangular array of numbers, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(arr, dtype=np.float32)


def _check_units(units: Any, n_tokens: int, text: str, pid: str) -> tuple[Unit, ...]:
    if isinstance(units, Unit) or not isinstance(units, (Sequence, Iterator)):
        raise InvalidUnitError(f"passage {pid}: units must be a sequence of Unit records, got {units!r}")
    out = tuple(units)
    seen: set[tuple[str, int]] = set()
    for u in out:
        if not isinstance(u, Unit):
            raise InvalidUnitError(f"passage {pid}: units must be Unit records, got {type(u).__name__}")
        if not u.token_ranges:
            raise InvalidUnitError(
                f"passage {pid}: {u.kind} {u.index} has no token ranges; align units with align_units() first"
            )
        if u.token_ranges[-1][1] > n_tokens:
            raise InvalidUnitError(
                f"passage {pid}: {u.kind} {u.index} token range ends at {u.token_ranges[-1][1]}, "
                f"past the passage's {n_tokens} token vectors"
            )
        if u.char_spans[-1][1] > len(text):
            raise InvalidUnitError(
                f"passage {pid}: {u.kind} {u.index} ends at char {u.char_spans[-1][1]}, "
                f"past the text's {len(text)} chars"
            )
        if (u.kind, u.index) in seen:
            raise InvalidUnitError(f"passage {pid}: two units are {u.kind} {u.index}")
        seen.add((u.kind, u.index))
    return out


def validate_metadata(metadata: Any, pid: str = "?") -> dict[str, Any]:
    """A JSON-native copy of ``metadata``: numpy scalars become Python, tuples lists.

    Rejects NaN and infinities, ints outside ±2**53 (:data:`MAX_EXACT_INT`), bytes,
    sets and other non-JSON values, non-string keys, the reserved top-level keys
    ``doc_id`` and ``passage_index``, and metadata taking more than
    :data:`MAX_METADATA_BYTES` as JSON (the same limits on every engine).
    """
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(f"passage {pid}: metadata must be a mapping, got {type(metadata).__name__}")
    for key in metadata:
        if key in BUILTIN_FIELDS:
            raise InvalidMetadataError(
                f"passage {pid}: metadata key {key!r} is reserved (it is the passage's own field); rename it"
            )
    out = _json_safe(metadata, f"passage {pid} metadata", 0)
    size = len(json.dumps(out, separators=(",", ":")))  # ASCII: \uXXXX escapes
    if size > MAX_METADATA_BYTES:
        raise InvalidMetadataError(
            f"passage {pid}: metadata takes {size} bytes as JSON; every engine holds at most "
            f"{MAX_METADATA_BYTES} (MAX_METADATA_BYTES): keep large values out of metadata"
        )
    return out


def _json_safe(value: Any, where: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise InvalidMetadataError(f"{where} is nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, bytes):
            raise InvalidMetadataError(f"{where} holds bytes; store text or base64 instead")
        return _json_safe(value, where, depth)
    if isinstance(value, int):
        if not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            raise InvalidMetadataError(
                f"{where} holds {_int_text(value)}, outside ±2**53 (MAX_EXACT_INT), which not every engine compares "
                "exactly; store it as a string"
            )
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMetadataError(f"{where} holds {value!r}; JSON has no NaN or infinity")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidMetadataError(f"{where} has a non-string key {k!r}")
            if not k:
                raise InvalidMetadataError(f"{where} has an empty key")
            out[k] = _json_safe(v, f"{where}.{k}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise InvalidMetadataError(
        f"{where} holds a {type(value).__name__}, not JSON (str, int, float, bool, None, list, dict)"
    )

