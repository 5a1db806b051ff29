"""The token cache: passages' token vectors and units kept on the scoring device."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidInputError
from ..token_rows import EncodedTokens
from ..units import Unit

__all__ = ["Entry", "NO_POOLED", "TokenCache"]

#: An entry's pooled direction when it is not known.
NO_POOLED = np.zeros(0)


@dataclass(frozen=True, slots=True, eq=False)
class Entry:
    """What scoring needs of one passage: token vectors on the scoring device, units,
    its write version (the cache's key where the engine has versions), and the pooled
    direction (to check a cached entry against the engine's score where it has none)."""

    tokens: torch.Tensor | np.ndarray | EncodedTokens  # encoded: one passage's rows as stored
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
        self._items: OrderedDict[tuple[str, str], Entry] = OrderedDict()
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

    def get(self, collection: str, pid: str) -> Entry | None:
        """The entry of ``pid``, most recently used now; None (a miss) if not held."""
        with self._lock:
            entry = self._items.get((collection, pid))
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end((collection, pid))
            self.hits += 1
            return entry

    def put(self, collection: str, pid: str, entry: Entry) -> None:
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

    def reject(self, collection: str, ids: Sequence[str]) -> None:
        """Drop entries found stale (the engine holds other vectors), counting them."""
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

