"""agrame-vdb: any-granularity ranking with multi-vector embeddings on vector databases."""

from __future__ import annotations

from . import _source_tree  # noqa: F401  (finds agrame_vdb.migrations in a checkout run uninstalled)
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
from .errors import MissingPassagesError, StoreUnavailableError, UnsupportedOperationError
from .repositories import connect
from .errors import CheckpointMismatchError, InvalidRecordError, JobInterruptedError
from .errors import AliasError, MigrationError
from .chunking import ChunkingOptions
from .documents import Document, PassageInput
from .indexer import IndexJob, IndexProgress, IndexSummary, RetryPolicy, index_documents
from .repository import (
    SCHEMA_VERSION,
    And,
    Candidate,
    Capabilities,
    CollectionSchema,
    Eq,
    FetchResult,
    Filter,
    IdPage,
    In,
    Not,
    Or,
    Range,
    Repository,
    StoredPassage,
    TokenBatch,
)
from .maxsim import (
    MaxSimScores,
    PackedPassages,
    granular_maxsim,
    pack,
    pack_concatenated,
    passage_scores,
    unit_scores,
)
from .planner import Planner, SearchResponse, SearchResult, Timings, TokenCache, TokenMatch
from .cite import Citation, CitedAnswer, CitedSentence, Source
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

from .evaluation import EvalDataset, EvalQuery, evaluate, read_dataset

__version__ = "0.1.0"

__all__ = [
    "Citation",
    "CitedAnswer",
    "CitedSentence",
    "Planner",
    "SearchResponse",
    "SearchResult",
    "Source",
    "Timings",
    "TokenCache",
    "TokenMatch",
    "And",
    "Candidate",
    "Capabilities",
    "CollectionSchema",
    "Eq",
    "FetchResult",
    "Filter",
    "IdPage",
    "In",
    "MissingPassagesError",
    "Not",
    "Or",
    "Range",
    "Repository",
    "SCHEMA_VERSION",
    "StoreUnavailableError",
    "StoredPassage",
    "TokenBatch",
    "UnsupportedOperationError",
    "connect",
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
    "EvalDataset",
    "EvalQuery",
    "evaluate",
    "read_dataset",
    "CheckpointMismatchError",
    "ChunkingOptions",
    "Document",
    "IndexJob",
    "IndexProgress",
    "IndexSummary",
    "InvalidRecordError",
    "JobInterruptedError",
    "PassageInput",
    "RetryPolicy",
    "index_documents",
    "AliasError",
    "MigrationError",
]
