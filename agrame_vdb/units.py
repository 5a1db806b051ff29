"""Passages and their units: sentences, propositions and custom spans.

A :class:`Passage` is the piece of text that is encoded once. A :class:`Unit` is a
part of it that can be ranked on its own: a set of character spans in the passage
text and, once the passage is encoded, the matching set of token ranges inside that
one encoding. Units are token *sets*, not single ranges: PropSegmEnt propositions
are non-contiguous.

>>> p = Passage.create("doc-1", 0, "The tower is tall. It was built in 1889.")
>>> [u.text_in(p.text) for u in split_sentences(p.text)]
['The tower is tall.', 'It was built in 1889.']
>>> words = word_spans("Paris, in France")
>>> words
[(0, 5), (5, 6), (7, 9), (10, 16)]
>>> unit = proposition_from_word_indices("Paris, in France", [0, 3], index=0)
>>> unit.char_spans, unit.text_in("Paris, in France")
(((0, 5), (10, 16)), 'Paris France')
"""

from __future__ import annotations

import bisect
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from .errors import InvalidInputError, InvalidUnitError

__all__ = [
    "SENTENCE",
    "PROPOSITION",
    "CUSTOM",
    "Span",
    "Passage",
    "Unit",
    "TruncatedUnit",
    "AlignedUnits",
    "passage_id",
    "is_unit_kind",
    "split_sentences",
    "sentence_spans",
    "units_from_char_spans",
    "word_spans",
    "proposition_from_word_indices",
    "align_units",
    "segment",
]

SENTENCE = "sentence"
PROPOSITION = "proposition"
CUSTOM = "custom"

#: A half-open ``[start, end)`` interval (characters or token positions).
Span = tuple[int, int]

_KIND_RE = re.compile(r"\A[a-z][a-z0-9_-]{0,63}\Z")
_PASSAGE_NAMESPACE = uuid.UUID("5b0f6f0e-3f57-4c53-9a35-6a0b6c1f7a11")
# PropSegmEnt's word tokens: every run of alphanumeric characters, and every other
# non-space character on its own ("_" is not alphanumeric).
_WORD_RE = re.compile(r"[^\W_]+|[^\s]")


def is_unit_kind(kind: Any) -> bool:
    """Whether ``kind`` names a unit kind: a lower-case identifier (``"sentence"``,
    ``"proposition"``, ``"custom"``, ...) of at most 64 characters."""
    return isinstance(kind, str) and _KIND_RE.fullmatch(kind) is not None


def passage_id(doc_id: str, index: int) -> str:
    """The deterministic id of passage ``index`` of document ``doc_id``.

    A UUID (version 5) string, so every engine can use it as a primary key; the
    same document and index always give the same id, so a rewrite overwrites.

    >>> passage_id("doc-1", 0) == passage_id("doc-1", 0) != passage_id("doc-1", 1)
    True
    """
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidInputError(f"doc_id must be a non-empty string, got {doc_id!r}")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise InvalidInputError(f"passage index must be an int >= 0, got {index!r}")
    if index > 2**53:  # repository.MAX_EXACT_INT: past it, not every engine filters it exactly
        raise InvalidInputError(f"passage index must be an int in [0, 2**53], got one of {index.bit_length()} bits")
    try:
        return str(uuid.uuid5(_PASSAGE_NAMESPACE, f"{doc_id}\x1f{index}"))
    except UnicodeEncodeError:  # a lone surrogate: no engine can store it
        raise InvalidInputError(f"doc_id must be valid Unicode text, got {doc_id[:40]!r} (a lone surrogate)") from None


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"metadata must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise InvalidInputError(f"metadata keys must be strings, got {key!r}")
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class Passage:
    """A piece of a document that is encoded once.

    ``id`` is deterministic from ``doc_id`` and ``index`` when built with
    :meth:`create`; ``metadata`` is read-only.
    """

    id: str
    doc_id: str
    text: str
    index: int = 0
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidInputError(f"passage id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.doc_id, str) or not self.doc_id:
            raise InvalidInputError(f"doc_id must be a non-empty string, got {self.doc_id!r}")
        if not isinstance(self.text, str):
            raise InvalidInputError(f"passage text must be a string, got {type(self.text).__name__}")
        if not self.text.strip():
            raise InvalidInputError(f"passage {self.id!r} has empty text")
        try:
            self.text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInputError(
                f"passage {self.id!r} text is not valid Unicode: a lone surrogate at character {exc.start} "
                "(decode the input with errors='replace')"
            ) from None
        if not isinstance(self.index, int) or isinstance(self.index, bool) or self.index < 0:
            raise InvalidInputError(f"passage index must be an int >= 0, got {self.index!r}")
        object.__setattr__(self, "metadata", _frozen_mapping(self.metadata))

    @classmethod
    def create(
        cls,
        doc_id: str,
        index: int,
        text: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> Passage:
        """A passage whose id is :func:`passage_id` of ``doc_id`` and ``index``."""
        return cls(passage_id(doc_id, index), doc_id, text, index, _frozen_mapping(metadata))


def _check_spans(spans: Sequence[Span], limit: int, what: str) -> tuple[Span, ...]:
    """Sorted, merged, validated half-open spans inside ``[0, limit]``."""
    out: list[list[int]] = []
    try:
        pairs = [(int(s), int(e)) for s, e in spans]
    except (TypeError, ValueError) as exc:
        raise InvalidUnitError(f"{what} must be a list of [start, end) integer pairs, got {spans!r}") from exc
    if not pairs:
        raise InvalidUnitError(f"{what} is empty: a unit needs at least one span")
    for s, e in sorted(pairs):
        if s < 0 or e > limit or s >= e:
            raise InvalidUnitError(
                f"{what} has span [{s}, {e}) outside [0, {limit}) or empty; "
                "spans are half-open [start, end) offsets with start < end"
            )
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return tuple((s, e) for s, e in out)


@dataclass(frozen=True, slots=True)
class Unit:
    """A rankable part of a passage.

    ``char_spans`` are half-open character intervals into the passage text, sorted
    and disjoint. ``token_ranges`` are half-open intervals of positions in the
    passage's encoding (the rows of its token-vector matrix); empty until the unit
    is aligned with :func:`align_units`.
    """

    kind: str
    index: int
    char_spans: tuple[Span, ...]
    token_ranges: tuple[Span, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not _KIND_RE.fullmatch(self.kind):
            raise InvalidUnitError(
                f"unit kind must be a lower-case identifier such as 'sentence', "
                f"'proposition' or 'custom', got {self.kind!r}"
            )
        if not isinstance(self.index, int) or isinstance(self.index, bool) or self.index < 0:
            raise InvalidUnitError(f"unit index must be an int >= 0, got {self.index!r}")
        spans = _check_spans(self.char_spans, 2**62, f"{self.kind} {self.index} char_spans")
        object.__setattr__(self, "char_spans", spans)
        if self.token_ranges:
            ranges = _check_spans(self.token_ranges, 2**62, f"{self.kind} {self.index} token_ranges")
            object.__setattr__(self, "token_ranges", ranges)

    def text_in(self, passage_text: str) -> str:
        """The unit's text: its character spans of ``passage_text`` joined by a space."""
        return " ".join(passage_text[s:e] for s, e in self.char_spans)

    @property
    def token_positions(self) -> list[int]:
        """Every token position the unit covers, in order."""
        return [i for s, e in self.token_ranges for i in range(s, e)]

    @property
    def n_tokens(self) -> int:
        return sum(e - s for s, e in self.token_ranges)


_SET_KIND, _SET_INDEX, _SET_CHARS, _SET_TOKENS = (
    Unit.kind.__set__, Unit.index.__set__, Unit.char_spans.__set__, Unit.token_ranges.__set__  # type: ignore[attr-defined]
)


def trusted_unit(kind: str, index: int, char_spans: tuple[Span, ...], token_ranges: tuple[Span, ...]) -> Unit:
    """A Unit from fields checked when it was first made (read back from storage),
    built without checking them again: about 5x faster, for the fetch path."""
    u = object.__new__(Unit)
    _SET_KIND(u, kind)
    _SET_INDEX(u, index)
    _SET_CHARS(u, char_spans)
    _SET_TOKENS(u, token_ranges)
    return u


@dataclass(frozen=True, slots=True)
class TruncatedUnit:
    """A unit that fell, whole or in part, past the truncated end of its passage."""

    unit: Unit
    encoded_chars: int
    dropped: bool

    def __str__(self) -> str:
        what = "dropped: none of its text was encoded" if self.dropped else "cut: part of its text was not encoded"
        return (
            f"{self.unit.kind} {self.unit.index} at chars {list(self.unit.char_spans)} {what} "
            f"(the encoding ends at char {self.encoded_chars}); split the passage or raise doc_maxlen"
        )


@dataclass(frozen=True, slots=True)
class AlignedUnits:
    """Units with their token ranges, and the ones truncation cut or dropped."""

    units: tuple[Unit, ...]
    truncated: tuple[TruncatedUnit, ...] = ()


@lru_cache(maxsize=1)
def _sentence_splitter() -> Any:
    # nupunkt ships its trained Punkt model inside the wheel: nothing is downloaded.
    import nupunkt

    return nupunkt.sent_spans


#: Words (lower case, no full stop) that end in a full stop without ending a sentence;
#: after them a capitalised word does not start a new one.
ABBREVIATIONS = frozenset(
    "al approx apr art aug avg ca cf chap col corp dec dept ed eds eq eqs est etc feb fig figs "
    "gen ibid inc incl jan jul jun ltd mar max min mrs nos nov oct op para pp prof ref refs "
    "resp rev sec sep sept spp subsp univ var viz vol vs".split()
)

#: A whole lower-case word of three or more letters, its full stop, white space, then a
#: capitalised word. Punkt's model takes some such words for abbreviations ("cancer.",
#: "found.", "sleep." in SciFact abstracts) and misses the boundary; this finds it again.
_MISSED_BOUNDARY = re.compile(r"(?<![^\W\d_])([a-z]{3,})\.(?=\s+[A-Z][a-z])")


def sentence_spans(text: str) -> list[Span]:
    """``[start, end)`` character spans of the sentences of ``text``: Punkt's sentences
    (nupunkt), each cut again after a full stop Punkt took for an abbreviation's
    (:data:`_MISSED_BOUNDARY`, unless the word is in :data:`ABBREVIATIONS`). Spans
    exclude surrounding white space; white-space-only pieces are skipped.

    Boundary precision / recall against the sentences SciFact's corpus and WikiQA give
    (``benchmarks/splitter.py``): SciFact 0.995 / 0.963 (Punkt alone 0.995 / 0.959),
    WikiQA 0.994 / 0.948 (0.994 / 0.943).
    """
    spans: list[Span] = []
    for start, end in punkt_spans(text):
        cuts = [m.end() for m in _MISSED_BOUNDARY.finditer(text, start, end) if m.group(1) not in ABBREVIATIONS]
        for a, b in zip([start, *cuts], [*cuts, end]):
            span = _trimmed(text, a, b)
            if span is not None:
                spans.append(span)
    return spans


def punkt_spans(text: str) -> list[Span]:
    """Punkt's sentences alone (nupunkt), as :func:`sentence_spans` starts from them:
    spans without surrounding white space, white-space-only pieces skipped."""
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a string, got {type(text).__name__}")
    return [span for a, b in _sentence_splitter()(text) if (span := _trimmed(text, a, b)) is not None]


def _trimmed(text: str, start: int, end: int) -> Span | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def split_sentences(text: str, kind: str = SENTENCE) -> list[Unit]:
    """Sentence units of ``text`` (see :func:`sentence_spans`).

    Spans exclude surrounding whitespace; whitespace-only pieces are skipped.
    """
    return [Unit(kind, i, (span,)) for i, span in enumerate(sentence_spans(text))]


def units_from_char_spans(
    text: str,
    spans: Iterable[Sequence[Span] | Span],
    kind: str = CUSTOM,
) -> list[Unit]:
    """Units given by the caller as character spans of ``text``.

    Each item is one unit: a ``(start, end)`` pair, or a list of pairs for a
    non-contiguous unit. Spans must lie inside the text and cover some non-space
    character.
    """
    units: list[Unit] = []
    for item in spans:
        if (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        ):
            item = [item]  # type: ignore[list-item]
        where = f"{kind} {len(units)}"
        checked = _check_spans(item, len(text), where)  # type: ignore[arg-type]
        if not any(text[s:e].strip() for s, e in checked):
            raise InvalidUnitError(f"{where} covers only whitespace: {list(checked)}")
        units.append(Unit(kind, len(units), checked))
    return units


def word_spans(text: str) -> list[Span]:
    """PropSegmEnt's word tokens of ``text`` as character spans.

    Each run of alphanumeric characters is a token, and every other non-space
    character is a token of its own.
    """
    return [m.span() for m in _WORD_RE.finditer(text)]


def proposition_from_word_indices(
    sentence_text: str,
    word_indices: Iterable[int],
    *,
    index: int,
    offset: int = 0,
    words: Sequence[Span] | None = None,
    kind: str = PROPOSITION,
) -> Unit:
    """A proposition given as word-token indices of one sentence (PropSegmEnt's form).

    ``words`` are the sentence's word tokens as character spans (default:
    :func:`word_spans`); ``offset`` is where the sentence starts in the passage
    text. Adjacent words are joined into one span, so the unit has one span per
    contiguous stretch of the proposition.
    """
    words = word_spans(sentence_text) if words is None else list(words)
    picked = sorted(set(word_indices))
    if not picked:
        raise InvalidUnitError(f"{kind} {index} has no word indices")
    for i in picked:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(words):
            raise InvalidUnitError(
                f"{kind} {index}: word index {i!r} outside the sentence's {len(words)} words"
            )
    spans: list[list[int]] = []
    previous = None
    for i in picked:
        s, e = words[i]
        if previous is not None and i == previous + 1:
            spans[-1][1] = e
        else:
            spans.append([s, e])
        previous = i
    return Unit(kind, index, tuple((s + offset, e + offset) for s, e in spans))


def segment(
    passage: Passage,
    *,
    sentences: bool = True,
    units: Iterable[Unit] = (),
) -> tuple[Unit, ...]:
    """The units of a passage: its sentences (unless ``sentences=False``) and ``units``.

    Given units are checked against the passage text; a kind must not be both found
    automatically and given (sentences given by the caller replace the splitter's).
    """
    given = list(units)
    for unit in given:
        if not isinstance(unit, Unit):
            raise InvalidUnitError(f"units must be Unit records, got {type(unit).__name__}")
        if unit.char_spans[-1][1] > len(passage.text):
            raise InvalidUnitError(
                f"{unit.kind} {unit.index} of passage {passage.id!r} ends at char "
                f"{unit.char_spans[-1][1]}, past the text's {len(passage.text)} chars"
            )
    found: list[Unit] = []
    if sentences and not any(u.kind == SENTENCE for u in given):
        found = split_sentences(passage.text)
    return tuple(found + given)


def align_units(
    units: Sequence[Unit],
    token_offsets: Sequence[Span | None],
    encoded_chars: int,
) -> AlignedUnits:
    """Give each unit the token ranges that cover its characters.

    ``token_offsets[i]`` is the character span of encoding position ``i`` in the
    passage text, or ``None`` for special tokens (``[CLS]``, markers, ``[SEP]``).
    ``encoded_chars`` is where the encoded text ends (the passage length, or less
    when the encoding was truncated). A token belongs to a unit when their
    character spans overlap. Units with no encoded token are dropped and reported;
    units partly past the truncation keep the tokens they have and are reported.
    """
    starts: list[int] = []
    positions: list[int] = []
    ends: list[int] = []
    for pos, off in enumerate(token_offsets):
        if off is None:
            continue
        s, e = off
        if e > s:
            positions.append(pos)
            starts.append(s)
            ends.append(e)
    kept: list[Unit] = []
    report: list[TruncatedUnit] = []
    for unit in units:
        covered: list[int] = []
        for cs, ce in unit.char_spans:
            # tokens with start < ce and end > cs; token spans are sorted by start
            lo = bisect.bisect_right(ends, cs)
            hi = bisect.bisect_left(starts, ce)
            covered.extend(positions[lo:hi])
        if not covered:
            if unit.char_spans[0][0] >= encoded_chars:
                report.append(TruncatedUnit(unit, encoded_chars, dropped=True))
                continue
            raise InvalidUnitError(
                f"{unit.kind} {unit.index} at chars {list(unit.char_spans)} covers no token "
                "(only whitespace or characters the tokenizer drops)"
            )
        ranges: list[list[int]] = []
        for p in sorted(set(covered)):
            if ranges and p == ranges[-1][1]:
                ranges[-1][1] = p + 1
            else:
                ranges.append([p, p + 1])
        aligned = replace(unit, token_ranges=tuple((s, e) for s, e in ranges))
        kept.append(aligned)
        if unit.char_spans[-1][1] > encoded_chars:
            report.append(TruncatedUnit(aligned, encoded_chars, dropped=False))
    return AlignedUnits(tuple(kept), tuple(report))
