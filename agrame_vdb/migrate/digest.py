"""Checksums of a collection's passages, to check a migration lost nothing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..protocol import MigratableRepository
from ..repository import StoredPassage

__all__ = ["Digest", "digest", "digest_passages"]


@dataclass(frozen=True)
class Digest:
    """Order-independent fingerprints of a collection's passages: count, ids,
    token and pooled vectors (float32 bytes), and everything else (units, text,
    metadata, document and index)."""

    count: int
    ids: str
    vectors: str
    records: str


def _passage_hashes(p: StoredPassage) -> tuple[bytes, bytes]:
    vec = hashlib.blake2b(p.id.encode(), digest_size=16)
    vec.update(np.ascontiguousarray(p.tokens, dtype="<f4").tobytes())
    vec.update(np.ascontiguousarray(p.pooled, dtype="<f4").tobytes())
    rec = hashlib.blake2b(p.id.encode(), digest_size=16)
    units = [[u.kind, u.index, [list(s) for s in u.char_spans], [list(r) for r in u.token_ranges]] for u in p.units]
    rec.update(json.dumps([p.doc_id, p.index, p.text, units, dict(p.metadata)], sort_keys=True).encode())
    return vec.digest(), rec.digest()


def digest_passages(passages: Sequence[StoredPassage]) -> Digest:
    """The :class:`Digest` of passages in hand (the reference a collection is compared to)."""
    by_id = {p.id: p for p in passages}
    ids, vec, rec = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    for pid in sorted(by_id):
        v, r = _passage_hashes(by_id[pid])
        ids.update(pid.encode())
        vec.update(v)
        rec.update(r)
    return Digest(len(by_id), ids.hexdigest(), vec.hexdigest(), rec.hexdigest())


def digest(repository: MigratableRepository, collection: str, *, page: int = 500) -> Digest:
    """The :class:`Digest` of a collection (or alias), read page by page."""
    ids, vec, rec = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    n = 0
    for chunk in _id_pages(repository, collection, page):
        for p in repository.fetch(collection, chunk, strict=True):
            v, r = _passage_hashes(p)
            ids.update(p.id.encode())
            vec.update(v)
            rec.update(r)
            n += 1
    return Digest(n, ids.hexdigest(), vec.hexdigest(), rec.hexdigest())


def _id_pages(repository: MigratableRepository, collection: str, page: int, start: str | None = None) -> Iterator[list[str]]:
    for result in repository.iter_id_pages(collection, page=page, start=start):
        if result.ids:
            yield list(result.ids)
