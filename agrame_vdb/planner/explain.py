"""Match explanations: which passage tokens the query's tokens matched best (MaxSim's
argmax), for the winners only, mapped to characters of the passage text."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..encoder import encoder_lock
from ..repository import StoredPassage
from ..units import Span
from .fetch import entry_of
from .plan import Plan
from .rank import RankedRow, Scorer
from .results import TokenMatch

if TYPE_CHECKING:
    from ..encoder import MultiVectorEncoder

__all__ = ["Explainer"]

_MAX_OFFSETS = 4096
_MARKER_NAMES = {"query": "[Q]", "subpassage": "[Q']", "document": "[D]"}


class Explainer:
    """Finds the matched tokens of results; ``encoder`` (optional) maps them to query
    token strings and to characters of the passage (by re-tokenizing its text).
    Thread-safe: the tokenizer is locked, the passages' offsets cache too."""

    def __init__(self, encoder: MultiVectorEncoder | None, scorer: Scorer) -> None:
        self.encoder = encoder
        self.scorer = scorer
        self._offsets: dict[str, tuple[Span | None, ...]] = {}
        self._offsets_lock = threading.Lock()

    def matches(
        self, plan: Plan, rows: Sequence[RankedRow], passages: Sequence[StoredPassage], text: str | None,
        q: np.ndarray, sq: np.ndarray | None,
    ) -> list[tuple[TokenMatch, ...]]:
        """MaxSim's argmax for the winners only (a small second pass), mapped to
        characters: one tuple per row, ``passages`` the rows' passages read whole."""
        unit_mode = plan.units
        query = sq if unit_mode and sq is not None else q
        units = [[row.unit] for row in rows] if unit_mode else None
        packed = self.scorer.pack([entry_of(p) for p in passages], units)  # type: ignore[misc]
        scores = self.scorer.maxsim(torch.from_numpy(query), packed, return_argmax=True)
        argmax = (scores.unit_argmax if unit_mode else scores.passage_argmax)[0].cpu().numpy()  # type: ignore[index]
        query_texts = self.query_token_texts(text, subpassage=unit_mode and sq is not None, length=query.shape[0])
        out = []
        for j, p in enumerate(passages):
            positions = argmax[j]
            per_token = np.einsum("ld,ld->l", query.astype(np.float32), np.asarray(p.tokens, dtype=np.float32)[positions])
            offsets = self.token_offsets(p)
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

    def query_token_texts(self, text: str | None, *, subpassage: bool, length: int) -> list[str] | None:
        """The query's token strings (markers by name), ``length`` at most; None without text or encoder."""
        if text is None or self.encoder is None:
            return None
        enc = self.encoder
        with encoder_lock(enc):
            ids = enc.tokenize_queries([text], "subpassage" if subpassage else "query")["input_ids"][0].tolist()
        tokens = enc.tokenizer.convert_ids_to_tokens(ids)
        markers = {v: k for k, v in enc.marker_ids.items()}
        out = [_MARKER_NAMES[markers[i]] if i in markers else t for i, t in zip(ids, tokens)]
        return out[:length]

    def token_offsets(self, p: StoredPassage) -> tuple[Span | None, ...] | None:
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
                if len(self._offsets) > _MAX_OFFSETS:
                    self._offsets.clear()
                self._offsets[p.id] = cached
        return cached or None
