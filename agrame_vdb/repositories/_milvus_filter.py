"""Filters as Milvus boolean expressions, exact under the reference semantics.

Milvus compares JSON values loosely (Milvus Lite finds ``true == 1``), treats a
missing JSON key differently across versions (three-valued in Lite, false in
2.3), and has no "any element of a list is in a range" operator. So each passage
row carries a small *filter document* ``fx`` (a JSON field), built here from its
metadata and built-in fields, and filters are translated against it:

- ``fx["t"]``: a list of *terms*, one per ``(path, value)`` for every string, int
  and bool a filter can reach (scalars, and elements of lists): ``lang=s:en``,
  ``year=i:2003``, ``published=b:1``. Strings outside a small safe alphabet (or
  long) are hashed (``h:`` + 96-bit BLAKE2b), so any value is matched exactly
  without string escaping. ``Eq`` and ``In`` become ``json_contains`` /
  ``json_contains_any`` on these typed terms: ``1``, ``1.0``, ``True`` and ``"1"``
  never match each other.
- ``fx["n"]``: ``{path: number}`` for every scalar int or float (never a bool).
  ``Range`` compares it, guarded by ``exists`` so a missing field is false (and
  ``Not`` of it true) on every engine.
- numbers inside lists get *hex-prefix terms* (``score#``, ``score#c0``, …,
  the 0 to 16 leading hex digits of an order-preserving 64-bit key of the value),
  and a ``Range`` adds ``json_contains_any`` over the prefixes covering its key
  interval: "any element in range" exactly, in the engine.

Paths are the dotted field names of :class:`~agrame_vdb.repository.Filter`;
metadata keys that no field name can address (``"a.b"``, ``"1x"``) are skipped.
Every sub-expression is parenthesised and two-valued.

>>> doc = filter_document("doc-1", 0, {"lang": "en", "tags": ["a", "b"], "year": 2003})
>>> doc["t"][:3], doc["n"]
(['doc_id=s:doc-1', 'passage_index=i:0', 'lang=s:en'], {'year': 2003})
>>> to_expr(Eq("lang", "en"))
'(json_contains(fx["t"], "lang=s:en"))'
>>> to_expr(Eq("year", "2003"))
'(json_contains(fx["t"], "year=s:2003"))'
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping
from typing import Any

from ..filters import And, Eq, Filter, In, Not, Or, Range
from ..validation import BUILTIN_FIELDS

__all__ = ["FX", "filter_document", "to_expr", "string_literal", "TRUE", "FALSE"]

#: the JSON field holding the filter document
FX = "fx"
#: expressions that are always true / false (the primary key is never empty)
TRUE = '(id != "")'
FALSE = '(id == "")'

# whole strings only (fullmatch, \Z): with ``$`` a value ending in "\n" went into an
# expression verbatim, which Milvus cannot parse
_SEGMENT = re.compile(r"\A[A-Za-z_][A-Za-z0-9_-]*\Z")
_SAFE = re.compile(r"\A[A-Za-z0-9 _.,:;/@+=#-]{0,64}\Z")
_KEY_HEX = 16  # hex digits of the 64-bit order key


def string_literal(value: str) -> str | None:
    """``"value"`` when it can go into an expression verbatim, else None."""
    return f'"{value}"' if _SAFE.fullmatch(value) else None


def _term(path: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{path}=b:{int(value)}"
    if isinstance(value, int):
        return f"{path}=i:{value}"
    if _SAFE.fullmatch(value):
        return f"{path}=s:{value}"
    return f"{path}=h:{hashlib.blake2b(value.encode('utf-8'), digest_size=12).hexdigest()}"


def _order_key(x: float) -> int:
    """A 64-bit unsigned key with the order of the float64 ``x`` (-0.0 as 0.0)."""
    x = float(x)
    if x == 0.0:
        x = 0.0
    (bits,) = struct.unpack(">Q", struct.pack(">d", x))
    return bits ^ 0xFFFF_FFFF_FFFF_FFFF if bits >> 63 else bits | (1 << 63)


def _prefix_terms(path: str, x: float) -> list[str]:
    key = f"{_order_key(x):016x}"
    return [f"{path}#{key[:n]}" for n in range(_KEY_HEX + 1)]


def _cover(lo: int, hi: int) -> list[str]:
    """Hex prefixes whose blocks exactly cover the keys ``lo..hi`` (inclusive)."""
    out: list[str] = []
    top = 1 << 64
    while lo <= hi:
        digits = 0  # trailing hex digits left free by the block starting at lo
        while digits < _KEY_HEX and lo % (16 ** (digits + 1)) == 0 and lo + 16 ** (digits + 1) - 1 <= hi:
            digits += 1
        out.append(f"{lo:016x}"[: _KEY_HEX - digits])
        lo += 16**digits
        if lo >= top:
            break
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def filter_document(doc_id: str, passage_index: int, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The ``fx`` JSON of one passage (see the module docs)."""
    terms = [_term("doc_id", doc_id), _term("passage_index", passage_index)]
    nums: dict[str, Any] = {}
    seen: set[str] = set(terms)

    def add(term: str) -> None:
        if term not in seen:
            seen.add(term)
            terms.append(term)

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if not isinstance(key, str) or not _SEGMENT.fullmatch(key):
                continue  # no filter field can name it
            path = f"{prefix}{key}"
            if isinstance(value, Mapping):
                walk(value, path + ".")
            elif isinstance(value, list):
                for v in value:
                    if isinstance(v, (str, int)):  # bools are ints
                        add(_term(path, v))
                    if _is_number(v):
                        for t in _prefix_terms(path, v):
                            add(t)
            elif value is not None:
                if isinstance(value, (str, int)):
                    add(_term(path, value))
                if _is_number(value):
                    nums[path] = value

    walk(metadata, "")
    return {"t": terms, "n": nums}


def _json_str(s: str) -> str:
    # terms and paths only hold characters that need no escaping in an expression
    return f'"{s}"'


def _contains_any(terms: list[str]) -> str:
    if len(terms) == 1:
        return f'(json_contains({FX}["t"], {_json_str(terms[0])}))'
    return f'(json_contains_any({FX}["t"], [{", ".join(_json_str(t) for t in terms)}]))'


def _num(v: float | int) -> str:
    return repr(v) if isinstance(v, float) else str(int(v))


def _range_keys(r: Range) -> tuple[int, int] | None:
    lo, hi = 0, (1 << 64) - 1
    if r.gte is not None:
        lo = max(lo, _order_key(r.gte))
    if r.gt is not None:
        k = _order_key(r.gt)
        lo = max(lo, k + 1)
    if r.lte is not None:
        hi = min(hi, _order_key(r.lte))
    if r.lt is not None:
        hi = min(hi, _order_key(r.lt) - 1)
    # keys of NaN are never stored; infinities are never stored either
    return (lo, hi) if lo <= hi else None


_OPS = (("gt", ">"), ("gte", ">="), ("lt", "<"), ("lte", "<="))


def _builtin(f: Filter) -> str:
    if isinstance(f, Eq):
        if f.field == "passage_index":
            return f"(passage_index == {f.value})" if _is_int(f.value) else FALSE
        if not isinstance(f.value, str):
            return FALSE
        lit = string_literal(f.value)
        return f"(doc_id == {lit})" if lit else _contains_any([_term("doc_id", f.value)])
    if isinstance(f, In):
        if f.field == "passage_index":
            ints = [v for v in f.values if _is_int(v)]
            return f"(passage_index in [{', '.join(str(v) for v in ints)}])" if ints else FALSE
        strs = [v for v in f.values if isinstance(v, str)]
        if not strs:
            return FALSE
        lits = [string_literal(v) for v in strs]
        if all(lits):
            return f"(doc_id in [{', '.join(lits)}])"  # type: ignore[arg-type]
        return _contains_any([_term("doc_id", v) for v in strs])
    assert isinstance(f, Range)
    if f.field == "doc_id":
        return FALSE
    parts = [f"passage_index {op} {_num(getattr(f, k))}" for k, op in _OPS if getattr(f, k) is not None]
    return "(" + " and ".join(parts) + ")"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def to_expr(f: Filter | None) -> str:
    """The Milvus boolean expression of ``f`` ("" for no filter)."""
    if f is None:
        return ""
    return _expr(f)


def _expr(f: Filter) -> str:
    if isinstance(f, And):
        return "(" + " and ".join(_expr(c) for c in f.filters) + ")"
    if isinstance(f, Or):
        return "(" + " or ".join(_expr(c) for c in f.filters) + ")"
    if isinstance(f, Not):
        return f"(not {_expr(f.filter)})"
    if f.field in BUILTIN_FIELDS:  # type: ignore[attr-defined]
        return _builtin(f)
    if isinstance(f, Eq):
        return _contains_any([_term(f.field, f.value)])
    if isinstance(f, In):
        return _contains_any([_term(f.field, v) for v in f.values])
    if isinstance(f, Range):
        key = f'{FX}["n"]["{f.field}"]'
        bounds = " and ".join(f"{key} {op} {_num(getattr(f, k))}" for k, op in _OPS if getattr(f, k) is not None)
        scalar = f"((exists {key}) and ({bounds}))"
        keys = _range_keys(f)
        if keys is None:
            return scalar
        listed = _contains_any([f"{f.field}#{p}" for p in _cover(*keys)])
        return f"({scalar} or {listed})"
    raise TypeError(f"unknown filter {f!r}")
