"""Query planning: encode → first-stage candidates → token vectors → granular MaxSim.

A :class:`Planner` answers a query at any granularity from one passage-level index:

1. encode the query with ``[Q]`` (and with ``[Q']`` for sub-passage granularity),
   in one forward pass;
2. ask the repository for first-stage candidates: the pooled vector's nearest
   passages (``first_stage="pooled"``), or a pooled prefetch reranked by the
   engine's own MaxSim (``first_stage="maxsim"``, to shrink what is fetched);
3. get the candidates' token vectors and units (from the optional
   :class:`TokenCache` on the scoring device, else one ``fetch_tokens``: one
   contiguous array, no text or metadata);
4. score passages (``S(q,p)``) and units (``S(q',u)``) in one pass
   (:func:`agrame_vdb.maxsim.granular_maxsim`) and rank units across passages by
   ``S(q',u) + alpha * S(q,p)``;
5. read the top ``k`` passages whole (``fetch``: text, metadata), and check that
   they hold the token vectors and units that were scored (a passage rewritten
   between the two reads is scored again).

Results carry the passage and document ids, the unit kind and index, the score and
its parts, the unit's text and character spans in the passage (for highlighting),
optionally the matched token positions mapped to characters, and the metadata; all
of it serialises to JSON. Every response has a :class:`Timings` breakdown.

A planner is safe to share between threads (its only mutable state, the cache and
the tokenizer, are locked), and has asyncio variants (:meth:`Planner.asearch`):
repository calls go through the repository's own coroutines where it has them
(``acandidates`` / ``afetch_tokens`` / ``afetch``), through a worker thread where it
has none.

>>> import numpy as np
>>> from agrame_vdb import connect, CollectionSchema, StoredPassage, Unit
>>> repo = connect("memory://")
>>> _ = repo.create_collection(CollectionSchema("demo", dim=2))
>>> tokens = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
>>> units = (Unit("sentence", 0, ((0, 3),), ((0, 1),)), Unit("sentence", 1, ((4, 7),), ((1, 3),)))
>>> _ = repo.upsert("demo", [StoredPassage.create("d", 0, tokens, units=units, text="One two")])
>>> planner = Planner(repo, "demo")   # no encoder: search with query vectors
>>> q = np.array([[0.0, 1.0]], dtype=np.float32)
>>> [(r.unit_index, r.text, r.char_spans, round(r.score, 2)) for r in planner.search_vectors(q, q, granularity="sentence", k=1)]
[(1, 'two', ((4, 7),), 2.0)]
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from .errors import InvalidInputError, UnsupportedOperationError
from .maxsim import granular_maxsim, pack_concatenated, pack_token_ranges
from .repository import Candidate, Filter, StoredPassage, TokenBatch
from .unit_table import UnitTable
from .units import Span, Unit

if TYPE_CHECKING:
    from .encoder import MultiVectorEncoder

__all__ = [
    "PASSAGE",
    "FIRST_STAGES",
    "Planner",
    "SearchResult",
    "SearchResponse",
    "TokenMatch",
    "Timings",
    "TokenCache",
    "check_granularity",
    "pool_query",
    "encoder_lock",
]

T = TypeVar("T")

#: The granularity that ranks whole passages; any other is a unit kind.
PASSAGE = "passage"
#: ``pooled``: nearest pooled vectors; ``maxsim``: a pooled prefetch reranked by the
#: engine's MaxSim (needs ``capabilities().maxsim_rerank``).
FIRST_STAGES = ("pooled", "maxsim")
_MAX_CANDIDATES = 100_000
_KIND_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
_NO_POOLED = np.zeros(0)
#: the kinds of blocking step that are repository calls (``a<kind>`` is its coroutine)
_REPOSITORY_CALLS = ("candidates", "fetch", "fetch_tokens")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class TokenMatch:
    """A passage token that some query tokens matched best (MaxSim's argmax).

    ``position`` is the row in the passage's token matrix, ``char_span`` its
    ``[start, end)`` characters in the passage text (None for ``[CLS]``, ``[D]``,
    ``[SEP]``, or when the passage cannot be re-tokenized to the stored length),
    ``query_tokens`` the indices of the query tokens whose max it is, with their
    token strings in ``query_texts``, and ``score`` the best of their similarities.
    """

    position: int
    char_span: Span | None
    query_tokens: tuple[int, ...]
    query_texts: tuple[str, ...]
    score: float

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "char_span": list(self.char_span) if self.char_span is not None else None,
            "query_tokens": list(self.query_tokens),
            "query_texts": list(self.query_texts),
            "score": self.score,
        }


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One ranked passage or unit.

    ``score`` is what the ranking sorts on: ``passage_score`` (``S(q,p)`` with
    ``[Q]``) at passage granularity, ``unit_score + alpha * passage_score`` for
    units (``unit_score`` is ``S(q',u)`` with ``[Q']``). ``text`` is the unit's
    text (its spans joined by a space) or the passage text; ``char_spans`` are the
    half-open ``[start, end)`` offsets of the unit (or ``[(0, len)]`` for a passage)
    into ``passage_text``. ``first_stage_score`` is the candidate's score from the
    repository (cosine of pooled vectors, or the engine's MaxSim).
    """

    rank: int
    passage_id: str
    doc_id: str
    passage_index: int
    granularity: str
    unit_kind: str | None
    unit_index: int | None
    score: float
    passage_score: float
    unit_score: float | None
    alpha: float
    text: str
    char_spans: tuple[Span, ...]
    passage_text: str
    metadata: Mapping[str, Any]
    first_stage_score: float | None = None
    matches: tuple[TokenMatch, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rank": self.rank,
            "passage_id": self.passage_id,
            "doc_id": self.doc_id,
            "passage_index": self.passage_index,
            "granularity": self.granularity,
            "unit_kind": self.unit_kind,
            "unit_index": self.unit_index,
            "score": self.score,
            "passage_score": self.passage_score,
            "unit_score": self.unit_score,
            "alpha": self.alpha,
            "text": self.text,
            "char_spans": [list(s) for s in self.char_spans],
            "passage_text": self.passage_text,
            "metadata": _plain(self.metadata),
            "first_stage_score": self.first_stage_score,
        }
        if self.matches is not None:
            out["matches"] = [m.to_json() for m in self.matches]
        return out


@dataclass(frozen=True, slots=True)
class Timings:
    """Where one query's time went, in milliseconds.

    In a batch, ``encode_ms`` and ``fetch_ms`` are shared work divided by the batch
    size; ``total_ms`` is then the batch's wall time divided by its size.
    ``n_fetched`` counts passages read from the repository (candidates the cache
    missed, and result passages re-read fresh), ``cache_hits`` the candidates
    served by the cache.
    """

    encode_ms: float = 0.0
    candidates_ms: float = 0.0
    fetch_ms: float = 0.0
    rerank_ms: float = 0.0
    total_ms: float = 0.0
    n_candidates: int = 0
    n_fetched: int = 0
    cache_hits: int = 0
    first_stage: str = "pooled"
    batch_size: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "encode_ms": round(self.encode_ms, 3),
            "candidates_ms": round(self.candidates_ms, 3),
            "fetch_ms": round(self.fetch_ms, 3),
            "rerank_ms": round(self.rerank_ms, 3),
            "total_ms": round(self.total_ms, 3),
            "n_candidates": self.n_candidates,
            "n_fetched": self.n_fetched,
            "cache_hits": self.cache_hits,
            "first_stage": self.first_stage,
            "batch_size": self.batch_size,
        }


@dataclass(frozen=True, slots=True)
class SearchResponse:
    """The ranked results of one query, and its timings. Iterates over the results."""

    query: str | None
    granularity: str
    k: int
    results: tuple[SearchResult, ...]
    timings: Timings

    def __iter__(self) -> Iterator[SearchResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> SearchResult:
        return self.results[i]

    def to_json(self, *, timings: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "query": self.query,
            "granularity": self.granularity,
            "k": self.k,
            "results": [r.to_json() for r in self.results],
        }
        if timings:
            out["timings"] = self.timings.to_json()
        return out


def _plain(value: Any) -> Any:
    """A JSON-native copy (read-only mappings become dicts)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- the cache


@dataclass(frozen=True, slots=True, eq=False)
class _Entry:
    """What scoring needs of one passage: token vectors on the scoring device, units,
    its write version (the cache's key where the engine has versions), and the pooled
    direction (to check a cached entry against the engine's score where it has none)."""

    tokens: torch.Tensor | np.ndarray
    units: tuple[Unit, ...]
    pooled: np.ndarray  # unit-norm float64; empty when unknown
    nbytes: int
    version: int | str | None = None


class TokenCache:
    """A bounded LRU cache of passages' token vectors and units on the scoring device.

    Keys are ``(collection, passage id)``, and every entry is checked against the
    engine, the source of truth, each time it is used. Where the engine has write
    versions (``capabilities().versions``), the planner asks for them with the
    candidates and uses an entry only when its version is the candidate's: exact,
    whatever changed. Elsewhere a pooled candidate's score must equal the cosine of
    the query's and the cached pooled vectors, and an engine-MaxSim candidate's
    score the MaxSim computed from the cached tokens (within ``atol``): a passage
    rewritten with other vectors fails the check and is fetched again, but a
    rewrite that keeps the vectors and changes only the units of a passage that
    does not reach the results goes unseen (call :meth:`invalidate` after
    re-segmenting). Result passages are always re-read, and their token vectors
    and units compared with the cached ones.

    ``max_bytes`` bounds the token vectors held (default 512 MiB). Thread-safe.
    """

    def __init__(self, max_bytes: int = 512 << 20, *, atol: float = 1e-4) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise InvalidInputError(f"max_bytes must be a positive int, got {max_bytes!r}")
        if not (isinstance(atol, (int, float)) and atol >= 0 and math.isfinite(atol)):
            raise InvalidInputError(f"atol must be a finite number >= 0, got {atol!r}")
        self.max_bytes = max_bytes
        self.atol = float(atol)
        self._items: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, collection: str, pid: str) -> _Entry | None:
        with self._lock:
            entry = self._items.get((collection, pid))
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end((collection, pid))
            self.hits += 1
            return entry

    def put(self, collection: str, pid: str, entry: _Entry) -> None:
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop((collection, pid), None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[(collection, pid)] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes
                self.evictions += 1

    def invalidate(self, collection: str | None = None, ids: Sequence[str] | None = None) -> int:
        """Drop entries: of ``ids`` in ``collection``, of the whole collection, or all."""
        with self._lock:
            if collection is None:
                keys = list(self._items)
            elif ids is None:
                keys = [k for k in self._items if k[0] == collection]
            else:
                keys = [(collection, i) for i in ids if (collection, i) in self._items]
            for key in keys:
                self._bytes -= self._items.pop(key).nbytes
            return len(keys)

    def _reject(self, collection: str, ids: Sequence[str]) -> None:
        with self._lock:
            self.rejected += len(ids)
        self.invalidate(collection, ids)

    def clear(self) -> None:
        self.invalidate()

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self._items),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "rejected": self.rejected,
        }


# --------------------------------------------------------------------------- helpers


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


_ENCODER_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def encoder_lock(encoder: Any) -> threading.Lock:
    """The lock that serialises use of ``encoder``'s tokenizer across threads.

    A precaution: a Hugging Face fast tokenizer changes its truncation settings on
    calls that differ in them (queries truncate, passages do not), and concurrent
    such calls are reported to raise ``RuntimeError: Already borrowed``
    (huggingface/tokenizers#537). Tokenizing takes microseconds; the transformer
    runs outside the lock.
    """
    with _LOCKS_LOCK:
        lock = _ENCODER_LOCKS.get(encoder)
        if lock is None:
            lock = _ENCODER_LOCKS[encoder] = threading.Lock()
        return lock


def encode_queries(encoder: MultiVectorEncoder, texts: Sequence[str], *, both: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``[Q]`` vectors ``[B, Lq, dim]`` and, when ``both``, ``[Q']`` vectors, in one
    forward pass (a model without a ``[Q']`` marker ranks units with its ``[Q]``
    vectors: one pass, the same array twice); thread-safe (the tokenizer is
    locked, the model is not)."""
    both_passes = both and "subpassage" in encoder.marker_ids
    with encoder_lock(encoder):
        batch = encoder.tokenize_queries(texts, "query")
        if both_passes:
            sub = encoder.tokenize_queries(texts, "subpassage")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if both_passes:
        ids, mask = torch.cat([ids, sub["input_ids"]]), torch.cat([mask, sub["attention_mask"]])
    with torch.inference_mode():
        out = encoder.embed_queries(ids, mask).cpu().numpy()
    n = len(texts)
    if not both:
        return out, None
    return out[:n], (out[n:] if both_passes else out)


def _takes(fn: Any, name: str) -> bool:
    """Whether callable ``fn`` takes a keyword argument ``name``."""
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _same_tokens(fresh: np.ndarray, scored: torch.Tensor | np.ndarray) -> bool:
    """Whether a passage's fetched token vectors are the ones scored (held as they
    were scored: on the scoring device, in its dtype, for a cached entry)."""
    if tuple(fresh.shape) != tuple(scored.shape):
        return False
    if isinstance(scored, np.ndarray):
        return bool(np.array_equal(fresh, scored))
    return bool(torch.equal(torch.from_numpy(np.array(fresh, dtype=np.float32)).to(scored.device, scored.dtype), scored))


def _check_int(value: Any, name: str, low: int, high: int = _MAX_CANDIDATES) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInputError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return int(value)


def _check_alpha(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value):
        raise InvalidInputError(f"alpha must be a finite number, got {value!r}")
    return float(value)


def _check_filter(value: Any) -> Filter | None:
    if value is None or isinstance(value, Filter):
        return value
    if isinstance(value, (Mapping, str)):
        return Filter.from_json(value)
    raise InvalidInputError(f"filter must be a Filter, a JSON object or None, got {value!r}")


@dataclass(slots=True)
class _Plan:
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

    @property
    def units(self) -> bool:
        return self.granularity != PASSAGE


@dataclass(slots=True)
class _Loaded:
    """Candidates' entries (cache or fetch) and the fresh passages read this query.

    ``missing``: ids still to read; ``whole``: read them with ``fetch`` (a cache that
    has no versions to key on keeps pooled vectors), else ``fetch_tokens``.
    ``batch``: this query's ``fetch_tokens`` answer (in id order, for scoring it
    without a copy); without a cache its entries are made when asked for
    (``batch_pos``). ``from_records``: entries built from the very records in
    ``fresh``; ``read``: every id read from the repository.
    """

    entries: dict[str, _Entry]
    fresh: dict[str, StoredPassage]
    hits: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)
    whole: bool = False
    batch: TokenBatch | None = None
    batch_tokens: torch.Tensor | None = None
    from_records: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    batch_pos: dict[str, int] = field(default_factory=dict)

    def has(self, pid: str) -> bool:
        return pid in self.entries or pid in self.batch_pos

    def entry(self, pid: str) -> _Entry:
        entry = self.entries.get(pid)
        if entry is None:
            batch, i = self.batch, self.batch_pos[pid]
            tokens = batch.tokens_of(i)  # type: ignore[union-attr]
            entry = _Entry(tokens, batch.units[i], _NO_POOLED, int(tokens.nbytes), batch.versions[i])  # type: ignore[union-attr]
            self.entries[pid] = entry
        return entry

    def ids(self) -> set[str]:
        return set(self.entries) | set(self.batch_pos)


# --------------------------------------------------------------------------- the planner


class Planner:
    """Plans and runs searches over one collection of a repository.

    ``encoder`` is needed for text queries (:meth:`search`); without one, pass query
    vectors to :meth:`search_vectors`. ``candidates`` is how many passages the
    first stage returns (and are scored), ``prefetch`` the pooled prefetch of the
    engine-MaxSim first stage (default ``max(4 * candidates, 400)``), ``alpha`` the
    weight of the passage score in unit ranking. ``device`` is where scoring runs
    (``"auto"``: CUDA when present), ``dtype`` the scoring dtype (float32; float16
    or bfloat16 on a GPU). ``cache`` is an optional :class:`TokenCache`; ``executor``
    runs the blocking steps of the async methods (default: asyncio's).
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
        first_stage: str = "pooled",
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype = "float32",
        cache: TokenCache | None = None,
        max_chunk_tokens: int | None = None,
        executor: Executor | None = None,
    ) -> None:
        from .encoder import resolve_device, resolve_dtype

        self.repository = repository
        self.collection = collection
        self.schema = repository.open_collection(collection)
        self.capabilities = repository.capabilities()
        self.encoder = encoder
        if encoder is not None and encoder.dim != self.schema.dim:
            raise InvalidInputError(
                f"the encoder makes {encoder.dim}-d vectors but collection {collection!r} holds {self.schema.dim}-d ones: "
                "search it with the model that indexed it (--model / encoder=; the default is plain-base, 384-d; "
                "minilm-frozen-128, 128-d, was the default before)"
            )
        self.candidates = _check_int(candidates, "candidates", 1)
        self.prefetch = None if prefetch is None else _check_int(prefetch, "prefetch", 1)
        self.alpha = _check_alpha(alpha)
        self.first_stage = self._check_first_stage(first_stage)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if cache is not None and not isinstance(cache, TokenCache):
            raise InvalidInputError(f"cache must be a TokenCache or None, got {type(cache).__name__}")
        self.cache = cache
        self.max_chunk_tokens = max_chunk_tokens
        self.executor = executor
        # where the engine has write versions the candidates carry them: a cache keys on
        # them, and fetch_tokens reads at them (Qdrant Edge then skips a read of the stamps)
        self._with_versions = bool(getattr(self.capabilities, "versions", False))
        self._tokens_take_versions = _takes(getattr(repository, "fetch_tokens", None), "versions")
        self._offsets: dict[str, tuple[Span | None, ...]] = {}
        self._offsets_lock = threading.Lock()

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
        from .encoder import MultiVectorEncoder
        from .repositories import connect

        repo = connect(url)
        try:
            encoder = MultiVectorEncoder.load(model, device=device, dtype=encoder_dtype)
            return cls(repo, collection, encoder, device=device, **options)
        except BaseException:
            repo.close()
            raise

    def _check_first_stage(self, first_stage: Any) -> str:
        if first_stage not in FIRST_STAGES:
            raise InvalidInputError(f"first_stage must be one of {FIRST_STAGES}, got {first_stage!r}")
        if first_stage == "maxsim" and not self.capabilities.maxsim_rerank:
            raise UnsupportedOperationError(
                f"{self.capabilities.engine} has no MaxSim of its own; use first_stage='pooled'"
            )
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
    ) -> _Plan:
        n = self.candidates if candidates is None else _check_int(candidates, "candidates", 1)
        stage = self.first_stage if first_stage is None else self._check_first_stage(first_stage)
        pre = self.prefetch if prefetch is None else _check_int(prefetch, "prefetch", 1)
        if stage == "maxsim":
            pre = min(_MAX_CANDIDATES, max(4 * n, 400)) if pre is None else pre
            if pre < n:
                raise InvalidInputError(f"prefetch ({pre}) must be >= candidates ({n})")
        return _Plan(
            collection=self.collection,
            granularity=check_granularity(granularity),
            k=_check_int(k, "k", 1),
            candidates=n,
            prefetch=pre if stage == "maxsim" else None,
            alpha=self.alpha if alpha is None else _check_alpha(alpha),
            filter=_check_filter(filter),
            first_stage=stage,
            matches=bool(matches),
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
        texts = self._check_queries(queries)
        start = time.perf_counter()
        q, sq = encode_queries(self._need_encoder(), texts, both=plan.units)
        encode_s = time.perf_counter() - start
        return self._run_sync(plan, texts, q, sq, start, encode_s)

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
    ) -> SearchResponse:
        """:meth:`search` with the query already encoded: ``query_vectors`` ``[Lq, dim]``
        (``[Q]``) and, for unit granularity, ``subquery_vectors`` (``[Q']``; default:
        the ``[Q]`` vectors). Matches carry no query token strings."""
        plan = self._plan(granularity, k, filter, candidates, alpha, first_stage, prefetch, matches)
        q = self._check_vectors(query_vectors, "query_vectors")
        sq = self._check_vectors(subquery_vectors, "subquery_vectors") if subquery_vectors is not None else q
        return self._run_sync(plan, [None], q[None], sq[None] if plan.units else None, time.perf_counter(), 0.0)[0]

    async def asearch(self, query: str, granularity: str = PASSAGE, k: int = 10, filter: Any = None, **options: Any) -> SearchResponse:
        """:meth:`search` for asyncio: blocking work runs off the event loop."""
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
        """:meth:`search_batch` for asyncio. The repository's own coroutines
        (``acandidates``, ``afetch``) are awaited where it has them; encoding,
        scoring and the other repository calls run in a worker thread."""
        plan = self._plan(granularity, k, filter, candidates, alpha, first_stage, prefetch, matches)
        texts = self._check_queries(queries)
        encoder = self._need_encoder()
        start = time.perf_counter()
        q, sq = await self._in_thread(encode_queries, encoder, texts, both=plan.units)
        encode_s = time.perf_counter() - start
        steps = self._steps(plan, texts, q, sq, start, encode_s)
        return await self._drive_async(steps)

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

    # ------------------------------------------------------------------ the pipeline
    #
    # The pipeline is a generator of blocking calls so that the sync and the async
    # drivers share it: it yields ("candidates" | "fetch" | "cpu", fn, args) and is
    # sent each result back.

    def _run_sync(self, plan: _Plan, texts: list[str | None], q: np.ndarray, sq: np.ndarray | None, start: float, encode_s: float) -> list[SearchResponse]:
        steps = self._steps(plan, texts, q, sq, start, encode_s)
        result: Any = None
        try:
            while True:
                _, fn, args = steps.send(result)
                result = fn(*args)
        except StopIteration as done:
            return done.value

    async def _drive_async(self, steps: Any) -> list[SearchResponse]:
        result: Any = None
        try:
            while True:
                kind, fn, args = steps.send(result)
                native = getattr(self.repository, "a" + kind, None) if kind in _REPOSITORY_CALLS else None
                if native is not None and inspect.iscoroutinefunction(native):
                    result = fn(*args, _async=native)
                    if inspect.isawaitable(result):
                        result = await result
                else:
                    result = await self._in_thread(fn, *args)
        except StopIteration as done:
            return done.value

    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def _steps(self, plan: _Plan, texts: list[str | None], q: np.ndarray, sq: np.ndarray | None, start: float, encode_s: float) -> Any:
        n = len(texts)
        cand_s = [0.0] * n
        all_cands: list[list[Candidate]] = []
        pooled = [pool_query(q[b]) for b in range(n)]
        for b in range(n):
            t = time.perf_counter()
            cands = yield ("candidates", self._candidates, (plan, pooled[b], q[b]))
            cand_s[b] = time.perf_counter() - t
            all_cands.append(cands)
        fetch_s = 0.0
        rerank_s = [0.0] * n
        carry: dict[str, _Entry] = {}
        fresh: dict[str, StoredPassage] = {}
        read: set[str] = set()
        for attempt in range(2):
            t = time.perf_counter()
            union = list(dict.fromkeys(c.id for cands in all_cands for c in cands))
            loaded = self._lookup(plan, union, all_cands, pooled, carry, fresh, read)
            if loaded.missing and loaded.whole:
                records = yield ("fetch", self._fetch_fresh, (plan, loaded.missing))
                self._add_records(plan, loaded, records)
            elif loaded.missing:  # in id order: scored as it comes, without a copy
                ids = sorted(loaded.missing)
                # at the versions the candidates saw; a passage found stale is read afresh
                seen = {c.id: c.version for cands in all_cands for c in cands} if attempt == 0 else {}
                batch = yield ("fetch_tokens", self._fetch_batch, (plan, ids, [seen.get(i) for i in ids]))
                self._add_batch(plan, loaded, batch)
            fetch_s += time.perf_counter() - t
            ranked = []
            for b in range(n):
                t = time.perf_counter()
                ranked.append((yield ("cpu", self._rank, (plan, all_cands[b], loaded, q[b], sq[b] if sq is not None else None))))
                rerank_s[b] += time.perf_counter() - t
            # the result passages, read whole (they carry text and metadata)
            t = time.perf_counter()
            winners = list(dict.fromkeys(r[0] for rows in ranked for r in rows if r[0] not in loaded.fresh))
            if winners:
                more = yield ("fetch", self._fetch_fresh, (plan, winners))
                loaded.fresh.update(more)
                loaded.read.update(more)
            fetch_s += time.perf_counter() - t
            stale = set(self._stale(plan, ranked, loaded))
            if not stale:
                break
            if self.cache is not None:
                self.cache._reject(plan.collection, sorted(stale))
            if attempt == 1:  # rewritten again meanwhile: never a score of other vectors than shown
                ranked = [[r for r in rows if r[0] not in stale] for rows in ranked]
                break
            # read the stale passages again, keep the rest (the cache keeps its own)
            carry = {i: loaded.entry(i) for i in loaded.ids() if i not in stale and i not in loaded.hits}
            fresh = {i: p for i, p in loaded.fresh.items() if i not in stale}
            read = loaded.read
        responses = []
        n_fetched = len(loaded.read)
        for b in range(n):
            t = time.perf_counter()
            results = yield ("cpu", self._results, (plan, ranked[b], loaded, all_cands[b], texts[b], q[b], sq[b] if sq is not None else None))
            rerank_s[b] += time.perf_counter() - t
            responses.append((results, len(all_cands[b]), len({c.id for c in all_cands[b]} & loaded.hits)))
        total = time.perf_counter() - start
        out = []
        for b, (results, n_cands, hits) in enumerate(responses):
            timings = Timings(
                encode_ms=encode_s * 1e3 / n,
                candidates_ms=cand_s[b] * 1e3,
                fetch_ms=fetch_s * 1e3 / n,
                rerank_ms=rerank_s[b] * 1e3,
                total_ms=total * 1e3 / n,
                n_candidates=n_cands,
                n_fetched=n_fetched,
                cache_hits=hits,
                first_stage=plan.first_stage,
                batch_size=n,
            )
            out.append(SearchResponse(texts[b], plan.granularity, plan.k, tuple(results), timings))
        return out

    # ----- step 2: first-stage candidates

    def _candidates(self, plan: _Plan, pooled: np.ndarray, q: np.ndarray, _async: Any = None) -> Any:
        kwargs: dict[str, Any] = {"limit": plan.candidates, "filter": plan.filter}
        if plan.first_stage == "maxsim":
            kwargs.update(tokens=q, prefetch=plan.prefetch)
        if self._with_versions:
            kwargs["with_versions"] = True
        if _async is not None:
            return _async(plan.collection, pooled, **kwargs)
        return self.repository.candidates(plan.collection, pooled, **kwargs)

    # ----- step 3: token vectors and units

    def _entry(self, p: StoredPassage, device_copy: bool) -> _Entry:
        if device_copy:  # a cache entry: keep the pooled direction for the consistency check
            pooled = np.asarray(p.pooled, dtype=np.float64)
            pooled = pooled / max(float(np.linalg.norm(pooled)), 1e-300)
            tokens: Any = torch.from_numpy(np.array(p.tokens, dtype=np.float32)).to(self.device, self.dtype)
            nbytes = tokens.numel() * tokens.element_size()
        else:
            tokens, nbytes, pooled = p.tokens, int(p.tokens.nbytes), _NO_POOLED
        return _Entry(tokens, p.units, pooled, nbytes)

    def _lookup(
        self,
        plan: _Plan,
        ids: list[str],
        all_cands: list[list[Candidate]],
        pooled: list[np.ndarray],
        carry: dict[str, _Entry],
        fresh: dict[str, StoredPassage],
        read: set[str],
    ) -> _Loaded:
        """The entries at hand (``carry``, the cache), and what is left to read."""
        entries = dict(carry)
        hits: set[str] = set()
        if self.cache is not None:
            # the engine is the truth: a candidate's version, else its score, must match the entry
            seen: dict[str, bool] = {}
            for b, cands in enumerate(all_cands):
                for c in cands:
                    if c.id in carry:
                        continue
                    entry = entries.get(c.id) or self.cache.get(plan.collection, c.id)
                    if entry is None:
                        continue
                    if c.version is not None:
                        ok = entry.version == c.version
                    elif c.stage == "pooled":
                        ok = entry.pooled.size > 0 and abs(float(entry.pooled @ pooled[b]) - c.score) <= self.cache.atol
                    else:  # an engine MaxSim score: compared with ours after ranking
                        ok = True
                    seen[c.id] = seen.get(c.id, True) and ok
                    entries[c.id] = entry
            bad = [i for i, ok in seen.items() if not ok]
            if bad:
                self.cache._reject(plan.collection, bad)
            for i in bad:
                entries.pop(i, None)
            hits = set(entries) - set(carry)
        missing = [i for i in ids if i not in entries]
        # a cache without versions to key on checks pooled scores: it needs whole records
        wanted = set(missing)
        whole = self.cache is not None and any(c.version is None for cands in all_cands for c in cands if c.id in wanted)
        return _Loaded(entries, dict(fresh), hits, missing=missing, whole=whole, read=set(read))

    def _add_batch(self, plan: _Plan, loaded: _Loaded, batch: TokenBatch) -> None:
        loaded.batch = batch
        loaded.read.update(batch.ids)
        cache = self.cache
        if cache is None:  # entries are views into the batch, made when asked for
            loaded.batch_pos = {pid: i for i, pid in enumerate(batch.ids)}
            return
        loaded.batch_tokens = big = self._batch_tensor(batch)  # one copy to the device
        offsets = batch.offsets.tolist()
        for i, pid in enumerate(batch.ids):
            tokens = big[offsets[i] : offsets[i + 1]].clone()
            version = batch.versions[i]
            entry = _Entry(tokens, batch.units[i], _NO_POOLED, tokens.numel() * tokens.element_size(), version)
            if version is not None:  # an entry without a version could never be checked
                cache.put(plan.collection, pid, entry)
            loaded.entries[pid] = entry

    def _add_records(self, plan: _Plan, loaded: _Loaded, records: dict[str, StoredPassage]) -> None:
        for pid, p in records.items():
            entry = self._entry(p, self.cache is not None)
            loaded.entries[pid] = entry
            loaded.fresh[pid] = p
            loaded.from_records.add(pid)
            loaded.read.add(pid)
            if self.cache is not None:
                self.cache.put(plan.collection, pid, entry)

    def _batch_tensor(self, batch: TokenBatch) -> torch.Tensor:
        tokens = batch.tokens if batch.tokens.flags.writeable else np.array(batch.tokens)
        return torch.from_numpy(tokens).to(self.device, self.dtype)

    def _fetch_batch(self, plan: _Plan, ids: list[str], versions: list[Any], _async: Any = None) -> Any:
        fetch_tokens = _async or getattr(self.repository, "fetch_tokens", None)
        if fetch_tokens is None:  # a repository without the lean read: whole records
            result = self.repository.fetch(plan.collection, ids)
            return TokenBatch.from_passages(result.passages, result.missing, dim=self.schema.dim)
        takes = _takes(_async, "versions") if _async is not None else self._tokens_take_versions
        if takes and any(v is not None for v in versions):
            return fetch_tokens(plan.collection, ids, versions=versions)
        return fetch_tokens(plan.collection, ids)

    def _fetch_fresh(self, plan: _Plan, ids: list[str], _async: Any = None) -> Any:
        def finish(result: Any) -> dict[str, StoredPassage]:
            return {p.id: p for p in result.passages}

        if _async is not None:
            async def run() -> dict[str, StoredPassage]:
                return finish(await _async(plan.collection, ids))

            return run()
        return finish(self.repository.fetch(plan.collection, ids))

    def _stale(self, plan: _Plan, ranked: list[list[tuple]], loaded: _Loaded) -> list[str]:
        """Result passages whose whole record (read after scoring) is gone or holds
        other token vectors or units than were scored, and cached entries whose
        engine MaxSim score disagrees with ours."""
        stale = set()
        tol = self._score_atol() if loaded.hits else 0.0
        for rows in ranked:
            for pid, _, _, p_score, _, stage_score, stage in rows:
                if pid in loaded.from_records:
                    continue  # scored from this very record
                fresh = loaded.fresh.get(pid)
                entry = loaded.entry(pid)
                if fresh is None or fresh.units != entry.units or not _same_tokens(fresh.tokens, entry.tokens):
                    stale.add(pid)  # deleted or rewritten since it was read
                elif pid in loaded.hits and stage == "maxsim" and stage_score is not None and abs(stage_score - p_score) > tol:
                    stale.add(pid)
        return sorted(stale)

    def _score_atol(self) -> float:
        atol = float(self.capabilities.fetch_atol.get(self.schema.dtype, 0.0))
        lq = self.encoder.config.query_maxlen if self.encoder is not None else 32
        return lq * max(1e-3, 4 * atol)

    # ----- step 4: scoring and ranking

    def _rank(self, plan: _Plan, cands: list[Candidate], loaded: _Loaded, q: np.ndarray, sq: np.ndarray | None) -> list[tuple]:
        """Rows ``(pid, unit, unit_score, passage_score, score, stage_score, stage)``, best first, k at most."""
        stage_of = {}
        for c in cands:
            stage_of.setdefault(c.id, (c.score, c.stage))
        ids = sorted(i for i in stage_of if loaded.has(i))  # canonical order: same scores on every engine
        if not ids:
            return []
        batch = loaded.batch
        kind = plan.granularity
        unit_index: np.ndarray | None = None
        # the candidates are exactly the fetched batch, in the same (id) order: scored without a copy
        if batch is not None and len(ids) == len(batch.ids) and tuple(ids) == batch.ids:
            if loaded.batch_tokens is None:
                loaded.batch_tokens = self._batch_tensor(batch)
            if plan.units:  # the units as columns: Unit records only for the winners
                table = batch.units if isinstance(batch.units, UnitTable) else UnitTable.from_units(batch.units)
                columns = table.token_ranges(kind)
                if not len(columns):
                    return []
                packed = pack_token_ranges(
                    loaded.batch_tokens, batch.offsets, columns.unit_passage, columns.range_unit, columns.ranges
                )
                unit_index = columns.unit_index
                unit_of = lambda j: table.unit(int(columns.unit_passage[j]), kind, int(columns.unit_index[j]))  # noqa: E731
            else:
                packed = pack_concatenated(loaded.batch_tokens, batch.offsets)
        else:
            unit_lists: list[list[Unit]] = []
            if plan.units:
                unit_lists = [[u for u in loaded.entry(i).units if u.kind == kind] for i in ids]
                keep = [j for j, us in enumerate(unit_lists) if us]
                ids = [ids[j] for j in keep]
                unit_lists = [unit_lists[j] for j in keep]
                flat_units = [u for us in unit_lists for u in us]
                unit_index = np.array([u.index for u in flat_units], dtype=np.int64)
                unit_of = flat_units.__getitem__
            if not ids:
                return []
            packed = self._pack([loaded.entry(i) for i in ids], unit_lists if plan.units else None)
        scores = granular_maxsim(q, packed, sq if plan.units and sq is not None else None, max_chunk_tokens=self.max_chunk_tokens)
        p_scores = scores.passage[0].float().cpu().numpy().astype(np.float64)
        rank_of = np.arange(len(ids))  # ids are sorted: position is the id order
        if not plan.units:
            order = np.lexsort((rank_of, -p_scores))[: plan.k]
            return [
                (ids[j], None, None, float(p_scores[j]), float(p_scores[j]), *stage_of[ids[j]])
                for j in order.tolist()
            ]
        u_scores = scores.unit[0].float().cpu().numpy().astype(np.float64)
        u_passage = scores.unit_passage.cpu().numpy()
        total = u_scores + plan.alpha * p_scores[u_passage]
        order = np.lexsort((unit_index, u_passage, -total))[: plan.k]
        return [
            (
                ids[u_passage[j]], unit_of(j), float(u_scores[j]), float(p_scores[u_passage[j]]),
                float(total[j]), *stage_of[ids[u_passage[j]]],
            )
            for j in order.tolist()
        ]

    def _pack(self, entries: list[_Entry], units: list[list[Unit]] | None) -> Any:
        lengths = [int(e.tokens.shape[0]) for e in entries]
        offsets = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if all(isinstance(e.tokens, np.ndarray) for e in entries):
            tokens = torch.from_numpy(np.concatenate([e.tokens for e in entries])).to(self.device, self.dtype)
        else:
            parts = [
                e.tokens if isinstance(e.tokens, torch.Tensor)
                else torch.from_numpy(np.array(e.tokens, dtype=np.float32)).to(self.device, self.dtype)
                for e in entries
            ]
            tokens = torch.cat(parts)
        return pack_concatenated(tokens, offsets, units)

    # ----- step 5: results

    def _results(
        self,
        plan: _Plan,
        rows: list[tuple],
        loaded: _Loaded,
        cands: list[Candidate],
        text: str | None,
        q: np.ndarray,
        sq: np.ndarray | None,
    ) -> list[SearchResult]:
        out: list[SearchResult] = []
        rows = [r for r in rows if r[0] in loaded.fresh]  # deleted between the steps: dropped
        matches = self._matches(plan, rows, loaded, text, q, sq) if plan.matches and rows else None
        for rank, (pid, unit, u_score, p_score, score, stage_score, _) in enumerate(rows, 1):
            p = loaded.fresh[pid]
            if unit is None:
                spans: tuple[Span, ...] = ((0, len(p.text)),) if p.text else ()
                unit_text = p.text
            else:
                spans, unit_text = unit.char_spans, unit.text_in(p.text)
            out.append(
                SearchResult(
                    rank=rank,
                    passage_id=pid,
                    doc_id=p.doc_id,
                    passage_index=p.index,
                    granularity=plan.granularity,
                    unit_kind=None if unit is None else unit.kind,
                    unit_index=None if unit is None else unit.index,
                    score=score,
                    passage_score=p_score,
                    unit_score=u_score,
                    alpha=plan.alpha if unit is not None else 0.0,
                    text=unit_text,
                    char_spans=spans,
                    passage_text=p.text,
                    metadata=p.metadata,
                    first_stage_score=stage_score,
                    matches=None if matches is None else matches[rank - 1],
                )
            )
        return out

    def _matches(
        self, plan: _Plan, rows: list[tuple], loaded: _Loaded, text: str | None, q: np.ndarray, sq: np.ndarray | None
    ) -> list[tuple[TokenMatch, ...]]:
        """MaxSim's argmax for the winners only (a small second pass), mapped to characters."""
        passages = [loaded.fresh[r[0]] for r in rows]
        entries = [self._entry(p, False) for p in passages]
        unit_mode = plan.units
        query = sq if unit_mode and sq is not None else q
        units = [[r[1]] for r in rows] if unit_mode else None
        packed = self._pack(entries, units)
        scores = granular_maxsim(torch.from_numpy(query), packed, return_argmax=True, max_chunk_tokens=self.max_chunk_tokens)
        argmax = (scores.unit_argmax if unit_mode else scores.passage_argmax)[0].cpu().numpy()  # type: ignore[index]
        query_texts = self._query_token_texts(text, subpassage=unit_mode and sq is not None, length=query.shape[0])
        out = []
        for j, p in enumerate(passages):
            positions = argmax[j]
            per_token = np.einsum("ld,ld->l", query.astype(np.float32), np.asarray(p.tokens, dtype=np.float32)[positions])
            offsets = self._token_offsets(p)
            grouped: dict[int, list[int]] = {}
            for i, pos in enumerate(positions.tolist()):
                grouped.setdefault(int(pos), []).append(i)
            matches = []
            for pos in sorted(grouped):
                qs = grouped[pos]
                span = offsets[pos] if offsets is not None and pos < len(offsets) else None
                matches.append(
                    TokenMatch(
                        position=pos,
                        char_span=None if span is None else (int(span[0]), int(span[1])),
                        query_tokens=tuple(qs),
                        query_texts=tuple(query_texts[i] for i in qs) if query_texts else (),
                        score=float(max(per_token[i] for i in qs)),
                    )
                )
            out.append(tuple(matches))
        return out

    def _query_token_texts(self, text: str | None, *, subpassage: bool, length: int) -> list[str] | None:
        if text is None or self.encoder is None:
            return None
        enc = self.encoder
        with encoder_lock(enc):
            ids = enc.tokenize_queries([text], "subpassage" if subpassage else "query")["input_ids"][0].tolist()
        tokens = enc.tokenizer.convert_ids_to_tokens(ids)
        markers = {v: k for k, v in enc.marker_ids.items()}
        names = {"query": "[Q]", "subpassage": "[Q']", "document": "[D]"}
        out = [names[markers[i]] if i in markers else t for i, t in zip(ids, tokens)]
        return out[:length]

    def _token_offsets(self, p: StoredPassage) -> tuple[Span | None, ...] | None:
        """Character spans of the passage's token rows, by re-tokenizing its text with the
        encoder (None when there is no encoder or the lengths disagree: another model)."""
        if self.encoder is None or not p.text:
            return None
        with self._offsets_lock:
            cached = self._offsets.get(p.id)
        if cached is None:
            with encoder_lock(self.encoder):
                doc = self.encoder._tokenize_documents([p.text])[0]
            cached = doc.offsets if len(doc.offsets) == p.n_tokens else ()
            with self._offsets_lock:
                if len(self._offsets) > 4096:
                    self._offsets.clear()
                self._offsets[p.id] = cached
        return cached or None
