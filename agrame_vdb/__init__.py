"""agrame-vdb: any-granularity ranking with multi-vector embeddings on vector databases."""

from __future__ import annotations

from .errors import (
    AgrameError,
    CollectionNotFoundError,
    ConcurrentAccessError,
    InvalidInputError,
    InvalidUnitError,
    ModelLoadError,
    RepositoryError,
    SchemaMismatchError,
    TransientRepositoryError,
    UnknownStoreError,
)
from .units import (
    CUSTOM,
    PROPOSITION,
    SENTENCE,
    AlignedUnits,
    Passage,
    TruncatedUnit,
    Unit,
    align_units,
    passage_id,
    proposition_from_word_indices,
    segment,
    split_sentences,
    units_from_char_spans,
    word_spans,
)

__version__ = "0.1.0"

__all__ = [
    "AgrameError",
    "AlignedUnits",
    "CUSTOM",
    "CollectionNotFoundError",
    "ConcurrentAccessError",
    "InvalidInputError",
    "InvalidUnitError",
    "ModelLoadError",
    "PROPOSITION",
    "Passage",
    "RepositoryError",
    "SENTENCE",
    "SchemaMismatchError",
    "TransientRepositoryError",
    "TruncatedUnit",
    "Unit",
    "UnknownStoreError",
    "align_units",
    "passage_id",
    "proposition_from_word_indices",
    "segment",
    "split_sentences",
    "units_from_char_spans",
    "word_spans",
]
