"""Backend-neutral filters over passage metadata, and their Mongo-like JSON form.

Every engine translates these six classes (:class:`Eq`, :class:`In`,
:class:`Range`, :class:`And`, :class:`Or`, :class:`Not`) into its own filter
language; they are checked when built, so a translation never sees a bad one.

>>> Filter.from_json({"lang": "en", "year": {"$lt": 2010}}) == Eq("lang", "en") & Range("year", lt=2010)
True
>>> (~Eq("lang", "en")).to_json()
{'$not': {'lang': 'en'}}
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidFilterError
from .validation import MAX_EXACT_INT, _check_field_name, _int_text, _short

__all__ = ["MAX_FILTER_DEPTH", "Filter", "Scalar", "Eq", "In", "Range", "And", "Or", "Not"]

#: The deepest a filter may nest (a leaf is depth 1, ``Not(Eq(...))`` depth 2): deeper
#: ones are refused with InvalidFilterError when built or parsed, long before Python's
#: recursion limit or an engine's expression parser.
MAX_FILTER_DEPTH = 32


class Filter(abc.ABC):
    """A backend-neutral condition over passage metadata.

    Fields are metadata keys (dotted paths reach into nested objects) or the
    built-ins ``doc_id`` and ``passage_index``. Semantics (as Qdrant's payload
    filters, which the memory reference copies): a field holding a list matches
    when any element matches; a missing field matches nothing, so ``Not`` of it
    matches; values compare with their JSON type (``1`` does not equal ``1.0``
    or ``True``). Combine with ``&``, ``|`` and ``~``. A filter nests at most
    :data:`MAX_FILTER_DEPTH` levels and compares integers within
    ±:data:`~agrame_vdb.validation.MAX_EXACT_INT` (InvalidFilterError otherwise, when
    it is built).
    """

    __slots__ = ()

    @staticmethod
    def from_json(obj: Mapping[str, Any] | str) -> Filter | None:
        """Parse the Mongo-like JSON form; ``{}`` means no filter (None).

        ``{"lang": "en"}`` (Eq), ``{"lang": {"$in": [...]}}``, ``{"$nin": [...]}``,
        ``{"$ne": v}``, ``{"year": {"$gte": 2000, "$lt": 2010}}`` (Range),
        ``{"$and": [...]}``, ``{"$or": [...]}``, ``{"$not": {...}}``; several keys
        in one object are and-ed. Filters nest at most :data:`MAX_FILTER_DEPTH` deep.
        """
        if isinstance(obj, str):
            try:
                obj = json.loads(obj)
            except ValueError as exc:  # JSONDecodeError, or an int of more than 4300 digits
                raise InvalidFilterError(f"filter is not valid JSON: {exc}") from exc
            except RecursionError:  # the decoder's own limit, far past ours
                raise InvalidFilterError(_too_deep()) from None
        if not isinstance(obj, Mapping):
            raise InvalidFilterError(f"a filter must be a JSON object, got {_short(obj)}")
        if not obj:
            return None
        return _parse_filter(obj, 1)

    @abc.abstractmethod
    def to_json(self) -> dict[str, Any]:
        """The Mongo-like JSON form :meth:`from_json` reads back."""

    @abc.abstractmethod
    def fields(self) -> set[str]:
        """Every field the filter reads."""

    def __and__(self, other: Filter) -> And:
        return And(self, other)

    def __or__(self, other: Filter) -> Or:
        return Or(self, other)

    def __invert__(self) -> Not:
        return Not(self)


Scalar = str | int | bool


@dataclass(frozen=True, slots=True)
class Eq(Filter):
    """``field == value``; value a str, int or bool (use :class:`Range` for floats)."""

    field: str
    value: Scalar

    def __post_init__(self) -> None:
        _check_field_name(self.field, InvalidFilterError)
        object.__setattr__(self, "value", _check_scalar(self.value, self.field, allow_bool=True))

    def to_json(self) -> dict[str, Any]:
        return {self.field: self.value}

    def fields(self) -> set[str]:
        return {self.field}


@dataclass(frozen=True, slots=True)
class In(Filter):
    """``field`` equals one of ``values``: all strings or all ints, at least one."""

    field: str
    values: tuple[str | int, ...]

    def __post_init__(self) -> None:
        _check_field_name(self.field, InvalidFilterError)
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, (Sequence, set, frozenset)):
            raise InvalidFilterError(f"In({self.field!r}) values must be a list of str or int, got {_short(self.values)}")
        values = tuple(_check_scalar(v, self.field, allow_bool=False) for v in self.values)
        if not values:
            raise InvalidFilterError(f"In({self.field!r}) needs at least one value")
        if len({type(v) for v in values}) != 1:
            raise InvalidFilterError(f"In({self.field!r}) values must be all strings or all ints, got {_short(values)}")
        object.__setattr__(self, "values", values)

    def to_json(self) -> dict[str, Any]:
        return {self.field: {"$in": list(self.values)}}

    def fields(self) -> set[str]:
        return {self.field}


@dataclass(frozen=True, slots=True)
class Range(Filter):
    """A numeric range on ``field``: any of ``gt``, ``gte``, ``lt``, ``lte`` (one at least)."""

    field: str
    gt: float | int | None = None
    gte: float | int | None = None
    lt: float | int | None = None
    lte: float | int | None = None

    def __post_init__(self) -> None:
        _check_field_name(self.field, InvalidFilterError)
        bounds = {k: getattr(self, k) for k in ("gt", "gte", "lt", "lte")}
        if all(v is None for v in bounds.values()):
            raise InvalidFilterError(f"Range({self.field!r}) needs at least one of gt, gte, lt, lte")
        for k, v in bounds.items():
            if v is None:
                continue
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, bool) or not isinstance(v, (int, float)) or isinstance(v, float) and not math.isfinite(v):
                raise InvalidFilterError(f"Range({self.field!r}) bound {k} must be a finite number, got {_short(v)}")
            if isinstance(v, int) and not -MAX_EXACT_INT <= v <= MAX_EXACT_INT:
                raise InvalidFilterError(
                    f"Range({self.field!r}) bound {k} ({_int_text(v)}) is outside ±2**53 (MAX_EXACT_INT), which not every "
                    "engine compares exactly; give a float bound, or store such numbers as strings"
                )
            object.__setattr__(self, k, v)

    def to_json(self) -> dict[str, Any]:
        return {self.field: {f"${k}": getattr(self, k) for k in ("gt", "gte", "lt", "lte") if getattr(self, k) is not None}}

    def fields(self) -> set[str]:
        return {self.field}


@dataclass(frozen=True, slots=True, init=False)
class And(Filter):
    """Every one of ``filters`` matches: ``And(a, b, ...)``."""

    filters: tuple[Filter, ...]
    _depth: int = field(default=1, init=False, repr=False, compare=False)

    def __init__(self, *filters: Filter) -> None:
        object.__setattr__(self, "filters", _check_children(filters, "And"))
        object.__setattr__(self, "_depth", _depth_over(self.filters))

    def to_json(self) -> dict[str, Any]:
        return {"$and": [f.to_json() for f in self.filters]}

    def fields(self) -> set[str]:
        return set().union(*(f.fields() for f in self.filters))


@dataclass(frozen=True, slots=True, init=False)
class Or(Filter):
    """At least one of ``filters`` matches: ``Or(a, b, ...)``."""

    filters: tuple[Filter, ...]
    _depth: int = field(default=1, init=False, repr=False, compare=False)

    def __init__(self, *filters: Filter) -> None:
        object.__setattr__(self, "filters", _check_children(filters, "Or"))
        object.__setattr__(self, "_depth", _depth_over(self.filters))

    def to_json(self) -> dict[str, Any]:
        return {"$or": [f.to_json() for f in self.filters]}

    def fields(self) -> set[str]:
        return set().union(*(f.fields() for f in self.filters))


@dataclass(frozen=True, slots=True)
class Not(Filter):
    """``filter`` does not match (a missing field does not match, so Not matches it)."""

    filter: Filter
    _depth: int = field(default=1, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.filter, Filter):
            raise InvalidFilterError(f"Not() takes a Filter, got {_short(self.filter)}")
        object.__setattr__(self, "_depth", _depth_over((self.filter,)))

    def to_json(self) -> dict[str, Any]:
        return {"$not": self.filter.to_json()}

    def fields(self) -> set[str]:
        return self.filter.fields()


def _too_deep() -> str:
    return (
        f"filter is nested deeper than {MAX_FILTER_DEPTH} levels (MAX_FILTER_DEPTH); "
        "flatten it: And/Or take many filters at one level, and Not(Not(f)) is f"
    )


def _depth_over(children: tuple[Filter, ...]) -> int:
    """The depth of a node over ``children`` (whose depths are known: no recursion)."""
    depth = 1 + max(getattr(c, "_depth", 1) for c in children)
    if depth > MAX_FILTER_DEPTH:
        raise InvalidFilterError(_too_deep())
    return depth


def _check_children(filters: tuple[Any, ...], what: str) -> tuple[Filter, ...]:
    if len(filters) == 1 and isinstance(filters[0], (list, tuple)):
        filters = tuple(filters[0])
    if not filters:
        raise InvalidFilterError(f"{what}() needs at least one filter")
    for f in filters:
        if not isinstance(f, Filter):
            raise InvalidFilterError(f"{what}() takes Filter objects, got {_short(f)}")
    return tuple(filters)


def _check_scalar(value: Any, fname: str, *, allow_bool: bool) -> Scalar:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        if allow_bool:
            return value
        raise InvalidFilterError(f"filter on {fname!r}: $in takes strings or ints, not bools; use Eq for a bool")
    if isinstance(value, int):
        if not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            raise InvalidFilterError(
                f"filter on {fname!r}: {_int_text(value)} is outside ±2**53 (MAX_EXACT_INT), which not every engine "
                "compares exactly; store and filter such numbers as strings"
            )
        return value
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        raise InvalidFilterError(
            f"filter on {fname!r}: equality on a float ({_short(value)}) is not supported; use Range(gte=, lte=)"
        )
    raise InvalidFilterError(f"filter on {fname!r}: value must be a str, int or bool, got {_short(value)}")


_RANGE_OPS = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}


def _parse_filter(obj: Mapping[str, Any], depth: int) -> Filter:
    # every JSON level adds a filter level at least: stop before Python's recursion limit
    if depth > MAX_FILTER_DEPTH:
        raise InvalidFilterError(_too_deep())
    parts: list[Filter] = []
    for key, value in obj.items():
        if not isinstance(key, str):
            raise InvalidFilterError(f"filter keys must be strings, got {key!r}")
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidFilterError(f"{key} takes a non-empty list of filters, got {_short(value)}")
            children = [_parse_child(v, key, depth + 1) for v in value]
            parts.append(And(*children) if key == "$and" else Or(*children))
        elif key == "$not":
            parts.append(Not(_parse_child(value, key, depth + 1)))
        elif key.startswith("$"):
            raise InvalidFilterError(f"unknown filter operator {key!r}; known: $and, $or, $not at the top level")
        else:
            parts.extend(_parse_field(key, value))
    return parts[0] if len(parts) == 1 else And(*parts)


def _parse_child(value: Any, op: str, depth: int) -> Filter:
    if not isinstance(value, Mapping) or not value:
        raise InvalidFilterError(f"{op} takes non-empty filter objects, got {_short(value)}")
    return _parse_filter(value, depth)


def _parse_field(fname: str, value: Any) -> list[Filter]:
    if isinstance(value, Mapping):
        if not value:
            raise InvalidFilterError(f"filter on {fname!r} is an empty object")
        out: list[Filter] = []
        bounds: dict[str, Any] = {}
        for op, arg in value.items():
            if op in _RANGE_OPS:
                bounds[_RANGE_OPS[op]] = arg
            elif op == "$eq":
                out.append(Eq(fname, arg))
            elif op == "$ne":
                out.append(Not(Eq(fname, arg)))
            elif op in ("$in", "$nin"):
                if not isinstance(arg, list):
                    raise InvalidFilterError(f"{op} on {fname!r} takes a list, got {_short(arg)}")
                f = In(fname, tuple(arg))
                out.append(f if op == "$in" else Not(f))
            else:
                raise InvalidFilterError(
                    f"unknown operator {op!r} on {fname!r}; known: $eq $ne $in $nin $gt $gte $lt $lte"
                )
        if bounds:
            out.append(Range(fname, **bounds))
        return out
    if isinstance(value, list):
        raise InvalidFilterError(f"filter on {fname!r} is a list; write {{{fname!r}: {{'$in': [...]}}}}")
    return [Eq(fname, value)]
