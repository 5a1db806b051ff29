"""One batch of an indexing job: its chunks encoded, the records to write, what goes stale.

:func:`encode_chunks` encodes chunks longest first, ``batch_size`` at a time; a
batch the encoder refuses is encoded passage by passage, so one bad passage fails
only its document. :func:`build_records` turns the documents of a batch and their
encodings into :class:`~agrame_vdb.repository.StoredPassage` records (the failed
documents left out), and :func:`stale_passages` says which passages each written
document no longer has: those at or past its new passage count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .chunking import Chunk
from .errors import InvalidInputError
from .repository import And, Filter, In, Range, StoredPassage
from .units import Passage

__all__ = ["EncodedBatch", "encode_chunks", "build_records", "stale_passages"]


def encode_chunks(
    encoder: Any, chunks: Sequence[Chunk], batch_size: int, on_batch: Callable[[int, int], None] | None = None
) -> tuple[list[Any], dict[str, str]]:
    """Encodings of ``chunks`` (None for failed ones) and the failed documents' reasons.

    ``on_batch(passages, tokens)`` is called after each encoded batch with how many
    passages it held and how many token vectors came out.
    """
    out: list[Any] = [None] * len(chunks)
    failed: dict[str, str] = {}
    order = sorted(range(len(chunks)), key=lambda i: chunks[i].n_tokens, reverse=True)
    step = batch_size
    for start in range(0, len(order), step):
        picked = order[start : start + step]
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
    ``tokens``: token vectors; ``truncated``: units the model's length cut or dropped.
    """

    stored: list[StoredPassage] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    truncated: int = 0


def build_records(
    documents: Sequence[tuple[str, Sequence[Chunk]]], encoded: Sequence[Any], failed: Mapping[str, str]
) -> EncodedBatch:
    """The records of ``documents`` (``(doc_id, chunks)``, their chunks' encodings in
    ``encoded`` one after another), leaving out the documents in ``failed``."""
    batch = EncodedBatch()
    at = 0
    for doc_id, chunks in documents:
        mine = encoded[at : at + len(chunks)]
        at += len(chunks)
        if doc_id in failed:
            continue
        batch.counts[doc_id] = len(chunks)
        for c, e in zip(chunks, mine):
            batch.stored.append(
                StoredPassage.create(
                    c.doc_id, c.index, e.token_vectors, pooled=e.pooled, units=e.units, text=c.text,
                    metadata=c.metadata,
                )
            )
            batch.tokens += e.n_tokens
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
