"""The records a repository stores and returns: :class:`StoredPassage` (one
passage's token vectors, pooled vector, units, text and metadata), the first
stage's :class:`Candidate`, the reads' :class:`FetchResult` and :class:`TokenBatch`,
a page of ids (:class:`IdPage`), and what an engine can do (:class:`Capabilities`).

A record is checked when it is built (:mod:`agrame_vdb.validation`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import InvalidInputError, InvalidVectorError, RepositoryError
from .schema import SCHEMA_VERSION
from .token_rows import EncodedTokens
from .units import Unit, passage_id
from .validation import (
    MAX_EXACT_INT,
    _as_matrix,
    _as_vector,
    _check_id,
    _check_units,
    _is_int,
    validate_metadata,
)

__all__ = ["StoredPassage", "Candidate", "FetchResult", "TokenBatch", "IdPage", "Capabilities", "pool_tokens"]


@dataclass(frozen=True, eq=False)
class StoredPassage:
    """One passage as a repository stores it.

    ``tokens`` is the passage's multi-vector encoding, a ``[n_tokens, dim]`` float32
    array (n_tokens >= 1); ``pooled`` a ``[dim]`` float32 vector for the first stage
    (cosine similarity; only its direction matters). ``units`` carry token ranges
    inside ``[0, n_tokens)`` and character spans inside ``text``. ``metadata`` is
    JSON-safe (no NaN, no bytes); the keys ``doc_id`` and ``passage_index`` are
    reserved for the built-in filter fields. ``id`` is a UUID string, by default
    :func:`~agrame_vdb.units.passage_id` of ``doc_id`` and ``index``, so a rewrite
    of the same passage overwrites it.

    The record is checked when it is built; arrays are not copied, so do not change
    them in place afterwards (a repository checks them again before writing).
    Arrays of fetched passages may be read-only.
    """

    id: str
    doc_id: str
    index: int
    tokens: np.ndarray
    pooled: np.ndarray
    units: tuple[Unit, ...] = ()
    text: str = ""
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", _check_id(self.id))
        if not isinstance(self.doc_id, str) or not self.doc_id:
            raise InvalidInputError(f"doc_id must be a non-empty string, got {self.doc_id!r}")
        if not _is_int(self.index) or not 0 <= self.index <= MAX_EXACT_INT:
            raise InvalidInputError(f"passage index must be an int in [0, 2**53], got {self.index!r}")
        object.__setattr__(self, "index", int(self.index))
        if not isinstance(self.text, str):
            raise InvalidInputError(f"passage text must be a string, got {type(self.text).__name__}")
        tokens = _as_matrix(self.tokens, None, f"passage {self.id} tokens")
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "pooled", _as_vector(self.pooled, tokens.shape[1], f"passage {self.id} pooled"))
        object.__setattr__(self, "units", _check_units(self.units, tokens.shape[0], self.text, self.id))
        object.__setattr__(self, "metadata", MappingProxyType(validate_metadata(self.metadata, self.id)))
        if not _is_int(self.schema_version) or self.schema_version < 1:
            raise InvalidInputError(f"schema_version must be an int >= 1, got {self.schema_version!r}")

    @classmethod
    def create(
        cls,
        doc_id: str,
        index: int,
        tokens: Any,
        *,
        pooled: Any = None,
        units: Sequence[Unit] = (),
        text: str = "",
        metadata: Mapping[str, Any] | None = None,
        schema_version: int = SCHEMA_VERSION,
    ) -> StoredPassage:
        """A passage with the deterministic id; ``pooled`` defaults to :func:`pool_tokens`."""
        pid = passage_id(doc_id, index)  # checks doc_id and index first
        tokens = _as_matrix(tokens, None, f"passage {doc_id!r}/{index} tokens")
        return cls(
            id=pid,
            doc_id=doc_id,
            index=index,
            tokens=tokens,
            pooled=pool_tokens(tokens) if pooled is None else pooled,
            units=tuple(units),
            text=text,
            metadata=metadata if metadata is not None else {},
            schema_version=schema_version,
        )

    @classmethod
    def _trusted(
        cls,
        id: str,
        doc_id: str,
        index: int,
        tokens: np.ndarray,
        pooled: np.ndarray,
        units: tuple[Unit, ...],
        text: str,
        metadata: Mapping[str, Any],
        schema_version: int,
    ) -> StoredPassage:
        """Build without checks: for repositories returning what they stored."""
        self = object.__new__(cls)
        for name, value in (
            ("id", id),
            ("doc_id", doc_id),
            ("index", index),
            ("tokens", tokens),
            ("pooled", pooled),
            ("units", units),
            ("text", text),
            ("metadata", MappingProxyType(dict(metadata))),
            ("schema_version", schema_version),
        ):
            object.__setattr__(self, name, value)
        return self

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[1])

    def __repr__(self) -> str:
        return (
            f"StoredPassage(id={self.id!r}, doc_id={self.doc_id!r}, index={self.index}, "
            f"tokens=<{self.n_tokens}x{self.dim}>, units={len(self.units)}, text={self.text[:30]!r})"
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A first-stage hit: a passage id and its score.

    ``stage`` is ``"pooled"`` (cosine of pooled vectors), ``"maxsim"`` (the
    engine's own MaxSim over the token vectors, after a pooled prefetch),
    ``"lexical"`` (BM25 of the text) or ``"hybrid"`` (the reciprocal rank fusion of a
    pooled and a lexical list; the score is the fused one).
    ``version`` is the passage's write version (as :attr:`TokenBatch.versions`)
    when the engine reads it with the hit (``candidates(..., with_versions=True)``
    on an engine whose ``capabilities().versions`` is True), else None.
    """

    id: str
    score: float
    stage: str = "pooled"
    version: int | str | None = None


@dataclass(frozen=True, slots=True)
class FetchResult:
    """Fetched passages, in the order asked (duplicates repeated), and the ids not found."""

    passages: tuple[StoredPassage, ...]
    missing: tuple[str, ...] = ()

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.passages]

    def __len__(self) -> int:
        return len(self.passages)

    def __iter__(self) -> Iterator[StoredPassage]:
        return iter(self.passages)


@dataclass(frozen=True, slots=True, eq=False)
class TokenBatch:
    """What scoring needs of some passages, and nothing more: no text, no metadata.

    ``ids`` are the passages found, once each, in the order first asked, and
    ``missing`` the ids asked for that are not stored. Passage ``i``'s token
    vectors are rows ``offsets[i]:offsets[i+1]`` (``offsets`` is int64 ``[P+1]``) of
    ``vectors``: one C-contiguous, writable float32 ``[T, dim]`` array, or the rows
    as stored (:class:`~agrame_vdb.token_rows.EncodedTokens`: float16, int8 with a
    scale per token, sign bits with an int8 rerank copy), which the planner scores
    a chunk at a time without expanding them (:attr:`encoded`). :attr:`tokens` is
    always the float32 array (an encoded batch is expanded once, when first asked);
    so the batch goes to :func:`~agrame_vdb.maxsim.pack_concatenated` without a copy.
    ``units[i]`` are its units (``units`` may be a
    :class:`~agrame_vdb.unit_table.UnitTable`, which the planner scores from without
    building ``Unit`` records). ``versions[i]`` is the passage's write version: it
    changes whenever the passage is written again, so a cache can key on
    ``(id, version)``; None where the engine keeps no version
    (``capabilities().versions`` is False) or the passage was written without one.

    >>> import numpy as np
    >>> a = StoredPassage.create("d", 0, np.eye(2, dtype=np.float32))
    >>> b = TokenBatch.from_passages([a], ("00000000-0000-4000-8000-000000000000",), dim=2)
    >>> b.ids == (a.id,), b.offsets.tolist(), b.tokens_of(0).shape, b.encoded is None
    (True, [0, 2], (2, 2), True)
    """

    ids: tuple[str, ...]
    missing: tuple[str, ...]
    vectors: np.ndarray | EncodedTokens
    offsets: np.ndarray
    units: Sequence[tuple[Unit, ...]]
    versions: tuple[int | str | None, ...]
    _expanded: list[np.ndarray] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.ids)
        shape = tuple(self.vectors.shape)
        if (
            len(shape) != 2
            or self.offsets.shape != (n + 1,)
            or int(self.offsets[-1]) != shape[0]
            or len(self.units) != n
            or len(self.versions) != n
            or (isinstance(self.vectors, EncodedTokens) and not np.array_equal(self.vectors.offsets, self.offsets))
        ):
            raise RepositoryError(
                f"inconsistent token batch: {n} ids, tokens {shape}, offsets {self.offsets.shape}, "
                f"{len(self.units)} unit lists, {len(self.versions)} versions"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def encoded(self) -> EncodedTokens | None:
        """The rows as stored, when the engine handed them over unexpanded."""
        return self.vectors if isinstance(self.vectors, EncodedTokens) else None

    @property
    def tokens(self) -> np.ndarray:
        """Every token vector as one float32 ``[T, dim]`` array (an encoded batch's
        values: for sign bits, those of their rerank copy), expanded once."""
        if not isinstance(self.vectors, EncodedTokens):
            return self.vectors
        if not self._expanded:
            self._expanded.append(self.vectors.expand())
        return self._expanded[0]

    @property
    def n_tokens(self) -> np.ndarray:
        """Token count of each passage, int64 ``[P]``."""
        return np.diff(self.offsets)

    def tokens_of(self, i: int) -> np.ndarray:
        """Passage ``i``'s ``[n_i, dim]`` token vectors (a view into ``tokens``; of an
        encoded batch not yet expanded, that passage's rows expanded alone)."""
        if isinstance(self.vectors, EncodedTokens) and not self._expanded:
            return self.vectors.select([i]).expand()
        return self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])]

    @classmethod
    def from_passages(
        cls,
        passages: Sequence[StoredPassage],
        missing: Sequence[str] = (),
        *,
        dim: int,
        versions: Sequence[int | str | None] | None = None,
    ) -> TokenBatch:
        """A batch of fetched passages (one copy of their token vectors)."""
        lengths = [p.tokens.shape[0] for p in passages]
        offsets = np.zeros(len(passages) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = (
            np.concatenate([p.tokens for p in passages]).astype(np.float32, copy=False)
            if passages
            else np.zeros((0, dim), dtype=np.float32)
        )
        return cls(
            tuple(p.id for p in passages),
            tuple(missing),
            np.ascontiguousarray(tokens),
            offsets,
            tuple(p.units for p in passages),
            tuple(versions) if versions is not None else (None,) * len(passages),
        )


@dataclass(frozen=True, slots=True)
class IdPage:
    """One page of ids in id order; pass ``next_offset`` back for the next page (None: done)."""

    ids: tuple[str, ...]
    next_offset: str | None = None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine can do, so callers can choose a plan without knowing the engine.

    - ``engine``: e.g. ``"memory"``, ``"qdrant-edge"``, ``"qdrant-local"``, ``"qdrant-server"``.
    - ``maxsim_rerank``: :meth:`~agrame_vdb.protocol.Repository.candidates` accepts ``tokens`` and
      reranks its pooled prefetch by MaxSim inside the engine.
    - ``dtypes``: storage dtypes a schema may ask for.
    - ``storage_options_honoured``: float16, int8 and ``on_disk`` really change how
      vectors are stored (False where the engine accepts and ignores them).
    - ``persistent``: data survives ``close()`` and a new process.
    - ``exclusive``: one process at a time (a second opener gets ConcurrentAccessError).
    - ``filter_ops``: filter classes supported (all six everywhere so far).
    - ``fetch_atol``: per dtype, the largest absolute difference between written and
      fetched token vectors, for vectors with entries in [-1, 1].
    - ``approximate_first_stage``: the pooled search may use an ANN index (HNSW), so
      its order can differ from exact cosine on large collections.
    - ``versions``: every write stamps the passage with a new version, which
      :meth:`~agrame_vdb.protocol.Repository.fetch_tokens` reports and ``candidates(with_versions=True)``
      puts on each hit; False where versions are None.
    - ``lexical``: collections may have lexical vectors (``CollectionSchema.lexical``),
      searched by :meth:`~agrame_vdb.protocol.Repository.lexical_candidates` and fused
      with the pooled ones by ``hybrid_candidates``.
    - ``hybrid_in_engine``: the engine fuses the two branches itself (one request);
      elsewhere the library fuses them (the same reciprocal rank fusion).
    """

    engine: str
    maxsim_rerank: bool
    dtypes: frozenset[str]
    storage_options_honoured: bool
    persistent: bool
    exclusive: bool
    filter_ops: frozenset[str]
    fetch_atol: Mapping[str, float]
    approximate_first_stage: bool = False
    versions: bool = False
    lexical: bool = False
    hybrid_in_engine: bool = False


def pool_tokens(tokens: Any) -> np.ndarray:
    """The default pooled vector: the L2-normalised mean of the token vectors.

    >>> [round(float(x), 4) for x in pool_tokens(np.array([[1.0, 0.0], [0.0, 1.0]]))]
    [0.7071, 0.7071]
    """
    arr = _as_matrix(tokens, None, "tokens")
    mean = arr.mean(axis=0, dtype=np.float64)
    norm = np.linalg.norm(mean)
    if not norm > 0:
        # opposite tokens cancel out: fall back on the first non-zero token
        nz = np.flatnonzero(np.linalg.norm(arr, axis=1))
        if not len(nz):
            raise InvalidVectorError("every token vector is zero: there is no pooled direction")
        mean, norm = arr[nz[0]].astype(np.float64), float(np.linalg.norm(arr[nz[0]]))
    return (mean / norm).astype(np.float32)
