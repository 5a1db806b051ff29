"""`agrame-vdb migrate`: status, up, down, aliases, convert, rollback, abort; errors exit 2."""

from __future__ import annotations

import dataclasses
import json

from typer.testing import CliRunner

from agrame_vdb import connect
from agrame_vdb.cli import app
from agrame_vdb.repository import SCHEMA_VERSION, CollectionSchema

from .conformance._data import DIM, make_passages

runner = CliRunner()


def _v1_store(tmp_path) -> str:
    url = f"qdrant-edge://{tmp_path}/edge"
    repo = connect(url)
    repo.create_collection(CollectionSchema("docs", DIM, schema_version=1))
    repo.upsert("docs", [dataclasses.replace(p, schema_version=1) for p in make_passages(12)])
    repo.close()
    return url


def _run(*args: str):
    return runner.invoke(app, ["migrate", *args])


def test_status_up_down(tmp_path):
    store = _v1_store(tmp_path)
    st = _run("status", "-c", "docs", "--store", store)
    assert st.exit_code == 0, st.output
    assert "version      1" in st.output and "agrame-vdb migrate up" in st.output
    up = _run("up", "-c", "docs", "--store", store, "--json")
    assert up.exit_code == 0, up.output
    assert json.loads(up.output)["to_version"] == SCHEMA_VERSION
    st = json.loads(_run("status", "-c", "docs", "--store", store, "--json").output)
    assert st["version"] == SCHEMA_VERSION and st["pending"] == [] and st["history"][-1]["operation"] == "upgrade"
    down = _run("down", "-c", "docs", "--to", "1", "--store", store)
    assert down.exit_code == 0, down.output
    assert json.loads(_run("status", "-c", "docs", "--store", store, "--json").output)["version"] == 1


def test_alias_convert_rollback(tmp_path):
    store = _v1_store(tmp_path)
    assert _run("up", "-c", "docs", "--store", store).exit_code == 0
    bad = _run("convert", "-c", "docs", "--storage", "float16", "--store", store)
    assert bad.exit_code == 2 and "not an alias" in bad.output
    made = _run("alias", "live", "-c", "docs", "--store", store)
    assert made.exit_code == 0 and "live -> docs (new)" in made.output
    conv = _run("convert", "-c", "live", "--storage", "float16", "--store", store, "--json")
    assert conv.exit_code == 0, conv.output
    assert json.loads(conv.output)["target"] == "docs__g2"
    assert "live -> docs__g2" in _run("alias", "live", "--store", store).output  # lists
    back = _run("rollback", "-c", "live", "--store", store)
    assert back.exit_code == 0 and "now points at docs" in back.output
    assert _run("abort", "-c", "live", "--store", store).output.strip() == "no unfinished migration"
    gone = _run("alias", "live", "--delete", "--store", store)
    assert gone.exit_code == 0 and "no aliases" in gone.output


def test_errors_exit_2(tmp_path):
    store = _v1_store(tmp_path)
    missing = _run("status", "-c", "nope", "--store", store)
    assert missing.exit_code == 2 and "does not exist" in missing.output
    units = _run("add-units", "-c", "docs", "--store", store)
    assert units.exit_code == 2 and "migrate up" in units.output  # the collection is at version 1
