"""The durable state of a migration run: ``<state_dir>/<collection>.json``, replaced
atomically after every page; ``<collection>.history.jsonl`` beside it (finished
runs, appended); ``.<collection>.lock``, held while a run goes on."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..protocol import MigratableRepository
from ..atomic import Timeout, atomic_write_text, file_lock, private_opener
from ..errors import MigrationError
from ..repository import check_name

__all__ = ["STATE_FORMAT", "MigrationState", "default_state_dir"]

STATE_FORMAT = 1


@dataclass
class MigrationState:
    """The durable state of one migration run (see :mod:`agrame_vdb.migrate`)."""

    operation: str
    collection: str
    source: str
    target: str
    params: dict[str, Any]
    plan: list[str]
    step: int = 0
    cursor: str | None = None
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    updated: float = 0.0
    format: int = STATE_FORMAT

    @property
    def step_name(self) -> str:
        return self.plan[self.step] if self.step < len(self.plan) else "finished"

    def describe(self) -> str:
        return (
            f"{self.operation} of {self.collection!r} ({self.source} -> {self.target}), step "
            f"{self.step + 1}/{len(self.plan)} {self.step_name!r}, {self.done} passages done in it"
        )


class _StateFile:
    """The state file of one collection name, locked while a run holds it."""

    def __init__(self, directory: Path | None, collection: str) -> None:
        self.directory = directory
        self.collection = check_name(collection)  # the name becomes a file name: never a path
        self.path = None if directory is None else directory / f"{collection}.json"
        self.history_path = None if directory is None else directory / f"{collection}.history.jsonl"
        self._memory: MigrationState | None = None
        self._lock_file: Any = None

    def load(self) -> MigrationState | None:
        if self.path is None:
            return self._memory
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise MigrationError(f"the migration state {self.path} is unreadable ({exc}); remove it to start over") from exc
        if data.get("format") != STATE_FORMAT:
            raise MigrationError(f"the migration state {self.path} has format {data.get('format')!r}; remove it to start over")
        try:
            return MigrationState(**data)
        except TypeError as exc:
            raise MigrationError(f"the migration state {self.path} is not one: {exc}") from exc

    def save(self, state: MigrationState) -> None:
        state.updated = time.time()
        if self.path is None:
            self._memory = dataclasses.replace(state, params=dict(state.params), counts=dict(state.counts))
            return
        atomic_write_text(self.path, json.dumps(dataclasses.asdict(state), indent=1, sort_keys=True) + "\n")

    def clear(self) -> None:
        self._memory = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def append_history(self, record: dict[str, Any]) -> None:
        record = {**record, "finished": time.time()}
        if self.history_path is None:
            _MEMORY_HISTORY.setdefault(self.collection, []).append(record)
            return
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.history_path, "a", encoding="utf-8", opener=private_opener) as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def history(self) -> list[dict[str, Any]]:
        if self.history_path is None:
            return list(_MEMORY_HISTORY.get(self.collection, []))
        from ..documents import iter_json_lines

        try:  # a torn last line (a crash while appending) is skipped
            return [item.value for item in iter_json_lines(self.history_path) if item.error is None]
        except FileNotFoundError:
            return []

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        if self.directory is None:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f".{self.collection}.lock"
        lock = file_lock(path, wait=False)
        try:
            lock.acquire()
        except Timeout:
            raise MigrationError(
                f"another process is migrating collection {self.collection!r} (lock {path}); "
                "wait for it to finish"
            ) from None
        try:
            yield
        finally:
            lock.release()


# histories of stores that do not persist (memory://), per process
_MEMORY_HISTORY: dict[str, list[dict[str, Any]]] = {}


def default_state_dir(repository: MigratableRepository) -> Path | None:
    """Where migration states go: ``<edge root>/.agrame-migrations`` for Qdrant Edge,
    ``./.agrame-migrations/<engine>-<hash of the location>`` for other persistent
    stores, nowhere (kept in memory) for stores that do not persist."""
    root = getattr(repository, "root", None)
    if isinstance(root, Path):
        return root / ".agrame-migrations"
    caps = repository.capabilities()
    if not caps.persistent:
        return None
    where = str(getattr(repository, "_where", "") or getattr(repository, "_path", "") or caps.engine)
    if not where.startswith(("http://", "https://")) and "://" not in where and where not in (":memory:", "client"):
        where = str(Path(where).resolve())
    slug = hashlib.blake2b(where.encode(), digest_size=5).hexdigest()
    return Path(".agrame-migrations") / f"{caps.engine}-{slug}"


def _state_file(repository: MigratableRepository, collection: str, state_dir: str | Path | None) -> _StateFile:
    directory = Path(state_dir) if state_dir is not None else default_state_dir(repository)
    return _StateFile(directory, collection)

