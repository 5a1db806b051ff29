"""What an indexing job reports: its progress as it goes, its summary at the end."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["IndexProgress", "IndexSummary", "JobCounts"]


@dataclass(frozen=True, slots=True)
class IndexProgress:
    """A job's progress, reported to ``on_progress`` as it goes.

    Counts are the job's (a resumed job includes what was done before it):
    ``documents`` and ``passages`` written, ``encoded`` passages (written, and
    encoded in the batch being written); ``fraction`` is how much of the input is done:
    the share whose passages are written, plus the encoded part of the batch in flight
    (None for iterables). Reading runs a batch ahead of writing, so this is what an ETA
    can rest on.
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
class JobCounts:
    """A job's running counts (what its checkpoint keeps)."""

    records: int = 0
    documents: int = 0
    passages: int = 0
    skipped: int = 0
    rejected: int = 0
    stale_deleted: int = 0
    tokens: int = 0
    truncated_units: int = 0
    rows: int = 0


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
    - ``rows``: token rows written: ``tokens``, or fewer with ``token_pooling`` (the
      factor; 1: none), when ``tokens`` counts the token vectors encoded.
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
    rows: int = 0
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
    token_pooling: int = 1

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
            f"{self.tokens:,} token vectors"
            + (f" ({self.rows:,} rows after token pooling by {self.token_pooling})"
               if self.token_pooling > 1 and not self.dry_run else "")
            + f", {self.truncated_units:,} units truncated"
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
