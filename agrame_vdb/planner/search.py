"""The :class:`Planner`: a collection of a repository searched at any granularity."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import numpy as np
import torch

from ..encoder import MultiVectorEncoder, encode_queries, resolve_device, resolve_dtype
from ..errors import InvalidInputError, LexicalUnavailableError, UnsupportedOperationError
from ..fusion import RRF_K, check_rrf_k
from ..model_settings import check_unit_coverage
from ..schema import no_lexical_hint
from ..repository import Filter
from .cache import TokenCache
from .explain import Explainer
from .fetch import Reader
from .pipeline import Pipeline
from .plan import FIRST_STAGES, MAX_CANDIDATES, PASSAGE, TEXT_STAGES, Plan, check_alpha, check_filter, check_granularity, check_int
from .rank import Scorer
from .results import SearchResponse

__all__ = ["Planner"]

T = TypeVar("T")


class Planner:
    """Plans and runs searches over one collection of a repository.

    ``encoder`` is needed for text queries (:meth:`search`); without one, pass query
    vectors to :meth:`search_vectors`. ``candidates`` is how many passages the
    first stage returns (and are scored), ``prefetch`` the pooled prefetch of the
    engine-MaxSim first stage (default ``max(4 * candidates, 400)``), ``alpha`` the
    weight of the passage score in unit ranking. ``unit_coverage`` maps unit kinds to
    the weight ``beta`` of a coverage term: units of such a kind are ranked by
    ``S(q',u) + alpha * S(q,p) + beta * W * C(u,q')``, where ``C(u,q')`` is the mean
    over the unit's tokens of their best similarity to a ``[Q']`` query token and
    ``W`` the query's real tokens (its rows that are not all zero), so that a unit is
    not preferred for merely holding more tokens (a sentence over its propositions).
    None (the default) takes the encoder's ``config.unit_coverage`` (none without an
    encoder); a mapping replaces it (``{}``: span MaxSim and alpha only). ``device``
    is where scoring runs (``"auto"``: CUDA when present), ``dtype`` the scoring
    dtype (float32; float16 or bfloat16 on a GPU). ``rerank`` is, for a collection
    stored as binary (sign bits), how many passages the first pass (MaxSim against
    the candidates' sign vectors) hands to the exact rerank on their int8 copy
    (default ``max(50, 4 * k)``, at most ``candidates``: with fewer candidates, all
    are scored on the copy alone); other collections are scored once. ``cache`` is an optional
    :class:`TokenCache`; ``executor`` runs the async methods' searches (default:
    asyncio's).
    """

    def __init__(
        self,
        repository: Any,
        collection: str,
        encoder: MultiVectorEncoder | None = None,
        *,
        candidates: int = 200,
        prefetch: int | None = None,
        alpha: float = 1.0,
        unit_coverage: Mapping[str, float] | None = None,
        first_stage: str = "auto",
        dense_candidates: int | None = None,
        lexical_candidates: int | None = None,
        rrf_k: int = RRF_K,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype = "float32",
        cache: TokenCache | None = None,
        max_chunk_tokens: int | None = None,
        executor: Executor | None = None,
        rerank: int | None = None,
    ) -> None:
        self.repository = repository
        self.collection = collection
        self.schema = repository.open_collection(collection)
        self.capabilities = repository.capabilities()
        self.encoder = encoder
        if encoder is not None and encoder.dim != self.schema.dim:
            raise InvalidInputError(
                f"the encoder makes {encoder.dim}-d vectors but collection {collection!r} holds {self.schema.dim}-d ones: "
                "search it with the model that indexed it (--model / encoder=; the default is minilm-qprime-query, 384-d; "
                "minilm-frozen-128, 128-d, was the default before)"
            )
        self.candidates = check_int(candidates, "candidates", 1)
        self.prefetch = None if prefetch is None else check_int(prefetch, "prefetch", 1)
        self.alpha = check_alpha(alpha)
        if unit_coverage is None:
            unit_coverage = getattr(getattr(encoder, "config", None), "unit_coverage", None) or {}
        self.unit_coverage = check_unit_coverage(unit_coverage)
        self.first_stage = self._check_first_stage(first_stage)
        self._auto_stage = first_stage == "auto"
        self.dense_candidates = None if dense_candidates is None else check_int(dense_candidates, "dense_candidates", 1)
        self.lexical_candidates = (
            None if lexical_candidates is None else check_int(lexical_candidates, "lexical_candidates", 1)
        )
        self.rrf_k = check_rrf_k(rrf_k)
        self.rerank = None if rerank is None else check_int(rerank, "rerank", 1)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if cache is not None and not isinstance(cache, TokenCache):
            raise InvalidInputError(f"cache must be a TokenCache or None, got {type(cache).__name__}")
        self.cache = cache
        self.max_chunk_tokens = max_chunk_tokens
        self.executor = executor
        scorer = Scorer(self.device, self.dtype, max_chunk_tokens)
        self._pipeline = Pipeline(
            Reader(repository, self.schema.dim, self.capabilities, cache, scorer),
            scorer,
            Explainer(encoder, scorer),
            self._score_atol(),
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        collection: str,
        *,
        model: Any = None,
        device: str | torch.device | None = "auto",
        encoder_dtype: str | torch.dtype = "float32",
        **options: Any,
    ) -> Planner:
        """Connect to a store URL, load an encoder (``model=None``: the shipped default)."""
        from ..repositories import connect

        repo = connect(url)
        try:
            encoder = MultiVectorEncoder.load(model, device=device, dtype=encoder_dtype)
            return cls(repo, collection, encoder, device=device, **options)
        except BaseException:
            repo.close()
            raise

    def _score_atol(self) -> float:
        """How far an engine's MaxSim of a cached passage may be from ours: the error of
        the stored dtype, for each query token."""
        atol = float(self.capabilities.fetch_atol.get(self.schema.dtype, 0.0))
        lq = self.encoder.config.query_maxlen if self.encoder is not None else 32
        return lq * max(1e-3, 4 * atol)

    def _check_first_stage(self, first_stage: Any) -> str:
        if first_stage == "auto":
            return "hybrid" if self.capabilities.lexical and self.schema.lexical is not None else "pooled"
        if first_stage not in FIRST_STAGES:
            raise InvalidInputError(f"first_stage must be 'auto' or one of {FIRST_STAGES}, got {first_stage!r}")
        if first_stage == "maxsim" and not self.capabilities.maxsim_rerank:
            raise UnsupportedOperationError(
                f"{self.capabilities.engine} has no MaxSim of its own; use first_stage='pooled'"
            )
        if first_stage in TEXT_STAGES:
            if not self.capabilities.lexical:
                raise UnsupportedOperationError(
                    f"{self.capabilities.engine} has no lexical search; use first_stage='pooled'"
                )
            if self.schema.lexical is None:
                raise LexicalUnavailableError(no_lexical_hint(self.schema.name))
        return first_stage

    def _plan(
        self,
        granularity: Any,
        k: Any,
        filter: Any,
        candidates: Any,
        alpha: Any,
        first_stage: Any,
        prefetch: Any,
        matches: Any,
    ) -> Plan:
        n = self.candidates if candidates is None else check_int(candidates, "candidates", 1)
        stage = self.first_stage if first_stage is None else self._check_first_stage(first_stage)
        pre = self.prefetch if prefetch is None else check_int(prefetch, "prefetch", 1)
        if stage == "maxsim":
            pre = min(MAX_CANDIDATES, max(4 * n, 400)) if pre is None else pre
            if pre < n:
                raise InvalidInputError(f"prefetch ({pre}) must be >= candidates ({n})")
        kind = check_granularity(granularity)
        top = check_int(k, "k", 1)
        return Plan(
            collection=self.collection,
            granularity=kind,
            k=top,
            candidates=n,
            prefetch=pre if stage == "maxsim" else None,
            alpha=self.alpha if alpha is None else check_alpha(alpha),
            filter=check_filter(filter),
            first_stage=stage,
            matches=bool(matches),
            dense_limit=self.dense_candidates,
            lexical_limit=self.lexical_candidates,
            rrf_k=self.rrf_k,
            coverage=self.unit_coverage.get(kind, 0.0) if kind != PASSAGE else 0.0,
            rerank=self.rerank if self.rerank is not None else max(50, 4 * top),
        )

    # ------------------------------------------------------------------ public API

    def search(
        self,
        query: str,
        granularity: str = PASSAGE,
        k: int = 10,
        filter: Filter | Mapping[str, Any] | str | None = None,
        *,
        candidates: int | None = None,
        alpha: float | None = None,
        first_stage: str | None = None,
        prefetch: int | None = None,
        matches: bool = False,
    ) -> SearchResponse:
        """Rank the collection's passages (``granularity="passage"``) or units of a kind
        (``"sentence"``, ``"proposition"``, ...) for ``query``; the top ``k``.

        ``filter`` is a :class:`~agrame_vdb.repository.Filter` or its JSON form;
        ``candidates``, ``alpha``, ``first_stage`` and ``prefetch`` override the
        planner's settings; ``matches=True`` adds the matched token positions.
        """
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a string, got {type(query).__name__}; use search_batch for many")
        return self.search_batch(
            [query], granularity, k, filter, candidates=candidates, alpha=alpha,
            first_stage=first_stage, prefetch=prefetch, matches=matches,
        )[0]

    def search_batch(
        self,
        queries: Sequence[str],
        granularity: str = PASSAGE,
        k: int = 10,
        filter: Filter | Mapping[str, Any] | str | None = None,
        *,
        candidates: int | None = None,
        alpha: float | None = None,
        first_stage: str | None = None,
        prefetch: int | None = None,
        matches: bool = False,
    ) -> list[SearchResponse]:
        """:meth:`search` for many queries: one encoder pass, one fetch of the union
        of their candidates, then each query scored against its own candidates."""
        plan = self._plan(granularity, k, filter, candidates, alpha, first_stage, prefetch, matches)
        return self._search_batch(plan, self._check_queries(queries), self._need_encoder())

    def search_vectors(
        self,
        query_vectors: Any,
        subquery_vectors: Any = None,
        *,
        granularity: str = PASSAGE,
        k: int = 10,
        filter: Filter | Mapping[str, Any] | str | None = None,
        candidates: int | None = None,
        alpha: float | None = None,
        first_stage: str | None = None,
        prefetch: int | None = None,
        matches: bool = False,
        query_text: str | None = None,
    ) -> SearchResponse:
        """:meth:`search` with the query already encoded: ``query_vectors`` ``[Lq, dim]``
        (``[Q]``) and, for unit granularity, ``subquery_vectors`` (``[Q']``; default:
        the ``[Q]`` vectors). Matches carry no query token strings. A lexical or hybrid
        first stage searches ``query_text`` (without it, the planner's ``"auto"``
        default falls back to pooled)."""
        if query_text is None and first_stage is None and self._auto_stage:
            first_stage = "pooled"
        plan = self._plan(granularity, k, filter, candidates, alpha, first_stage, prefetch, matches)
        if plan.first_stage in TEXT_STAGES and (not isinstance(query_text, str) or not query_text.strip()):
            raise InvalidInputError(
                f"first_stage={plan.first_stage!r} searches the query's words: give query_text= (a non-empty string)"
            )
        q = self._check_vectors(query_vectors, "query_vectors")
        sq = self._check_vectors(subquery_vectors, "subquery_vectors") if subquery_vectors is not None else q
        return self._pipeline.run(
            plan, [None], q[None], sq[None] if plan.units else None, time.perf_counter(), 0.0, [query_text]
        )[0]

    async def asearch(self, query: str, granularity: str = PASSAGE, k: int = 10, filter: Any = None, **options: Any) -> SearchResponse:
        """:meth:`search` for asyncio: the search runs off the event loop, in a worker thread."""
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a string, got {type(query).__name__}; use asearch_batch for many")
        return (await self.asearch_batch([query], granularity, k, filter, **options))[0]

    async def asearch_batch(
        self,
        queries: Sequence[str],
        granularity: str = PASSAGE,
        k: int = 10,
        filter: Any = None,
        *,
        candidates: int | None = None,
        alpha: float | None = None,
        first_stage: str | None = None,
        prefetch: int | None = None,
        matches: bool = False,
    ) -> list[SearchResponse]:
        """:meth:`search_batch` for asyncio: the checks run at once, the search (encoding,
        repository calls, scoring) in a worker thread of the planner's ``executor``
        (default: asyncio's), with the caller's context variables. A cancelled await
        stops waiting; the search in its thread runs to its end, and its answer is dropped."""
        plan = self._plan(granularity, k, filter, candidates, alpha, first_stage, prefetch, matches)
        texts = self._check_queries(queries)
        encoder = self._need_encoder()
        return await self._in_thread(self._search_batch, plan, texts, encoder)

    def _search_batch(self, plan: Plan, texts: list[str], encoder: MultiVectorEncoder) -> list[SearchResponse]:
        start = time.perf_counter()
        q, sq = encode_queries(encoder, texts, both=plan.units)
        encode_s = time.perf_counter() - start
        return self._pipeline.run(plan, texts, q, sq, start, encode_s)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        call = functools.partial(contextvars.copy_context().run, fn, *args)  # as asyncio.to_thread
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    def close(self) -> None:
        """Close the repository (when the planner owns it, e.g. from :meth:`from_url`)."""
        self.repository.close()

    def __enter__(self) -> Planner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ checks

    def _need_encoder(self) -> MultiVectorEncoder:
        if self.encoder is None:
            raise InvalidInputError("this planner has no encoder: build it with one, or call search_vectors()")
        return self.encoder

    @staticmethod
    def _check_queries(queries: Any) -> list[str]:
        if isinstance(queries, str):
            raise InvalidInputError("queries must be a list of strings, not one string; use search() for one")
        texts = list(queries)
        if not texts:
            raise InvalidInputError("no queries given")
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise InvalidInputError(f"queries must be non-empty strings, got {t!r}")
        return texts

    def _check_vectors(self, value: Any, what: str) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        try:
            arr = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as exc:  # strings, ragged lists, objects
            raise InvalidInputError(f"{what} must be a numeric [Lq, {self.schema.dim}] array: {exc}") from None
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != self.schema.dim:
            raise InvalidInputError(f"{what} must be [Lq, {self.schema.dim}], got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise InvalidInputError(f"{what} contain NaN or infinite values")
        return arr
