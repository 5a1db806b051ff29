"""The lexical first stage: one tokenisation for documents and queries, BM25 sparse
vectors, and the exact scorer every engine's lexical search is checked against.

A collection created with a :class:`LexicalSpec` (``CollectionSchema.lexical``)
stores beside each passage a sparse vector of its text: term ids (a 32-bit hash of
each word) with the BM25 term-frequency part as values,

    w(t, d) = tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl))

with ``avgdl`` fixed in the spec (so a passage's vector never depends on what else
was written, and a resumed or sharded job writes the same vectors). A query is a
sparse vector of its term counts; the engine weighs each term by its inverse
document frequency over the collection (Qdrant's ``Modifier.IDF``; others compute
it the same way), so the score is BM25:

    score(q, d) = sum_t q_t * idf(t) * w(t, d),  idf(t) = ln((N - df + 0.5) / (df + 0.5) + 1)

where ``N`` is the number of passages with any term. The tokenisation is named in
the spec and stored with the collection, so a query always uses the collection's.

>>> spec = LexicalSpec()
>>> words("Gene BRCA1, brca1's role (1997)")
['gene', 'brca1', 'brca1', 's', 'role', '1997']
>>> q = query_vector("BRCA1 brca1", spec)
>>> q.values
(2.0,)
>>> d = document_vector("BRCA1 in cells", spec)
>>> len(d.indices), round(d.values[0], 4)
(3, 1.6579)
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidInputError, InvalidSchemaError

__all__ = [
    "TOKENIZERS",
    "LexicalSpec",
    "SparseVector",
    "words",
    "term_id",
    "document_vector",
    "query_vector",
    "idf",
    "LexicalIndex",
    "check_query_text",
]

#: Tokenisations a spec may name. ``words-v1``: Unicode NFKC, case-folded, then the
#: runs of word characters (``\\w+``: letters, digits and ``_`` in any script).
TOKENIZERS: tuple[str, ...] = ("words-v1",)
_WORD = re.compile(r"\w+")
#: term ids are in [0, 2**32 - 1): what Qdrant (u32) and Milvus sparse vectors both take
_ID_SPACE = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class LexicalSpec:
    """How a collection's lexical vectors are made: the tokenisation and BM25's
    ``k1``, ``b`` and the fixed average passage length ``avgdl`` (in words)."""

    tokenizer: str = "words-v1"
    k1: float = 1.2
    b: float = 0.75
    avgdl: float = 100.0

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise InvalidSchemaError(f"lexical tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        for name, low, high in (("k1", 0.0, 100.0), ("b", 0.0, 1.0), ("avgdl", 1e-6, 1e9)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
                raise InvalidSchemaError(f"lexical {name} must be a number in [{low}, {high}], got {v!r}")
            object.__setattr__(self, name, float(v))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: LexicalSpec | Mapping[str, Any]) -> LexicalSpec:
        """A spec from its stored record (InvalidSchemaError when it is not one)."""
        if isinstance(data, LexicalSpec):
            return data
        if not isinstance(data, Mapping) or not set(data) <= {f.name for f in dataclasses.fields(cls)}:
            raise InvalidSchemaError(f"lexical must be None or an object with tokenizer, k1, b and avgdl, got {data!r}")
        return cls(**data)


@dataclass(frozen=True, slots=True)
class SparseVector:
    """Term ids (ascending, unique) and their weights."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.indices)

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.indices, self.values))


def words(text: str, tokenizer: str = "words-v1") -> list[str]:
    """The words of ``text`` under ``tokenizer`` (see :data:`TOKENIZERS`)."""
    if tokenizer not in TOKENIZERS:
        raise InvalidSchemaError(f"lexical tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    if not isinstance(text, str):
        raise InvalidInputError(f"lexical text must be a string, got {type(text).__name__}")
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def term_id(word: str) -> int:
    """A word's term id: CRC-32 of its UTF-8 bytes, in [0, 2**32 - 1)."""
    return zlib.crc32(word.encode("utf-8")) % _ID_SPACE


def _counts(text: str, tokenizer: str) -> tuple[Counter[int], int]:
    ws = words(text, tokenizer)
    return Counter(term_id(w) for w in ws), len(ws)


def _sparse(weights: Mapping[int, float]) -> SparseVector:
    keys = sorted(weights)
    return SparseVector(tuple(keys), tuple(float(weights[k]) for k in keys))


def document_vector(text: str, spec: LexicalSpec) -> SparseVector:
    """A passage's stored lexical vector: the BM25 term-frequency part of each term
    (empty when the text has no word)."""
    counts, length = _counts(text, spec.tokenizer)
    norm = spec.k1 * (1.0 - spec.b + spec.b * length / spec.avgdl)
    return _sparse({t: tf * (spec.k1 + 1.0) / (tf + norm) for t, tf in counts.items()})


def query_vector(text: str, spec: LexicalSpec) -> SparseVector:
    """A query's lexical vector: the count of each term (the engine adds the IDF)."""
    counts, _ = _counts(text, spec.tokenizer)
    return _sparse({t: float(n) for t, n in counts.items()})


def idf(df: int | np.ndarray, n: int) -> float | np.ndarray:
    """Inverse document frequency of a term in ``df`` of ``n`` passages (Qdrant's form)."""
    return np.log((n - np.asarray(df, dtype=np.float64) + 0.5) / (np.asarray(df, dtype=np.float64) + 0.5) + 1.0)


class LexicalIndex:
    """An exact in-memory inverted index: the reference scorer (and the memory engine's).

    ``add``/``remove`` keep document frequencies in step with the stored vectors;
    :meth:`scores` is BM25 of a query against every stored passage that shares a
    term with it, in float64.
    """

    def __init__(self) -> None:
        self._docs: dict[str, dict[int, float]] = {}
        self._postings: dict[int, dict[str, float]] = {}

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, key: str, vector: SparseVector) -> None:
        self.remove(key)
        if not len(vector):
            return  # a passage without words has no lexical vector (and is not counted in N)
        terms = vector.as_dict()
        self._docs[key] = terms
        for t, w in terms.items():
            self._postings.setdefault(t, {})[key] = w

    def remove(self, key: str) -> None:
        for t in self._docs.pop(key, {}):
            post = self._postings[t]
            del post[key]
            if not post:
                del self._postings[t]

    def document_frequencies(self, terms: Iterable[int]) -> dict[int, int]:
        return {t: len(self._postings.get(t, ())) for t in terms}

    def scores(self, query: SparseVector) -> dict[str, float]:
        """BM25 of ``query`` against each passage that has one of its terms."""
        n = len(self._docs)
        out: dict[str, float] = {}
        for t, qw in zip(query.indices, query.values):
            post = self._postings.get(t)
            if not post:
                continue
            weight = qw * float(idf(len(post), n))
            for key, w in post.items():
                out[key] = out.get(key, 0.0) + weight * w
        return out


def check_query_text(text: Any) -> str:
    """A lexical query's text, checked (InvalidInputError when it is not a non-empty string)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"a lexical query needs its text as a non-empty string, got {text!r}")
    return text
