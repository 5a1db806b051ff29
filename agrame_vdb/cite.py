"""Post-hoc citations (PropCite): cite, for each sentence of an answer, the passage
whose best unit supports it, when that passage wins by a margin.

Each sentence of the answer is a query (``[Q']``) over the units (sentences,
propositions, any kind) of the passages the answer was generated from. A passage's
support for a sentence is its best unit's score ``S(q',u) + alpha * S(q,p)`` (plus
``beta * W * C(u,q')`` where the model ranks that unit kind with coverage, as search
does: see :class:`~agrame_vdb.planner.Planner`), divided by the query length (so it
is a mean similarity per query token, about ``[-1, 1]``, comparable across answers).
The best passage is cited when it beats every other passage by at least ``margin``
(and reaches ``min_score``, if set); with one passage only ``min_score`` applies.
At ``granularity="passage"`` the unit is the whole passage, scored with ``[Q]``.

Limits: an answer of more than ``MAX_ANSWER_CHARS`` characters (200,000) or
``MAX_ANSWER_SENTENCES`` sentences (1,000) is rejected with
:class:`~agrame_vdb.errors.InvalidInputError` before anything is encoded; the
sentences are encoded and scored ``CITE_BATCH`` (64) at a time, so memory does not
grow with the answer.

>>> from agrame_vdb.encoder import MultiVectorEncoder
>>> enc = MultiVectorEncoder.load(device="cpu")
>>> cited = cite(
...     "The tower was finished in 1889. Bananas are yellow.",
...     ["The Eiffel Tower was completed in 1889.", "Bananas are a yellow fruit."],
...     enc,
... )
>>> cited.text
'The tower was finished in 1889. [1] Bananas are yellow. [2]'
>>> [c.citation.unit_text for c in cited.sentences]
['The Eiffel Tower was completed in 1889.', 'Bananas are a yellow fruit.']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import PlainSerializer

from .encoder import EncodedPassage, MultiVectorEncoder, encode_queries, encoder_lock
from .errors import InvalidInputError
from .maxsim import granular_maxsim, pack
from .planner import PASSAGE, check_granularity
from .planner.rank import query_rows
from .planner.results import to_json
from .repository import StoredPassage
from .units import Passage, Span, Unit, split_sentences

__all__ = ["Citation", "CitedSentence", "CitedAnswer", "Source", "cite", "cite_ids", "MAX_ANSWER_CHARS", "MAX_ANSWER_SENTENCES"]

DEFAULT_MARGIN = 0.1
#: The longest answer :func:`cite` takes, in characters...
MAX_ANSWER_CHARS = 200_000
#: ...and in sentences (each one is a query).
MAX_ANSWER_SENTENCES = 1_000
#: Answer sentences encoded and scored together.
CITE_BATCH = 64
#: A margin, written as null where it is infinite (a single passage beats no other).
_Margin = Annotated[float, PlainSerializer(lambda m: m if math.isfinite(m) else None)]


@dataclass(frozen=True, slots=True)
class Source:
    """A passage the answer was generated from; ``marker`` is its 1-based number."""

    marker: int
    passage_id: str
    doc_id: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return to_json(self)


@dataclass(frozen=True, slots=True)
class Citation:
    """The supporting unit of a cited sentence.

    ``char_spans`` are the unit's ``[start, end)`` offsets in its passage's text;
    ``score`` is the unit's normalised score and ``margin`` how far it beats the
    best unit of any other passage (``inf`` with one passage).
    """

    marker: int
    passage_id: str
    doc_id: str
    unit_kind: str
    unit_index: int | None
    unit_text: str
    char_spans: tuple[Span, ...]
    score: float
    margin: _Margin

    def to_json(self) -> dict[str, Any]:
        """Every field; an infinite ``margin`` as None."""
        return to_json(self)


@dataclass(frozen=True, slots=True)
class CitedSentence:
    """One sentence of the answer: where it is, its citation (or None), and the
    normalised support of every passage, in the order the passages were given."""

    index: int
    text: str
    char_span: Span
    citation: Citation | None
    passage_scores: tuple[float | None, ...]

    def to_json(self) -> dict[str, Any]:
        return to_json(self)


@dataclass(frozen=True, slots=True)
class CitedAnswer:
    """The answer with citation markers, its sentences, and the numbered sources."""

    answer: str
    text: str
    sentences: tuple[CitedSentence, ...]
    sources: tuple[Source, ...]
    granularity: str
    margin: float

    @property
    def citations(self) -> list[Citation]:
        return [s.citation for s in self.sentences if s.citation is not None]

    def to_json(self) -> dict[str, Any]:
        """Every field, the sentences and sources last."""
        out = to_json(self)
        out["sentences"] = out.pop("sentences")
        out["sources"] = out.pop("sources")
        return out

    def to_text(self) -> str:
        """The marked answer, then each citation's supporting unit."""
        lines = [self.text, ""]
        for s in self.sentences:
            c = s.citation
            if c is not None:
                where = f"{c.doc_id}" + (f" {c.unit_kind} {c.unit_index}" if c.unit_index is not None else "")
                lines.append(f"[{c.marker}] {s.text!r} <- {where} (score {c.score:.3f}, margin {c.margin:.3f}): {c.unit_text}")
        return "\n".join(lines).rstrip() + "\n"


@dataclass(frozen=True, slots=True)
class _Prepared:
    id: str
    doc_id: str
    text: str
    tokens: np.ndarray
    units: tuple[Unit, ...]


def _prepare(passages: Sequence[Any], encoder: MultiVectorEncoder | None) -> list[_Prepared]:
    if isinstance(passages, (str, Passage, StoredPassage)) or not isinstance(passages, Sequence):
        raise InvalidInputError("passages must be a list (of texts, Passage, StoredPassage or EncodedPassage records)")
    if not passages:
        raise InvalidInputError("no passages given: a citation needs the passages the answer came from")
    out: list[_Prepared | None] = [None] * len(passages)
    to_encode: list[tuple[int, Passage]] = []
    for i, p in enumerate(passages):
        if isinstance(p, str):
            if not p.strip():
                raise InvalidInputError(f"passage {i + 1} is empty")
            to_encode.append((i, Passage.create(f"passage-{i + 1}", 0, p)))
        elif isinstance(p, Passage):
            to_encode.append((i, p))
        elif isinstance(p, EncodedPassage):
            out[i] = _Prepared(p.passage.id, p.passage.doc_id, p.passage.text, p.token_vectors, p.units)
        elif isinstance(p, StoredPassage):
            out[i] = _Prepared(p.id, p.doc_id, p.text, p.tokens, p.units)
        else:
            raise InvalidInputError(
                f"passage {i + 1} is a {type(p).__name__}; give texts, Passage, StoredPassage or EncodedPassage records"
            )
    if to_encode:
        if encoder is None:
            raise InvalidInputError("passages given as text need an encoder")
        with encoder_lock(encoder):
            encoded: list[EncodedPassage] = encoder.encode_passages([p for _, p in to_encode])
        for (i, _), e in zip(to_encode, encoded, strict=True):
            out[i] = _Prepared(e.passage.id, e.passage.doc_id, e.passage.text, e.token_vectors, e.units)
    return [p for p in out if p is not None]


def cite(
    answer: str,
    passages: Sequence[str | Passage | StoredPassage | EncodedPassage],
    encoder: MultiVectorEncoder,
    *,
    granularity: str = "sentence",
    margin: float = DEFAULT_MARGIN,
    min_score: float | None = None,
    alpha: float = 0.0,
    coverage: float | None = None,
    marker: str = "[{n}]",
) -> CitedAnswer:
    """Attach citations to ``answer`` from ``passages`` (texts are encoded and split
    into sentences; stored or encoded passages bring their own units).

    ``margin`` is how much the best passage's normalised score must exceed every
    other passage's; ``min_score`` an optional floor on it; ``alpha`` adds the
    passage score as in ranking; ``coverage`` is the weight ``beta`` of the units'
    coverage term (None: the encoder's ``config.unit_coverage`` for the granularity,
    0 where it names none); ``marker`` formats the citation mark (``{n}`` is the
    passage's 1-based position in ``passages``).
    """
    if not isinstance(answer, str) or not answer.strip():
        raise InvalidInputError("answer must be a non-empty string")
    kind = check_granularity(granularity)
    for name, value in (("margin", margin), ("alpha", alpha)) + ((("min_score", min_score),) if min_score is not None else ()):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
    if margin < 0:
        raise InvalidInputError(f"margin must be >= 0, got {margin!r}")
    if coverage is not None and (
        isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not math.isfinite(coverage) or coverage < 0
    ):
        raise InvalidInputError(f"coverage must be a finite number >= 0, got {coverage!r}")
    if not isinstance(marker, str) or "{n}" not in marker:
        raise InvalidInputError(f"marker must be a format string with {{n}}, got {marker!r}")
    if len(answer) > MAX_ANSWER_CHARS:
        raise InvalidInputError(
            f"the answer has {len(answer):,} characters; cite takes at most {MAX_ANSWER_CHARS:,} (MAX_ANSWER_CHARS): "
            "cite it in parts"
        )
    sentences = split_sentences(answer)
    if len(sentences) > MAX_ANSWER_SENTENCES:
        raise InvalidInputError(
            f"the answer has {len(sentences):,} sentences; cite takes at most {MAX_ANSWER_SENTENCES:,} "
            "(MAX_ANSWER_SENTENCES): cite it in parts"
        )
    if kind == PASSAGE:
        beta = 0.0
    else:  # the model's own setting unless one is given (read once the answer is known to fit)
        beta = encoder.config.unit_coverage.get(kind, 0.0) if coverage is None else float(coverage)
    prepared = _prepare(passages, encoder)
    texts = [s.text_in(answer) for s in sentences]
    unit_mode = kind != PASSAGE
    units = [[u for u in p.units if u.kind == kind] for p in prepared] if unit_mode else None
    if unit_mode and not any(units):  # type: ignore[arg-type]
        raise InvalidInputError(
            f"none of the passages has {kind!r} units; give passages with them, or use granularity 'sentence' or 'passage'"
        )
    packed = pack([np.array(p.tokens, dtype=np.float32) for p in prepared], units)  # copies: fetched arrays are read-only
    flat = [u for us in units for u in us] if units is not None else []

    sources = tuple(Source(i + 1, p.id, p.doc_id, p.text) for i, p in enumerate(prepared))
    cited: list[CitedSentence] = []
    for b0 in range(0, len(texts), CITE_BATCH):
        q, sq = encode_queries(encoder, texts[b0 : b0 + CITE_BATCH], both=unit_mode)
        sub = sq if sq is not None else q
        lq = sub.shape[1]
        weights = query_rows(sub) if unit_mode and beta > 0 else None  # [B, lq]: the real tokens
        scores = granular_maxsim(
            torch.from_numpy(q), packed, torch.from_numpy(sq) if sq is not None else None,
            subquery_mask=weights, coverage=weights is not None,
        )
        p_scores = scores.passage.float().cpu().numpy().astype(np.float64)  # [B, P]
        if unit_mode:
            u_scores = scores.unit.float().cpu().numpy().astype(np.float64)  # [B, U]
            u_passage = scores.unit_passage.cpu().numpy()
            if weights is not None:  # beta * W * C(u, q'), W per sentence
                c_scores = scores.unit_coverage.float().cpu().numpy().astype(np.float64)
                u_scores = u_scores + beta * weights.sum(1, dtype=np.float64)[:, None] * c_scores
        for b in range(q.shape[0]):
            best = _best_units(p_scores[b], u_scores[b] if unit_mode else None, u_passage if unit_mode else None,
                               flat, len(prepared), alpha, lq)
            cited.append(_cited(b0 + b, sentences[b0 + b], texts[b0 + b], best, prepared, kind, margin, min_score))
    return CitedAnswer(answer, _marked(answer, cited, marker), tuple(cited), sources, kind, float(margin))


def _best_units(
    p_scores: np.ndarray, u_scores: np.ndarray | None, u_passage: np.ndarray | None, flat: list[Unit],
    n_passages: int, alpha: float, lq: int,
) -> list[tuple[float, Unit | None] | None]:
    """Per passage, its best unit for one sentence and that unit's normalised score
    (the passage itself at passage granularity; None for a passage without units)."""
    best: list[tuple[float, Unit | None] | None] = [None] * n_passages
    if u_scores is not None:
        assert u_passage is not None
        total = (u_scores + alpha * p_scores[u_passage]) / lq
        for j, value in enumerate(total.tolist()):
            p = int(u_passage[j])
            if best[p] is None or value > best[p][0]:  # type: ignore[index]
                best[p] = (value, flat[j])
    else:
        for p, value in enumerate((p_scores / lq).tolist()):
            best[p] = (value, None)
    return best


def _cited(
    b: int, sentence: Unit, text: str, best: list[tuple[float, Unit | None] | None], prepared: list[_Prepared],
    kind: str, margin: float, min_score: float | None,
) -> CitedSentence:
    """Sentence ``b`` of the answer with its citation, when its best passage wins by ``margin``."""
    ranked = sorted((v[0], p) for p, v in enumerate(best) if v is not None)
    citation = None
    if ranked:
        top_score, top = ranked[-1]
        gap = top_score - ranked[-2][0] if len(ranked) > 1 else math.inf
        if gap >= margin and (min_score is None or top_score >= min_score):
            unit = best[top][1]  # type: ignore[index]
            src = prepared[top]
            citation = Citation(
                marker=top + 1,
                passage_id=src.id,
                doc_id=src.doc_id,
                unit_kind=kind,
                unit_index=None if unit is None else unit.index,
                unit_text=src.text if unit is None else unit.text_in(src.text),
                char_spans=((0, len(src.text)),) if unit is None else unit.char_spans,
                score=top_score,
                margin=gap,
            )
    span = sentence.char_spans[0][0], sentence.char_spans[-1][1]
    return CitedSentence(b, text, span, citation, tuple(None if v is None else v[0] for v in best))


def cite_ids(
    answer: str,
    repository: Any,
    collection: str,
    ids: Sequence[str],
    encoder: MultiVectorEncoder,
    **options: Any,
) -> CitedAnswer:
    """:func:`cite` with passages read from a repository by id (all must exist)."""
    fetched = repository.fetch(collection, list(ids), strict=True)
    return cite(answer, list(fetched.passages), encoder, **options)


def _marked(answer: str, sentences: list[CitedSentence], marker: str) -> str:
    """The answer with each cited sentence followed by its marker."""
    out, pos = [], 0
    for s in sentences:
        if s.citation is None:
            continue
        end = s.char_span[1]
        out.append(answer[pos:end])
        out.append(" " + marker.format(n=s.citation.marker))
        pos = end
    out.append(answer[pos:])
    return "".join(out)
