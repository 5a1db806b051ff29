"""Cutting documents into passages that fit the encoder, with their units.

A document's text is cut at sentence boundaries: a passage is a run of whole
sentences whose tokens fit ``max_tokens`` (default: the model's ``doc_maxlen``
less its three special tokens, so nothing is truncated). A sentence longer than
that is cut between words. ``overlap`` repeats up to that many tokens of whole
sentences from the end of one passage at the start of the next (default 0).
Passages are numbered from 0 in text order; ids come from (document id, index).

Units are placed by their character spans, which are offsets into the document
text:

- a unit inside one passage goes to it with its spans shifted to the passage
  text; one inside two overlapping passages goes to both;
- a unit that crosses a passage boundary (a sentence cut for being too long, a
  proposition spanning two sentences in different passages) is *clipped*: each
  passage keeps the part of it that lies in its text, under the same kind and
  document-level index, so the parts can be joined back by
  ``(doc_id, kind, index)``;
- unit indices are the document's (sentence 7 of the document is ``sentence 7``
  in whichever passage holds it), not renumbered per passage.

Pre-split ``passages`` are indexed as given: never cut further (a passage longer
than the model takes is truncated by the encoder, which reports the units it cut),
their units and sentences numbered per passage.

Sentences are the given ``sentence`` units when a document has them, else the
splitter's; ``sentences=False`` keeps the splitter's sentences out of the stored
units (they still guide the cuts). With ``title_in_text`` the title and a newline
start every passage's text (its tokens count against the budget; unit offsets
are shifted past it); the title is in each passage's ``metadata["title"]`` either way.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any

from .documents import Document
from .errors import InvalidInputError, InvalidRecordError, InvalidUnitError
from .units import SENTENCE, Span, Unit, align_units, split_sentences

__all__ = ["ChunkingOptions", "Chunk", "Chunker"]

_SPECIAL_TOKENS = 3  # [CLS] [D] ... [SEP], for a model with a document marker


@dataclass(frozen=True, slots=True)
class ChunkingOptions:
    """How documents become passages (see the module docs).

    ``max_tokens``: text tokens per passage (None: the model's ``doc_maxlen`` - 3).
    ``overlap``: tokens of whole sentences repeated from the previous passage.
    ``sentences``: store the splitter's sentences as units.
    ``title_in_text``: start each passage's text with the document title.
    """

    max_tokens: int | None = None
    overlap: int = 0
    sentences: bool = True
    title_in_text: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 8
        ):
            raise InvalidInputError(f"max_tokens must be an int >= 8, got {self.max_tokens!r}")
        if not isinstance(self.overlap, int) or isinstance(self.overlap, bool) or self.overlap < 0:
            raise InvalidInputError(f"overlap must be an int >= 0, got {self.overlap!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One passage of a document, ready to encode.

    ``n_tokens`` counts the passage's text tokens (without the special tokens);
    ``start`` is where the passage body begins in the document text (None for
    given passages).
    """

    doc_id: str
    index: int
    text: str
    units: tuple[Unit, ...]
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    n_tokens: int = 0
    start: int | None = None


@dataclass(frozen=True, slots=True)
class _Piece:
    start: int
    end: int
    n_tokens: int


@dataclass(frozen=True, slots=True)
class _Placed:
    unit: Unit
    hard: bool  # a whole unit the caller gave: one that covers no token rejects the document


def _trim(text: str, start: int, end: int) -> Span | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


class Chunker:
    """Cuts :class:`~agrame_vdb.documents.Document` records into :class:`Chunk` passages.

    ``tokenizer`` is the encoder's (a Hugging Face fast tokenizer), ``doc_maxlen``
    the encoder's document length (special tokens included), ``special_tokens``
    how many of its positions hold no text (:func:`agrame_vdb.layout.special_tokens`).
    """

    def __init__(self, tokenizer: Any, doc_maxlen: int, options: ChunkingOptions | None = None, *,
                 special_tokens: int = _SPECIAL_TOKENS) -> None:
        self.tokenizer = tokenizer
        self.options = options or ChunkingOptions()
        self.special_tokens = int(special_tokens)
        self.capacity = int(doc_maxlen) - self.special_tokens
        if self.capacity < 8:
            raise InvalidInputError(f"doc_maxlen {doc_maxlen} leaves no room for text")
        budget = self.options.max_tokens or self.capacity
        if budget > self.capacity:
            raise InvalidInputError(
                f"max_tokens {budget} is more than the model encodes ({self.capacity} text tokens: "
                f"doc_maxlen {doc_maxlen} less {self.special_tokens} special tokens); lower it"
            )
        if self.options.overlap >= budget // 2 and self.options.overlap:
            raise InvalidInputError(f"overlap {self.options.overlap} must be less than half of max_tokens {budget}")
        self.budget = budget

    # ----------------------------------------------------------------- tokens
    def _tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[Span]]]:
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return enc["input_ids"], [[(int(s), int(e)) for s, e in offs] for offs in enc["offset_mapping"]]

    # ------------------------------------------------------------------ chunk
    def chunk(self, doc: Document) -> list[Chunk]:
        """The passages of ``doc``; InvalidRecordError when it cannot be indexed."""
        prefix = f"{doc.title}\n" if self.options.title_in_text and doc.title else ""
        metadata = dict(doc.metadata)
        if doc.title and "title" not in metadata:
            metadata["title"] = doc.title
        if doc.passages is not None:
            bodies: list[tuple[str, list[_Placed], dict[str, Any], int | None]] = []
            for p in doc.passages:
                given = list(p.units)
                placed = [_Placed(u, True) for u in given]
                if self.options.sentences and not any(u.kind == SENTENCE for u in given):
                    placed = [_Placed(u, False) for u in split_sentences(p.text)] + placed
                bodies.append((p.text, placed, {**metadata, **p.metadata}, None))
            return self._finish(doc, prefix, bodies, given_passages=True)
        assert doc.text is not None
        prefix_tokens = len(self._tokenize([prefix])[0][0]) if prefix else 0
        body_budget = self.budget - prefix_tokens
        if prefix and body_budget < max(8, self.budget // 4):
            raise InvalidRecordError(
                f"the title takes {prefix_tokens} of the {self.budget} tokens of a passage; "
                "shorten it or index without title_in_text"
            )
        text = doc.text
        given_sentences = [u for u in doc.units if u.kind == SENTENCE]
        boundaries = given_sentences or split_sentences(text)
        stored: list[_Placed] = [_Placed(u, True) for u in doc.units if u.kind == SENTENCE] + (
            [] if given_sentences or not self.options.sentences else [_Placed(u, False) for u in boundaries]
        )
        stored += [_Placed(u, True) for u in doc.units if u.kind != SENTENCE]
        [ids], [offsets] = self._tokenize([text])
        pieces = self._pieces(text, boundaries, offsets, body_budget)
        ranges = self._pack(pieces, body_budget)
        bounds = [(pieces[first].start, pieces[last - 1].end) for first, last in ranges]
        bodies = [
            (text[start:end], placed, metadata, start)
            for (start, end), placed in zip(bounds, _place(text, stored, bounds), strict=True)
        ]
        return self._finish(doc, prefix, bodies, given_passages=False, whole=(text, ids, offsets))

    def _pieces(self, text: str, sentences: Sequence[Unit], offsets: list[Span], budget: int) -> list[_Piece]:
        """Stretches of text between sentence starts, each at most ``budget`` tokens."""
        extents = sorted((u.char_spans[0][0], u.char_spans[-1][1]) for u in sentences)
        cut_set = {0}
        reach, j = 0, 0  # furthest end of the sentences that start before the candidate cut
        for s, _ in extents:
            while j < len(extents) and extents[j][0] < s:
                reach = max(reach, extents[j][1])
                j += 1
            if reach <= s:  # no sentence runs across s
                cut_set.add(s)
        cuts = sorted(cut_set) + [len(text)]
        starts = [s for s, _ in offsets]
        pieces: list[_Piece] = []
        for a, b in zip(cuts, cuts[1:]):
            span = _trim(text, a, b)
            if span is None:
                continue
            a, b = span
            ti, tj = bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)
            if tj - ti <= budget:
                pieces.append(_Piece(a, b, tj - ti))
                continue
            k = ti
            while k < tj:
                limit = k + budget
                if limit >= tj:
                    pieces.append(_Piece(offsets[k][0], b, tj - k))
                    break
                # cut before a token that follows whitespace (a word start), as late as fits
                m = next((j for j in range(limit, k, -1) if offsets[j][0] > offsets[j - 1][1]), limit)
                pieces.append(_Piece(offsets[k][0] if k > ti else a, offsets[m - 1][1], m - k))
                k = m
        return pieces

    def _pack(self, pieces: list[_Piece], budget: int) -> list[tuple[int, int]]:
        """Runs ``[first, last)`` of pieces that fit ``budget``, overlapping by up to ``overlap`` tokens."""
        out: list[tuple[int, int]] = []
        i = 0
        while i < len(pieces):
            j, total = i, 0
            while j < len(pieces) and total + pieces[j].n_tokens <= budget:
                total += pieces[j].n_tokens
                j += 1
            j = max(j, i + 1)
            out.append((i, j))
            if j >= len(pieces):
                break
            k, carried = j, 0
            while k - 1 > i and carried + pieces[k - 1].n_tokens <= self.options.overlap:
                k -= 1
                carried += pieces[k].n_tokens
            while k < j and carried + pieces[j].n_tokens > budget:
                carried -= pieces[k].n_tokens
                k += 1
            i = k
        return out

    def _finish(
        self,
        doc: Document,
        prefix: str,
        bodies: list[tuple[str, list[_Placed], dict[str, Any], int | None]],
        *,
        given_passages: bool,
        whole: tuple[str, list[int], list[Span]] | None = None,
    ) -> list[Chunk]:
        texts = [prefix + body for body, _, _, _ in bodies]
        if whole is not None and texts == [whole[0]]:  # one passage, the whole text: tokenized already
            ids, offsets = [whole[1]], [whole[2]]
        else:
            ids, offsets = self._tokenize(texts)
        chunks = []
        shift = len(prefix)
        for index, ((_, placed, metadata, start), text, tok, offs) in enumerate(zip(bodies, texts, ids, offsets)):
            if not tok:
                raise InvalidRecordError(f"passage {index} has no token the model's tokenizer keeps")
            kept = tok[: self.capacity]
            encoded_chars = len(text) if len(tok) <= self.capacity else offs[self.capacity - 1][1]
            if shift:
                placed = [
                    _Placed(replace(p.unit, char_spans=tuple((s + shift, e + shift) for s, e in p.unit.char_spans)), p.hard)
                    for p in placed
                ]
            units = [p.unit for p in placed]
            try:  # the encoder aligns the same way: a unit that covers no token would fail its whole batch
                align_units(units, offs[: len(kept)], encoded_chars)
            except InvalidUnitError:
                units = []
                for p in placed:  # find the culprit: a given unit rejects the document, a clipped part is dropped
                    try:
                        align_units([p.unit], offs[: len(kept)], encoded_chars)
                    except InvalidUnitError as exc:
                        if p.hard:
                            where = f"passage {index}: " if given_passages else ""
                            raise InvalidRecordError(f"{where}{exc}") from None
                        continue
                    units.append(p.unit)
            chunks.append(
                Chunk(doc.id, index, text, tuple(units), MappingProxyType(dict(metadata)), len(kept), start)
            )
        return chunks


def _place(text: str, units: list[_Placed], bounds: list[tuple[int, int]]) -> list[list[_Placed]]:
    """For each passage ``[start, end)`` of ``bounds``, the units (document offsets)
    that fall in it, clipped and shifted to it, in the order of ``units``.

    Passages start and end further on each time (``_pack`` makes them so), and a
    unit's spans are sorted and disjoint, so the passages a unit touches, and the
    spans of it a passage holds, are runs found by bisection: the work grows with the
    units and spans placed (times a log), not with units times passages.
    """
    starts = [start for start, _ in bounds]
    ends = [end for _, end in bounds]
    out: list[list[_Placed]] = [[] for _ in bounds]
    for p in units:
        spans = p.unit.char_spans
        first = bisect.bisect_right(ends, spans[0][0])  # the first passage that ends after the unit starts
        stop = bisect.bisect_left(starts, spans[-1][1])  # passages from here on start after it ends
        if first >= stop:
            continue
        span_starts = [s for s, _ in spans]
        span_ends = [e for _, e in spans]
        for i in range(first, stop):
            start, end = bounds[i]
            clipped = []
            for s, e in spans[bisect.bisect_right(span_ends, start) : bisect.bisect_left(span_starts, end)]:
                span = _trim(text, max(s, start), min(e, end))
                if span is not None:
                    clipped.append((span[0] - start, span[1] - start))
            if clipped:
                whole = spans[0][0] >= start and spans[-1][1] <= end
                out[i].append(_Placed(replace(p.unit, char_spans=tuple(clipped), token_ranges=()), p.hard and whole))
    return out
