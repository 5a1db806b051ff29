"""The `agrame-vdb` command: help, model info, encode, and errors as exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agrame_vdb.cli import app

runner = CliRunner()


def test_console_script_help_runs():
    exe = Path(sys.executable).with_name("agrame-vdb")
    assert exe.is_file(), "the console script is not installed next to this Python (pip install -e .)"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage" in out and "encode" in out


def test_info_describes_the_default_model():
    result = runner.invoke(app, ["info", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["format"] == "agrame" and info["dim"] == 384  # the plain base's own token states, and a [Q'] of its own
    assert info["markers"] == {"query": None, "document": None, "subpassage": "[unused2]"}
    assert info["query_augmentation"] is False and info["projection"] is True
    assert (info["projection_scope"], info["subpassage_layers"]) == ("subpassage_query", True)
    assert info["unit_coverage"] == {"proposition": 0.25}
    assert info["device"] == "cpu" and info["dtype"] in ("float32", "bfloat16")  # auto, resolved for this CPU


def test_info_reads_a_trained_model_and_shows_device_and_dtype_as_asked():
    result = runner.invoke(app, ["info", "--model", "minilm-frozen-128", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["format"], info["dim"], info["projection"], info["query_augmentation"]) == ("agrame", 128, True, True)
    assert info["markers"] == {"query": "[unused0]", "document": "[unused1]", "subpassage": "[unused2]"}
    assert (info["device"], info["dtype"]) == ("auto", "bfloat16")
    assert (info["projection_scope"], info["subpassage_layers"]) == ("all", False)
    assert json.loads(runner.invoke(app, ["info", "--device", "cuda"]).output)["dtype"] == "auto"  # the GPU decides
    bad = runner.invoke(app, ["info", "--dtype", "float8"])
    assert bad.exit_code == 2 and "unknown dtype 'float8'" in bad.output


def test_encode_prints_units_per_passage():
    result = runner.invoke(app, ["encode", "--device", "cpu", "The tower is tall. It was built in 1889."])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.strip().splitlines()[-1])
    assert row["shape"] == [13, 384]  # [CLS] text [SEP]: no [D] marker
    assert [u["text"] for u in row["units"]] == ["The tower is tall.", "It was built in 1889."]


def test_a_bad_model_path_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["info", "--model", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "accepted formats" in result.output


def test_python_m_runs_the_command():
    out = subprocess.run([sys.executable, "-m", "agrame_vdb.cli", "version"], capture_output=True, text=True, check=True)
    from agrame_vdb import __version__

    assert out.stdout.strip() == __version__


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer's own click, or click)
            yield from _commands(command, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), command


def test_every_store_option_defaults_to_the_one_default_store():
    import typer.main

    from agrame_vdb.cli import DEFAULT_STORE

    defaults = {
        name: param.default
        for name, command in _commands(typer.main.get_command(app))
        for param in command.params
        if "--store" in param.opts
    }
    assert defaults.pop("eval") is None  # eval's default: a temporary store, removed afterwards
    assert len(defaults) >= 12 and set(defaults.values()) == {DEFAULT_STORE}, defaults


def test_an_error_in_a_command_exits_2_and_names_it_without_a_traceback(tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": 1, "text": "fine"}\n\n{"id": 2, "text": ""}\n')
    result = runner.invoke(app, ["search", "-c", "docs", "--store", "memory://", "--queries", str(queries)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert 'q.jsonl:3: each line must be an object with a non-empty "text"' in result.output
    neither = runner.invoke(app, ["search", "-c", "docs", "--store", "memory://"])
    assert neither.exit_code == 2 and "give either a QUERY or --queries FILE" in neither.output


def test_searching_a_missing_collection_names_the_collections_and_the_command_that_makes_one(tmp_path):
    from agrame_vdb import CollectionSchema, connect
    from agrame_vdb.errors import CollectionNotFoundError

    store = f"qdrant-edge://{tmp_path}/store"
    with connect(store) as repo:
        repo.create_collection(CollectionSchema("papers", dim=4))
        repo.create_collection(CollectionSchema("notes", dim=4))
        with pytest.raises(CollectionNotFoundError) as raised:  # the library: the Python call, and what exists
            repo.open_collection("demo")
        assert raised.value.collection == "demo" and raised.value.existing == ("notes", "papers")
        assert "the collections 'notes', 'papers'" in str(raised.value)
        assert "create_collection(CollectionSchema('demo'" in str(raised.value)
    result = runner.invoke(app, ["search", "a question", "--collection", "demo", "--store", store, "--device", "cpu"])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "collection 'demo' does not exist in this store (its collections: notes, papers)" in said
    assert "agrame-vdb index DOCUMENTS.jsonl --collection demo" in said
    assert "create_collection" not in said  # no Python call to a command-line user
