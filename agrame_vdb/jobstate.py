"""Checkpoints of indexing jobs: what a job has durably written, so it can resume.

A checkpoint is one small JSON file, replaced atomically (:mod:`agrame_vdb.atomic`:
written to a temporary file beside it, fsynced, ``os.replace``d, the directory
fsynced), so a job killed at any moment leaves either the previous checkpoint or
the new one, never a torn file. It records:

- ``job``: what identifies the job: the input (absolute path, size, SHA-256 of
  its bytes), the record format, collection, store, shard, model, compute dtype
  and chunking options. A restart with other values is refused (or ``restart``).
- ``position`` / ``line``: where reading resumes (a byte offset into JSON Lines,
  a row count into Parquet) and how many records lie before it. Every record
  before the position is done: its passages are written (and its stale
  passages deleted), or it was rejected or belongs to another shard.
- ``counts``: the job's counters at that position, so a resumed job ends with
  the summary a clean run gives; ``rejects_bytes``: the size of the rejects
  file then (a resumed job cuts the file back to it, dropping rejects of records
  it reads again).
- ``last_passage_id``: the last passage written, checked on resume: when the
  store no longer has it (the store was reset), the job starts over.
- ``done``: the whole input was processed.

The job writes passages first, then the checkpoint; a crash between the two
makes the resumed job write the same passages again, which overwrites them
(ids are deterministic), so the collection ends as a clean run leaves it.

Job files are created readable by their owner only (mode 0600). The store in
``job`` is the URL with its credentials redacted (:func:`agrame_vdb.redact.redact_url`):
it still tells one host, path, database or option set from another, so a job is
only resumed against the store it was started on, and no secret is ever written.
A checkpoint is validated field by field when it is read (:class:`CheckpointFile`):
a hand-edited one (a negative position, a count given as a string, a missing key)
is refused with a :class:`~agrame_vdb.errors.CheckpointMismatchError` naming the
file and the field.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError, ValidationInfo, field_validator

from .atomic import atomic_write_text, private_opener  # noqa: F401  (private_opener: re-exported)
from .errors import CheckpointMismatchError

__all__ = [
    "CHECKPOINT_VERSION", "CheckpointFile", "JobCheckpoint", "file_fingerprint", "job_differences",
    "atomic_write_text", "private_opener",
]

CHECKPOINT_VERSION = 1
_CHUNK = 1 << 20


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Absolute path, size and SHA-256 of a file's bytes (it is read once)."""
    p = Path(path).resolve()
    digest = hashlib.sha256()
    size = 0
    with p.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
            size += len(block)
    return {"path": str(p), "size": size, "sha256": digest.hexdigest()}


def job_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Readable differences between two job descriptions (``input.size: 10 -> 12``)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(job_differences(a, b, f"{name}."))
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


class CheckpointFile(BaseModel):
    """What a checkpoint file must hold: every key, each of its type (strictly: no
    count as a string), counts and positions not negative, ``line <= position``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    job: dict[str, Any]
    position: NonNegativeInt
    line: NonNegativeInt
    counts: dict[str, NonNegativeInt]
    rejects_path: str | None
    rejects_bytes: NonNegativeInt
    last_passage_id: str | None
    done: bool
    updated: float
    version: Literal[1]

    @field_validator("line")
    @classmethod
    def _line_within_position(cls, line: int, info: ValidationInfo) -> int:
        # every record before the position takes at least one byte (JSON Lines) or one row (Parquet)
        position = info.data.get("position")
        if position is not None and line > position:
            raise ValueError(f"{line} records cannot lie before position {position}")
        return line


def _field_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:4]:
        where = ".".join(str(x) for x in err["loc"])
        got = "" if err["type"] == "missing" else f" (got {err['input']!r:.60})"
        parts.append(f"field {where!r}: {err['msg']}{got}")
    return "; ".join(parts)


@dataclass
class JobCheckpoint:
    """The durable state of one indexing job (see the module docs)."""

    job: dict[str, Any]
    position: int = 0
    line: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    rejects_path: str | None = None
    rejects_bytes: int = 0
    last_passage_id: str | None = None
    done: bool = False
    updated: float = 0.0
    version: int = CHECKPOINT_VERSION

    def save(self, path: str | Path) -> None:
        self.updated = time.time()
        atomic_write_text(path, json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> JobCheckpoint | None:
        """The checkpoint at ``path``; None when there is none."""
        path = Path(path)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as exc:
            raise CheckpointMismatchError(
                f"the job checkpoint {path} is not JSON (invalid UTF-8 at byte {exc.start}); delete it or start "
                "over with --restart"
            ) from exc
        except OSError as exc:
            raise CheckpointMismatchError(f"cannot read the job checkpoint {path}: {exc}") from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise CheckpointMismatchError(
                f"the job checkpoint {path} is not JSON ({exc}); delete it or start over with --restart"
            ) from exc
        if not isinstance(data, dict):
            raise CheckpointMismatchError(
                f"the job checkpoint {path} is not a JSON object; delete it or start over with --restart"
            )
        if data.get("version") != CHECKPOINT_VERSION:
            raise CheckpointMismatchError(
                f"the job checkpoint {path} has version {data.get('version')!r}, this agrame-vdb writes "
                f"{CHECKPOINT_VERSION}; start over with --restart"
            )
        try:
            checked = CheckpointFile.model_validate(data)
        except ValidationError as exc:
            raise CheckpointMismatchError(
                f"the job checkpoint {path} is invalid: {_field_errors(exc)}; delete it or start over with --restart"
            ) from None
        return cls(**checked.model_dump())
