"""How text is laid out as token ids for a model, from its :class:`EncoderConfig`.

A document is ``[CLS] [D] text [SEP]``, or ``[CLS] text [SEP]`` for a model without
a document marker (``doc_marker: null``, e.g. the plain base). A query is
``[CLS] [Q] text [SEP]`` followed, with query augmentation, by ``[MASK]`` up to
``query_maxlen``; without augmentation the rest of the row is padding that the
encoder zeroes after the forward pass, so it adds nothing to a MaxSim sum.
``[Q']`` replaces ``[Q]`` for sub-passage ranking; a model without a sub-passage
marker uses its ``[Q]`` form for both.

Everything here needs the tokenizer only (no weights), so chunking, migrations and
training lay text out exactly as the encoder does.

>>> from agrame_vdb.checkpoints import EncoderConfig
>>> special_tokens(EncoderConfig()), special_tokens(EncoderConfig(doc_marker=None))
(3, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .checkpoints import EncoderConfig, marker_token_id
from .errors import ModelLoadError
from .units import Span

if TYPE_CHECKING:
    import torch

__all__ = ["DocTokens", "Marker", "special_tokens", "marker_ids", "special_ids", "document_tokens", "query_tokens",
           "usable_prefix", "PREFIX_CHARS_PER_TOKEN", "MAX_CHARS_PER_TOKEN"]

Marker = Literal["query", "subpassage", "document"]
#: A text longer than this many characters per usable token is tokenized from a prefix
#: (see :func:`usable_prefix`), grown fourfold until it provably holds those tokens...
PREFIX_CHARS_PER_TOKEN = 16
#: ...or until it reaches this many characters per token: a text whose first tokens
#: span more than that (words of a thousand characters) is cut there, as it is.
MAX_CHARS_PER_TOKEN = 1024


@dataclass(frozen=True, slots=True)
class DocTokens:
    """A document's ids, each position's character span (None for special tokens)
    and where the encoded text ends (``len(text)`` unless it was cut)."""

    ids: list[int]
    offsets: tuple[Span | None, ...]
    encoded_chars: int


def special_tokens(config: EncoderConfig) -> int:
    """Positions of a document encoding that hold no text: [CLS], [SEP] and [D] if any."""
    return 2 + (config.doc_marker is not None)


def special_ids(tokenizer: Any) -> tuple[int, int]:
    """The tokenizer's ``[CLS]`` and ``[SEP]`` ids (``<s>``/``</s>`` for RoBERTa-like ones)."""
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls_id is None or sep_id is None:
        raise ModelLoadError("the tokenizer has no [CLS]/[SEP] (or <s>/</s>) tokens")
    return int(cls_id), int(sep_id)


def marker_ids(tokenizer: Any, config: EncoderConfig) -> dict[str, int]:
    """Vocabulary ids of the model's markers, by role; a role without a marker is absent."""
    names = {"query": config.query_marker, "document": config.doc_marker, "subpassage": config.subpassage_marker}
    out = {role: marker_token_id(tokenizer, token) for role, token in names.items() if token is not None}
    if len(set(out.values())) != len(out):
        raise ModelLoadError(f"markers must be distinct tokens, got {config.query_marker!r}, "
                             f"{config.doc_marker!r}, {config.subpassage_marker!r}")
    return out


def document_tokens(tokenizer: Any, config: EncoderConfig, texts: Sequence[str], doc_maxlen: int | None = None) -> list[DocTokens]:
    """Each text's document ids, cut to ``doc_maxlen`` (the config's unless given)."""
    cls_id, sep_id = special_ids(tokenizer)
    prefix = [cls_id] + ([marker_token_id(tokenizer, config.doc_marker)] if config.doc_marker is not None else [])
    budget = (config.doc_maxlen if doc_maxlen is None else doc_maxlen) - special_tokens(config)
    texts = [usable_prefix(tokenizer, t, budget) for t in texts]  # only what can be encoded is tokenized
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out = []
    for text, tokens, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True):
        kept = tokens[:budget]
        kept_offsets = [tuple(o) for o in offsets[:budget]]
        encoded = len(text) if len(tokens) <= budget else int(kept_offsets[-1][1]) if kept_offsets else 0
        out.append(DocTokens([*prefix, *kept, sep_id], (*([None] * len(prefix)), *kept_offsets, None), encoded))  # type: ignore[arg-type]
    return out


def query_tokens(tokenizer: Any, config: EncoderConfig, texts: Sequence[str], marker: Marker = "query") -> dict[str, torch.Tensor]:
    """Query ids and attention mask ``[B, query_maxlen]`` (see the module docs)."""
    import torch

    cls_id, sep_id = special_ids(tokenizer)
    token = config.subpassage_marker if marker == "subpassage" else config.query_marker
    if marker == "subpassage" and token is None:
        token = config.query_marker
    prefix = [cls_id] + ([marker_token_id(tokenizer, token)] if token is not None else [])
    length = config.query_maxlen
    room = length - len(prefix) - 1
    texts = [usable_prefix(tokenizer, t, room) for t in texts]  # a 10 MB query tokenizes 32 tokens' worth
    body = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=room, verbose=False)
    if config.query_augmentation:
        if tokenizer.mask_token_id is None:
            raise ModelLoadError("the tokenizer has no [MASK] token for query augmentation")
        fill = tokenizer.mask_token_id
    else:
        fill = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(texts), length), fill, dtype=torch.long)
    attention = torch.zeros((len(texts), length), dtype=torch.long)
    for row, tokens in enumerate(body["input_ids"]):
        seq = [*prefix, *tokens, sep_id]
        ids[row, : len(seq)] = torch.tensor(seq)
        attention[row, : len(seq)] = 1
    if config.query_augmentation and config.attend_to_mask_tokens:
        attention[:] = 1
    return {"input_ids": ids, "attention_mask": attention}


def usable_prefix(tokenizer: Any, text: str, n_tokens: int) -> str:
    """A prefix of ``text`` to tokenize when only its first ``n_tokens`` tokens are used.

    Its first ``n_tokens + 1`` tokens (ids and offsets) are those of the whole text, so
    a cut to ``n_tokens`` and whether the text had more are the same as for the whole
    text. The proof: a prefix is tried (``PREFIX_CHARS_PER_TOKEN`` characters per
    token, then four times more each time) and kept when more than ``n_tokens`` of its
    tokens lie before its last word (pre-token): the tokenizer's normalisation and
    pre-tokenizer act word by word, so only the word the cut runs through can differ
    from the whole text's. A text with fewer tokens is returned whole, and one whose
    tokens span more than ``MAX_CHARS_PER_TOKEN`` characters each is cut there (a
    documented bound: such "words" are longer than any model's vocabulary).
    Tokenizers that truncate on the left, or are not fast (no word ids), get the
    whole text.
    """
    size = n_tokens * PREFIX_CHARS_PER_TOKEN
    if len(text) <= size or getattr(tokenizer, "truncation_side", "right") != "right" or not getattr(tokenizer, "is_fast", False):
        return text
    limit = n_tokens * MAX_CHARS_PER_TOKEN
    while size < len(text):
        if size >= limit:
            return text[:limit]
        prefix = text[:size]
        words = tokenizer(prefix, add_special_tokens=False, verbose=False).word_ids()
        if words and sum(w != words[-1] for w in words) > n_tokens:
            return prefix
        size *= 4
    return text
