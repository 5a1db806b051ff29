"""The repository reads of a search: first-stage candidates, the candidates' token
vectors and units (from the :class:`~agrame_vdb.planner.cache.TokenCache` where it
holds them, else one ``fetch_tokens``), the result passages read whole, and the check
that those hold what was scored."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..repository import Candidate, StoredPassage, TokenBatch
from ..token_rows import EncodedTokens
from .cache import NO_POOLED, Entry, TokenCache
from .plan import Plan

if TYPE_CHECKING:
    from .rank import RankedRow, Scorer

__all__ = ["Loaded", "Reader", "entry_of"]


def entry_of(p: StoredPassage) -> Entry:
    """What scoring needs of a passage read whole, as it was read (no copy)."""
    return Entry(p.tokens, p.units, NO_POOLED, int(p.tokens.nbytes))


def _takes(fn: Any, name: str) -> bool:
    """Whether callable ``fn`` takes a keyword argument ``name``."""
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _same_tokens(fresh: np.ndarray, scored: torch.Tensor | np.ndarray | EncodedTokens) -> bool:
    """Whether a passage's fetched token vectors are the ones scored (held as they
    were scored: on the scoring device, in its dtype, for a cached entry; encoded
    rows as they were stored, whose values a fetch returns)."""
    if tuple(fresh.shape) != tuple(scored.shape):
        return False
    if isinstance(scored, EncodedTokens):
        return bool(np.array_equal(fresh, scored.expand()))
    if isinstance(scored, np.ndarray):
        return bool(np.array_equal(fresh, scored))
    return bool(torch.equal(torch.from_numpy(np.array(fresh, dtype=np.float32)).to(scored.device, scored.dtype), scored))


@dataclass(slots=True)
class Loaded:
    """Candidates' entries (cache or fetch) and the fresh passages read this query.

    ``missing``: ids still to read; ``whole``: read them with ``fetch`` (a cache that
    has no versions to key on keeps pooled vectors), else ``fetch_tokens``.
    ``batch``: this query's ``fetch_tokens`` answer (in id order, for scoring it
    without a copy); without a cache its entries are made when asked for
    (``batch_pos``). ``from_records``: entries built from the very records in
    ``fresh``; ``read``: every id read from the repository.
    """

    entries: dict[str, Entry]
    fresh: dict[str, StoredPassage]
    hits: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)
    whole: bool = False
    batch: TokenBatch | None = None
    batch_tokens: torch.Tensor | EncodedTokens | None = None
    from_records: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    batch_pos: dict[str, int] = field(default_factory=dict)

    def has(self, pid: str) -> bool:
        return pid in self.entries or pid in self.batch_pos

    def entry(self, pid: str) -> Entry:
        entry = self.entries.get(pid)
        if entry is None:
            batch, i = self.batch, self.batch_pos[pid]
            tokens = batch.tokens_of(i)  # type: ignore[union-attr]
            entry = Entry(tokens, batch.units[i], NO_POOLED, int(tokens.nbytes), batch.versions[i])  # type: ignore[union-attr]
            self.entries[pid] = entry
        return entry

    def ids(self) -> set[str]:
        return set(self.entries) | set(self.batch_pos)


class Reader:
    """One planner's reads of its repository, with the optional cache in front.

    Where the engine has write versions the candidates carry them: a cache keys on
    them, and ``fetch_tokens`` reads at them (Qdrant Edge then skips a read of the
    stamps). A repository without ``fetch_tokens`` is read whole.
    """

    def __init__(self, repository: Any, dim: int, capabilities: Any, cache: TokenCache | None, scorer: Scorer) -> None:
        self.repository = repository
        self.dim = dim
        self.cache = cache
        self.scorer = scorer
        self.with_versions = bool(getattr(capabilities, "versions", False))
        self._tokens_take_versions = _takes(getattr(repository, "fetch_tokens", None), "versions")

    # ----- the first stage

    def candidates(self, plan: Plan, pooled: np.ndarray, q: np.ndarray, text: str | None = None) -> list[Candidate]:
        kwargs: dict[str, Any] = {"limit": plan.candidates, "filter": plan.filter}
        if self.with_versions:
            kwargs["with_versions"] = True
        if plan.first_stage == "lexical":
            return self.repository.lexical_candidates(plan.collection, text, **kwargs)
        if plan.first_stage == "hybrid":
            return self.repository.hybrid_candidates(
                plan.collection, pooled, text, dense_limit=plan.dense_limit, lexical_limit=plan.lexical_limit,
                rrf_k=plan.rrf_k, **kwargs,
            )
        if plan.first_stage == "maxsim":
            kwargs.update(tokens=q, prefetch=plan.prefetch)
        return self.repository.candidates(plan.collection, pooled, **kwargs)

    # ----- token vectors and units

    def lookup(
        self,
        plan: Plan,
        ids: list[str],
        all_cands: list[list[Candidate]],
        pooled: list[np.ndarray],
        carry: dict[str, Entry],
        fresh: dict[str, StoredPassage],
        read: set[str],
    ) -> Loaded:
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
                    elif c.stage == "maxsim":  # an engine MaxSim score: compared with ours after ranking
                        ok = True
                    else:  # a lexical or fused score says nothing of the token vectors: read them
                        ok = False
                    seen[c.id] = seen.get(c.id, True) and ok
                    entries[c.id] = entry
            bad = [i for i, ok in seen.items() if not ok]
            if bad:
                self.cache.reject(plan.collection, bad)
            for i in bad:
                entries.pop(i, None)
            hits = set(entries) - set(carry)
        missing = [i for i in ids if i not in entries]
        # a cache without versions to key on checks pooled scores: it needs whole records
        wanted = set(missing)
        whole = self.cache is not None and any(c.version is None for cands in all_cands for c in cands if c.id in wanted)
        return Loaded(entries, dict(fresh), hits, missing=missing, whole=whole, read=set(read))

    def load_missing(self, plan: Plan, loaded: Loaded, versions: dict[str, Any]) -> None:
        """Read what ``loaded`` misses: whole records, or one ``fetch_tokens`` in id order
        (scored as it comes, without a copy) at the ``versions`` the candidates saw."""
        if not loaded.missing:
            return
        if loaded.whole:
            self._add_records(plan, loaded, self.fresh(plan, loaded.missing))
            return
        ids = sorted(loaded.missing)
        self._add_batch(plan, loaded, self._fetch_batch(plan, ids, [versions.get(i) for i in ids]))

    def _entry(self, p: StoredPassage, device_copy: bool) -> Entry:
        if not device_copy:
            return entry_of(p)
        # a cache entry: keep the pooled direction for the consistency check
        pooled = np.asarray(p.pooled, dtype=np.float64)
        pooled = pooled / max(float(np.linalg.norm(pooled)), 1e-300)
        tokens = torch.from_numpy(np.array(p.tokens, dtype=np.float32)).to(self.scorer.device, self.scorer.dtype)
        return Entry(tokens, p.units, pooled, tokens.numel() * tokens.element_size())

    def _add_batch(self, plan: Plan, loaded: Loaded, batch: TokenBatch) -> None:
        loaded.batch = batch
        loaded.read.update(batch.ids)
        cache = self.cache
        if cache is None:  # entries are views into the batch, made when asked for
            loaded.batch_pos = {pid: i for i, pid in enumerate(batch.ids)}
            return
        loaded.batch_tokens = big = self.scorer.tensor(batch)  # one copy to the device
        offsets = batch.offsets.tolist()
        for i, pid in enumerate(batch.ids):
            tokens: torch.Tensor | EncodedTokens
            if isinstance(big, EncodedTokens):  # cached as stored: float16, int8, sign bits and int8
                tokens = big.select([i])
                nbytes = tokens.nbytes
            else:
                tokens = big[offsets[i] : offsets[i + 1]].clone()
                nbytes = tokens.numel() * tokens.element_size()
            version = batch.versions[i]
            entry = Entry(tokens, batch.units[i], NO_POOLED, nbytes, version)
            if version is not None:  # an entry without a version could never be checked
                cache.put(plan.collection, pid, entry)
            loaded.entries[pid] = entry

    def _add_records(self, plan: Plan, loaded: Loaded, records: dict[str, StoredPassage]) -> None:
        for pid, p in records.items():
            entry = self._entry(p, self.cache is not None)
            loaded.entries[pid] = entry
            loaded.fresh[pid] = p
            loaded.from_records.add(pid)
            loaded.read.add(pid)
            if self.cache is not None:
                self.cache.put(plan.collection, pid, entry)

    def _fetch_batch(self, plan: Plan, ids: list[str], versions: list[Any]) -> TokenBatch:
        fetch_tokens = getattr(self.repository, "fetch_tokens", None)
        if fetch_tokens is None:  # a repository without the lean read: whole records
            result = self.repository.fetch(plan.collection, ids)
            return TokenBatch.from_passages(result.passages, result.missing, dim=self.dim)
        if self._tokens_take_versions and any(v is not None for v in versions):
            return fetch_tokens(plan.collection, ids, versions=versions)
        return fetch_tokens(plan.collection, ids)

    # ----- the result passages, read whole

    def fresh(self, plan: Plan, ids: list[str]) -> dict[str, StoredPassage]:
        return {p.id: p for p in self.repository.fetch(plan.collection, ids).passages}

    def stale(self, ranked: list[list[RankedRow]], loaded: Loaded, score_atol: float) -> list[str]:
        """Result passages whose whole record (read after scoring) is gone or holds
        other token vectors or units than were scored, and cached entries whose
        engine MaxSim score disagrees with ours (by more than ``score_atol``)."""
        stale = set()
        tol = score_atol if loaded.hits else 0.0
        for rows in ranked:
            for row in rows:
                pid = row.passage_id
                if pid in loaded.from_records:
                    continue  # scored from this very record
                fresh = loaded.fresh.get(pid)
                entry = loaded.entry(pid)
                if fresh is None or fresh.units != entry.units or not _same_tokens(fresh.tokens, entry.tokens):
                    stale.add(pid)  # deleted or rewritten since it was read
                elif (
                    pid in loaded.hits and row.stage == "maxsim" and row.stage_score is not None
                    and abs(row.stage_score - row.passage_score) > tol
                ):
                    stale.add(pid)
        return sorted(stale)
