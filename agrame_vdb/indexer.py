"""Indexing jobs: documents in, encoded passages with their units out, into any repository.

>>> from agrame_vdb import connect, index_documents
>>> repo = connect("memory://")
>>> summary = index_documents(                                    # doctest: +SKIP
...     "corpus.jsonl", repo, "docs", checkpoint="docs.checkpoint.json", dtype="bfloat16")
>>> summary.passages_written, summary.rejected                   # doctest: +SKIP
(5217, 0)

A job reads records (:mod:`agrame_vdb.documents`), checks each, cuts it into
passages with their units (:mod:`agrame_vdb.chunking`), encodes passages in
batches (:mod:`agrame_vdb.encoder`; CUDA when present) and writes them
(:mod:`agrame_vdb.repository`). The job runs here; a batch's encoding and its
records are :mod:`agrame_vdb.index_batch`, the shards and default paths
:mod:`agrame_vdb.shards`, the progress and summary :mod:`agrame_vdb.index_report`
(all importable from here). What it guarantees:

- **Idempotent.** Passage ids come from (document id, passage index), so a
  rewrite overwrites. After a document's passages are written, its passages with
  an index at or past its new passage count are deleted: re-indexing a changed or
  shrunk document leaves exactly its new passages. A document id seen twice in
  one input ends as its last record. (A document that disappears from the input
  is not deleted: use ``repository.delete_by_doc_id``.)
- **Resumable.** With a checkpoint (:mod:`agrame_vdb.jobstate`), every
  ``batch_size`` passages are written and then the checkpoint is replaced
  atomically; a job killed at any moment and run again with the same arguments
  resumes after the last checkpoint and ends with the collection, summary and
  rejects file of a clean run. Other arguments or another input are refused
  (:class:`~agrame_vdb.errors.CheckpointMismatchError`) unless ``restart``.
- **Shardable.** ``shard=(i, n)`` keeps the documents whose id hashes to ``i``
  mod ``n`` (BLAKE2b of the id, the same in every process), so ``n`` workers with
  their own checkpoints index one input together (a Kubernetes Indexed Job:
  ``--shard env/N`` reads ``JOB_COMPLETION_INDEX``; docs/cluster.md). Records
  without a readable id belong to shard 0. Embedded engines take one writer
  process, so shards sharing a store need a server (or run one after another).
- **Bad records do not stop it.** Records that are not UTF-8 or JSON, lack an id
  or text, have units outside their text, wrong types or unknown fields go to the
  rejects file (JSON Lines: ``{"line": n, "id": ... or null, "reason": ...}``)
  and are counted. A rejected record leaves what the collection held for its id
  untouched.
- **Retried writes.** Repository calls that fail with
  :class:`~agrame_vdb.errors.TransientRepositoryError` are retried with
  exponential backoff (:class:`RetryPolicy`); when the store stays away, or fails
  otherwise mid-job, the job stops with
  :class:`~agrame_vdb.errors.JobInterruptedError`, whose message says how to
  resume; the checkpoint stays valid.
- **Overlapped on a GPU.** With ``overlap`` (default on a GPU) a batch is written on
  one writer thread while the next is encoded (``index_batch.BatchWriter``); its
  checkpoint is saved once it is written, with the counts, position and rejects size
  of when it was handed over, so the guarantees above hold unchanged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

from .chunking import Chunk, Chunker, ChunkingOptions
from .documents import SourceRecord, container_of, read_documents, records_from_iterable
from .errors import (
    CheckpointMismatchError,
    CollectionNotFoundError,
    InvalidInputError,
    JobInterruptedError,
    RepositoryError,
    TransientRepositoryError,
)
from .checkpoints import load_tokenizer, model_identity as _model_identity
from .jobstate import JobCheckpoint, file_fingerprint, job_differences
from .layout import special_tokens
from .lexical import LexicalSpec
from .pooling import check_factor
from .redact import redact_url
from .rejects import RejectsFile as _Rejects
from .repository import CollectionSchema, validate_metadata
from .schema import DEFAULT_STORAGE
from .index_batch import GPU_TOKEN_BUDGET, BatchWriter, EncodedBatch, HandedOver, build_records, encode_chunks, stale_passages
from .index_report import IndexProgress, IndexSummary, JobCounts
from .shards import default_job_paths, parse_shard, shard_of

__all__ = [
    "RetryPolicy",
    "IndexProgress",
    "IndexSummary",
    "IndexJob",
    "index_documents",
    "shard_of",
    "parse_shard",
    "default_job_paths",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff for transient repository failures.

    ``attempts`` tries in all; waits of ``initial`` seconds doubling up to
    ``maximum`` (plus up to ``initial`` of jitter). The defaults wait about a
    minute in all before giving up.
    """

    attempts: int = 8
    initial: float = 0.5
    maximum: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise InvalidInputError(f"retry attempts must be an int >= 1, got {self.attempts!r}")
        if not self.initial >= 0 or not self.maximum >= self.initial:
            raise InvalidInputError(f"retry waits need 0 <= initial <= maximum, got {self.initial}, {self.maximum}")


@dataclass(slots=True)
class _PendingDoc:
    line: int
    doc_id: str
    chunks: list[Chunk]


class IndexJob:
    """One indexing job; :meth:`run` does it and returns an :class:`IndexSummary`.

    ``source``: a JSON Lines or Parquet file (see :mod:`agrame_vdb.documents`), or
    an iterable of :class:`~agrame_vdb.documents.Document` / JSON records (no
    checkpoint then). ``repository``: any :class:`~agrame_vdb.repository.Repository`
    (None for a dry run). ``encoder``: a loaded encoder, else one is loaded from
    ``model`` (default: the shipped model) on ``device`` in ``dtype``.

    ``batch_size`` passages are written, then checkpointed, at a time;
    ``encode_batch_size`` are encoded at a time (sorted by length), or, with
    ``encode_token_budget``, as many as fit that many padded tokens (at most
    ``encode_batch_size``; on a GPU :data:`GPU_TOKEN_BUDGET` by default). ``overlap`` (default: when the encoder is on a GPU) writes
    a batch on a second thread while the next one is encoded; a batch's checkpoint is
    still saved only once its passages are written. ``checkpoint``:
    the checkpoint file (None: none is kept); ``rejects``: the rejects file (None:
    only a sample is kept in the summary). ``restart`` ignores an existing
    checkpoint. ``dry_run`` reads, checks and chunks every record, writes nothing,
    and loads only the tokenizer. ``storage_dtype``, ``on_disk`` and
    ``indexed_fields`` shape the collection when it is created (``storage_dtype``
    None: an existing collection's own, :data:`~agrame_vdb.schema.DEFAULT_STORAGE`,
    float16, for a new one). ``token_pooling``
    (an int >= 1; 1, the default: none) pools each passage's token rows by that factor
    within its units before they are written (:mod:`agrame_vdb.pooling`; the pooled
    first-stage vector stays the mean of the original tokens); the collection records
    the factor, and one made with another factor is refused. ``optimize`` asks
    the engine to build its indexes at the end. ``store`` names the store in the
    job description (a URL; default the engine's name). ``on_progress`` is
    called with an :class:`IndexProgress` after each encoded batch.
    """

    def __init__(
        self,
        source: str | Path | Iterable[Any],
        repository: Any,
        collection: str,
        *,
        encoder: Any = None,
        model: str | Path | None = None,
        device: str = "auto",
        dtype: str = "float32",
        format: str = "auto",
        chunking: ChunkingOptions | None = None,
        batch_size: int = 256,
        encode_batch_size: int = 32,
        encode_token_budget: int | None = None,
        overlap: bool | None = None,
        shard: str | tuple[int, int] = (0, 1),
        checkpoint: str | Path | None = None,
        rejects: str | Path | None = None,
        restart: bool = False,
        dry_run: bool = False,
        retry: RetryPolicy | None = None,
        storage_dtype: str | None = None,
        on_disk: bool = False,
        indexed_fields: dict[str, str] | None = None,
        lexical: bool | LexicalSpec = True,
        token_pooling: int = 1,
        optimize: bool = True,
        store: str | None = None,
        on_progress: Callable[[IndexProgress], None] | None = None,
    ) -> None:
        if not isinstance(lexical, (bool, LexicalSpec)):
            raise InvalidInputError(f"lexical must be True, False or a LexicalSpec, got {lexical!r}")
        self.lexical = lexical
        self.token_pooling = check_factor(token_pooling)
        self.is_file = isinstance(source, (str, os.PathLike))
        self.source = Path(source) if self.is_file else source  # type: ignore[arg-type]
        if self.is_file:
            if not self.source.is_file():  # type: ignore[union-attr]
                raise InvalidInputError(f"input file {self.source} does not exist or is not a file")
            container_of(self.source, format)  # type: ignore[arg-type]
        elif checkpoint is not None:
            raise InvalidInputError("a checkpoint needs a file source (an iterable cannot be read again from a position)")
        if repository is None and not dry_run:
            raise InvalidInputError("a repository is needed unless dry_run=True")
        if encode_token_budget is not None and (not isinstance(encode_token_budget, int) or isinstance(encode_token_budget, bool)
                                                or encode_token_budget < 1):
            raise InvalidInputError(f"encode_token_budget must be an int >= 1 or None, got {encode_token_budget!r}")
        for name, value in (("batch_size", batch_size), ("encode_batch_size", encode_batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"{name} must be an int >= 1, got {value!r}")
        # fail fast on a bad collection name, storage dtype or indexed fields: before a model loads
        CollectionSchema(collection, dim=1, dtype=storage_dtype or DEFAULT_STORAGE, on_disk=on_disk,
                         indexed_fields=indexed_fields or {})
        self.repository = repository
        self.collection = collection
        self.encoder = encoder
        self.model = model
        self.device = device
        if str(dtype).lower() == "auto":  # made concrete: the job's checkpoint names what it encodes in
            from .checkpoints import dtype_name
            from .encoder import resolve_device

            dtype = dtype_name("auto", resolve_device(device))
        self.dtype = dtype
        self.format = format
        self.chunking = chunking or ChunkingOptions()
        self.batch_size = batch_size
        self.encode_batch_size = encode_batch_size
        self.encode_token_budget = encode_token_budget
        self.overlap = overlap
        self.shard = parse_shard(shard)
        self.checkpoint_path = Path(checkpoint) if checkpoint is not None and not dry_run else None
        self.rejects_path = Path(rejects) if rejects is not None else None
        self.restart = restart
        self.dry_run = dry_run
        self.retry = retry or RetryPolicy()
        self.storage_dtype = storage_dtype
        self.on_disk = on_disk
        self.indexed_fields = dict(indexed_fields or {})
        self.optimize = optimize
        self.store = redact_url(store) if store else store  # shown and kept: never its credentials
        self.on_progress = on_progress
        self._sleep: Callable[[float], None] = time.sleep
        self._reset()

    def _reset(self) -> None:
        self._counts = JobCounts()
        self._run = JobCounts()
        self._times = {"setup": 0.0, "read": 0.0, "encode": 0.0, "write": 0.0, "checkpoint": 0.0, "optimize": 0.0}
        self._started = 0.0
        self._position = 0
        self._committed = 0  # input position of the last batch written
        self._batch_passages = 0  # passages in the batch being encoded
        self._line = 0
        self._total: int | None = None
        self._last_id: str | None = None
        self._resumed_after = 0
        self._encoded_pending = 0
        self._checkpointed_line = 0
        self._writer = BatchWriter(self._write, overlap=False)
        self._token_budget: int | None = None
        self._rejects_sample: tuple[dict[str, Any], ...] = ()

    # ----------------------------------------------------------------- helpers
    def _store_name(self) -> str:
        if self.store:
            return self.store
        try:
            return str(self.repository.capabilities().engine)
        except Exception:
            return type(self.repository).__name__

    def _describe(self, fingerprint: dict[str, Any]) -> dict[str, Any]:
        container, schema = container_of(self.source, self.format)  # type: ignore[arg-type]
        return {
            "input": fingerprint,
            "format": {"container": container, "records": schema},
            "collection": self.collection,
            "store": self._store_name(),
            "shard": list(self.shard),
            "model": _model_identity(self.encoder, self.model, self.dtype),
            "chunking": self.chunking.to_json(),
            # in the job's identity only when set: the checkpoints of jobs without it still match
            **({"token_pooling": self.token_pooling} if self.token_pooling > 1 else {}),
        }

    def _resume_hint(self) -> str:
        if self.checkpoint_path is None:
            return "this job keeps no checkpoint: run it again from the start (writes are idempotent overwrites)"
        return (
            f"the checkpoint {self.checkpoint_path} records the first {self._checkpointed_line:,} records as done: "
            "run the same command again to resume after them"
        )

    def _storage(self) -> str:
        """The storage of the collection to create: as asked, else an existing
        collection's own (a job adding to it keeps it), else DEFAULT_STORAGE."""
        if self.storage_dtype is not None:
            return self.storage_dtype

        def existing() -> str:
            try:
                return str(self.repository.open_collection(self.collection).dtype)
            except CollectionNotFoundError:
                return DEFAULT_STORAGE

        return str(self._call("open the collection", existing, setup=True))

    def _call(self, op: str, fn: Callable[..., Any], *args: Any, setup: bool = False, **kwargs: Any) -> Any:
        """``fn(*args)`` retried on TransientRepositoryError; a failure that stays
        becomes JobInterruptedError (``setup``: only transient ones do)."""
        policy = self.retry

        def before_sleep(state: Any) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s failed (attempt %d of %d): %s; retrying", op, state.attempt_number, policy.attempts, exc)

        retrying = Retrying(
            stop=stop_after_attempt(policy.attempts),
            wait=wait_exponential(multiplier=policy.initial, max=policy.maximum) + wait_random(0, policy.initial),
            retry=retry_if_exception_type(TransientRepositoryError),
            reraise=True,
            before_sleep=before_sleep,
            sleep=self._sleep,
        )
        try:
            return retrying(fn, *args, **kwargs)
        except TransientRepositoryError as exc:
            raise JobInterruptedError(
                f"the repository stayed unavailable: {op} failed {policy.attempts} times ({exc}); {self._resume_hint()}",
                self.checkpoint_path,
            ) from exc
        except RepositoryError as exc:
            if setup or isinstance(exc, JobInterruptedError):
                raise
            raise JobInterruptedError(f"{op} failed: {exc}; {self._resume_hint()}", self.checkpoint_path) from exc

    def _has(self, passage: str) -> bool:
        """Whether the collection holds ``passage`` (False when there is no collection)."""
        try:
            found = self._call("check the checkpoint", self.repository.fetch, self.collection, [passage], setup=True)
        except CollectionNotFoundError:
            return False
        return not found.missing

    def _progress(self) -> None:
        if self.on_progress is None:
            return
        c = self._counts
        fraction = None
        if self._total:  # input written, plus the encoded share of the batch in flight
            done = self._committed / self._total
            flight = (self._position - self._committed) / self._total
            if self._batch_passages:
                done += flight * min(1.0, self._encoded_pending / self._batch_passages)
            fraction = min(1.0, done)
        self.on_progress(
            IndexProgress(c.records, c.documents, c.passages, c.passages + self._writer.writing() + self._encoded_pending, c.rejected,
                          c.skipped, self._run.tokens,
                          time.perf_counter() - self._started, fraction)
        )

    # --------------------------------------------------------------------- run
    def _lexical_spec(self) -> LexicalSpec | None:
        """The new collection's lexical vectors: the given spec, the default one where the
        engine has lexical search (``lexical=True``), or none."""
        if isinstance(self.lexical, LexicalSpec):
            return self.lexical
        return LexicalSpec() if self.lexical and self.repository.capabilities().lexical else None

    def run(self) -> IndexSummary:
        """Do the job (resuming from its checkpoint when there is one); its summary."""
        self._reset()
        self._started = time.perf_counter()
        previous: JobCheckpoint | None = None
        job: dict[str, Any] | None = None
        if self.checkpoint_path is not None:
            previous = None if self.restart else JobCheckpoint.load(self.checkpoint_path)
            job = self._describe(file_fingerprint(self.source))  # type: ignore[arg-type]
            if previous is not None and redact_url(previous.job.get("store")) != previous.job.get("store"):
                # written before stores were redacted: compare (and keep) it without its credentials
                previous.job["store"] = redact_url(previous.job["store"])
                previous.save(self.checkpoint_path)
            if previous is not None:
                diffs = job_differences(previous.job, job)
                if diffs and previous.done:
                    log.info("the input or arguments changed since the finished job in %s; indexing from the start",
                             self.checkpoint_path)
                    previous = None
                elif diffs:
                    raise CheckpointMismatchError(
                        f"the checkpoint {self.checkpoint_path} belongs to an unfinished job with other input or "
                        f"arguments ({'; '.join(diffs[:6])}); run with the same arguments to resume it, or "
                        "restart to index from the beginning"
                    )
                if not diffs and previous.position > (end := self._input_extent()):
                    raise CheckpointMismatchError(
                        f"the job checkpoint {self.checkpoint_path} is invalid: field 'position': "
                        f"{previous.position} lies past the end of the input ({end}); "
                        "delete it or start over with --restart"
                    )
        if previous is not None and previous.last_passage_id is not None and not self._has(previous.last_passage_id):
            log.warning(
                "the checkpoint %s records passage %s as written, but collection %r lacks it (the store was "
                "reset?): indexing from the start", self.checkpoint_path, previous.last_passage_id, self.collection,
            )
            previous = None
        if previous is not None:
            self._counts = JobCounts(**{k: int(previous.counts.get(k, 0)) for k in asdict(JobCounts())})
            self._position, self._line = previous.position, previous.line
            self._committed = previous.position
            self._last_id = previous.last_passage_id
            self._resumed_after = self._checkpointed_line = previous.line
            if previous.done:
                self._times["setup"] = time.perf_counter() - self._started
                return self._summary(already_done=True, rejects=previous.rejects_path)
        if self.dry_run:
            tokenizer, config = (
                (self.encoder.tokenizer, self.encoder.config) if self.encoder is not None else load_tokenizer(self.model)
            )
        else:
            if self.encoder is None:
                from .encoder import MultiVectorEncoder

                self.encoder = MultiVectorEncoder.load(self.model, device=self.device, dtype=self.dtype)
            tokenizer, config = self.encoder.tokenizer, self.encoder.config
            schema = CollectionSchema(
                self.collection, dim=int(self.encoder.dim), dtype=self._storage(), on_disk=self.on_disk,
                indexed_fields=self.indexed_fields, lexical=self._lexical_spec(),
                token_pooling=self.token_pooling,
            )
            self._call("create the collection", self.repository.create_collection, schema, setup=True)
        chunker = Chunker(tokenizer, config.doc_maxlen, self.chunking, special_tokens=special_tokens(config))
        self._special_tokens = chunker.special_tokens
        self._times["setup"] = time.perf_counter() - self._started
        same_rejects = previous is not None and previous.rejects_path == (str(self.rejects_path) if self.rejects_path else None)
        rejects = _Rejects(self.rejects_path, previous.rejects_bytes if same_rejects and previous is not None else None)
        self._state = JobCheckpoint(job or {}, rejects_path=str(self.rejects_path) if self.rejects_path else None)
        on_gpu = getattr(getattr(self.encoder, "device", None), "type", "cpu") == "cuda"
        overlap = on_gpu if self.overlap is None else self.overlap  # a GPU encodes faster than most stores write
        self._token_budget = self.encode_token_budget
        if self._token_budget is None and on_gpu:  # a GPU wants full batches of similar lengths
            self._token_budget = GPU_TOKEN_BUDGET
        self._writer = BatchWriter(self._write, overlap=overlap and not self.dry_run)
        try:
            try:
                self._loop(self._records(), chunker, rejects)
                self._finish_write(rejects)
            except BaseException:
                self._finish_write(rejects, quietly=True)  # what is written by now keeps its checkpoint
                raise
            finally:
                self._writer.close()
            if not self.dry_run and self.optimize:
                t = time.perf_counter()
                try:
                    self._call("optimize the collection", self.repository.optimize, self.collection)
                except JobInterruptedError as exc:
                    log.warning("the passages are written, but building the collection's indexes failed: %s", exc)
                self._times["optimize"] += time.perf_counter() - t
            self._save_checkpoint(rejects, done=True)
        finally:
            rejects.close()
        self._rejects_sample = tuple(rejects.sample)
        return self._summary(rejects=str(self.rejects_path) if rejects.path else None)

    def _input_extent(self) -> int:
        """Where the input file ends, in positions: its rows (Parquet) or bytes (JSON Lines)."""
        container, _ = container_of(self.source, self.format)  # type: ignore[arg-type]
        if container == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(str(self.source)).metadata.num_rows)
        return int(self.source.stat().st_size)  # type: ignore[union-attr]

    def _records(self) -> Iterator[SourceRecord]:
        if self.is_file:
            self._total = self._input_extent()
            return read_documents(self.source, format=self.format, start=self._position, start_line=self._line)  # type: ignore[arg-type]
        return records_from_iterable(self.source, format=self.format, start=self._position)  # type: ignore[arg-type]

    def _loop(self, records: Iterator[SourceRecord], chunker: Chunker, rejects: _Rejects) -> None:
        pending: list[_PendingDoc] = []
        pending_ids: set[str] = set()
        n_pending = 0
        mine, shards = self.shard
        t = time.perf_counter()
        for rec in records:
            self._counts.records += 1
            doc = rec.document
            doc_id = doc.id if doc is not None else rec.doc_id
            owner = shard_of(doc_id, shards) if doc_id is not None else 0  # an unreadable id: shard 0 reports it
            if owner != mine:
                self._counts.skipped += 1
            elif doc is None:
                self._reject(rejects, rec.line, rec.doc_id, rec.error or "unreadable record")
            else:
                try:
                    chunks = chunker.chunk(doc)
                    for c in chunks:
                        validate_metadata(c.metadata, f"{doc.id}/{c.index}")
                except InvalidInputError as exc:
                    self._reject(rejects, rec.line, doc.id, str(exc))
                else:
                    if doc.id in pending_ids:  # the later record wins: write the earlier one first
                        self._times["read"] += time.perf_counter() - t
                        self._flush(pending, rejects)
                        t = time.perf_counter()
                        pending, pending_ids, n_pending = [], set(), 0
                    pending.append(_PendingDoc(rec.line, doc.id, chunks))
                    pending_ids.add(doc.id)
                    n_pending += len(chunks)
            self._position, self._line = rec.position, rec.line
            if n_pending >= self.batch_size:
                self._times["read"] += time.perf_counter() - t
                self._flush(pending, rejects)
                t = time.perf_counter()
                pending, pending_ids, n_pending = [], set(), 0
        self._times["read"] += time.perf_counter() - t
        self._flush(pending, rejects)

    def _reject(self, rejects: _Rejects, line: int, doc_id: str | None, reason: str) -> None:
        self._counts.rejected += 1
        rejects.add(line, doc_id, reason)

    # ------------------------------------------------------------------- flush
    def _encoded(self, passages: int, tokens: int) -> None:
        """After each encoded batch: what it held, then progress."""
        self._encoded_pending += passages
        self._run.tokens += tokens
        self._progress()

    def _flush(self, pending: list[_PendingDoc], rejects: _Rejects) -> None:
        """Encode ``pending`` and hand its records to the writer (this thread, or the
        writer thread with ``overlap``: then the batch before is written meanwhile)."""
        batch: EncodedBatch | None = None
        if pending and self.dry_run:  # what would be written
            for c in (self._counts, self._run):
                c.documents += len(pending)
                c.passages += sum(len(d.chunks) for d in pending)
                c.tokens += sum(ch.n_tokens + self._special_tokens for d in pending for ch in d.chunks)
        if pending and not self.dry_run:
            chunks = [c for d in pending for c in d.chunks]
            self._batch_passages = len(chunks)
            t = time.perf_counter()
            encoded, failed = encode_chunks(self.encoder, chunks, self.encode_batch_size, self._encoded,
                                            token_budget=self._token_budget)
            self._times["encode"] += time.perf_counter() - t
            for d in pending:
                if d.doc_id in failed:
                    self._reject(rejects, d.line, d.doc_id, failed[d.doc_id])
            batch = build_records([(d.doc_id, d.chunks) for d in pending], encoded, failed,
                                  token_pooling=self.token_pooling)
        self._finish_write(rejects)  # the batch before this one: written, then its checkpoint
        # what the checkpoint of this batch will say, taken before anything past it is read
        handed = HandedOver(batch, replace(self._counts), self._position, self._line, rejects.sync())
        self._encoded_pending = self._batch_passages = 0
        if batch is None or not batch.stored and not batch.counts:
            self._commit(handed, rejects)
        elif (written := self._writer.hand_over(handed)) is not None:
            self._commit(written, rejects)
        else:
            self._progress()

    def _write(self, batch: EncodedBatch) -> int:
        """Write a batch's passages and delete its documents' stale ones; returns how many were deleted."""
        t = time.perf_counter()
        if batch.stored:
            self._call("write passages", self.repository.upsert, self.collection, batch.stored)
        stale = 0
        for where in stale_passages(batch.counts):
            stale += self._call("delete stale passages", self.repository.delete_where, self.collection, where)
        self._times["write"] += time.perf_counter() - t
        return stale

    def _finish_write(self, rejects: _Rejects, *, quietly: bool = False) -> None:
        """The batch on the writer thread, once written: counted and checkpointed.
        ``quietly`` (the job is failing already): a write that failed is logged, not raised."""
        written = self._writer.finish(quietly=quietly)
        if written is not None:
            self._commit(written, rejects)

    def _commit(self, handed: HandedOver, rejects: _Rejects) -> None:
        """A written batch (or none): its counts into the job's and into its checkpoint's."""
        batch = handed.batch
        if batch is not None:  # (a dry run hands over none)
            for c in (self._counts, self._run, handed.counts):
                c.documents += len(batch.counts)
                c.passages += len(batch.stored)
            for c in (self._counts, handed.counts):
                c.tokens += batch.tokens
                c.rows += batch.rows
                c.stale_deleted += handed.stale
                c.truncated_units += batch.truncated
            if batch.stored:
                self._last_id = batch.stored[-1].id
        self._committed = handed.position
        self._save_checkpoint(rejects, done=False, handed=handed)
        self._progress()

    def _save_checkpoint(self, rejects: _Rejects, *, done: bool, handed: HandedOver | None = None) -> None:
        """Save the checkpoint: of ``handed`` (a written batch: its position, counts and
        rejects size as they were when it was handed over), else of the job as it is."""
        t = time.perf_counter()
        size = rejects.sync() if handed is None else handed.rejects_bytes
        position, line = (self._position, self._line) if handed is None else (handed.position, handed.line)
        counts = self._counts if handed is None else handed.counts
        if self.checkpoint_path is not None:
            state = self._state
            state.position, state.line = position, line
            state.counts = asdict(counts)
            state.rejects_bytes = size
            state.last_passage_id = self._last_id
            state.done = done
            state.save(self.checkpoint_path)
            self._checkpointed_line = line
        self._times["checkpoint"] += time.perf_counter() - t

    def _summary(self, *, already_done: bool = False, rejects: str | None = None) -> IndexSummary:
        c, r, times = self._counts, self._run, self._times
        encoder = self.encoder
        return IndexSummary(
            collection=self.collection,
            source=str(self.source) if self.is_file else "<iterable>",
            records=c.records, documents=c.documents, passages=c.passages, skipped=c.skipped,
            rejected=c.rejected, stale_deleted=c.stale_deleted, tokens=c.tokens, truncated_units=c.truncated_units,
            rows=c.rows, token_pooling=self.token_pooling,
            run_documents=r.documents, run_passages=r.passages, run_tokens=r.tokens,
            seconds=time.perf_counter() - self._started, seconds_setup=times["setup"],
            seconds_read=times["read"], seconds_encode=times["encode"], seconds_write=times["write"],
            seconds_checkpoint=times["checkpoint"], seconds_optimize=times["optimize"],
            resumed_after=self._resumed_after, already_done=already_done, dry_run=self.dry_run,
            shard=self.shard, store=self.store,
            checkpoint=str(self.checkpoint_path) if self.checkpoint_path else None,
            rejects=rejects, rejects_sample=self._rejects_sample,
            device=str(getattr(encoder, "device", "")) or None if encoder is not None and not self.dry_run else None,
            dtype=str(getattr(encoder, "dtype", "")).removeprefix("torch.") or None
            if encoder is not None and not self.dry_run else None,
        )


def index_documents(
    source: str | Path | Iterable[Any], repository: Any, collection: str, **options: Any
) -> IndexSummary:
    """Run an :class:`IndexJob` (same arguments) and return its summary."""
    return IndexJob(source, repository, collection, **options).run()

