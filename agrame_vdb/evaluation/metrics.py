"""Ranking metrics of one ranked list against graded relevance.

Metrics (:func:`precision_at_k`, :func:`recall_at_k`, :func:`mrr_at_k`,
:func:`ndcg_at_k`) take a ranked list of keys and a ``key → grade`` mapping; an
item is relevant when its grade is at least 1. nDCG uses the grade as the gain
(trec_eval's linear gain); tests check every metric against trec_eval (ir-measures).

>>> qrels = {"a": 2, "b": 1}
>>> ranking = ["x", "a", "b"]
>>> precision_at_k(ranking, qrels, 1), recall_at_k(ranking, qrels, 5), mrr_at_k(ranking, qrels, 10)
(0.0, 1.0, 0.5)
>>> round(ndcg_at_k(ranking, qrels, 10), 4)  # (2/log2(3) + 1/2) / (2 + 1/log2(3))
0.6697
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

__all__ = ["precision_at_k", "recall_at_k", "mrr_at_k", "ndcg_at_k", "METRICS", "mean_metrics"]



def _relevant(qrels: Mapping[Hashable, int]) -> set[Hashable]:
    return {k for k, g in qrels.items() if g >= 1}


def precision_at_k(ranking: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    """Relevant items in the top ``k``, divided by ``k``."""
    relevant = _relevant(qrels)
    return sum(1 for key in ranking[:k] if key in relevant) / k


def recall_at_k(ranking: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    """Relevant items in the top ``k``, divided by the number of relevant items."""
    relevant = _relevant(qrels)
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def mrr_at_k(ranking: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    """``1 / rank`` of the first relevant item within the top ``k``, else 0."""
    relevant = _relevant(qrels)
    for rank, key in enumerate(ranking[:k], start=1):
        if key in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranking: Sequence[Hashable], qrels: Mapping[Hashable, int], k: int) -> float:
    """Graded nDCG@k with gain = grade and discount ``log2(rank + 1)``."""
    seen: set[Hashable] = set()
    dcg = 0.0
    for rank, key in enumerate(ranking[:k], start=1):
        if key in seen:  # a key counts once
            continue
        seen.add(key)
        dcg += max(qrels.get(key, 0), 0) / math.log2(rank + 1)
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


#: The metrics reported per level: name → (function, k).
METRICS = {"P@1": (precision_at_k, 1), "R@5": (recall_at_k, 5), "MRR@10": (mrr_at_k, 10), "nDCG@10": (ndcg_at_k, 10)}


def mean_metrics(rankings: Iterable[tuple[Sequence[Hashable], Mapping[Hashable, int]]]) -> dict[str, float]:
    """Mean of :data:`METRICS` over ``(ranking, qrels)`` pairs with a relevant item; ``n`` counts them."""
    sums = dict.fromkeys(METRICS, 0.0)
    n = 0
    for ranking, qrels in rankings:
        if not _relevant(qrels):
            continue
        n += 1
        for name, (fn, k) in METRICS.items():
            sums[name] += fn(list(ranking), qrels, k)
    out = {name: (total / n if n else 0.0) for name, total in sums.items()}
    out["n"] = n
    return out
