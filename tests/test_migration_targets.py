"""Names a migration is given: an alias is never taken for a new collection, a name
never becomes a path outside the store, a hand-edited alias table or a NUL in a path
ends in a typed error (issue 14).

References are independent of the runner: digests of the passages as written
(``digest_passages``), the collections and aliases listed before the run, the files
on disk. Milvus Lite is skipped with its reason where its packages are missing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agrame_vdb import connect
from agrame_vdb.cli import app
from agrame_vdb.errors import InvalidInputError, InvalidSchemaError, MigrationError, RepositoryError
from agrame_vdb.migrations import (
    MigrationState,
    abort,
    add_units,
    convert_storage,
    digest,
    digest_passages,
    downgrade,
    reindex,
    rollback,
    status,
    upgrade,
)
from agrame_vdb.migrations.operations import next_generation
from agrame_vdb.repository import CollectionSchema, StoredPassage

from . import engines
from .conformance._data import DIM, make_passages

runner = CliRunner()

ENGINES = engines.params("memory", "qdrant-edge", "milvus-lite")
PERSISTENT = [p for p in ENGINES if p.values[0].persistent]  # the CLI connects anew each command


def store_url(engine: engines.EngineCase, d: Path) -> str:
    return engine.url(d)


def other_passages(n: int = 8) -> list[StoredPassage]:
    """Passages with ids of their own (another document set) and other vectors."""
    return [StoredPassage.create(f"arch-{p.doc_id}", p.index, p.tokens, units=p.units, text=p.text,
                                 metadata=p.metadata) for p in make_passages(n, seed=7)]


def two_aliased(repo) -> dict:
    """``docs`` behind alias ``live``, ``other`` behind alias ``arch``; what each holds."""
    docs, other = make_passages(5), other_passages()
    repo.create_collection(CollectionSchema("docs", DIM))
    repo.upsert("docs", docs)
    repo.create_collection(CollectionSchema("other", DIM))
    repo.upsert("other", other)
    repo.create_alias("live", "docs")
    repo.create_alias("arch", "other")
    return {"docs": digest_passages(docs), "other": digest_passages(other)}


def assert_untouched(repo, reference: dict) -> None:
    assert repo.list_collections() == ["docs", "other"]
    assert repo.list_aliases() == {"arch": "other", "live": "docs"}
    for name, ref in reference.items():
        assert digest(repo, name) == ref, f"{name} changed"


def _api_convert(repo, states):
    return convert_storage(repo, "live", on_disk=True, into="arch", drop_old=True, state_dir=states)


def _api_reindex(repo, states):
    return reindex(repo, "live", model="default", into="arch", drop_old=True, state_dir=states)


@pytest.mark.parametrize("run", [_api_convert, _api_reindex], ids=["convert", "reindex"])
@pytest.mark.parametrize("engine", ENGINES)
def test_into_an_alias_is_refused_and_nothing_is_touched(engine, run, tmp_path):
    repo = connect(store_url(engine, tmp_path))
    try:
        reference = two_aliased(repo)
        with pytest.raises(MigrationError, match="'arch' is an alias"):
            run(repo, tmp_path / "states")
        assert_untouched(repo, reference)
        assert status(repo, "live", state_dir=tmp_path / "states").in_progress is None
    finally:
        repo.close()


@pytest.mark.parametrize("command", [["convert", "--on-disk"], ["reindex", "--model", "default"]], ids=lambda c: c[0])
@pytest.mark.parametrize("engine", PERSISTENT)
def test_cli_into_an_alias_is_refused_and_nothing_is_touched(engine, command, tmp_path):
    url = store_url(engine, tmp_path)
    repo = connect(url)
    reference = two_aliased(repo)
    repo.close()
    out = runner.invoke(app, ["migrate", command[0], "-c", "live", *command[1:], "--into", "arch", "--drop-old",
                              "--store", url])
    assert out.exit_code == 2, out.output
    assert "'arch' is an alias" in out.output
    repo = connect(url)
    try:
        assert_untouched(repo, reference)
    finally:
        repo.close()


def test_generation_names_skip_aliases():
    repo = connect("memory://")
    reference = two_aliased(repo)
    repo.create_alias("docs__g2", "other")  # an alias with the name the next generation would have
    assert next_generation(repo, "docs") == "docs__g3"
    result = convert_storage(repo, "live", dtype="float16")
    assert result.target == "docs__g3" and repo.resolve("live") == "docs__g3"
    assert digest(repo, "other") == reference["other"] and digest(repo, "docs") == reference["docs"]


class Crash(RuntimeError):
    """Stands for a process killed mid-migration."""


def test_resume_refuses_a_target_that_became_an_alias(tmp_path, monkeypatch):
    repo = connect("memory://")
    reference = two_aliased(repo)
    real_create = repo.create_collection

    def killed(schema):
        raise Crash("killed before the new collection was made")

    monkeypatch.setattr(repo, "create_collection", killed)
    with pytest.raises(Crash):
        convert_storage(repo, "live", on_disk=True, into="fresh", state_dir=tmp_path)
    monkeypatch.setattr(repo, "create_collection", real_create)
    repo.create_alias("fresh", "other")  # the name is taken by an alias before the run resumes
    with pytest.raises(MigrationError, match="'fresh' is an alias"):
        convert_storage(repo, "live", on_disk=True, into="fresh", state_dir=tmp_path)
    assert digest(repo, "other") == reference["other"] and digest(repo, "docs") == reference["docs"]
    assert repo.resolve("live") == "docs" and repo.list_collections() == ["docs", "other"]


def test_resume_refuses_an_alias_that_moved_to_another_collection(tmp_path):
    repo = connect("memory://")
    for name in ("a", "b"):
        repo.create_collection(CollectionSchema(name, DIM, schema_version=1))
        repo.upsert(name, [dataclasses.replace(p, schema_version=1) for p in make_passages(12)])
    repo.create_alias("live", "a")
    seen = {"n": 0}

    def crash(state: MigrationState) -> None:
        seen["n"] += 1
        if seen["n"] == 1:
            raise Crash("killed after the first page")

    with pytest.raises(Crash):
        upgrade(repo, "live", state_dir=tmp_path, page=4, on_page=crash)
    repo.switch_alias("live", "b")
    with pytest.raises(MigrationError, match="ran on collection 'a'.*now stands for 'b'"):
        upgrade(repo, "live", state_dir=tmp_path, page=4)
    assert repo.open_collection("b").schema_version == 1  # not half-migrated from a's cursor on
    assert abort(repo, "live", state_dir=tmp_path) is not None
    assert upgrade(repo, "live", state_dir=tmp_path).to_version == 2
    assert {p.schema_version for p in repo.fetch("b", list(repo.iter_ids("b")))} == {2}


# --------------------------------------------------------------------------- names as paths

ESCAPES = ["/../../../../{tmp}/outside/victim", "../../outside/victim", "../outside/victim"]
SUBCOMMANDS = {
    "status": [], "up": [], "down": ["--to", "1"], "add-units": [], "reindex": ["--model", "default"],
    "convert": ["--storage", "float16"], "rollback": [], "abort": [],
}


def _outside(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A directory beside the store with a file where an escaping name would land."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.json").write_text('{"mine": true}\n')
    (outside / "victim.history.jsonl").write_text("{}\n")
    return outside, {p.name: p.read_bytes() for p in outside.iterdir()}


@pytest.mark.parametrize("escape", ESCAPES)
@pytest.mark.parametrize("sub", sorted(SUBCOMMANDS))
def test_cli_collection_names_never_become_paths(sub, escape, tmp_path):
    url = f"qdrant-edge://{tmp_path}/edge"
    repo = connect(url)
    repo.create_collection(CollectionSchema("docs", DIM))
    repo.close()
    outside, before = _outside(tmp_path)
    name = escape.format(tmp=str(tmp_path).lstrip("/"))
    out = runner.invoke(app, ["migrate", sub, "-c", name, *SUBCOMMANDS[sub], "--store", url])
    assert out.exit_code == 2, (out.output, out.exception)
    assert "invalid collection name" in out.output
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before  # nothing deleted, nothing created
    assert not [p for p in tmp_path.rglob("*victim*") if p.parent != outside]  # no state or lock made for it


API = {
    "status": lambda r, n, s: status(r, n, state_dir=s),
    "upgrade": lambda r, n, s: upgrade(r, n, state_dir=s),
    "downgrade": lambda r, n, s: downgrade(r, n, to=1, state_dir=s),
    "add_units": lambda r, n, s: add_units(r, n, state_dir=s),
    "reindex": lambda r, n, s: reindex(r, n, model="default", state_dir=s),
    "convert": lambda r, n, s: convert_storage(r, n, dtype="float16", state_dir=s),
    "rollback": lambda r, n, s: rollback(r, n, state_dir=s),
    "abort": lambda r, n, s: abort(r, n, state_dir=s),
    "into": lambda r, n, s: convert_storage(r, "live", dtype="float16", into=n, state_dir=s),
}


@pytest.mark.parametrize("op", sorted(API))
def test_api_collection_names_never_become_paths(op, tmp_path):
    repo = connect("memory://")
    repo.create_collection(CollectionSchema("docs", DIM))
    repo.create_alias("live", "docs")
    outside, before = _outside(tmp_path)
    states = tmp_path / "store" / "states"
    for name in ("../../outside/victim", str(outside / "victim"), "docs/../../outside/victim"):
        with pytest.raises(InvalidSchemaError, match="invalid (new )?collection name"):
            API[op](repo, name, states)
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before
    assert not states.exists() or not any(states.iterdir())  # no lock or state made for a bad name
    assert repo.list_collections() == ["docs"] and repo.list_aliases() == {"live": "docs"}


# --------------------------------------------------------------------------- Qdrant Edge's alias table


@pytest.mark.parametrize("table", [
    {"live": "../outside/victim"},
    {"live": "/etc"},
    {"../live": "docs"},
    {"live": ""},
], ids=["relative-target", "absolute-target", "bad-alias", "empty-target"])
def test_edge_alias_table_entries_are_checked_when_read(table, tmp_path):
    url = f"qdrant-edge://{tmp_path}/edge"
    victim_root = tmp_path / "outside"
    repo = connect(f"qdrant-edge://{victim_root}")
    repo.create_collection(CollectionSchema("victim", DIM))  # a real collection outside the store
    repo.upsert("victim", make_passages(3))
    repo.close()
    repo = connect(url)
    repo.create_collection(CollectionSchema("docs", DIM))
    alias_file = tmp_path / "edge" / "aliases.json"
    alias_file.write_text(json.dumps({"format": 1, "aliases": table}))  # edited by hand
    try:
        for call in (repo.list_aliases, lambda: repo.count("live"), lambda: repo.count("docs")):
            with pytest.raises(RepositoryError, match=f"alias file {alias_file} has a bad entry"):
                call()
    finally:
        repo.close()
    assert (victim_root / "victim" / "collection.json").exists()


# --------------------------------------------------------------------------- NUL in a path


def test_nul_in_an_edge_path_is_a_typed_error(tmp_path):
    from agrame_vdb.repositories.qdrant_edge import QdrantEdgeRepository

    with pytest.raises(InvalidInputError, match="NUL"):
        connect(f"qdrant-edge://{tmp_path}/a\x00b")
    with pytest.raises(InvalidInputError, match="NUL"):
        QdrantEdgeRepository(f"{tmp_path}/a\x00b")
    with pytest.raises(InvalidInputError, match="NUL") as caught:
        connect("http://user:s3cret@qdrant\x00:6333")
    assert "s3cret" not in str(caught.value)  # a URL's secret is never shown
    assert list(tmp_path.iterdir()) == []
