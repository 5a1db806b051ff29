"""The runner: a plan of named steps with a state file (:class:`_Run`), shared by every
migration; the schema migrations in place (:func:`upgrade`, :func:`downgrade`), where
a collection stands (:func:`status`), and :func:`abort`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..protocol import MigratableRepository
from ..errors import AgrameError, CollectionNotFoundError, MigrationError
from ..repository import SCHEMA_VERSION, CollectionSchema
from .reports import MigrationResult, MigrationStatus
from .state import MigrationState, _state_file
from .steps import Check, Migration, MigrationContext, RewritePassages, Step, StoreSchema, load_migrations

__all__ = ["DEFAULT_PAGE", "pending", "status", "upgrade", "downgrade", "abort"]

log = logging.getLogger(__name__)

#: passages fetched and written per page (a state save after each)
DEFAULT_PAGE = 256


class _Run:
    """Runs a plan of named steps with a state file; shared by every migration."""

    def __init__(
        self,
        repository: MigratableRepository,
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
        for result in self.repo.iter_id_pages(collection, page=self.page, start=state.cursor):
            if result.ids:
                yield list(result.ids)
                state.done += len(result.ids)
            state.cursor = result.next_offset
            self.save()
            if result.ids and self.on_page is not None:
                self.on_page(state)

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


def _open(repository: MigratableRepository, collection: str) -> CollectionSchema:
    try:
        return repository.open_collection(collection)
    except CollectionNotFoundError as exc:
        raise MigrationError(f"cannot migrate: {exc}") from exc


def pending(repository: MigratableRepository, collection: str) -> tuple[Migration, ...]:
    """The migrations :func:`upgrade` would apply to a collection, in order."""
    version = _open(repository, collection).schema_version
    return tuple(m for m in load_migrations() if m.version > version)


def status(repository: MigratableRepository, collection: str, *, state_dir: str | Path | None = None) -> MigrationStatus:
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
    repository: MigratableRepository,
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
    repository: MigratableRepository,
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
    repository: MigratableRepository,
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
    repository: MigratableRepository, collection: str, *, state_dir: str | Path | None = None, drop_target: bool = True
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
