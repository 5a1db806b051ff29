"""Training examples: a query with its k+1 passages, graded labels or teacher scores.

A training file is JSON lines, one example per line::

    {"query": "when was the tower built?",
     "passages": [
        {"sentences": ["The tower is tall.", "It was built in 1889."],
         "label": 1, "unit_labels": [0, 1]},
        {"text": "Paris is in France. It is big.", "label": 0},
        {"text": "...", "units": [[[0, 12]], [[13, 20], [25, 30]]], "score": 3.1, "unit_scores": [1.0, 0.2]}
     ]}

A passage is ``sentences`` (joined by one space; each is a unit) or ``text`` with
optional ``units`` (character spans, a unit a ``[start, end)`` pair or a list of
them; default: the sentences the splitter finds). ``label`` and ``unit_labels``
are graded relevance (any value ``>= 0``; 0/1 or multi-graded); ``score`` and
``unit_scores`` are a teacher's scores, used for the targets when every passage of
the example has one. An example needs a positive (label > 0) or teacher scores.

Hard negatives come from the data (the negatives listed in the file), from BM25
over a data set's passages (:func:`examples_from_dataset`), or from a repository's
first stage (:func:`add_repository_negatives`).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..documents import read_json_lines
from ..errors import InvalidInputError
from ..units import SENTENCE, Unit, split_sentences, units_from_char_spans

__all__ = [
    "TrainPassage",
    "TrainExample",
    "read_training_file",
    "examples_from_dataset",
    "BM25",
    "add_repository_negatives",
]


@dataclass(frozen=True)
class TrainPassage:
    """One passage of a training example, with its units and labels or teacher scores."""

    text: str
    units: tuple[Unit, ...] = ()
    label: float = 0.0
    unit_labels: tuple[float, ...] | None = None
    score: float | None = None
    unit_scores: tuple[float, ...] | None = None
    key: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise InvalidInputError("a training passage needs a non-empty text")
        for name in ("unit_labels", "unit_scores"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.units):
                raise InvalidInputError(f"{name} has {len(values)} values but the passage has {len(self.units)} units")
        if self.label < 0 or (self.unit_labels is not None and any(v < 0 for v in self.unit_labels)):
            raise InvalidInputError("graded labels must be >= 0")

    @property
    def has_unit_targets(self) -> bool:
        """Unit targets exist: teacher unit scores, or a unit with a positive grade."""
        return bool(self.units) and (
            self.unit_scores is not None or (self.unit_labels is not None and any(v > 0 for v in self.unit_labels))
        )


@dataclass(frozen=True)
class TrainExample:
    """A query and its passages (positives first by convention; order does not matter)."""

    query: str
    passages: tuple[TrainPassage, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or not self.query.strip():
            raise InvalidInputError("a training example needs a non-empty query")
        if not self.passages:
            raise InvalidInputError(f"example {self.query!r} has no passages")
        if not self.uses_teacher and not any(p.label > 0 for p in self.passages):
            raise InvalidInputError(f"example {self.query!r} has no positive passage and no teacher scores")

    @property
    def uses_teacher(self) -> bool:
        return all(p.score is not None for p in self.passages)


def _passage_from_json(raw: dict[str, Any], where: str) -> TrainPassage:
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where}: a passage must be an object, got {raw!r}")
    if "sentences" in raw:
        sentences = [str(s).strip() for s in raw["sentences"]]
        if not sentences or not all(sentences):
            raise InvalidInputError(f"{where}: sentences must be non-empty strings")
        spans, pos = [], 0
        for s in sentences:
            spans.append((pos, pos + len(s)))
            pos += len(s) + 1
        text = " ".join(sentences)
        units = units_from_char_spans(text, spans, kind=SENTENCE)
    elif "text" in raw:
        text = str(raw["text"])
        if "units" in raw:
            units = units_from_char_spans(text, [_spans(u) for u in raw["units"]], kind=str(raw.get("unit_kind", SENTENCE)))
        else:
            units = split_sentences(text)
    else:
        raise InvalidInputError(f"{where}: a passage needs 'text' or 'sentences'")

    def floats(name: str) -> tuple[float, ...] | None:
        values = raw.get(name)
        if values is None:
            return None
        try:
            return tuple(float(v) for v in values)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{where}: {name} must be a list of numbers") from exc

    score = raw.get("score")
    try:
        return TrainPassage(
            text,
            tuple(units),
            float(raw.get("label", 0.0)),
            floats("unit_labels"),
            None if score is None else float(score),
            floats("unit_scores"),
            str(raw.get("id", "")),
        )
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc}") from exc


def _spans(unit: Any) -> Any:
    if isinstance(unit, list) and len(unit) == 2 and all(isinstance(x, int) for x in unit):
        return (unit[0], unit[1])
    return [tuple(s) for s in unit]


def read_training_file(path: str | Path, *, limit: int | None = None) -> list[TrainExample]:
    """Examples from a JSON-lines training file (format in the module docstring)."""
    path = Path(path)
    examples: list[TrainExample] = []
    for n, row in read_json_lines(path, what="training file"):
        where = f"{path}:{n}"
        if not isinstance(row, dict) or not isinstance(row.get("passages"), list):
            raise InvalidInputError(f"{where}: an example is an object with 'query' and a 'passages' list")
        passages = tuple(_passage_from_json(p, f"{where} passage {i}") for i, p in enumerate(row["passages"]))
        try:
            examples.append(TrainExample(str(row.get("query", "")), passages))
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc}") from exc
        if limit is not None and len(examples) >= limit:
            break
    return examples


# --------------------------------------------------------------------------- BM25

_TOKEN_RE = re.compile(r"[a-z0-9]+")


def _terms(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


class BM25:
    """Okapi BM25 over a list of texts (pure Python; for mining hard negatives).

    >>> bm25 = BM25(["the tower is tall", "bacteria resist drugs", "a tall tower in paris"])
    >>> [i for i, _ in bm25.top("tall tower", 2)]
    [0, 2]
    """

    def __init__(self, texts: Sequence[str], k1: float = 0.9, b: float = 0.4) -> None:
        self.k1, self.b = k1, b
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.lengths = []
        for i, text in enumerate(texts):
            terms = _terms(text)
            self.lengths.append(len(terms))
            for term, tf in Counter(terms).items():
                self.postings[term].append((i, tf))
        self.avg = sum(self.lengths) / max(len(self.lengths), 1)
        n = len(self.lengths)
        self.idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()}

    def top(self, query: str, k: int, exclude: Iterable[int] = ()) -> list[tuple[int, float]]:
        scores: dict[int, float] = defaultdict(float)
        for term in set(_terms(query)):
            idf = self.idf.get(term)
            if idf is None:
                continue
            for i, tf in self.postings[term]:
                norm = tf + self.k1 * (1 - self.b + self.b * self.lengths[i] / max(self.avg, 1e-9))
                scores[i] += idf * tf * (self.k1 + 1) / norm
        skip = set(exclude)
        ranked = sorted(((i, s) for i, s in scores.items() if i not in skip), key=lambda x: (-x[1], x[0]))
        return ranked[:k]


# --------------------------------------------------------------------------- from data sets


def _banned(query: Any, relevant: set[int], index: dict[str, int]) -> set[int]:
    """Passages that are never a negative of ``query``: its relevant ones and those
    its filter leaves out (``EvalQuery.excluded``, e.g. the hypothesis's own document)."""
    return relevant | {index[pid] for pid in query.excluded if pid in index}


def examples_from_dataset(
    dataset: Any,
    *,
    negatives: int = 7,
    hard_negatives: int = 3,
    mine_depth: int = 20,
    max_positives: int = 2,
    seed: int = 0,
    limit: int | None = None,
) -> list[TrainExample]:
    """Training examples from an :class:`~agrame_vdb.evaluation.EvalDataset`.

    Each query with a relevant passage gives one example: up to ``max_positives``
    relevant passages (highest grade first) with their graded unit labels, then
    ``hard_negatives`` drawn from the BM25 top ``mine_depth`` non-relevant passages,
    then random non-relevant passages up to ``1 + negatives`` passages in all. The
    random ones are drawn from the passages the examples already use (positives and
    hard negatives of other queries), so they cost no extra encoding.
    """
    rng = random.Random(seed)
    index = dataset.passage_by_id()
    bm25 = BM25([p.text for p in dataset.passages]) if hard_negatives > 0 else None
    queries = [q for q in dataset.queries if any(g > 0 for g in q.passage_qrels.values())]
    if limit is not None:
        queries = rng.sample(queries, min(limit, len(queries)))
    chosen: list[tuple[Any, set[int], list[int], list[int]]] = []
    for q in queries:
        relevant = {index[pid] for pid, g in q.passage_qrels.items() if g > 0 and pid in index}
        if not relevant:
            continue
        positives = sorted(relevant, key=lambda i: (-q.passage_qrels[dataset.passages[i].id], i))[:max_positives]
        banned = _banned(q, relevant, index)
        hard: list[int] = []
        if bm25 is not None:
            mined = [i for i, _ in bm25.top(q.text, mine_depth, exclude=banned)]
            hard = rng.sample(mined, min(hard_negatives, len(mined)))
        chosen.append((q, banned, positives, hard))
    pool = sorted({i for _, _, pos, hard in chosen for i in pos + hard})
    if len(pool) < 2 * (1 + negatives):  # too few to draw from: use the whole data set
        pool = list(range(len(dataset.passages)))
    examples = []
    for q, relevant, positives, hard in chosen:
        wanted = max(1 + negatives - len(positives), 0)
        picked = hard[:wanted]
        tries = 0
        while len(picked) < wanted and tries < 50 * (wanted + 1):
            tries += 1
            i = pool[rng.randrange(len(pool))]
            if i not in relevant and i not in picked:
                picked.append(i)
        passages = []
        for i in positives + picked:
            p = dataset.passages[i]
            units = dataset.units[i]
            labels = tuple(float(q.unit_qrels.get((p.id, u.index), 0)) for u in units)
            passages.append(TrainPassage(p.text, tuple(units), float(q.passage_qrels.get(p.id, 0)), labels, key=p.id))
        examples.append(TrainExample(q.text, tuple(passages)))
    return examples


def add_repository_negatives(
    examples: Sequence[TrainExample],
    repository: Any,
    collection: str,
    encoder: Any,
    *,
    hard_negatives: int = 3,
    depth: int = 20,
    seed: int = 0,
) -> list[TrainExample]:
    """Add ``hard_negatives`` passages from a repository's first stage to each example.

    The query's pooled ``[Q]`` vector asks :meth:`Repository.candidates` for ``depth``
    passages; those whose text is not one of the example's passages are sampled, and
    join with label 0 and their stored units.
    """
    import numpy as np

    rng = random.Random(seed)
    vectors = encoder.encode_queries([e.query for e in examples])
    out = []
    for example, q in zip(examples, vectors, strict=True):
        pooled = q.mean(axis=0)
        pooled = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        hits = repository.candidates(collection, pooled.astype(np.float32), limit=depth)
        known = {p.text for p in example.passages}
        fetched = repository.fetch(collection, [h.id for h in hits]).passages
        fresh = [s for s in fetched if s.text and s.text not in known]
        picked = rng.sample(fresh, min(hard_negatives, len(fresh)))
        extra = tuple(
            TrainPassage(s.text, tuple(replace(u, token_ranges=()) for u in s.units), 0.0,
                         tuple(0.0 for _ in s.units) if s.units else None, key=s.id)
            for s in picked
        )
        out.append(TrainExample(example.query, example.passages + extra))
    return out
