"""The light commands start without the heavy libraries: importing torch alone takes
seconds, so ``--help``, ``version``, ``migrate status``, ``migrate alias`` and ``info`` (a
model's settings, read from its files) must not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "tokenizers", "sentence_transformers")

_PROBE = """
import json, sys
from typer.testing import CliRunner
from agrame_vdb.cli import app
r = CliRunner().invoke(app, sys.argv[1:])
print(json.dumps({"code": r.exit_code, "output": r.output,
                  "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _run(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from agrame_vdb import CollectionSchema, connect

    url = f"qdrant-edge://{tmp_path_factory.mktemp('startup')}/store"
    with connect(url) as repo:
        repo.create_collection(CollectionSchema("docs", dim=4))
        repo.create_alias("live", "docs")
    return url


@pytest.mark.parametrize(
    "args",
    [("version",), ("--help",), ("migrate", "--help"), ("migrate", "status", "--collection", "docs", "--json"),
     ("migrate", "alias", "live"), ("info",), ("info", "--model", "minilm-frozen-128")],
    ids=["version", "help", "migrate-help", "migrate-status", "migrate-alias", "info", "info-trained-model"],
)
def test_light_commands_import_no_torch_or_transformers(store, args):
    if args[0] == "migrate" and args[1] != "--help":
        args = (*args, "--store", store)
    found = _run(*args)
    assert found["code"] == 0, found["output"]
    assert found["heavy"] == [], f"{' '.join(args)} imported {found['heavy']}"


def test_the_migrate_commands_really_read_the_store(store):
    status = _run("migrate", "status", "--collection", "docs", "--json", "--store", store)
    assert json.loads(status["output"])["collection"] == "docs"
    assert "docs" in _run("migrate", "alias", "live", "--store", store)["output"]


def test_importing_the_package_imports_no_torch_until_a_name_needs_it():
    probe = ("import sys, agrame_vdb; a = 'torch' in sys.modules; agrame_vdb.Passage; b = 'torch' in sys.modules; "
             "agrame_vdb.Planner; print(a, b, 'torch' in sys.modules, len(agrame_vdb.__all__) == len(set(dir(agrame_vdb)) & set(agrame_vdb.__all__)))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300, check=True)
    assert out.stdout.split() == ["False", "False", "True", "True"]
