"""The checked settings of one search: granularity, k, candidates, alpha, coverage, filter, first stage, rerank."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..repository import Filter

__all__ = ["FIRST_STAGES", "TEXT_STAGES", "MAX_CANDIDATES", "PASSAGE", "Plan", "check_granularity", "pool_query"]

#: The granularity that ranks whole passages; any other is a unit kind.
PASSAGE = "passage"
#: ``pooled``: nearest pooled vectors; ``lexical``: BM25 of the query text over the
#: collection's lexical vectors; ``hybrid``: the two fused by reciprocal rank fusion
#: (both need ``capabilities().lexical`` and a collection with lexical vectors);
#: ``maxsim``: a pooled prefetch reranked by the engine's MaxSim (needs
#: ``capabilities().maxsim_rerank``).
FIRST_STAGES = ("pooled", "lexical", "hybrid", "maxsim")
#: first stages that read the query's text
TEXT_STAGES = ("lexical", "hybrid")
#: The most candidates (and prefetch) one search asks for.
MAX_CANDIDATES = 100_000
_KIND_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


def check_granularity(granularity: Any) -> str:
    """``"passage"``, or a unit kind (``"sentence"``, ``"proposition"``, any custom kind)."""
    if (
        not isinstance(granularity, str)
        or not granularity
        or not granularity[0].isalpha()
        or len(granularity) > 64
        or not set(granularity) <= _KIND_CHARS
    ):
        raise InvalidInputError(
            f"granularity must be 'passage' or a unit kind such as 'sentence' or 'proposition' "
            f"(a lower-case identifier), got {granularity!r}"
        )
    return granularity


def pool_query(query_vectors: np.ndarray) -> np.ndarray:
    """The first-stage vector of a ``[Lq, dim]`` query: its L2-normalised mean (as
    passages' pooled vectors are the normalised mean of their tokens).

    >>> [round(float(x), 4) for x in pool_query(np.array([[1.0, 0.0], [0.0, 1.0]]))]
    [0.7071, 0.7071]
    """
    mean = np.asarray(query_vectors, dtype=np.float64).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if not norm > 0 or not math.isfinite(norm):
        raise InvalidInputError("the query's token vectors average to zero (or are not finite): no pooled direction")
    return (mean / norm).astype(np.float32)


def check_int(value: Any, name: str, low: int, high: int = MAX_CANDIDATES) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInputError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return int(value)


def check_alpha(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value):
        raise InvalidInputError(f"alpha must be a finite number, got {value!r}")
    return float(value)


def check_filter(value: Any) -> Filter | None:
    if value is None or isinstance(value, Filter):
        return value
    if isinstance(value, (Mapping, str)):
        return Filter.from_json(value)
    raise InvalidInputError(f"filter must be a Filter, a JSON object or None, got {value!r}")


@dataclass(slots=True)
class Plan:
    """The checked settings of one search call."""

    collection: str
    granularity: str
    k: int
    candidates: int
    prefetch: int | None
    alpha: float
    filter: Filter | None
    first_stage: str
    matches: bool
    #: hybrid: the candidates of each branch before fusion (None: ``candidates``), and the rank constant
    dense_limit: int | None = None
    lexical_limit: int | None = None
    rrf_k: int = 60
    #: units: the weight ``beta`` of the coverage term ``beta * W * C(u, q')`` (0: none)
    coverage: float = 0.0
    #: binary collections: how many passages the first (sign-bit) pass hands to the
    #: exact rerank on the int8 copy
    rerank: int = 50

    @property
    def units(self) -> bool:
        return self.granularity != PASSAGE

