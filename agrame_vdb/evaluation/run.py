"""Side-by-side runs: a data set indexed into a repository and its queries ranked
through the planner in each configuration (:data:`CONFIGURATIONS`), the plain base
model (``plain-base``) as the baseline."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..documents import Document, PassageInput
from ..errors import InvalidInputError
from ..pooling import check_factor
from ..schema import DEFAULT_STORAGE, DTYPES
from ..token_rows import row_bytes
from .datasets import EvalDataset, UnitKey
from .metrics import mean_metrics
from .recall import RECALL_AT, FirstStageRecall, check_recall_at, first_stage_recall

__all__ = ["CONFIGURATIONS", "plain_base_encoder", "ConfigurationResult", "evaluate", "results_table"]


#: The configurations :func:`evaluate` compares, with what each one does.
CONFIGURATIONS: Mapping[str, str] = MappingProxyType({
    "plain-base": "the model's base transformer used plainly (its own token states: no markers, no query "
                  "augmentation, no projection), passages encoded whole; units ranked by S(q,u) + alpha * S(q,p) "
                  "(no coverage term), passages by S(q,p): the baseline",
    "sentence-encoding": "each unit encoded on its own as a passage; units ranked by S(q,u) with [Q], "
                         "passages by their best unit",
    "passage-span-q": "passages encoded whole; units ranked by span MaxSim S(q,u) with the [Q] query "
                      "(+ beta * W * C(u,q) where the model's unit_coverage sets beta for the unit kind)",
    "passage-span-q'": "passages encoded whole; units ranked by S(q',u) with the [Q'] query "
                       "(+ beta * W * C(u,q') where the model's unit_coverage sets beta for the unit kind)",
    "passage-span-q'+alpha": "passages encoded whole; units ranked by S(q',u) + alpha * S(q,p) "
                             "(+ beta * W * C(u,q') where the model's unit_coverage sets beta for the unit kind)",
})
#: The configurations that rank units inside whole-passage encodings of the model itself.
_SPAN_CONFIGURATIONS = ("passage-span-q", "passage-span-q'", "passage-span-q'+alpha")


def plain_base_encoder(encoder: Any) -> Any:
    """The plain form of ``encoder``'s base transformer: its own token states (no
    markers, no query augmentation, no projection), as it was trained, with the
    encoder's lengths, and no coverage term in unit ranking (``unit_coverage`` empty:
    the baseline is span MaxSim and alpha only). A model that names no base (its
    transformer saved whole) is taken to be built on the packaged base (the
    ``plain-base`` model's)."""
    from ..checkpoints import PACKAGED_MODELS, EncoderConfig, load_checkpoint, resolve_base
    from ..encoder import MultiVectorEncoder

    plain = PACKAGED_MODELS["plain-base"]
    checkpoint = load_checkpoint(plain)
    base = encoder.config.base or checkpoint.config.base
    if base != checkpoint.config.base:
        checkpoint = load_checkpoint(resolve_base(base, Path(encoder.checkpoint.path)))
    checkpoint.projection = None
    checkpoint.config = EncoderConfig(
        dim=int(checkpoint.transformer.config.hidden_size), query_maxlen=encoder.config.query_maxlen,
        doc_maxlen=encoder.config.doc_maxlen, query_marker=None, doc_marker=None, subpassage_marker=None,
        query_augmentation=False, base=base, unit_coverage={},
    )
    return MultiVectorEncoder(checkpoint, device=encoder.device, dtype=encoder.dtype)


@dataclass(frozen=True)
class ConfigurationResult:
    """The metrics of one configuration of one model on one data set.

    ``passage`` and ``unit`` map metric names (:data:`METRICS`) to means over the
    queries with a relevant item at that level (``n``). ``first_stage`` is the
    planner's first stage the ``candidates`` came from; ``recall`` the first-stage
    recall of the collection the configuration ranked (the same for every
    configuration over it; None for ``sentence-encoding`` or when not measured).
    ``token_pooling`` is the factor the collection's token rows were pooled by (1:
    none), ``tokens`` the token vectors encoded, ``rows`` the rows stored and
    ``row_bytes`` the bytes of one row in the storage's form (:func:`agrame_vdb.token_rows.row_bytes`).
    """

    dataset: str
    model: str
    configuration: str
    passage: Mapping[str, float]
    unit: Mapping[str, float]
    alpha: float | None = None
    candidates: int = 0
    store: str = "memory://"
    seconds: float = 0.0
    first_stage: str = "pooled"
    recall: FirstStageRecall | None = None
    token_pooling: int = 1
    tokens: int = 0
    rows: int = 0
    row_bytes: int = 0

    @property
    def bytes_per_token(self) -> float | None:
        """Raw vector bytes stored per token encoded: ``row_bytes · rows / tokens``."""
        return self.row_bytes * self.rows / self.tokens if self.tokens else None

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "configuration": self.configuration,
            "description": CONFIGURATIONS[self.configuration],
            "alpha": self.alpha,
            "candidates": self.candidates,
            "store": self.store,
            "passage": dict(self.passage),
            "unit": dict(self.unit),
            "seconds": round(self.seconds, 1),
            "first_stage_used": self.first_stage,
            "token_pooling": self.token_pooling,
            "tokens": self.tokens,
            "rows": self.rows,
            "bytes_per_token": None if self.bytes_per_token is None else round(self.bytes_per_token, 1),
            **({"first_stage": self.recall.to_json()} if self.recall is not None else {}),
        }


def _documents(dataset: EvalDataset) -> list[Any]:
    return [
        Document(p.doc_id, passages=(PassageInput(p.text, tuple(units), p.metadata),))
        for p, units in zip(dataset.passages, dataset.units, strict=True)
    ]


def _unit_documents(dataset: EvalDataset) -> tuple[list[Any], dict[tuple[str, int], UnitKey]]:
    """Each unit as a passage of its own: (doc id, position) → (passage id, unit index)."""
    docs, back = [], {}
    for p, units in zip(dataset.passages, dataset.units, strict=True):
        if not units:
            continue
        inputs = []
        for i, u in enumerate(units):
            inputs.append(PassageInput(u.text_in(p.text), (), p.metadata))
            back[(p.doc_id, i)] = (p.id, u.index)
        docs.append(Document(p.doc_id, passages=tuple(inputs)))
    return docs, back


def _index(
    docs: list[Any], repository: Any, collection: str, encoder: Any, batch_size: int, storage: str = DEFAULT_STORAGE,
    token_pooling: int = 1,
) -> Any:
    """``docs`` indexed into a new ``collection``: the job's summary."""
    from ..chunking import ChunkingOptions
    from ..indexer import IndexJob

    if collection in repository.list_collections():
        repository.drop_collection(collection)
    summary = IndexJob(
        docs, repository, collection, encoder=encoder, chunking=ChunkingOptions(sentences=False),
        encode_batch_size=batch_size, batch_size=max(256, batch_size), storage_dtype=storage,
        token_pooling=token_pooling,
    ).run()
    if summary.rejected:
        raise InvalidInputError(f"indexing {collection} rejected {summary.rejected} documents: {summary.rejects_sample[:3]}")
    return summary


def evaluate(
    dataset: EvalDataset,
    encoder: Any,
    repository: Any,
    *,
    model_name: str = "default",
    configurations: Sequence[str] = tuple(CONFIGURATIONS),
    candidates: int = 200,
    alpha: float = 1.0,
    k: int = 10,
    collection_prefix: str = "agrame_eval",
    store: str = "memory://",
    batch_size: int = 32,
    keep: bool = False,
    on_query: Any = None,
    plain_encoder: Any = None,
    first_stage: str | None = None,
    recall_at: Sequence[int] = RECALL_AT,
    storage: str = DEFAULT_STORAGE,
    token_pooling: int = 1,
) -> list[ConfigurationResult]:
    """Index ``dataset`` into ``repository`` and rank its queries in each configuration.

    Passages are indexed as given (one stored passage per data set passage, its
    units attached); ``sentence-encoding`` indexes every unit as a passage of its
    own in a second collection, ``plain-base`` the passages again with the plain
    base (``plain_encoder``, default :func:`plain_base_encoder`) in a third. Every
    ranking goes through the :class:`~agrame_vdb.planner.Planner`: ``candidates``
    first-stage candidates per query (the planner's default first stage, 200
    pooled candidates; 0: every passage of the collection, an exhaustive rerank),
    the top ``k`` results; ``first_stage`` (``pooled``, ``lexical``, ``hybrid``,
    ``maxsim``; None: the planner's default) is the first stage they come from. ``recall_at``: the ``N``
    of the first-stage recall measured once per whole-passage collection
    (:func:`~agrame_vdb.evaluation.recall.first_stage_recall`; empty: none).
    ``storage`` is the collections' token-vector storage (float32, float16, int8, binary);
    ``token_pooling`` the factor their token rows are pooled by (1: none; see
    :mod:`agrame_vdb.pooling`). Collections are dropped afterwards unless ``keep``.
    """
    from ..redact import redact_url

    store = redact_url(store)  # a label of the results: never its credentials
    if storage not in DTYPES:
        raise InvalidInputError(f"storage must be one of {DTYPES}, got {storage!r}")
    token_pooling = check_factor(token_pooling)
    unknown = [c for c in configurations if c not in CONFIGURATIONS]
    if unknown:
        raise InvalidInputError(f"unknown configuration {unknown[0]!r}; use one of {list(CONFIGURATIONS)}")
    if not dataset.queries:
        raise InvalidInputError(f"{dataset.name} has no queries to evaluate")
    run = _Run(dataset, repository, candidates, alpha, k, store, batch_size, on_query, model_name,
               first_stage, check_recall_at(recall_at), storage, token_pooling)
    names = [f"{collection_prefix}_{what}" for what in ("passages", "units", "plain")]
    results: list[ConfigurationResult] = []
    try:
        if "plain-base" in configurations:
            plain = plain_encoder if plain_encoder is not None else plain_base_encoder(encoder)
            [found] = run.span(plain, names[2], ["passage-span-q'+alpha"], "plain base", unit_coverage={})
            results.append(dataclasses.replace(found, configuration="plain-base"))
        if "sentence-encoding" in configurations:
            results.append(run.unit_encoding(encoder, names[1]))
        span_configs = [c for c in _SPAN_CONFIGURATIONS if c in configurations]
        if span_configs:
            results.extend(run.span(encoder, names[0], span_configs, "passage encoding"))
    finally:
        if not keep:
            for name in names:
                if name in repository.list_collections():
                    repository.drop_collection(name)
    return results


@dataclass
class _Run:
    """One data set's queries ranked through the planner, collection by collection."""

    dataset: EvalDataset
    repository: Any
    candidates: int
    alpha: float
    k: int
    store: str
    batch_size: int
    on_query: Any
    model_name: str
    first_stage: str | None = None
    recall_at: tuple[int, ...] = RECALL_AT
    storage: str = DEFAULT_STORAGE
    token_pooling: int = 1

    def _indexed(self, docs: list[Any], collection: str, encoder: Any) -> tuple[int, dict[str, int]]:
        """``docs`` indexed into ``collection``: its passages, and what its token rows hold
        (the :class:`ConfigurationResult` fields ``token_pooling``, ``tokens``, ``rows``, ``row_bytes``)."""
        summary = _index(docs, self.repository, collection, encoder, self.batch_size, self.storage, self.token_pooling)
        rows = {"token_pooling": self.token_pooling, "tokens": summary.tokens, "rows": summary.rows,
                "row_bytes": row_bytes(self.storage, int(encoder.dim))}
        return summary.passages, rows

    def _planner(
        self, collection: str, encoder: Any, n_passages: int, unit_coverage: Mapping[str, float] | None = None
    ) -> tuple[Any, int]:
        from ..planner import Planner, TokenCache

        n = min(self.candidates, n_passages) if self.candidates else n_passages
        stage = {} if self.first_stage is None else {"first_stage": self.first_stage}
        planner = Planner(self.repository, collection, encoder, candidates=n, cache=TokenCache(2 << 30), device="cpu",
                          unit_coverage=unit_coverage, **stage)
        return planner, n

    def _tick(self, what: str, i: int) -> None:
        if self.on_query is not None:
            self.on_query(what, i + 1, len(self.dataset.queries))

    def span(
        self, encoder: Any, collection: str, configs: Sequence[str], what: str,
        unit_coverage: Mapping[str, float] | None = None,
    ) -> list[ConfigurationResult]:
        """Passages encoded whole by ``encoder``; units ranked inside them in each of ``configs``
        (with ``unit_coverage``; None: the encoder's)."""
        from ..encoder import encode_queries
        from ..planner import PASSAGE

        started = time.perf_counter()
        data = self.dataset
        n_passages, rows = self._indexed(_documents(data), collection, encoder)
        q_all, sq_all = encode_queries(encoder, [q.text for q in data.queries], both=True)
        assert sq_all is not None
        planner, n = self._planner(collection, encoder, n_passages, unit_coverage)
        runs: dict[str, list[tuple[list[Hashable], Mapping[Hashable, int]]]] = {c: [] for c in configs}
        passage_runs = []
        for i, query in enumerate(data.queries):
            q, sq = q_all[i], sq_all[i]
            ranked = planner.search_vectors(q, granularity=PASSAGE, k=self.k, filter=query.filter, query_text=query.text)
            passage_runs.append(([r.passage_id for r in ranked], query.passage_qrels))
            for config in configs:
                sub = q if config == "passage-span-q" else sq
                a = self.alpha if config.endswith("+alpha") else 0.0
                ranked = planner.search_vectors(q, sub, granularity=data.unit_kind, k=self.k, filter=query.filter, alpha=a,
                                                query_text=query.text)
                runs[config].append(([(r.passage_id, r.unit_index) for r in ranked], query.unit_qrels))
            self._tick(what, i)
        passage_metrics = mean_metrics(passage_runs)
        seconds = time.perf_counter() - started
        recall = None  # measured apart from the rerank: its time is not in ``seconds``
        if self.recall_at:
            recall = first_stage_recall(self.repository, collection, q_all, data.queries, n_passages, self.recall_at, encoding=what)
        return [
            ConfigurationResult(data.name, self.model_name, config, passage_metrics, mean_metrics(runs[config]),
                                self.alpha if config.endswith("+alpha") else None, n, self.store, seconds,
                                planner.first_stage, recall, **rows)
            for config in configs
        ]

    def unit_encoding(self, encoder: Any, collection: str) -> ConfigurationResult:
        """Every unit encoded as a passage of its own; a passage ranks where its best unit does."""
        from ..encoder import encode_queries
        from ..planner import PASSAGE

        started = time.perf_counter()
        data = self.dataset
        docs, back = _unit_documents(data)
        n_units, rows = self._indexed(docs, collection, encoder)
        q_all, _ = encode_queries(encoder, [q.text for q in data.queries], both=False)
        planner, n = self._planner(collection, encoder, n_units)
        pid_of_doc = {p.doc_id: p.id for p in data.passages}
        unit_runs, passage_runs = [], []
        depth = min(n, max(10 * self.k, 100))
        for i, query in enumerate(data.queries):
            ranked = planner.search_vectors(q_all[i], granularity=PASSAGE, k=depth, filter=query.filter, query_text=query.text)
            keys = [back[(r.doc_id, r.passage_index)] for r in ranked]
            unit_runs.append((keys[: self.k], query.unit_qrels))
            best: list[str] = []
            for r in ranked:  # a passage ranks where its best unit does
                pid = pid_of_doc[r.doc_id]
                if pid not in best:
                    best.append(pid)
            passage_runs.append((best[: self.k], query.passage_qrels))
            self._tick("sentence encoding", i)
        return ConfigurationResult(data.name, self.model_name, "sentence-encoding", mean_metrics(passage_runs),
                                   mean_metrics(unit_runs), None, n, self.store, time.perf_counter() - started,
                                   planner.first_stage, **rows)


def results_table(results: Sequence[ConfigurationResult], metrics: Sequence[str] = ("P@1", "R@5")) -> str:
    """A Markdown table: one row per (data set, model, configuration), unit then passage metrics."""
    head = ["data set", "model", "configuration"] + [f"unit {m}" for m in metrics] + [f"passage {m}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        config = r.configuration + (f" (α={r.alpha:g})" if r.alpha is not None else "")
        cells = [r.dataset, r.model, config] + [f"{r.unit[m]:.3f}" for m in metrics] + [f"{r.passage[m]:.3f}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
