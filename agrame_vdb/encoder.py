"""The multi-vector encoder: transformer → projection to ``dim`` → L2 normalisation.

Every position of a document is kept, so units are token ranges into its matrix.
How text is laid out is the model's own setting (:mod:`agrame_vdb.layout`): a
ColBERT-style model encodes documents as ``[CLS] [D] text [SEP]`` and queries as
``[CLS] [Q] text [SEP]`` padded with ``[MASK]`` to ``query_maxlen`` (query
augmentation), with AGRaME's sub-passage marker ``[Q']`` in place of ``[Q]`` when
ranking sentences or propositions; the plain base (the default) encodes
``[CLS] text [SEP]`` both ways, with no projection, and zeroes a query's padding rows.

Markers reuse vocabulary slots (``[unused0..2]`` by default) and are inserted as
token ids, so each is exactly one token and the vocabulary does not grow.

>>> enc = MultiVectorEncoder.load("minilm-frozen-128")
>>> q = enc.encode_queries(["when was the tower built?"])
>>> q.shape
(1, 32, 128)
>>> p = Passage.create("d", 0, "The tower is tall. It was built in 1889.")
>>> [e] = enc.encode_passages([p])
>>> e.token_vectors.shape, [u.token_ranges for u in e.units]
((14, 128), [((2, 7),), ((7, 13),)])
>>> [e] = MultiVectorEncoder.load().encode_passages([p])   # the plain base: no [D] row
>>> e.token_vectors.shape, [u.token_ranges for u in e.units]
((13, 384), [((1, 6),), ((6, 12),)])
"""

from __future__ import annotations

import copy
import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import (
    Checkpoint,
    EncoderConfig,
    Projection,
    load_checkpoint,
    own_layers,
    resolve_dtype,
    save_checkpoint,
    subpassage_copy,
)
from .errors import InvalidInputError, ModelLoadError
from .layout import (  # noqa: F401  (MAX_CHARS_PER_TOKEN, usable_prefix: re-exported)
    MAX_CHARS_PER_TOKEN,
    DocTokens,
    Marker,
    document_tokens,
    marker_ids,
    query_tokens,
    special_ids,
    usable_prefix,
)
from .units import AlignedUnits, Passage, Span, TruncatedUnit, Unit, align_units, segment

__all__ = [
    "MultiVectorEncoder",
    "EncodedPassage",
    "EncoderConfig",
    "encode_queries",
    "encoder_lock",
    "resolve_device",
    "resolve_dtype",
    "usable_prefix",
]

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), or any torch device spec."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} asked for, but torch sees no CUDA device")
    return resolved


@dataclass(frozen=True, slots=True)
class EncodedPassage:
    """One passage's encoding: a token-vector matrix and its aligned units.

    ``token_ids[i]`` is the vocabulary id of row ``i`` and ``token_offsets[i]``
    its character span in the passage text (``None`` for ``[CLS]``, ``[D]`` and
    ``[SEP]``). ``truncated`` lists units the ``doc_maxlen`` cut or dropped.
    """

    passage: Passage
    token_vectors: np.ndarray
    units: tuple[Unit, ...]
    token_ids: tuple[int, ...]
    token_offsets: tuple[Span | None, ...]
    encoded_chars: int
    truncated: tuple[TruncatedUnit, ...] = ()

    @property
    def n_tokens(self) -> int:
        return int(self.token_vectors.shape[0])

    @property
    def pooled(self) -> np.ndarray:
        """The L2-normalised mean of the token vectors (a first-stage vector)."""
        mean = self.token_vectors.mean(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


class MultiVectorEncoder:
    """A ColBERT-style encoder with AGRaME's query markers.

    Build it with :meth:`load`; it is safe to share between threads for
    inference (no state changes after construction).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype = "float32",
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = checkpoint.tokenizer
        self.transformer = self._placed(checkpoint.transformer)
        self.projection: Projection | None = (
            self._placed(checkpoint.projection) if checkpoint.projection is not None else None
        )
        # the [Q'] transformer: the checkpoint's when the transformer stayed where it was;
        # else the placed transformer with the [Q'] tensors in place (the rest shared)
        self.subpassage_transformer = checkpoint.subpassage_transformer
        if self.subpassage_transformer is not None and self.transformer is not checkpoint.transformer:
            own = own_layers(checkpoint.transformer, checkpoint.subpassage_transformer)
            self.subpassage_transformer = subpassage_copy(self.transformer, own)
        self.checkpoint = replace(checkpoint, transformer=self.transformer, projection=self.projection,
                                  subpassage_transformer=self.subpassage_transformer)
        max_positions = getattr(self.transformer.config, "max_position_embeddings", 512) or 512
        config = checkpoint.config
        if config.doc_maxlen > max_positions:
            config = replace(config, doc_maxlen=max_positions)
        self.config: EncoderConfig = config
        self._cls, self._sep = special_ids(self.tokenizer)
        self._pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if config.query_augmentation and self.tokenizer.mask_token_id is None:
            raise ModelLoadError(f"the tokenizer of {checkpoint.path} has no [MASK] token for query augmentation")
        self.marker_ids = marker_ids(self.tokenizer, config)

    def _placed(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` on this encoder's device and dtype; a copy if it must move, so
        encoders built from one checkpoint never change each other."""
        first = next(module.parameters())
        if first.device != self.device or first.dtype != self.dtype:
            module = copy.deepcopy(module).to(device=self.device, dtype=self.dtype)
        return module.eval()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        projection: str | Path | None = None,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype = "float32",
    ) -> MultiVectorEncoder:
        """Load a model directory in any format :mod:`agrame_vdb.checkpoints` accepts.

        ``path=None`` loads the default model (``minilm-qprime-query``); a packaged model's name
        (``plain-base``, ``minilm-frozen-128``) loads that one.
        """
        # Weights load in float32 and are cast once placed, so every dtype sees the same values.
        return cls(load_checkpoint(path, projection=projection), device=device, dtype=dtype)

    def save(self, path: str | Path, *, include_transformer: bool = True) -> Path:
        """Save in the agrame format (see :func:`agrame_vdb.checkpoints.save_checkpoint`)."""
        return save_checkpoint(
            Checkpoint(self.transformer, self.tokenizer, self.projection, self.config, "agrame", Path(path),
                       self.subpassage_transformer),
            path,
            include_transformer=include_transformer,
        )

    @property
    def dim(self) -> int:
        return self.config.dim

    # --------------------------------------------------------------- tokenising
    def tokenize_queries(self, texts: Sequence[str], marker: Marker = "query") -> dict[str, torch.Tensor]:
        """Query ids and attention mask, ``query_maxlen`` long (layout: :func:`~agrame_vdb.layout.query_tokens`)."""
        return query_tokens(self.tokenizer, self.config, _check_texts(texts, "queries"), marker)

    def _tokenize_documents(self, texts: Sequence[str]) -> list[DocTokens]:
        return document_tokens(self.tokenizer, self.config, texts)

    def padded(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id lists as one batch: ids padded with the tokenizer's pad id to the
        longest, and the attention mask (``[B, L]`` each, int64)."""
        width = max(len(seq) for seq in sequences)
        ids = torch.full((len(sequences), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids, mask

    # ---------------------------------------------------------------- encoding
    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, kinds: str | Sequence[str] = "document"
    ) -> torch.Tensor:
        """Normalised token vectors ``[B, L, dim]`` (float32), with gradients if enabled.

        ``kinds`` says what the rows are (``document``, ``query`` or ``subpassage``; one
        for all rows or one per row): the projection applies to the rows the model's
        ``projection_scope`` names (:meth:`EncoderConfig.projects`)."""
        per_row = [kinds] * input_ids.shape[0] if isinstance(kinds, str) else list(kinds)
        if len(per_row) != input_ids.shape[0]:
            raise InvalidInputError(f"got {len(per_row)} kinds for {input_ids.shape[0]} rows")
        hidden = self._states(input_ids.to(self.device), attention_mask.to(self.device), per_row)
        if self.projection is not None:
            projected = torch.tensor([self.config.projects(k) for k in per_row], device=hidden.device)
            if bool(projected.all()):
                hidden = self.projection(hidden)
            elif bool(projected.any()):  # (only a [hidden, hidden] projection applies to some rows)
                hidden = hidden.clone()
                hidden[projected] = self.projection(hidden[projected])
        return F.normalize(hidden.float(), p=2, dim=-1)

    def _states(self, ids: torch.Tensor, mask: torch.Tensor, kinds: list[str]) -> torch.Tensor:
        """Last hidden states; ``[Q']`` rows through the model's own ``[Q']`` transformer when it has one."""
        sub = [k == "subpassage" for k in kinds]
        if self.subpassage_transformer is None or not any(sub):
            return self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        if all(sub):
            return self.subpassage_transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        rows = torch.tensor(sub, device=ids.device)
        first = self.transformer(input_ids=ids[~rows], attention_mask=mask[~rows]).last_hidden_state
        hidden = first.new_empty((ids.shape[0], ids.shape[1], first.shape[-1]))
        hidden[~rows] = first
        hidden[rows] = self.subpassage_transformer(input_ids=ids[rows], attention_mask=mask[rows]).last_hidden_state
        return hidden

    def embed_queries(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, kinds: str | Sequence[str] = "query"
    ) -> torch.Tensor:
        """Query token vectors ``[B, query_maxlen, dim]``: :meth:`embed` (``kinds``: ``query``
        for ``[Q]`` rows, ``subpassage`` for ``[Q']`` rows), with the padding rows of a
        model without query augmentation zeroed (they add 0 to every MaxSim)."""
        vectors = self.embed(input_ids, attention_mask, kinds)
        if not self.config.query_augmentation:
            vectors = vectors * attention_mask.to(vectors.device, vectors.dtype)[..., None]
        return vectors

    def encode_queries(
        self, texts: Sequence[str], *, subpassage: bool = False, batch_size: int = 64
    ) -> np.ndarray:
        """Query token vectors ``[B, query_maxlen, dim]`` (float32).

        ``subpassage=True`` uses the ``[Q']`` marker (for sentence and proposition
        ranking) instead of ``[Q]``.
        """
        kind = "subpassage" if subpassage else "query"
        batch = self.tokenize_queries(texts, kind)
        _check_batch_size(batch_size)
        parts = []
        with torch.inference_mode():
            for start in range(0, batch["input_ids"].shape[0], batch_size):
                sl = slice(start, start + batch_size)
                parts.append(self.embed_queries(batch["input_ids"][sl], batch["attention_mask"][sl], kind).cpu())
        return torch.cat(parts).numpy()

    def encode_passages(
        self,
        passages: Sequence[Passage],
        units: Sequence[Sequence[Unit]] | None = None,
        *,
        sentences: bool = True,
        batch_size: int = 32,
    ) -> list[EncodedPassage]:
        """Encode passages, in the order given, with their units aligned to tokens.

        ``units[i]`` are extra units of passage ``i`` (propositions, custom spans,
        or sentences that replace the splitter's); sentences are found
        automatically unless ``sentences=False``. Passages are batched by length.
        Units past a truncation are reported in ``EncodedPassage.truncated``
        and logged, never silently dropped.
        """
        if isinstance(passages, Passage):
            raise InvalidInputError("encode_passages takes a list of passages, not one Passage")
        for p in passages:
            if not isinstance(p, Passage):
                raise InvalidInputError(f"encode_passages takes Passage records, got {type(p).__name__}")
        if units is not None and len(units) != len(passages):
            raise InvalidInputError(f"got units for {len(units)} passages but {len(passages)} passages")
        _check_batch_size(batch_size)
        segmented = [
            segment(p, sentences=sentences, units=units[i] if units is not None else ()) for i, p in enumerate(passages)
        ]
        docs = self._tokenize_documents([p.text for p in passages])
        order = sorted(range(len(docs)), key=lambda i: len(docs[i].ids), reverse=True)
        vectors: list[np.ndarray | None] = [None] * len(docs)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                ids, mask = self.padded([docs[i].ids for i in chunk])
                out = self.embed(ids, mask).cpu().numpy()
                for row, i in enumerate(chunk):
                    vectors[i] = np.ascontiguousarray(out[row, : len(docs[i].ids)])
        results = []
        for passage, doc, found, vecs in zip(passages, docs, segmented, vectors, strict=True):
            aligned: AlignedUnits = align_units(found, doc.offsets, doc.encoded_chars)
            for report in aligned.truncated:
                log.warning("passage %s: %s", passage.id, report)
            assert vecs is not None
            results.append(
                EncodedPassage(passage, vecs, aligned.units, tuple(doc.ids), doc.offsets, doc.encoded_chars, aligned.truncated)
            )
        return results


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
    locked, the model is not). What search and citations encode queries with.

    >>> enc = MultiVectorEncoder.load("minilm-frozen-128")
    >>> q, sq = encode_queries(enc, ["when was the tower built?"], both=True)
    >>> q.shape == sq.shape == (1, 32, 128), bool((q != sq).any())
    (True, True)
    """
    both_passes = both and "subpassage" in encoder.marker_ids
    with encoder_lock(encoder):
        batch = encoder.tokenize_queries(texts, "query")
        if both_passes:
            sub = encoder.tokenize_queries(texts, "subpassage")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n = len(texts)
    kinds = ["query"] * n
    if both_passes:
        ids, mask = torch.cat([ids, sub["input_ids"]]), torch.cat([mask, sub["attention_mask"]])
        kinds += ["subpassage"] * n
    with torch.inference_mode():
        out = encoder.embed_queries(ids, mask, kinds).cpu().numpy()
    if not both:
        return out, None
    return out[:n], (out[n:] if both_passes else out)


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise InvalidInputError(f"{what} must be a list of strings, not one string")
    out = list(texts)
    for t in out:
        if not isinstance(t, str):
            raise InvalidInputError(f"{what} must be strings, got {type(t).__name__}")
        if not t.strip():
            raise InvalidInputError(f"{what} must not be empty or whitespace")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: the tokenizer would raise a bare TypeError
            raise InvalidInputError(
                f"{what} must be valid Unicode text; {t[max(exc.start - 10, 0):exc.end + 10]!r} has a lone "
                f"surrogate at character {exc.start} (decode the input with errors='replace')"
            ) from None
    if not out:
        raise InvalidInputError(f"no {what} given")
    return out


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")

