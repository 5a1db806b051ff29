"""``agrame-vdb migrate``: schema versions (status/up/down), units added in place, and
blue/green re-indexing behind an alias (reindex/convert/rollback), aliases and abort."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, Protocol

import typer

from ..errors import AgrameError
from ._common import DEFAULT_STORE, DeviceOption, StoreOption, app, connect_store, failures

if TYPE_CHECKING:
    from ..repository import Repository


class _State(Protocol):
    """What the command reads of a migration's state (a MigrationState)."""

    @property
    def step_name(self) -> str: ...

    @property
    def done(self) -> int: ...

    def describe(self) -> str: ...


class _Result(Protocol):
    """What a migration returns: printed as JSON or as text."""

    def to_json(self) -> dict[str, Any]: ...

    def format(self) -> str: ...


OnPage = Callable[[_State], None]


migrate_app = typer.Typer(
    help="Collection migrations: schema versions (status/up/down), units added in place, and "
    "blue/green re-indexing behind an alias (reindex/convert/rollback). Every one resumes when run again.",
    no_args_is_help=True,
)
app.add_typer(migrate_app, name="migrate")

MigrateCollection = Annotated[str, typer.Option("--collection", "-c", help="Collection, or alias, to migrate.")]
MigrateStateDir = Annotated[
    Optional[Path],
    typer.Option("--state-dir", help="Where migration states go; default: <edge store>/.agrame-migrations or ./.agrame-migrations."),
]
MigrateJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _migrate(store: str, json_output: bool, action: Callable[[Repository, OnPage], _Result]) -> None:
    """Connect, run ``action(repository, on_page)``, print its result; AgrameError -> exit 2."""
    import sys

    def on_page(state: _State) -> None:
        if sys.stderr.isatty():
            typer.echo(f"\r{state.step_name}: {state.done:,} passages", err=True, nl=False)

    with failures("run the same command again to resume the migration") as opened:
        result = action(connect_store(opened, store), on_page)
    if sys.stderr.isatty():
        typer.echo("", err=True)
    typer.echo(json.dumps(result.to_json(), indent=2) if json_output else result.format())


@migrate_app.command("status")
def migrate_status(
    collection: MigrateCollection, store: StoreOption = DEFAULT_STORE, state_dir: MigrateStateDir = None,
    json_output: MigrateJson = False,
) -> None:
    """The collection's schema version against this agrame-vdb's, pending migrations, an unfinished one, aliases."""
    from .. import migrations

    _migrate(store, json_output, lambda repo, _: migrations.status(repo, collection, state_dir=state_dir))


@migrate_app.command("up")
def migrate_up(
    collection: MigrateCollection, store: StoreOption = DEFAULT_STORE,
    to: Annotated[Optional[int], typer.Option("--to", help="Schema version to stop at; default: this agrame-vdb's.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Record the model that encoded the collection ('default': the shipped one); checked against the stored token counts.")] = None,
    state_dir: MigrateStateDir = None, json_output: MigrateJson = False,
) -> None:
    """Upgrade a collection in place through every pending schema migration."""
    from .. import migrations

    options = {"model": model} if model else {}
    _migrate(store, json_output, lambda repo, on_page: migrations.upgrade(
        repo, collection, to=to, options=options, state_dir=state_dir, on_page=on_page))


@migrate_app.command("down")
def migrate_down(
    collection: MigrateCollection,
    to: Annotated[int, typer.Option("--to", help="Schema version to go back to (for an older agrame-vdb).")],
    store: StoreOption = DEFAULT_STORE, state_dir: MigrateStateDir = None, json_output: MigrateJson = False,
) -> None:
    """Undo schema migrations in place, down to version --to."""
    from .. import migrations

    _migrate(store, json_output, lambda repo, on_page: migrations.downgrade(
        repo, collection, to=to, state_dir=state_dir, on_page=on_page))


@migrate_app.command("add-units")
def migrate_add_units(
    collection: MigrateCollection, store: StoreOption = DEFAULT_STORE,
    kind: Annotated[str, typer.Option("--kind", help="Unit kind to add: sentence (found by the splitter), or any kind given with --units.")] = "sentence",
    units: Annotated[Optional[Path], typer.Option("--units", help='JSON Lines: {"id": PASSAGE_ID (or "doc_id" + "passage_index"), "units": [[[start, end], ...], ...]}.')] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model whose tokenizer encoded the collection; default: the one the collection records.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace units of this kind that passages already have.")] = False,
    state_dir: MigrateStateDir = None, json_output: MigrateJson = False,
) -> None:
    """Give every passage units of a kind, without re-encoding (the stored text is re-tokenized only)."""
    from .. import migrations

    _migrate(store, json_output, lambda repo, on_page: migrations.add_units(
        repo, collection, kind=kind, units=units, model=model, replace=replace, state_dir=state_dir, on_page=on_page))


IntoOption = Annotated[Optional[str], typer.Option("--into", help="Name of the new collection; default: <current>__g<N+1>.")]
DropOldOption = Annotated[bool, typer.Option("--drop-old", help="Drop the old collection after the switch (no rollback then).")]
OnDiskOption = Annotated[Optional[bool], typer.Option("--on-disk/--in-ram", help="Token vectors of the new collection on disk or in RAM; default: as now.")]


@migrate_app.command("reindex")
def migrate_reindex(
    collection: Annotated[str, typer.Option("--collection", "-c", help="The alias your searches use.")],
    store: StoreOption = DEFAULT_STORE,
    model: Annotated[Optional[str], typer.Option("--model", help="The new model directory ('default': the shipped one).")] = None,
    source: Annotated[Optional[Path], typer.Option("--source", help="Re-index from this documents file instead of the stored text.")] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="float32, float16, int8 or binary for the new collection; default: as now.")] = None,
    on_disk: OnDiskOption = None, into: IntoOption = None, drop_old: DropOldOption = False,
    device: DeviceOption = "auto", state_dir: MigrateStateDir = None, json_output: MigrateJson = False,
) -> None:
    """Re-encode into a new collection with another model (or dim), then switch the alias to it (blue/green)."""
    from .. import migrations

    _migrate(store, json_output, lambda repo, on_page: migrations.reindex(
        repo, collection, model=model or "default", source=source, dtype=storage, on_disk=on_disk, into=into,
        drop_old=drop_old, device=device, state_dir=state_dir, on_page=on_page))


@migrate_app.command("convert")
def migrate_convert(
    collection: Annotated[str, typer.Option("--collection", "-c", help="The alias your searches use.")],
    store: StoreOption = DEFAULT_STORE,
    storage: Annotated[Optional[str], typer.Option("--storage", help="float32, float16, int8 or binary (sign bits with an int8 rerank copy).")] = None,
    lexical: Annotated[Optional[bool], typer.Option("--lexical/--no-lexical", help="Add BM25 lexical vectors, computed from the stored text (no re-encoding), or leave them out; default: as the collection has them.")] = None,
    on_disk: OnDiskOption = None, into: IntoOption = None, drop_old: DropOldOption = False,
    state_dir: MigrateStateDir = None, json_output: MigrateJson = False,
) -> None:
    """Copy into a new collection with other storage or lexical vectors, then switch the alias to it (blue/green)."""
    from .. import migrations

    _migrate(store, json_output, lambda repo, on_page: migrations.convert_storage(
        repo, collection, dtype=storage, on_disk=on_disk, lexical=lexical, into=into, drop_old=drop_old,
        state_dir=state_dir, on_page=on_page))


@migrate_app.command("rollback")
def migrate_rollback(
    collection: Annotated[str, typer.Option("--collection", "-c", help="The alias to switch back.")],
    store: StoreOption = DEFAULT_STORE, state_dir: MigrateStateDir = None, json_output: MigrateJson = False,
) -> None:
    """Switch an alias back to the collection it pointed at before its last reindex/convert."""
    from .. import migrations

    _migrate(store, json_output, lambda repo, _: migrations.rollback(repo, collection, state_dir=state_dir))


@migrate_app.command("abort")
def migrate_abort(
    collection: MigrateCollection, store: StoreOption = DEFAULT_STORE, state_dir: MigrateStateDir = None,
) -> None:
    """Forget an unfinished migration (a half-built blue/green collection is dropped)."""
    from .. import migrations

    class _Done:
        def __init__(self, state: _State | None) -> None:
            self.state = state

        def to_json(self) -> dict[str, Any]:
            return {"aborted": None if self.state is None else self.state.describe()}

        def format(self) -> str:
            return "no unfinished migration" if self.state is None else f"aborted: {self.state.describe()}"

    _migrate(store, False, lambda repo, _: _Done(migrations.abort(repo, collection, state_dir=state_dir)))


@migrate_app.command("alias")
def migrate_alias(
    alias: Annotated[str, typer.Argument(help="Alias name.")],
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Collection to point it at (created or switched atomically).")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias (never its collection).")] = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Create, switch or delete an alias; with neither option, list every alias."""

    class _Aliases:
        def __init__(self, table: dict[str, str], note: str = "") -> None:
            self.table, self.note = table, note

        def to_json(self) -> dict[str, Any]:
            return dict(self.table)

        def format(self) -> str:
            lines = [f"{a} -> {c}" for a, c in sorted(self.table.items())] or ["no aliases"]
            return "\n".join(([self.note] if self.note else []) + lines)

    def act(repo: Repository, _: OnPage) -> _Aliases:
        if delete and collection:
            raise AgrameError("give --collection to point the alias, or --delete, not both")
        if delete:
            found = repo.delete_alias(alias)
            note = f"deleted alias {alias}" if found else f"no alias {alias}"
        elif collection:
            before = repo.switch_alias(alias, collection)
            note = f"{alias} -> {repo.resolve(alias)}" + (f" (was {before})" if before else " (new)")
        else:
            note = ""
        return _Aliases(repo.list_aliases(), note)

    _migrate(store, False, act)
