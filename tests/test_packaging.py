"""The schema migrations ship with the package: the top-level ``migrations/`` folder is the
package ``agrame_vdb.migrations`` in a wheel, an editable install and a checkout run
without installing; the version-file template makes a valid migration."""

from __future__ import annotations

import doctest
import importlib
import json
import os
import shutil
import string
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import agrame_vdb
from agrame_vdb import _source_tree
from agrame_vdb.migrate import Check, Migration, MigrationContext, RewritePassages, StoreSchema, load_migrations

ROOT = Path(__file__).resolve().parents[1]
VERSION_FILES = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("v*.py"))

#: what a build needs from the checkout (the rest: tests, docs, benchmarks ... stay out)
_BUILD_INPUTS = ("pyproject.toml", "README.md", "agrame_vdb", "migrations")

#: prints where the package and its migrations were imported from, and the chain
_PROBE = """
import json, agrame_vdb, agrame_vdb.migrations, agrame_vdb.migrations.versions as v
from agrame_vdb.migrations import load_migrations
print(json.dumps({"package": agrame_vdb.__file__, "versions": v.__file__,
                  "chain": [m.id for m in load_migrations()]}))
"""


def _probe(python_path: Path, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(python_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _copy_build_inputs(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in _BUILD_INPUTS:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    src = _copy_build_inputs(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src), "-w", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("agrame_vdb-*.whl")
    return built


def test_there_are_version_files():
    assert VERSION_FILES and VERSION_FILES == [f"{m.id}.py" for m in load_migrations()]


def test_the_wheel_ships_every_version_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in VERSION_FILES:
        assert f"agrame_vdb/migrations/versions/{name}" in names, name
    for name in ("__init__.py", "versions/__init__.py", "README.md", "script.py.tmpl"):
        assert f"agrame_vdb/migrations/{name}" in names, name
    for module in ("__init__", "steps", "state", "runner", "reports", "digest", "operations"):
        assert f"agrame_vdb/migrate/{module}.py" in names, module
    assert not any(n.startswith("migrations/") for n in names), "the folder is shipped inside the package only"


def test_the_installed_wheel_imports_its_migrations(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel unpacked is an installed package
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    got = _probe(site, elsewhere)
    assert Path(got["package"]).parent == site / "agrame_vdb"
    assert Path(got["versions"]).parent == site / "agrame_vdb" / "migrations" / "versions"
    assert [f"{i}.py" for i in got["chain"]] == VERSION_FILES


def test_a_checkout_run_without_installing_finds_its_migrations(tmp_path):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    got = _probe(ROOT, elsewhere)
    assert Path(got["package"]).parent == ROOT / "agrame_vdb"
    assert Path(got["versions"]).parent == ROOT / "migrations" / "versions"
    assert [f"{i}.py" for i in got["chain"]] == VERSION_FILES


def test_this_process_imports_the_migrations_of_its_own_tree():
    """Installed editable or on PYTHONPATH, the package and its migrations come from one tree."""
    versions = importlib.import_module("agrame_vdb.migrations.versions")
    package_dir = Path(agrame_vdb.__file__).resolve().parent
    folder = _source_tree.source_migrations(package_dir) or package_dir / "migrations"
    assert Path(versions.__file__).resolve().parent == folder.resolve() / "versions"


def test_source_migrations_only_for_a_checkout(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "agrame_vdb").mkdir(parents=True)
    (checkout / "migrations" / "versions").mkdir(parents=True)
    (checkout / "migrations" / "__init__.py").write_text("")
    assert _source_tree.source_migrations(checkout / "agrame_vdb") is None  # no pyproject.toml: not a checkout
    (checkout / "pyproject.toml").write_text("")
    assert _source_tree.source_migrations(checkout / "agrame_vdb") == checkout / "migrations"
    (checkout / "agrame_vdb" / "migrations").mkdir()  # installed: the package has its own
    assert _source_tree.source_migrations(checkout / "agrame_vdb") is None


def test_old_import_paths_stay():
    import agrame_vdb.migrate as migrate
    import agrame_vdb.migrate.operations as operations
    import agrame_vdb.migrations as migrations
    import agrame_vdb.migrations.operations as old_operations

    assert old_operations is operations
    for name in [*migrate.__all__, "DEFAULT_PAGE", "STATE_FORMAT", "Step"]:
        assert getattr(migrations, name) is getattr(migrate, name), name


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert config["package-dir"] == {"agrame_vdb.migrations": "migrations"}
    found = set()
    for top, name in (("agrame_vdb", "agrame_vdb"), ("migrations", "agrame_vdb.migrations")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert sorted(config["packages"]) == sorted(found)


def test_the_template_makes_a_valid_migration():
    text = (ROOT / "migrations" / "script.py.tmpl").read_text(encoding="utf-8")
    version = max(m.version for m in load_migrations()) + 1
    source = string.Template(text).substitute(version=version, previous=version - 1, NNNN=f"{version:04d}", what="example")
    namespace: dict = {}
    exec(compile(source, f"v{version:04d}_example.py", "exec"), namespace)
    m = namespace["MIGRATION"]
    assert isinstance(m, Migration) and (m.id, m.version) == (f"v{version:04d}_example", version)
    assert [type(s) for s in m.upgrade] == [Check, RewritePassages, StoreSchema]
    assert m.downgrade is not None and all(isinstance(s, (RewritePassages, StoreSchema)) for s in m.downgrade)
    ctx = MigrationContext(None, "docs", version - 1, version)
    assert m.upgrade[0].fn(ctx) is None  # the placeholders change nothing
    assert m.upgrade[1].fn(None, ctx) is None and m.upgrade[2].fn(None, ctx) is None


def test_doctests():
    result = doctest.testmod(importlib.import_module("agrame_vdb.migrate"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
