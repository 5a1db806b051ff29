"""agrame-vdb: any-granularity ranking with multi-vector embeddings on vector databases.

The names below are imported when first used (PEP 562), so ``import agrame_vdb`` and the
command's light subcommands (``--help``, ``version``, ``migrate status``) start without
importing torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _source_tree  # noqa: F401  (finds agrame_vdb.migrations in a checkout run uninstalled)

__version__ = "0.1.0"

#: public name -> the module that defines it
_HOMES: dict[str, str] = {
    "AgrameError": "errors",
    "AliasError": "errors",
    "CheckpointMismatchError": "errors",
    "CollectionNotFoundError": "errors",
    "ConcurrentAccessError": "errors",
    "InvalidInputError": "errors",
    "InvalidRecordError": "errors",
    "InvalidUnitError": "errors",
    "JobInterruptedError": "errors",
    "MigrationError": "errors",
    "MissingPassagesError": "errors",
    "ModelLoadError": "errors",
    "RepositoryError": "errors",
    "SchemaMismatchError": "errors",
    "StoreUnavailableError": "errors",
    "TransientRepositoryError": "errors",
    "UnknownStoreError": "errors",
    "UnsupportedOperationError": "errors",
    "LexicalUnavailableError": "errors",
    "LexicalSpec": "lexical",
    "AlignedUnits": "units",
    "CUSTOM": "units",
    "PROPOSITION": "units",
    "Passage": "units",
    "SENTENCE": "units",
    "TruncatedUnit": "units",
    "Unit": "units",
    "align_units": "units",
    "passage_id": "units",
    "proposition_from_word_indices": "units",
    "segment": "units",
    "split_sentences": "units",
    "units_from_char_spans": "units",
    "word_spans": "units",
    "And": "repository",
    "Candidate": "repository",
    "Capabilities": "repository",
    "CollectionSchema": "repository",
    "Eq": "repository",
    "FetchResult": "repository",
    "Filter": "repository",
    "IdPage": "repository",
    "In": "repository",
    "Not": "repository",
    "Or": "repository",
    "Range": "repository",
    "Repository": "repository",
    "SCHEMA_VERSION": "repository",
    "StoredPassage": "repository",
    "TokenBatch": "repository",
    "connect": "repositories",
    "MaxSimScores": "maxsim",
    "PackedPassages": "maxsim",
    "granular_maxsim": "maxsim",
    "pack": "maxsim",
    "pack_concatenated": "maxsim",
    "passage_scores": "maxsim",
    "unit_scores": "maxsim",
    "Document": "documents",
    "PassageInput": "documents",
    "ChunkingOptions": "chunking",
    "IndexJob": "indexer",
    "IndexProgress": "indexer",
    "IndexSummary": "indexer",
    "RetryPolicy": "indexer",
    "index_documents": "indexer",
    "Planner": "planner",
    "SearchResponse": "planner",
    "SearchResult": "planner",
    "Timings": "planner",
    "TokenCache": "planner",
    "TokenMatch": "planner",
    "Citation": "cite",
    "CitedAnswer": "cite",
    "CitedSentence": "cite",
    "Source": "cite",
    "EvalDataset": "evaluation",
    "EvalQuery": "evaluation",
    "evaluate": "evaluation",
    "read_dataset": "evaluation",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .errors import AgrameError, AliasError, CheckpointMismatchError, CollectionNotFoundError, ConcurrentAccessError, InvalidInputError, InvalidRecordError, InvalidUnitError, JobInterruptedError, MigrationError, MissingPassagesError, ModelLoadError, RepositoryError, SchemaMismatchError, StoreUnavailableError, TransientRepositoryError, UnknownStoreError, UnsupportedOperationError, LexicalUnavailableError
    from .lexical import LexicalSpec
    from .units import AlignedUnits, CUSTOM, PROPOSITION, Passage, SENTENCE, TruncatedUnit, Unit, align_units, passage_id, proposition_from_word_indices, segment, split_sentences, units_from_char_spans, word_spans
    from .repository import And, Candidate, Capabilities, CollectionSchema, Eq, FetchResult, Filter, IdPage, In, Not, Or, Range, Repository, SCHEMA_VERSION, StoredPassage, TokenBatch
    from .repositories import connect
    from .maxsim import MaxSimScores, PackedPassages, granular_maxsim, pack, pack_concatenated, passage_scores, unit_scores
    from .documents import Document, PassageInput
    from .chunking import ChunkingOptions
    from .indexer import IndexJob, IndexProgress, IndexSummary, RetryPolicy, index_documents
    from .planner import Planner, SearchResponse, SearchResult, Timings, TokenCache, TokenMatch
    from .cite import Citation, CitedAnswer, CitedSentence, Source
    from .evaluation import EvalDataset, EvalQuery, evaluate, read_dataset
