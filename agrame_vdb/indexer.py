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
(:mod:`agrame_vdb.repository`). What it guarantees:

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
  their own checkpoints index one input together (a Kubernetes indexed job:
  ``--shard $JOB_COMPLETION_INDEX/N``). Records without a readable id belong to
  shard 0. Embedded engines take one writer process, so shards sharing a store
  need a server (or run one after another).
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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
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
from .jobstate import JobCheckpoint, file_fingerprint, job_differences, private_opener
from .layout import special_tokens
from .redact import redact_url
from .repository import And, CollectionSchema, In, Range, StoredPassage, validate_metadata
from .units import Passage

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


def shard_of(doc_id: str, shards: int) -> int:
    """The shard (``0 <= s < shards``) of a document id: BLAKE2b of its UTF-8, mod ``shards``.

    >>> shard_of("doc-1", 1), shard_of("doc-1", 4) == shard_of("doc-1", 4)
    (0, True)
    """
    if shards == 1:
        return 0
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def parse_shard(value: str | tuple[int, int]) -> tuple[int, int]:
    """``"i/N"`` (or ``(i, N)``) as ``(i, N)`` with ``0 <= i < N``.

    >>> parse_shard("2/8")
    (2, 8)
    """
    try:
        if isinstance(value, str):
            i_text, n_text = value.split("/")
            i, n = int(i_text), int(n_text)
        else:
            i, n = (int(x) for x in value)
    except (ValueError, TypeError):
        raise InvalidInputError(f"a shard is 'i/N' with 0 <= i < N (e.g. 0/4), got {value!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InvalidInputError(f"a shard is 'i/N' with 0 <= i < N (e.g. 0/4), got {value!r}")
    return i, n


def default_job_paths(
    store: str, collection: str, source: str | Path, shard: tuple[int, int] = (0, 1)
) -> tuple[Path | None, Path]:
    """Where the CLI keeps a job's checkpoint and rejects file by default.

    In ``<store root>/.agrame-jobs/`` for Qdrant Edge (the checkpoint lives and dies
    with the data it describes), else in ``./.agrame-jobs/``; no checkpoint for
    ``memory://`` (nothing outlives the process). The name holds the collection,
    the input's name and a hash of its absolute path, and the shard.
    """
    from .repositories import DEFAULT_EDGE_PATH, parse_url

    url = parse_url(store)
    root = Path(url.location or DEFAULT_EDGE_PATH) if url.scheme == "qdrant-edge" else Path(".")
    directory = root / ".agrame-jobs"
    src = Path(source)
    tag = hashlib.sha1(str(src.resolve()).encode("utf-8")).hexdigest()[:8]
    name = f"{collection}-{src.stem}-{tag}" + (f"-shard-{shard[0]}-of-{shard[1]}" if shard[1] > 1 else "")
    checkpoint = None if url.scheme == "memory" else directory / f"{name}.checkpoint.json"
    return checkpoint, directory / f"{name}.rejects.jsonl"


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


@dataclass(frozen=True, slots=True)
class IndexProgress:
    """A job's progress, reported to ``on_progress`` as it goes.

    Counts are the job's (a resumed job includes what was done before it):
    ``documents`` and ``passages`` written, ``encoded`` passages (written, and
    encoded in the batch being written); ``fraction`` is how much of the input was
    read (None for iterables).
    """

    records: int
    documents: int
    passages: int
    encoded: int
    rejected: int
    skipped: int
    run_tokens: int
    elapsed: float
    fraction: float | None

    @property
    def tokens_per_second(self) -> float:
        return self.run_tokens / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(slots=True)
class _Counts:
    records: int = 0
    documents: int = 0
    passages: int = 0
    skipped: int = 0
    rejected: int = 0
    stale_deleted: int = 0
    tokens: int = 0
    truncated_units: int = 0


@dataclass(frozen=True)
class IndexSummary:
    """What a job did. Counts cover the whole job (a resumed job includes what it
    did before the resume, so it ends with a clean run's counts); timings and the
    ``run_*`` counts cover this run only.

    - ``records``: records read, every shard's; ``skipped``: records of other shards.
    - ``documents``/``passages``: written; ``rejected``: records refused (see ``rejects``).
    - ``stale_deleted``: passages deleted because their document now has fewer.
    - ``tokens``: token vectors written; ``truncated_units``: units the model's
      length cut or dropped (pre-split passages longer than the model takes).
    - ``seconds_setup`` (checkpoint and input fingerprint, model load, collection),
      ``seconds_read`` (reading, checking, chunking), ``seconds_encode``,
      ``seconds_write`` (upserts and deletions, retries included),
      ``seconds_checkpoint``, ``seconds_optimize``; ``seconds`` in all.
    """

    collection: str
    source: str
    records: int = 0
    documents: int = 0
    passages: int = 0
    skipped: int = 0
    rejected: int = 0
    stale_deleted: int = 0
    tokens: int = 0
    truncated_units: int = 0
    run_documents: int = 0
    run_passages: int = 0
    run_tokens: int = 0
    seconds: float = 0.0
    seconds_setup: float = 0.0
    seconds_read: float = 0.0
    seconds_encode: float = 0.0
    seconds_write: float = 0.0
    seconds_checkpoint: float = 0.0
    seconds_optimize: float = 0.0
    resumed_after: int = 0
    already_done: bool = False
    dry_run: bool = False
    shard: tuple[int, int] = (0, 1)
    store: str | None = None
    checkpoint: str | None = None
    rejects: str | None = None
    rejects_sample: tuple[dict[str, Any], ...] = ()
    device: str | None = None
    dtype: str | None = None

    @property
    def working_seconds(self) -> float:
        """Seconds after setup (model load, input fingerprint, collection): what rates divide by."""
        return max(self.seconds - self.seconds_setup, 0.0)

    @property
    def documents_per_second(self) -> float:
        return self.run_documents / self.working_seconds if self.working_seconds > 0 else 0.0

    @property
    def passages_per_second(self) -> float:
        return self.run_passages / self.working_seconds if self.working_seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.run_tokens / self.working_seconds if self.working_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["shard"] = list(self.shard)
        out["rejects_sample"] = list(self.rejects_sample)
        out.update(
            documents_per_second=round(self.documents_per_second, 3),
            passages_per_second=round(self.passages_per_second, 3),
            tokens_per_second=round(self.tokens_per_second, 1),
        )
        return out

    def format(self) -> str:
        """The summary as a few readable lines."""
        verb = "checked (dry run)" if self.dry_run else "indexed"
        lines = [f"{verb} {self.source} -> collection {self.collection!r}" + (f" in {self.store}" if self.store else "")]
        if self.already_done:
            lines.append("  the checkpoint says this job is complete: nothing to do (--restart to index again)")
        shard = f" (shard {self.shard[0]}/{self.shard[1]})" if self.shard[1] > 1 else ""
        written = "would be written" if self.dry_run else "written"
        lines.append(
            f"  records: {self.records:,} read{shard}, {self.documents:,} documents {written}, "
            f"{self.skipped:,} skipped (other shards), {self.rejected:,} rejected"
        )
        lines.append(
            f"  passages: {self.passages:,} {written}, {self.stale_deleted:,} stale deleted, "
            f"{self.tokens:,} token vectors, {self.truncated_units:,} units truncated"
        )
        if self.resumed_after:
            lines.append(f"  resumed after record {self.resumed_after:,}; this run wrote {self.run_documents:,} "
                         f"documents, {self.run_passages:,} passages")
        if not self.already_done:
            lines.append(
                f"  time: {self.seconds:.1f} s = setup {self.seconds_setup:.1f} s, read+chunk {self.seconds_read:.1f} s, "
                f"encode {self.seconds_encode:.1f} s, "
                f"write {self.seconds_write:.1f} s, checkpoint {self.seconds_checkpoint:.1f} s, "
                f"optimize {self.seconds_optimize:.1f} s"
            )
            lines.append(
                f"  speed: {self.documents_per_second:.1f} documents/s, {self.passages_per_second:.1f} passages/s, "
                f"{self.tokens_per_second:,.0f} tokens/s after setup"
                + (f" ({self.device}, {self.dtype})" if self.device else "")
                + (f"; {self.run_documents / self.seconds:.1f} documents/s counting setup" if self.seconds > 0 else "")
            )
        if self.checkpoint:
            lines.append(f"  checkpoint: {self.checkpoint}")
        if self.rejected:
            lines.append(f"  rejects: {self.rejects or '(no rejects file)'}")
            for r in self.rejects_sample[:5]:
                lines.append(f"    line {r['line']} id {r['id']!r}: {r['reason']}")
        return "\n".join(lines)


class _Rejects:
    """The rejects file (JSON Lines), cut back to a checkpoint's size on resume."""

    SAMPLE = 20

    def __init__(self, path: Path | None, keep_bytes: int | None) -> None:
        self.path = path
        self.sample: list[dict[str, Any]] = []
        self._file = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_bytes is not None and path.exists() and path.stat().st_size < keep_bytes:
            log.warning("the rejects file %s is shorter than its checkpoint says; appending to it", path)
            self._file = path.open("ab")
        elif keep_bytes is not None and path.exists():
            self._file = path.open("r+b")
            self._file.truncate(keep_bytes)
            self._file.seek(keep_bytes)
        else:
            self._file = open(path, "wb", opener=private_opener)  # noqa: SIM115 - closed by close()
        if keep_bytes is not None:
            os.fchmod(self._file.fileno(), 0o600)  # one an older version created readable by all

    def add(self, line: int, doc_id: str | None, reason: str) -> None:
        row = {"line": line, "id": doc_id, "reason": reason}
        if len(self.sample) < self.SAMPLE:
            self.sample.append(row)
        if self._file is not None:
            self._file.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

    def sync(self) -> int:
        if self._file is None:
            return 0
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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
    ``encode_batch_size`` are encoded at a time (sorted by length). ``checkpoint``:
    the checkpoint file (None: none is kept); ``rejects``: the rejects file (None:
    only a sample is kept in the summary). ``restart`` ignores an existing
    checkpoint. ``dry_run`` reads, checks and chunks every record, writes nothing,
    and loads only the tokenizer. ``storage_dtype``, ``on_disk`` and
    ``indexed_fields`` shape the collection when it is created. ``optimize`` asks
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
        shard: str | tuple[int, int] = (0, 1),
        checkpoint: str | Path | None = None,
        rejects: str | Path | None = None,
        restart: bool = False,
        dry_run: bool = False,
        retry: RetryPolicy | None = None,
        storage_dtype: str = "float32",
        on_disk: bool = False,
        indexed_fields: dict[str, str] | None = None,
        optimize: bool = True,
        store: str | None = None,
        on_progress: Callable[[IndexProgress], None] | None = None,
    ) -> None:
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
        for name, value in (("batch_size", batch_size), ("encode_batch_size", encode_batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"{name} must be an int >= 1, got {value!r}")
        # fail fast on a bad collection name, storage dtype or indexed fields: before a model loads
        CollectionSchema(collection, dim=1, dtype=storage_dtype, on_disk=on_disk, indexed_fields=indexed_fields or {})
        self.repository = repository
        self.collection = collection
        self.encoder = encoder
        self.model = model
        self.device = device
        self.dtype = dtype
        self.format = format
        self.chunking = chunking or ChunkingOptions()
        self.batch_size = batch_size
        self.encode_batch_size = encode_batch_size
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
        self._counts = _Counts()
        self._run = _Counts()
        self._times = {"setup": 0.0, "read": 0.0, "encode": 0.0, "write": 0.0, "checkpoint": 0.0, "optimize": 0.0}
        self._started = 0.0
        self._position = 0
        self._line = 0
        self._total: int | None = None
        self._last_id: str | None = None
        self._resumed_after = 0
        self._encoded_pending = 0
        self._checkpointed_line = 0
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
        }

    def _resume_hint(self) -> str:
        if self.checkpoint_path is None:
            return "this job keeps no checkpoint: run it again from the start (writes are idempotent overwrites)"
        return (
            f"the checkpoint {self.checkpoint_path} records the first {self._checkpointed_line:,} records as done: "
            "run the same command again to resume after them"
        )

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
        fraction = min(1.0, self._position / self._total) if self._total else None
        self.on_progress(
            IndexProgress(c.records, c.documents, c.passages, c.passages + self._encoded_pending, c.rejected,
                          c.skipped, self._run.tokens,
                          time.perf_counter() - self._started, fraction)
        )

    # --------------------------------------------------------------------- run
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
            self._counts = _Counts(**{k: int(previous.counts.get(k, 0)) for k in asdict(_Counts())})
            self._position, self._line = previous.position, previous.line
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
                self.collection, dim=int(self.encoder.dim), dtype=self.storage_dtype, on_disk=self.on_disk,
                indexed_fields=self.indexed_fields,
            )
            self._call("create the collection", self.repository.create_collection, schema, setup=True)
        chunker = Chunker(tokenizer, config.doc_maxlen, self.chunking, special_tokens=special_tokens(config))
        self._special_tokens = chunker.special_tokens
        self._times["setup"] = time.perf_counter() - self._started
        same_rejects = previous is not None and previous.rejects_path == (str(self.rejects_path) if self.rejects_path else None)
        rejects = _Rejects(self.rejects_path, previous.rejects_bytes if same_rejects and previous is not None else None)
        self._state = JobCheckpoint(job or {}, rejects_path=str(self.rejects_path) if self.rejects_path else None)
        try:
            self._loop(self._records(), chunker, rejects)
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
    def _encode(self, chunks: list[Chunk]) -> tuple[list[Any], dict[str, str]]:
        """Encodings of ``chunks`` (None for failed ones) and the failed documents' reasons."""
        out: list[Any] = [None] * len(chunks)
        failed: dict[str, str] = {}
        order = sorted(range(len(chunks)), key=lambda i: chunks[i].n_tokens, reverse=True)
        step = self.encode_batch_size
        for start in range(0, len(order), step):
            picked = order[start : start + step]
            passages = [Passage.create(chunks[i].doc_id, chunks[i].index, chunks[i].text) for i in picked]
            units = [chunks[i].units for i in picked]
            try:
                encoded = self.encoder.encode_passages(passages, units, sentences=False, batch_size=step)
            except InvalidInputError:
                encoded = []
                for p, u in zip(passages, units):
                    try:
                        [e] = self.encoder.encode_passages([p], [u], sentences=False, batch_size=1)
                    except InvalidInputError as exc:
                        failed.setdefault(p.doc_id, f"passage {p.index}: {exc}")
                        e = None
                    encoded.append(e)
            self._encoded_pending += len(picked)
            for i, e in zip(picked, encoded):
                out[i] = e
                if e is not None:
                    self._run.tokens += e.n_tokens
            self._progress()
        return out, failed

    def _flush(self, pending: list[_PendingDoc], rejects: _Rejects) -> None:
        if pending and self.dry_run:  # what would be written
            for c in (self._counts, self._run):
                c.documents += len(pending)
                c.passages += sum(len(d.chunks) for d in pending)
                c.tokens += sum(ch.n_tokens + self._special_tokens for d in pending for ch in d.chunks)
        if pending and not self.dry_run:
            chunks = [c for d in pending for c in d.chunks]
            t = time.perf_counter()
            encoded, failed = self._encode(chunks)
            self._times["encode"] += time.perf_counter() - t
            stored: list[StoredPassage] = []
            counts: dict[str, int] = {}
            tokens = truncated = 0
            at = 0
            for d in pending:
                mine = encoded[at : at + len(d.chunks)]
                at += len(d.chunks)
                if d.doc_id in failed:
                    self._reject(rejects, d.line, d.doc_id, failed[d.doc_id])
                    continue
                counts[d.doc_id] = len(d.chunks)
                for c, e in zip(d.chunks, mine):
                    stored.append(
                        StoredPassage.create(
                            c.doc_id, c.index, e.token_vectors, pooled=e.pooled, units=e.units, text=c.text,
                            metadata=c.metadata,
                        )
                    )
                    tokens += e.n_tokens
                    truncated += len(e.truncated)
            t = time.perf_counter()
            if stored:
                self._call("write passages", self.repository.upsert, self.collection, stored)
            stale = 0
            by_count: dict[int, list[str]] = {}
            for doc_id, n in counts.items():
                by_count.setdefault(n, []).append(doc_id)
            for n, ids in sorted(by_count.items()):
                stale += self._call(
                    "delete stale passages", self.repository.delete_where, self.collection,
                    And(In("doc_id", tuple(ids)), Range("passage_index", gte=n)),
                )
            self._times["write"] += time.perf_counter() - t
            written_docs = len(counts)
            for c in (self._counts, self._run):
                c.documents += written_docs
                c.passages += len(stored)
            self._counts.tokens += tokens
            self._counts.stale_deleted += stale
            self._counts.truncated_units += truncated
            if stored:
                self._last_id = stored[-1].id
        self._encoded_pending = 0
        self._save_checkpoint(rejects, done=False)
        self._progress()

    def _save_checkpoint(self, rejects: _Rejects, *, done: bool) -> None:
        t = time.perf_counter()
        size = rejects.sync()
        if self.checkpoint_path is not None:
            state = self._state
            state.position, state.line = self._position, self._line
            state.counts = asdict(self._counts)
            state.rejects_bytes = size
            state.last_passage_id = self._last_id
            state.done = done
            state.save(self.checkpoint_path)
            self._checkpointed_line = self._line
        self._times["checkpoint"] += time.perf_counter() - t

    def _summary(self, *, already_done: bool = False, rejects: str | None = None) -> IndexSummary:
        c, r, times = self._counts, self._run, self._times
        encoder = self.encoder
        return IndexSummary(
            collection=self.collection,
            source=str(self.source) if self.is_file else "<iterable>",
            records=c.records, documents=c.documents, passages=c.passages, skipped=c.skipped,
            rejected=c.rejected, stale_deleted=c.stale_deleted, tokens=c.tokens, truncated_units=c.truncated_units,
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

