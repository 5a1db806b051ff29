"""First-stage recall: how often the candidates a rerank is given hold a relevant passage.

For a query with relevant passages ``R`` (grade >= 1) and the first ``N`` passages
``C[:N]`` a stage returns:

- ``recall@N``: 1 when any passage of ``R`` is in ``C[:N]``, else 0 (the share of
  queries whose relevant passages the rerank can reach at all);
- ``fraction@N``: ``|R ∩ C[:N]| / |R|`` (the share of their relevant passages found);

both means over the queries with a relevant passage (``n``). The stages:

- ``pooled``: the repository's pooled candidates (``candidates(..., limit=N)``);
- ``lexical``: BM25 of the query text (``lexical_candidates``), and ``hybrid``: the
  reciprocal rank fusion of N pooled and N lexical candidates, cut to N
  (``hybrid_candidates``), where the collection has lexical vectors;
- ``maxsim``: a pooled prefetch reranked by the engine's MaxSim (where
  ``capabilities().maxsim_rerank``), with the planner's default prefetch for ``N``;
- ``exhaustive``: every passage the query's filter allows, ranked by MaxSim
  ``S(q,p)`` here: the ceiling of any first stage for the rerank that follows.

``N`` beyond the collection's size asks for every passage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..planner.plan import MAX_CANDIDATES
from .datasets import EvalQuery

__all__ = ["RECALL_AT", "FirstStageRecall", "first_stage_recall", "check_recall_at", "recall_table"]

#: The ``N`` of recall@N reported by default.
RECALL_AT = (50, 200, 1000)
#: Queries scored at once by the exhaustive ranking.
_QUERY_BATCH = 16
#: Passages whose token vectors are read (and packed) at once.
_FETCH_BATCH = 512


def check_recall_at(values: Iterable[Any]) -> tuple[int, ...]:
    """Distinct positive ints, ascending."""
    out = set()
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_CANDIDATES:
            raise InvalidInputError(f"recall@N takes ints N in [1, {MAX_CANDIDATES}], got {v!r}")
        out.add(int(v))
    return tuple(sorted(out))


@dataclass(frozen=True)
class FirstStageRecall:
    """First-stage recall of one collection: ``stages[stage]["recall@N"]`` and
    ``["fraction@N"]`` over ``n`` queries; ``encoding`` names what encoded it
    (``"passage encoding"``: the model; ``"plain base"``: the plain base model)."""

    encoding: str
    n: int
    stages: Mapping[str, Mapping[str, float]]

    def to_json(self) -> dict[str, Any]:
        return {"encoding": self.encoding, "n": self.n, **{s: dict(v) for s, v in self.stages.items()}}


def _stage_metrics(per_n: Mapping[int, Sequence[tuple[Sequence[str], set[str]]]]) -> dict[str, float]:
    """recall@N, then fraction@N, means over each N's ``(ranking, relevant)`` pairs (``relevant`` non-empty)."""
    hits = {n: [(len(rel.intersection(ranking[:n])), len(rel)) for ranking, rel in pairs] for n, pairs in per_n.items()}
    out = {f"recall@{n}": sum(1 for h, _ in found if h) / len(found) for n, found in hits.items()}
    out.update({f"fraction@{n}": sum(h / r for h, r in found) / len(found) for n, found in hits.items()})
    return out


def _all_ids(repository: Any, collection: str, filter: Any) -> list[str]:
    ids, offset = [], None
    while True:
        page = repository.list_ids(collection, filter=filter, limit=1000, offset=offset)
        ids.extend(page.ids)
        if page.next_offset is None:
            return ids
        offset = page.next_offset


def _exhaustive(repository: Any, collection: str, q_all: np.ndarray, queries: Sequence[EvalQuery], depth: int) -> list[list[str]]:
    """Each query's top ``depth`` of the passages its filter allows, by MaxSim."""
    from ..maxsim import granular_maxsim, pack_concatenated

    ids = _all_ids(repository, collection, None)
    scores = np.empty((len(queries), len(ids)), dtype=np.float32)
    for start in range(0, len(ids), _FETCH_BATCH):
        batch = repository.fetch_tokens(collection, ids[start : start + _FETCH_BATCH])
        if batch.missing or batch.ids != tuple(ids[start : start + _FETCH_BATCH]):
            raise InvalidInputError(f"collection {collection!r} changed while its first stage was measured")
        packed = pack_concatenated(batch.tokens, batch.offsets)
        for b in range(0, len(queries), _QUERY_BATCH):
            chunk = granular_maxsim(q_all[b : b + _QUERY_BATCH], packed).passage.cpu().numpy()
            scores[b : b + _QUERY_BATCH, start : start + len(batch.ids)] = chunk
    allowed: dict[str, np.ndarray] = {}
    out = []
    for i, query in enumerate(queries):
        row = scores[i]
        if query.filter is not None:
            key = str(query.filter.to_json())
            if key not in allowed:
                keep = set(_all_ids(repository, collection, query.filter))
                allowed[key] = np.array([pid in keep for pid in ids])
            row = np.where(allowed[key], row, -np.inf)
        order = np.argsort(-row, kind="stable")[: min(depth, int(np.isfinite(row).sum()))]
        out.append([ids[j] for j in order])
    return out


def _candidates(repository: Any, collection: str, stage: str, q: np.ndarray, query: EvalQuery, n: int) -> list[str]:
    from ..planner import pool_query

    kwargs: dict[str, Any] = {"limit": n, "filter": query.filter}
    if stage == "lexical":
        return [c.id for c in repository.lexical_candidates(collection, query.text, **kwargs)]
    if stage == "hybrid":
        return [c.id for c in repository.hybrid_candidates(collection, pool_query(q), query.text, **kwargs)]
    if stage == "maxsim":  # the planner's default prefetch for n candidates
        kwargs.update(tokens=q, prefetch=min(MAX_CANDIDATES, max(4 * n, 400)))
    return [c.id for c in repository.candidates(collection, pool_query(q), **kwargs)]


def first_stage_recall(
    repository: Any,
    collection: str,
    q_all: np.ndarray,
    queries: Sequence[EvalQuery],
    n_passages: int,
    recall_at: Sequence[int] = RECALL_AT,
    *,
    encoding: str = "passage encoding",
) -> FirstStageRecall:
    """recall@N and fraction@N of each first stage ``repository`` offers for
    ``collection`` and of the exhaustive MaxSim ranking, for the queries ``q_all``
    (``[B, Lq, dim]``, one per query of ``queries``)."""
    at = check_recall_at(recall_at)
    if not at:
        raise InvalidInputError("recall@N needs at least one N")
    wanted = [(i, {p for p, g in q.passage_qrels.items() if g >= 1}) for i, q in enumerate(queries)]
    wanted = [(i, rel) for i, rel in wanted if rel]
    stages: dict[str, dict[str, float]] = {}
    if not wanted:
        return FirstStageRecall(encoding, 0, stages)
    caps = repository.capabilities()
    lexical = caps.lexical and repository.open_collection(collection).lexical is not None
    offered = ["pooled"] + (["lexical", "hybrid"] if lexical else []) + (["maxsim"] if caps.maxsim_rerank else [])
    for stage in offered:
        stages[stage] = _stage_metrics({
            n: [(_candidates(repository, collection, stage, q_all[i], queries[i], min(n, n_passages)), rel) for i, rel in wanted]
            for n in at
        })
    ranked = _exhaustive(repository, collection, q_all[[i for i, _ in wanted]], [queries[i] for i, _ in wanted], max(at))
    pairs = [(r, rel) for r, (_, rel) in zip(ranked, wanted, strict=True)]
    stages["exhaustive"] = _stage_metrics(dict.fromkeys(at, pairs))
    return FirstStageRecall(encoding, len(wanted), stages)


def recall_table(results: Sequence[Any]) -> str:
    """A Markdown table of the first-stage recall of ``results`` (each with ``dataset``,
    ``model`` and ``recall``, as :class:`~agrame_vdb.evaluation.ConfigurationResult`):
    one line per stage of each (data set, model, encoding), however many
    configurations share it; empty when none was measured."""
    rows = {(r.dataset, r.model, r.recall.encoding): r.recall for r in results if r.recall is not None}
    if not rows:
        return ""
    names = list(next(s for r in rows.values() for s in r.stages.values()))
    head = ["data set", "model", "encoding", "first stage", *names, "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, model, encoding), recall in rows.items():
        for stage, values in recall.stages.items():
            cells = [dataset, model, encoding, stage, *(f"{values[k]:.3f}" for k in names), str(recall.n)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
