"""One batch of an indexing job: its chunks encoded, the records to write, what goes stale.

:func:`encode_chunks` encodes chunks longest first, ``batch_size`` at a time; a
batch the encoder refuses is encoded passage by passage, so one bad passage fails
only its document. :func:`build_records` turns the documents of a batch and their
encodings into :class:`~agrame_vdb.repository.StoredPassage` records (the failed
documents left out; with ``token_pooling``, their token rows pooled within their units
by :mod:`agrame_vdb.pooling`), and :func:`stale_passages` says which passages each written
document no longer has: those at or past its new passage count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .chunking import Chunk
from .errors import InvalidInputError
from .pooling import pool_encoded
from .repository import And, Filter, In, Range, StoredPassage
from .units import Passage

__all__ = ["EncodedBatch", "encode_chunks", "build_records", "stale_passages", "HandedOver", "BatchWriter", "GPU_TOKEN_BUDGET"]


def _batches(lengths: Sequence[int], order: Sequence[int], batch_size: int, token_budget: int | None) -> Iterator[list[int]]:
    """``order`` (longest first) cut into batches of at most ``batch_size``, and, with
    ``token_budget``, of at most that many padded tokens (a batch's count times its
    longest length; a passage longer than the budget goes alone)."""
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == batch_size or (token_budget is not None and (len(batch) + 1) * lengths[batch[0]] > token_budget)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def encode_chunks(
    encoder: Any, chunks: Sequence[Chunk], batch_size: int, on_batch: Callable[[int, int], None] | None = None,
    *, token_budget: int | None = None,
) -> tuple[list[Any], dict[str, str]]:
    """Encodings of ``chunks`` (None for failed ones) and the failed documents' reasons.

    Chunks are encoded longest first, ``batch_size`` at a time or, with ``token_budget``,
    as many as fit that many padded tokens. ``on_batch(passages, tokens)`` is called
    after each encoded batch with how many passages it held and how many token vectors
    came out.
    """
    out: list[Any] = [None] * len(chunks)
    failed: dict[str, str] = {}
    lengths = [c.n_tokens for c in chunks]
    order = sorted(range(len(chunks)), key=lambda i: lengths[i], reverse=True)
    for picked in _batches(lengths, order, batch_size, token_budget):
        step = len(picked)
        passages = [Passage.create(chunks[i].doc_id, chunks[i].index, chunks[i].text) for i in picked]
        units = [chunks[i].units for i in picked]
        try:
            encoded = encoder.encode_passages(passages, units, sentences=False, batch_size=step)
        except InvalidInputError:
            encoded = []
            for p, u in zip(passages, units):
                try:
                    [e] = encoder.encode_passages([p], [u], sentences=False, batch_size=1)
                except InvalidInputError as exc:
                    failed.setdefault(p.doc_id, f"passage {p.index}: {exc}")
                    e = None
                encoded.append(e)
        tokens = 0
        for i, e in zip(picked, encoded):
            out[i] = e
            if e is not None:
                tokens += e.n_tokens
        if on_batch is not None:
            on_batch(len(picked), tokens)
    return out, failed


@dataclass(slots=True)
class EncodedBatch:
    """The records of a batch's documents, and what they hold.

    ``counts``: passages per written document (a failed document is not there);
    ``tokens``: token vectors encoded; ``rows``: token rows stored (fewer with token
    pooling); ``truncated``: units the model's length cut or dropped.
    """

    stored: list[StoredPassage] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    rows: int = 0
    truncated: int = 0


def build_records(
    documents: Sequence[tuple[str, Sequence[Chunk]]], encoded: Sequence[Any], failed: Mapping[str, str],
    *, token_pooling: int = 1,
) -> EncodedBatch:
    """The records of ``documents`` (``(doc_id, chunks)``, their chunks' encodings in
    ``encoded`` one after another), leaving out the documents in ``failed``. With
    ``token_pooling`` > 1 each passage's token rows are pooled by that factor within its
    units (:func:`~agrame_vdb.pooling.pool_encoded`); its pooled (first-stage) vector
    stays the mean of all its original tokens."""
    batch = EncodedBatch()
    at = 0
    for doc_id, chunks in documents:
        mine = encoded[at : at + len(chunks)]
        at += len(chunks)
        if doc_id in failed:
            continue
        batch.counts[doc_id] = len(chunks)
        for c, e in zip(chunks, mine):
            tokens, units = (e.token_vectors, e.units) if token_pooling == 1 else pool_encoded(e, token_pooling)
            batch.stored.append(
                StoredPassage.create(
                    c.doc_id, c.index, tokens, pooled=e.pooled, units=units, text=c.text, metadata=c.metadata,
                )
            )
            batch.tokens += e.n_tokens
            batch.rows += len(tokens)
            batch.truncated += len(e.truncated)
    return batch


def stale_passages(counts: Mapping[str, int]) -> list[Filter]:
    """Filters for the passages the documents of ``counts`` (passages each) no longer
    have: one per passage count, ``doc_id in (...)`` and ``passage_index >= count``.

    >>> [f.to_json() for f in stale_passages({"a": 2, "b": 1, "c": 2})]  # doctest: +NORMALIZE_WHITESPACE
    [{'$and': [{'doc_id': {'$in': ['b']}}, {'passage_index': {'$gte': 1}}]},
     {'$and': [{'doc_id': {'$in': ['a', 'c']}}, {'passage_index': {'$gte': 2}}]}]
    """
    by_count: dict[int, list[str]] = {}
    for doc_id, n in counts.items():
        by_count.setdefault(n, []).append(doc_id)
    return [And(In("doc_id", tuple(ids)), Range("passage_index", gte=n)) for n, ids in sorted(by_count.items())]


#: padded tokens an encoding batch holds on a GPU when no ``encode_token_budget`` is given
GPU_TOKEN_BUDGET = 16384

log = logging.getLogger("agrame_vdb.indexer")


@dataclass(slots=True)
class HandedOver:
    """A batch handed to the writer, and what its checkpoint will say once it is
    written: the job's counts, input position and rejects size when it was handed over
    (nothing past it read yet). ``stale``: passages the write deleted."""

    batch: EncodedBatch | None
    counts: Any
    position: int
    line: int
    rejects_bytes: int
    stale: int = 0


class BatchWriter:
    """Writes a batch with ``write(batch) -> stale deleted``: at once, or with
    ``overlap`` on one writer thread while the next batch is encoded (one in flight)."""

    def __init__(self, write: Callable[[EncodedBatch], int], *, overlap: bool) -> None:
        self._write = write
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agrame-index-writer") if overlap else None
        self._in_flight: tuple[Future[int], HandedOver] | None = None

    def hand_over(self, handed: HandedOver) -> HandedOver | None:
        """Write ``handed.batch``: returns it written (no overlap), or None (it is on the
        writer thread: :meth:`finish` gives it back). Call :meth:`finish` first."""
        assert handed.batch is not None and self._in_flight is None
        if self._pool is None:
            handed.stale = self._write(handed.batch)
            return handed
        self._in_flight = (self._pool.submit(self._write, handed.batch), handed)
        return None

    def finish(self, *, quietly: bool = False) -> HandedOver | None:
        """The batch on the writer thread once it is written (None when there is none).
        A failed write raises, or with ``quietly`` is logged and dropped."""
        if self._in_flight is None:
            return None
        (future, handed), self._in_flight = self._in_flight, None
        try:
            handed.stale = future.result()
        except BaseException as exc:
            if not quietly:
                raise
            log.warning("the batch being written when the job stopped was not written: %s", exc)
            return None
        return handed

    def writing(self) -> int:
        """Passages on the writer thread, encoded and not written yet."""
        if self._in_flight is None or self._in_flight[1].batch is None:
            return 0
        return len(self._in_flight[1].batch.stored)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
