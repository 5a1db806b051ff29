"""The repository protocols: :class:`Repository`, the seam every engine implements,
and :class:`MigratableRepository`, what migrations need of one besides.

Everything above (indexer, planner, CLI, migrations) types a store with these;
engines implement them by subclassing
:class:`~agrame_vdb.repositories.base.RepositoryBase`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from .filters import Filter
from .records import Candidate, Capabilities, FetchResult, IdPage, StoredPassage, TokenBatch
from .schema import CollectionSchema

__all__ = ["Repository", "MigratableRepository"]


@runtime_checkable
class Repository(Protocol):
    """A vector store of passages: the seam every engine implements.

    Collections are created or opened from a :class:`CollectionSchema`; every other
    call names the collection, or an alias of it (blue/green re-indexing switches
    an alias from one collection to its successor in one atomic step). Writes are idempotent by id. All inputs are checked
    before the engine sees them (InvalidInputError children); engine failures come
    out as RepositoryError children.
    """

    def capabilities(self) -> Capabilities:
        """What this engine can do."""
        ...

    def create_collection(self, schema: CollectionSchema) -> CollectionSchema:
        """Create the collection, or open it when it exists with the same dim, dtype and
        schema version (else SchemaMismatchError); new ``indexed_fields`` are added.
        Returns the stored schema."""
        ...

    def open_collection(self, name: str) -> CollectionSchema:
        """The stored schema of an existing collection (CollectionNotFoundError if none)."""
        ...

    def list_collections(self) -> list[str]:
        """Names of the collections this repository holds, sorted."""
        ...

    def drop_collection(self, name: str) -> bool:
        """Delete a collection and its data; False when it did not exist."""
        ...

    def upsert(self, collection: str, passages: Sequence[StoredPassage]) -> int:
        """Write passages, overwriting any with the same id; returns how many.
        All are checked before any is written: one bad passage writes nothing."""
        ...

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        """Delete passages by id; unknown ids are ignored."""
        ...

    def delete_by_doc_id(self, collection: str, doc_ids: str | Sequence[str]) -> int:
        """Delete every passage of the given document(s); returns how many there were."""
        ...

    def delete_where(self, collection: str, filter: Filter) -> int:
        """Delete every passage the filter matches; returns how many there were."""
        ...

    def count(self, collection: str, filter: Filter | None = None) -> int:
        """Exact number of passages (matching ``filter``)."""
        ...

    def candidates(
        self,
        collection: str,
        pooled: np.ndarray,
        *,
        tokens: np.ndarray | None = None,
        limit: int = 100,
        prefetch: int | None = None,
        filter: Filter | None = None,
        with_versions: bool = False,
    ) -> list[Candidate]:
        """First-stage candidates, best first.

        Without ``tokens``: the ``limit`` passages whose pooled vectors are most
        cosine-similar to ``pooled`` [dim]. With ``tokens`` [Lq, dim]: the top
        ``prefetch`` (default ``max(2*limit, 100)``) by pooled vector, reranked by
        the engine's MaxSim ``sum_i max_j q_i . d_j`` and cut to ``limit``
        (UnsupportedOperationError when ``capabilities().maxsim_rerank`` is False).
        ``with_versions`` asks for each hit's write version (``Candidate.version``)
        where the engine has it (``capabilities().versions``); it may cost a little.
        """
        ...

    def lexical_candidates(
        self,
        collection: str,
        text: str,
        *,
        limit: int = 100,
        filter: Filter | None = None,
        with_versions: bool = False,
    ) -> list[Candidate]:
        """Lexical first-stage candidates, best first: the ``limit`` passages with the
        highest BM25 score for ``text``, tokenised as the collection's
        :class:`~agrame_vdb.lexical.LexicalSpec` says (only passages sharing a word
        with it; none when it has no word). IDF is over the whole collection, not the
        filtered part. LexicalUnavailableError (naming the migration) when the
        collection has no lexical vectors; UnsupportedOperationError when the engine
        has none (``capabilities().lexical``)."""
        ...

    def hybrid_candidates(
        self,
        collection: str,
        pooled: np.ndarray,
        text: str,
        *,
        limit: int = 100,
        dense_limit: int | None = None,
        lexical_limit: int | None = None,
        rrf_k: int = 60,
        filter: Filter | None = None,
        with_versions: bool = False,
    ) -> list[Candidate]:
        """Hybrid first-stage candidates: the pooled top ``dense_limit`` and the lexical
        top ``lexical_limit`` (both default to ``limit``; ``filter`` applies to both)
        fused by reciprocal rank fusion (:func:`agrame_vdb.fusion.rrf`, rank constant
        ``rrf_k``), cut to ``limit``; ``stage`` ``"hybrid"``, the fused score. In the
        engine where it fuses (``capabilities().hybrid_in_engine``), else in the library.
        Errors as :meth:`lexical_candidates`."""
        ...

    def fetch_tokens(
        self, collection: str, ids: Sequence[str], *, versions: Sequence[int | str | None] | None = None
    ) -> TokenBatch:
        """Token vectors, units and write versions of ``ids`` (found ones once each, in
        the order first asked; the others in ``missing``): the lean read for scoring,
        with no text, metadata or pooled vector (use :meth:`fetch` for those).

        ``versions`` (one per id, None where unknown) are versions the caller has just
        seen, e.g. ``Candidate.version``: an engine may then read a passage at that
        version from a copy it keeps (Qdrant Edge's side store) without asking for
        the current one. The batch is then a snapshot as of those versions, and
        ``versions`` reports what was read; engines without such a copy ignore them.
        """
        ...

    def fetch(self, collection: str, ids: Sequence[str], *, strict: bool = False) -> FetchResult:
        """Token vectors, pooled vector, units, text and metadata of ``ids``, in that
        order; ids not found are listed in ``missing`` (MissingPassagesError when
        ``strict``)."""
        ...

    def list_ids(
        self, collection: str, *, filter: Filter | None = None, limit: int = 1000, offset: str | None = None
    ) -> IdPage:
        """One page of ids in id order, from ``offset`` (inclusive) on."""
        ...

    def optimize(self, collection: str) -> None:
        """Build indexes and compact now (after a bulk write); a no-op where the
        engine does it by itself."""
        ...

    def create_alias(self, alias: str, collection: str) -> None:
        """Make ``alias`` stand for ``collection``: every call that takes a collection
        name takes the alias too (``drop_collection`` excepted). AliasError when the
        alias exists or a collection has that name."""
        ...

    def switch_alias(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection`` atomically (creating it when missing);
        returns the collection it pointed at before, or None."""
        ...

    def delete_alias(self, alias: str) -> bool:
        """Remove an alias, never its collection; False when there was none."""
        ...

    def resolve(self, name: str) -> str:
        """The collection an alias points at, or ``name`` when it is a collection
        (CollectionNotFoundError when it is neither)."""
        ...

    def list_aliases(self) -> dict[str, str]:
        """Every alias of the store and its collection."""
        ...

    def close(self) -> None:
        """Release files, locks and connections; the repository is unusable after."""
        ...


@runtime_checkable
class MigratableRepository(Repository, Protocol):
    """A :class:`Repository` that migrations can drive: it rewrites a collection's
    schema record, writes passages at the version a migration moves to, and walks
    every id. Every engine's repository is one:
    :class:`~agrame_vdb.repositories.base.RepositoryBase` has these methods."""

    def update_schema(self, schema: CollectionSchema) -> CollectionSchema:
        """Store a new schema record for an existing collection (its own name, not an
        alias): only ``schema_version``, ``indexed_fields`` (new ones get indexes) and
        ``model`` may change. Returns the stored schema."""
        ...

    def upsert_at_version(
        self, collection: str, passages: Sequence[StoredPassage], versions: Sequence[int], *, batch_size: int | None = None
    ) -> int:
        """Upsert passages whose schema version is one of ``versions`` (a migration
        writes at the version it migrates to before the collection's record says
        so); every other check of :meth:`Repository.upsert` applies."""
        ...

    def iter_id_pages(
        self, collection: str, *, filter: Filter | None = None, page: int = 1000, start: str | None = None
    ) -> Iterator[IdPage]:
        """Every page of ids (matching ``filter``) in id order, from ``start`` (inclusive)
        on: each page's ``next_offset`` is where the next one starts (None on the last)."""
        ...

    def iter_ids(self, collection: str, *, filter: Filter | None = None, page: int = 1000) -> Iterator[str]:
        """Every id (matching ``filter``) in id order, read ``page`` at a time."""
        ...
