"""Reciprocal rank fusion of first-stage lists (the library's; Qdrant fuses in the
engine with the same formula).

A passage's fused score is ``sum over lists of 1 / (k + rank)``, its rank counted
from 1 in each list that holds it; ties go to the passage first seen in the
earlier list. ``k`` = 60 is the constant of Cormack et al. (2009).

>>> from agrame_vdb.records import Candidate
>>> dense = [Candidate("a", 0.9), Candidate("b", 0.8)]
>>> lexical = [Candidate("b", 7.0, "lexical"), Candidate("c", 5.0, "lexical")]
>>> [(c.id, round(c.score, 5)) for c in rrf([dense, lexical], limit=3)]
[('b', 0.03252), ('a', 0.01639), ('c', 0.01613)]
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InvalidInputError
from .records import Candidate

__all__ = ["RRF_K", "rrf", "check_rrf_k"]

#: the default rank constant
RRF_K = 60


def check_rrf_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 10_000:
        raise InvalidInputError(f"rrf_k must be an int in [1, 10000], got {k!r}")
    return k


def rrf(lists: Sequence[Sequence[Candidate]], *, limit: int, k: int = RRF_K, stage: str = "hybrid") -> list[Candidate]:
    """The ``limit`` best of ``lists`` by reciprocal rank fusion, as ``stage`` candidates
    (a passage keeps the first write version any list gives it)."""
    scores: dict[str, float] = {}
    versions: dict[str, int | str | None] = {}
    for hits in lists:
        for rank, c in enumerate(hits, start=1):
            scores[c.id] = scores.get(c.id, 0.0) + 1.0 / (k + rank)
            if versions.get(c.id) is None:
                versions[c.id] = c.version
    order = sorted(scores, key=lambda i: -scores[i])  # stable: first seen wins a tie
    return [Candidate(i, scores[i], stage, versions[i]) for i in order[:limit]]
