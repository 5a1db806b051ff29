"""Bad names given to migrations: alias or collection where a new collection is
wanted, names that would be paths, hand-edited alias tables, NUL in a store path.

Every case ends in a typed AgrameError (:func:`harness.typed_or_ok`) and is refused
(never a clean run that wrote somewhere it should not); afterwards every passage
written before is still there with its content (``passages_lost`` counts the ones
that are not) and no file outside the store was deleted or created.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agrame_vdb import connect
from agrame_vdb.cli import app
from agrame_vdb.migrations import (
    abort,
    add_units,
    convert_storage,
    digest_passages,
    downgrade,
    reindex,
    rollback,
    status,
    upgrade,
)
from agrame_vdb.repository import CollectionSchema, StoredPassage
from agrame_vdb.testing.data import DIM, make_passages

from ..test_migration_targets import ENGINES
from . import report
from .harness import typed_or_ok

runner = CliRunner()


def _populate(repo) -> dict[str, list[StoredPassage]]:
    """``docs`` behind ``live``, ``other`` behind ``arch`` (ids of their own)."""
    written = {
        "docs": make_passages(6),
        "other": [StoredPassage.create(f"o-{p.doc_id}", p.index, p.tokens, units=p.units, text=p.text,
                                       metadata=p.metadata) for p in make_passages(9, seed=5)],
    }
    for name, passages in written.items():
        repo.create_collection(CollectionSchema(name, DIM))
        repo.upsert(name, passages)
    repo.create_alias("live", "docs")
    repo.create_alias("arch", "other")
    return written


def _lost(repo, written: dict[str, list[StoredPassage]]) -> int:
    """Passages written before that are gone or changed (content compared by digest)."""
    lost = 0
    for name, passages in written.items():
        have = {p.id: p for p in repo.fetch(name, [p.id for p in passages]).passages} \
            if name in repo.list_collections() else {}
        lost += sum(1 for p in passages if p.id not in have or digest_passages([have[p.id]]) != digest_passages([p]))
    return lost


def _refused(fn, what: str) -> None:
    out = typed_or_ok(fn, what)
    assert out.error is not None, f"{what}: ran instead of being refused ({out.value!r:.200})"


# names where a migration or an alias call wants a new collection, or an alias
TARGETS = ["arch", "live", "other", "docs", "../other", "", "a b", "x" * 65, "docs\x00"]


@pytest.mark.parametrize("engine", ENGINES)
def test_alias_and_collection_names_as_targets(engine, tmp_path):
    repo = connect(engine.url(tmp_path))
    try:
        written = _populate(repo)
        states = tmp_path / "states"
        for into in TARGETS:
            _refused(lambda: convert_storage(repo, "live", on_disk=True, into=into, drop_old=True, state_dir=states),
                     f"{engine}: convert live --into {into!r} --drop-old")
            _refused(lambda: reindex(repo, "live", model="default", into=into, drop_old=True, state_dir=states),
                     f"{engine}: reindex live --into {into!r} --drop-old")
        cases = {
            "convert a collection": lambda: convert_storage(repo, "docs", on_disk=True, state_dir=states),
            "rollback a collection": lambda: rollback(repo, "docs", state_dir=states),
            "rollback with nothing recorded": lambda: rollback(repo, "live", state_dir=states),
            "create_alias named as a collection": lambda: repo.create_alias("other", "docs"),
            "create_alias that exists": lambda: repo.create_alias("arch", "docs"),
            "switch_alias named as a collection": lambda: repo.switch_alias("docs", "other"),
            "switch_alias to nothing": lambda: repo.switch_alias("live", "missing"),
            "drop_collection of an alias": lambda: repo.drop_collection("arch"),
            "create_collection on an alias, other dim": lambda: repo.create_collection(CollectionSchema("arch", DIM + 1)),
        }
        for what, fn in cases.items():
            _refused(fn, f"{engine}: {what}")
        assert repo.list_aliases() == {"arch": "other", "live": "docs"}
        assert sorted(repo.list_collections()) == ["docs", "other"]
        lost = _lost(repo, written)
        report.add(passages_lost=lost)
        assert lost == 0
    finally:
        repo.close()


ESCAPES = ["/../../../../{tmp}/outside/victim", "../../outside/victim", "../outside/victim", "..", ".",
           "outside/victim", "victim/", "a\x00b", "~/victim"]
SUBCOMMANDS = {
    "status": [], "up": [], "down": ["--to", "1"], "add-units": [], "reindex": ["--model", "default"],
    "convert": ["--storage", "float16"], "rollback": [], "abort": [],
}


def _snapshot(root: Path, store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and store not in p.parents}


def test_path_escaping_names_for_every_migrate_subcommand(tmp_path):
    url = f"qdrant-edge://{tmp_path}/edge"
    repo = connect(url)
    written = _populate(repo)
    repo.close()
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("victim.json", "victim.history.jsonl", ".victim.lock"):
        (outside / name).write_text('{"mine": true}\n')
    before = _snapshot(tmp_path, tmp_path / "edge")
    tried = 0
    for sub, extra in SUBCOMMANDS.items():
        for escape in ESCAPES:
            name = escape.format(tmp=str(tmp_path).lstrip("/"))
            argvs = [["migrate", sub, "-c", name, *extra, "--store", url]]
            if sub in ("convert", "reindex"):
                argvs.append(["migrate", sub, "-c", "live", *extra, "--into", name, "--store", url])
            for argv in argvs:
                res = runner.invoke(app, argv)
                tried += 1
                assert res.exit_code == 2 and "invalid" in res.output, (argv, res.output, res.exception)
    for escape in ESCAPES:  # the alias command: as the alias and as its collection
        name = escape.format(tmp=str(tmp_path).lstrip("/"))
        for argv in (["migrate", "alias", name, "-c", "docs"], ["migrate", "alias", "x", "-c", name],
                     ["migrate", "alias", name, "--delete"]):
            res = runner.invoke(app, [*argv, "--store", url])
            tried += 1
            assert res.exit_code == 2, (argv, res.output, res.exception)
    report.add(bad_inputs_tried=tried)
    assert _snapshot(tmp_path, tmp_path / "edge") == before  # nothing outside the store deleted or made
    repo = connect(url)
    try:
        assert repo.list_aliases() == {"arch": "other", "live": "docs"}
        lost = _lost(repo, written)
        report.add(passages_lost=lost)
        assert lost == 0
    finally:
        repo.close()


API = {
    "status": lambda r, n, s: status(r, n, state_dir=s),
    "upgrade": lambda r, n, s: upgrade(r, n, state_dir=s),
    "downgrade": lambda r, n, s: downgrade(r, n, to=1, state_dir=s),
    "add_units": lambda r, n, s: add_units(r, n, state_dir=s),
    "reindex": lambda r, n, s: reindex(r, n, model="default", state_dir=s),
    "convert": lambda r, n, s: convert_storage(r, n, dtype="float16", state_dir=s),
    "rollback": lambda r, n, s: rollback(r, n, state_dir=s),
    "abort": lambda r, n, s: abort(r, n, state_dir=s),
}


def test_path_escaping_names_in_the_python_api(tmp_path):
    repo = connect("memory://")
    written = _populate(repo)
    states = tmp_path / "a" / "states"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.json").write_text('{"mine": true}\n')
    for op, fn in API.items():
        for name in ("../../outside/victim", str(outside / "victim"), "live/../../../outside/victim", None, 7):
            _refused(lambda: fn(repo, name, states), f"{op}({name!r})")
    assert (outside / "victim.json").read_text() == '{"mine": true}\n'
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["outside", "outside/victim.json"]
    lost = _lost(repo, written)
    report.add(passages_lost=lost)
    assert lost == 0


EDGE_TABLES = [
    {"live": "../outside/victim"}, {"live": "/etc"}, {"../live": "docs"}, {"live": ""}, {"live": "docs/.."},
    {"": "docs"}, {"live": "x" * 65}, {"live": "docs\x00"},
]


def test_hand_edited_edge_alias_tables(tmp_path):
    url = f"qdrant-edge://{tmp_path}/edge"
    repo = connect(url)
    written = _populate(repo)
    alias_file = tmp_path / "edge" / "aliases.json"
    good = alias_file.read_text()
    for table in EDGE_TABLES:
        alias_file.write_text(json.dumps({"format": 1, "aliases": table}))
        for what, fn in (("list_aliases", repo.list_aliases), ("count", lambda: repo.count("live")),
                         ("switch_alias", lambda: repo.switch_alias("live", "other"))):
            _refused(fn, f"{what} with aliases {table!r}")
    alias_file.write_text(good)
    assert repo.list_aliases() == {"arch": "other", "live": "docs"}
    lost = _lost(repo, written)
    repo.close()
    report.add(passages_lost=lost)
    assert lost == 0


@pytest.mark.parametrize("url", ["qdrant-edge:///tmp/a\x00b", "qdrant-edge://rel\x00/x", "qdrant-local:///tmp/a\x00b",
                                 "milvus-lite:///tmp/a\x00b.db", "memory://\x00"])
def test_nul_in_a_store_path(url):
    _refused(lambda: connect(url), f"connect({url!r})")
