"""What a migration reports: where a collection stands (:class:`MigrationStatus`) and
what a run did (:class:`MigrationResult`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..repository import CollectionSchema

__all__ = ["MigrationStatus", "MigrationResult"]


@dataclass(frozen=True)
class MigrationStatus:
    """Where a collection stands: its version against this library's, the pending
    migrations, an unfinished run, its aliases and the runs it has had."""

    collection: str
    resolved: str
    schema: CollectionSchema
    library_version: int
    pending: tuple[str, ...]
    in_progress: str | None
    aliases: Mapping[str, str]
    history: tuple[Mapping[str, Any], ...]

    @property
    def version(self) -> int:
        return self.schema.schema_version

    @property
    def up_to_date(self) -> bool:
        return self.version == self.library_version and self.in_progress is None

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "resolved": self.resolved,
            "schema": self.schema.to_json(),
            "version": self.version,
            "library_version": self.library_version,
            "pending": list(self.pending),
            "in_progress": self.in_progress,
            "aliases": dict(self.aliases),
            "history": [dict(h) for h in self.history],
        }

    def format(self) -> str:
        lines = [
            f"collection   {self.collection}" + (f" (alias of {self.resolved})" if self.resolved != self.collection else ""),
            f"version      {self.version} (this agrame-vdb: {self.library_version})",
            f"model        {self.schema.model or 'unknown'}",
            f"storage      dim {self.schema.dim}, {self.schema.dtype}{', on disk' if self.schema.on_disk else ''}",
        ]
        if self.version > self.library_version:
            lines.append("state        newer than this agrame-vdb: it will not write to it")
        elif self.pending:
            lines.append(f"pending      {', '.join(self.pending)}  (run: agrame-vdb migrate up)")
        else:
            lines.append("pending      none")
        if self.in_progress:
            lines.append(f"in progress  {self.in_progress}  (run the same command again to resume)")
        if self.aliases:
            lines.append("aliases      " + ", ".join(f"{a} -> {c}" for a, c in sorted(self.aliases.items())))
        for h in self.history[-5:]:
            lines.append(
                f"done         {h.get('operation')} {h.get('source', '')} -> {h.get('target', '')} "
                f"({time.strftime('%Y-%m-%d %H:%M', time.localtime(h.get('finished', 0)))})"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class MigrationResult:
    """What a run did: versions or collections, passages rewritten per step, the
    alias switched (blue/green), and whether it resumed an interrupted run."""

    operation: str
    collection: str
    source: str
    target: str
    from_version: int
    to_version: int
    counts: Mapping[str, int]
    resumed: bool = False
    alias: str | None = None
    previous: str | None = None
    applied: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    def format(self) -> str:
        what = f"{self.operation} {self.collection}"
        if self.source != self.target:
            what += f": {self.source} -> {self.target}"
        if self.from_version != self.to_version:
            what += f", schema version {self.from_version} -> {self.to_version}"
        if self.applied:
            what += f" ({', '.join(self.applied)})"
        if self.alias:
            what += f"; alias {self.alias} now points at {self.target}" + (f" (was {self.previous})" if self.previous else "")
        counts = ", ".join(f"{k} {v:,}" for k, v in self.counts.items())
        return what + (f"\n{counts}" if counts else "") + ("\n(resumed an interrupted run)" if self.resumed else "")

