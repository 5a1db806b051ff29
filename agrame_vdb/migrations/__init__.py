"""Collection migrations: what keeps a deployed index usable across agrame-vdb versions.

A collection records its schema version in the collection itself (the schema
record every engine keeps: collection metadata on a Qdrant server and in local
mode, ``<collection>/collection.json`` on Qdrant Edge, a collection property on
Milvus, the collection object in memory). This library writes collections of
:data:`~agrame_vdb.repository.SCHEMA_VERSION` only: an older one is refused for
writing with a message naming ``agrame-vdb migrate up``, a newer one with a
message naming ``migrate down`` (run by the newer library).

Two kinds of migration, both resumable, both written against the repository
protocol (engine specifics stay in :mod:`agrame_vdb.repositories`):

- **Schema migrations**, one file per version in
  ``agrame_vdb/migrations/versions/`` (``v0002_model_reference.py`` ...), as
  Alembic's versions: each defines ``MIGRATION = Migration(id, version,
  description, upgrade=(steps), downgrade=(steps))`` taking a collection from
  ``version - 1`` to ``version`` in place, and back. :func:`upgrade` runs every
  pending one in order, :func:`downgrade` undoes them down to a version.
- **Collection operations** (:mod:`agrame_vdb.migrations.operations`): add a
  unit kind to stored passages without re-encoding them (:func:`add_units`);
  re-index into a new collection with another model or dim (:func:`reindex`),
  or copy into one with other storage (:func:`convert_storage`), then switch an
  alias to it in one atomic step, so searches through the alias answer
  throughout (blue/green); :func:`rollback` switches the alias back.

Steps are :class:`Check` (before anything is written), :class:`RewritePassages`
(every passage, page by page in id order) and :class:`StoreSchema` (the
collection's schema record). After each page the state
(:class:`MigrationState`: operation, step, the id to go on from, counts) is
replaced atomically in ``<state_dir>/<collection>.json``; a migration that was
killed or failed goes on from there when run again with the same arguments.
Rewrites are idempotent (same ids), so a page done twice is harmless. Finished
migrations are appended to ``<collection>.history.jsonl`` beside it.

>>> from agrame_vdb import connect, CollectionSchema
>>> repo = connect("memory://")
>>> _ = repo.create_collection(CollectionSchema("docs", dim=4, schema_version=1))
>>> [m.id for m in pending(repo, "docs")]
['v0002_model_reference']
>>> upgrade(repo, "docs").to_version
2
>>> status(repo, "docs").pending
()
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib
import json
import logging
import os
import pkgutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AgrameError, CollectionNotFoundError, MigrationError
from ..repository import SCHEMA_VERSION, CollectionSchema, StoredPassage, check_name

__all__ = [
    "Migration",
    "MigrationContext",
    "Check",
    "RewritePassages",
    "StoreSchema",
    "MigrationState",
    "MigrationStatus",
    "MigrationResult",
    "Digest",
    "load_migrations",
    "pending",
    "status",
    "upgrade",
    "downgrade",
    "abort",
    "digest",
    "digest_passages",
    "default_state_dir",
    "add_units",
    "reindex",
    "convert_storage",
    "rollback",
]

log = logging.getLogger(__name__)

STATE_FORMAT = 1
#: passages fetched and written per page (a state save after each)
DEFAULT_PAGE = 256


# --------------------------------------------------------------------------- the format


@dataclass(frozen=True)
class MigrationContext:
    """What a step sees: the repository, the concrete collection, the versions it
    goes between and the options given to the run (``model=`` ...)."""

    repository: Any
    collection: str
    from_version: int
    to_version: int
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RewritePassages:
    """Rewrite every passage in place: ``fn(passage, ctx)`` returns the passage to
    store (or None for the same one); the runner stamps it with the version the
    migration goes to. Token vectors are never re-encoded here."""

    name: str
    fn: Callable[[StoredPassage, MigrationContext], StoredPassage | None] | None = None


@dataclass(frozen=True)
class StoreSchema:
    """Replace the collection's schema record: ``fn(schema, ctx)`` returns the new
    one (or None for the same); the runner sets its version."""

    name: str
    fn: Callable[[CollectionSchema, MigrationContext], CollectionSchema | None] | None = None


@dataclass(frozen=True)
class Check:
    """A check before anything is written: ``fn(ctx)`` raises MigrationError to stop."""

    name: str
    fn: Callable[[MigrationContext], None]


Step = Check | RewritePassages | StoreSchema


@dataclass(frozen=True)
class Migration:
    """One version of the collection schema: ``upgrade`` takes a collection from
    ``version - 1`` to ``version``; ``downgrade`` (None: irreversible) back."""

    id: str
    version: int
    description: str
    upgrade: tuple[Step, ...] = ()
    downgrade: tuple[Step, ...] | None = ()


@lru_cache(maxsize=1)
def load_migrations() -> tuple[Migration, ...]:
    """Every migration in ``agrame_vdb/migrations/versions``, ordered by version.

    Checks the chain: module name equals the id, versions run 1, 2, ... up to
    :data:`SCHEMA_VERSION` without gaps or repeats.
    """
    from . import versions

    found = []
    for info in pkgutil.iter_modules(versions.__path__):
        module = importlib.import_module(f"{versions.__name__}.{info.name}")
        m = getattr(module, "MIGRATION", None)
        if not isinstance(m, Migration):
            raise MigrationError(f"migration file {info.name} defines no MIGRATION = Migration(...)")
        if m.id != info.name:
            raise MigrationError(f"migration file {info.name} has id {m.id!r}; the id must be the file's name")
        found.append(m)
    found.sort(key=lambda m: m.version)
    versions_seen = [m.version for m in found]
    if versions_seen != list(range(1, SCHEMA_VERSION + 1)):
        raise MigrationError(
            f"the migration chain has versions {versions_seen}; it must be 1..{SCHEMA_VERSION} (SCHEMA_VERSION)"
        )
    return tuple(found)


# --------------------------------------------------------------------------- state


@dataclass
class MigrationState:
    """The durable state of one migration run (see the module docs)."""

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
        from ..jobstate import atomic_write_text

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
        from ..jobstate import private_opener

        with open(self.history_path, "a", encoding="utf-8", opener=private_opener) as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def history(self) -> list[dict[str, Any]]:
        if self.history_path is None:
            return list(_MEMORY_HISTORY.get(self.collection, []))
        try:
            lines = self.history_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        if self.directory is None:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f".{self.collection}.lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MigrationError(
                    f"another process is migrating collection {self.collection!r} (lock {lock.name}); "
                    "wait for it to finish"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


# histories of stores that do not persist (memory://), per process
_MEMORY_HISTORY: dict[str, list[dict[str, Any]]] = {}


def default_state_dir(repository: Any) -> Path | None:
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


def _state_file(repository: Any, collection: str, state_dir: str | Path | None) -> _StateFile:
    directory = Path(state_dir) if state_dir is not None else default_state_dir(repository)
    return _StateFile(directory, collection)


# --------------------------------------------------------------------------- reports


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


# --------------------------------------------------------------------------- checksums


@dataclass(frozen=True)
class Digest:
    """Order-independent fingerprints of a collection's passages: count, ids,
    token and pooled vectors (float32 bytes), and everything else (units, text,
    metadata, document and index)."""

    count: int
    ids: str
    vectors: str
    records: str


def _passage_hashes(p: StoredPassage) -> tuple[bytes, bytes]:
    vec = hashlib.blake2b(p.id.encode(), digest_size=16)
    vec.update(np.ascontiguousarray(p.tokens, dtype="<f4").tobytes())
    vec.update(np.ascontiguousarray(p.pooled, dtype="<f4").tobytes())
    rec = hashlib.blake2b(p.id.encode(), digest_size=16)
    units = [[u.kind, u.index, [list(s) for s in u.char_spans], [list(r) for r in u.token_ranges]] for u in p.units]
    rec.update(json.dumps([p.doc_id, p.index, p.text, units, dict(p.metadata)], sort_keys=True).encode())
    return vec.digest(), rec.digest()


def digest_passages(passages: Sequence[StoredPassage]) -> Digest:
    """The :class:`Digest` of passages in hand (the reference a collection is compared to)."""
    by_id = {p.id: p for p in passages}
    ids, vec, rec = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    for pid in sorted(by_id):
        v, r = _passage_hashes(by_id[pid])
        ids.update(pid.encode())
        vec.update(v)
        rec.update(r)
    return Digest(len(by_id), ids.hexdigest(), vec.hexdigest(), rec.hexdigest())


def digest(repository: Any, collection: str, *, page: int = 500) -> Digest:
    """The :class:`Digest` of a collection (or alias), read page by page."""
    ids, vec, rec = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    n = 0
    for chunk in _id_pages(repository, collection, page):
        for p in repository.fetch(collection, chunk, strict=True):
            v, r = _passage_hashes(p)
            ids.update(p.id.encode())
            vec.update(v)
            rec.update(r)
            n += 1
    return Digest(n, ids.hexdigest(), vec.hexdigest(), rec.hexdigest())


def _id_pages(repository: Any, collection: str, page: int, start: str | None = None) -> Iterator[list[str]]:
    offset = start
    while True:
        result = repository.list_ids(collection, limit=page, offset=offset)
        if result.ids:
            yield list(result.ids)
        if result.next_offset is None:
            return
        offset = result.next_offset


# --------------------------------------------------------------------------- the runner


class _Run:
    """Runs a plan of named steps with a state file; shared by every migration."""

    def __init__(
        self,
        repository: Any,
        collection: str,
        operation: str,
        params: dict[str, Any],
        state_dir: str | Path | None,
        on_page: Callable[[MigrationState], None] | None,
        page: int,
    ) -> None:
        if not isinstance(page, int) or isinstance(page, bool) or page < 1:
            raise MigrationError(f"page must be an int >= 1, got {page!r}")
        self.repo = repository
        self.collection = collection
        self.operation = operation
        self.params = json.loads(json.dumps(params, default=str))
        self.file = _state_file(repository, collection, state_dir)
        self.on_page = on_page
        self.page = page
        self.state: MigrationState | None = None
        self.resumed = False

    def begin(self, source: str, target: str, plan: list[str]) -> MigrationState:
        """The state to run: the unfinished one (same operation and parameters), or a new one."""
        previous = self.unfinished()
        if previous is not None:
            if previous.source != source:
                raise MigrationError(
                    f"the unfinished {previous.describe()} ran on collection {previous.source!r}, but "
                    f"{self.collection!r} now stands for {source!r}: switch the alias back to finish it, or abort it "
                    f"(agrame-vdb migrate abort --collection {self.collection}) and run it again"
                )
            self.state = previous
            self.resumed = True
            log.info("resuming %s", previous.describe())
            return previous
        self.state = MigrationState(self.operation, self.collection, source, target, self.params, plan, started=time.time())
        self.file.save(self.state)
        return self.state

    def unfinished(self) -> MigrationState | None:
        """The unfinished run of this operation with these parameters; MigrationError
        when another one is unfinished."""
        previous = self.file.load()
        if previous is not None and (previous.operation != self.operation or previous.params != self.params):
            raise MigrationError(
                f"collection {self.collection!r} has an unfinished migration: {previous.describe()}, with "
                f"parameters {previous.params}; run it again with the same arguments to finish it, or abort it "
                f"(agrame-vdb migrate abort --collection {self.collection})"
            )
        return previous

    def save(self) -> None:
        assert self.state is not None
        self.file.save(self.state)

    def next_step(self) -> None:
        assert self.state is not None
        self.state.step += 1
        self.state.cursor = None
        self.state.done = 0
        self.save()

    def pages(self, collection: str) -> Iterator[list[str]]:
        """Pages of ids of ``collection`` from the state's cursor on; after the caller
        has handled a page, the cursor moves past it and the state is saved."""
        state = self.state
        assert state is not None
        offset = state.cursor
        while True:
            result = self.repo.list_ids(collection, limit=self.page, offset=offset)
            if result.ids:
                yield list(result.ids)
                state.done += len(result.ids)
            state.cursor = result.next_offset
            self.save()
            if result.ids and self.on_page is not None:
                self.on_page(state)
            if result.next_offset is None:
                return
            offset = result.next_offset

    def count(self, key: str, n: int) -> None:
        assert self.state is not None
        self.state.counts[key] = self.state.counts.get(key, 0) + n

    def finish(self, record: dict[str, Any]) -> None:
        assert self.state is not None
        self.file.append_history(
            {"operation": self.operation, "collection": self.collection, "source": self.state.source,
             "target": self.state.target, "params": self.params, "counts": self.state.counts, **record}
        )
        self.file.clear()


def _open(repository: Any, collection: str) -> CollectionSchema:
    try:
        return repository.open_collection(collection)
    except CollectionNotFoundError as exc:
        raise MigrationError(f"cannot migrate: {exc}") from exc


def pending(repository: Any, collection: str) -> tuple[Migration, ...]:
    """The migrations :func:`upgrade` would apply to a collection, in order."""
    version = _open(repository, collection).schema_version
    return tuple(m for m in load_migrations() if m.version > version)


def status(repository: Any, collection: str, *, state_dir: str | Path | None = None) -> MigrationStatus:
    """Where a collection (or alias) stands; see :class:`MigrationStatus`."""
    schema = _open(repository, collection)
    file = _state_file(repository, collection, state_dir)
    state = file.load()
    aliases = {a: c for a, c in repository.list_aliases().items() if c == schema.name or a == collection}
    return MigrationStatus(
        collection=collection,
        resolved=schema.name,
        schema=schema,
        library_version=SCHEMA_VERSION,
        pending=tuple(m.id for m in load_migrations() if m.version > schema.schema_version),
        in_progress=state.describe() if state is not None else None,
        aliases=aliases,
        history=tuple(file.history()),
    )


def upgrade(
    repository: Any,
    collection: str,
    *,
    to: int | None = None,
    options: Mapping[str, Any] | None = None,
    state_dir: str | Path | None = None,
    page: int = DEFAULT_PAGE,
    on_page: Callable[[MigrationState], None] | None = None,
) -> MigrationResult:
    """Apply every pending schema migration to a collection (or the collection an
    alias points at), in place, up to version ``to`` (default: this library's).

    ``options`` go to the steps (``model=`` records the model that encoded the
    collection, checked against its stored token counts). Resumes an unfinished run.
    """
    return _run_schema(repository, collection, "upgrade", to, options, state_dir, page, on_page)


def downgrade(
    repository: Any,
    collection: str,
    *,
    to: int,
    state_dir: str | Path | None = None,
    page: int = DEFAULT_PAGE,
    on_page: Callable[[MigrationState], None] | None = None,
) -> MigrationResult:
    """Undo schema migrations down to version ``to`` (for an older agrame-vdb), in place."""
    return _run_schema(repository, collection, "downgrade", to, None, state_dir, page, on_page)


def _run_schema(
    repository: Any,
    collection: str,
    direction: str,
    to: int | None,
    options: Mapping[str, Any] | None,
    state_dir: str | Path | None,
    page: int,
    on_page: Callable[[MigrationState], None] | None,
) -> MigrationResult:
    chain = load_migrations()
    schema = _open(repository, collection)
    name = schema.name
    run = _Run(repository, collection, direction, {"to": to, "options": dict(options or {})}, state_dir, on_page, page)
    with run.file.locked():
        unfinished = run.unfinished()
        start = schema.schema_version
        if unfinished is not None:
            start = int(unfinished.extra.get("from_version", start))
        target = to if to is not None else SCHEMA_VERSION
        if not isinstance(target, int) or isinstance(target, bool) or not 1 <= target <= SCHEMA_VERSION:
            raise MigrationError(f"--to must be a schema version in 1..{SCHEMA_VERSION}, got {to!r}")
        if direction == "upgrade":
            if start > SCHEMA_VERSION:
                raise MigrationError(
                    f"collection {collection!r} is at schema version {start}, newer than this agrame-vdb "
                    f"({SCHEMA_VERSION}): upgrade agrame-vdb instead"
                )
            if target < start:
                raise MigrationError(f"collection {collection!r} is at version {start}, past {target}: use migrate down")
            todo = [(m, m.upgrade, m.version - 1, m.version) for m in chain if start < m.version <= target]
        else:
            if start > SCHEMA_VERSION:
                raise MigrationError(
                    f"collection {collection!r} is at schema version {start}; this agrame-vdb knows versions up to "
                    f"{SCHEMA_VERSION}: run migrate down with the agrame-vdb that wrote it"
                )
            if target > start:
                raise MigrationError(f"collection {collection!r} is at version {start}, below {target}: use migrate up")
            todo = []
            for m in reversed(chain):
                if target < m.version <= start:
                    if m.downgrade is None:
                        raise MigrationError(f"migration {m.id} cannot be undone: {m.description}")
                    todo.append((m, m.downgrade, m.version, m.version - 1))
        plan = [f"{m.id}:{s.name}" for m, steps, _, _ in todo for s in steps]
        if not todo:
            return MigrationResult(direction, collection, name, name, start, start, {})
        state = run.begin(name, name, plan)
        state.extra.setdefault("from_version", start)
        run.save()
        i = 0
        for m, steps, v_from, v_to in todo:
            ctx = MigrationContext(repository, name, v_from, v_to, dict(options or {}))
            for step in steps:
                if i < state.step:
                    i += 1
                    continue
                log.info("%s %s: step %s", direction, name, plan[i])
                _do_step(run, step, ctx, name)
                run.next_step()
                i += 1
        result = MigrationResult(direction, collection, name, name, start, target, dict(state.counts), run.resumed,
                                 applied=tuple(m.id for m, *_ in todo))
        run.finish({"from_version": start, "to_version": target, "applied": [m.id for m, *_ in todo]})
        return result


def _do_step(run: _Run, step: Step, ctx: MigrationContext, name: str) -> None:
    repo = ctx.repository
    if isinstance(step, Check):
        try:
            step.fn(ctx)
        except MigrationError:
            state = run.state
            if state is not None and all(p.endswith(":check") or ":check-" in p for p in state.plan[: state.step]):
                run.file.clear()  # nothing was written: no migration to resume
            raise
        return
    if isinstance(step, StoreSchema):
        schema = repo.open_collection(name)
        new = step.fn(schema, ctx) if step.fn is not None else None
        new = dataclasses.replace(new or schema, schema_version=ctx.to_version)
        repo.update_schema(new)
        return
    if isinstance(step, RewritePassages):
        versions = {ctx.from_version, ctx.to_version}
        for ids in run.pages(name):
            out = []
            for p in repo.fetch(name, ids).passages:
                changed = step.fn(p, ctx) if step.fn is not None else None
                q = changed or p
                if q.id != p.id:
                    raise MigrationError(f"step {step.name} changed passage id {p.id} to {q.id}; ids must stay")
                out.append(q if q.schema_version == ctx.to_version else dataclasses.replace(q, schema_version=ctx.to_version))
            repo.upsert_at_version(name, out, sorted(versions))
            run.count(step.name, len(out))
        return
    raise MigrationError(f"unknown migration step {step!r}")


def abort(
    repository: Any, collection: str, *, state_dir: str | Path | None = None, drop_target: bool = True
) -> MigrationState | None:
    """Forget an unfinished migration of ``collection``; a blue/green one's half-built
    new collection is dropped (``drop_target``) unless an alias points at it. An
    in-place one leaves passages of both versions: run upgrade (or downgrade) to
    even them out. Returns the state forgotten, or None."""
    file = _state_file(repository, collection, state_dir)
    with file.locked():
        state = file.load()
        if state is None:
            return None
        if drop_target and state.target != state.source and state.target not in repository.list_aliases().values():
            with contextlib.suppress(AgrameError):
                repository.drop_collection(state.target)
        file.clear()
        return state


from .operations import add_units, convert_storage, reindex, rollback  # noqa: E402
