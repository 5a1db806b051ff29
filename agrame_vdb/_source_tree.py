"""Find :mod:`agrame_vdb.migrations` in a source checkout that was not installed.

The schema migrations live in the top-level ``migrations/`` folder of the
repository; ``pyproject.toml`` maps it to the package ``agrame_vdb.migrations``,
so a wheel ships it inside ``agrame_vdb/`` and an editable install finds it
through setuptools' finder. Run from a checkout on ``PYTHONPATH`` (no install,
or an install of another checkout), nothing maps it: :func:`install` puts a
finder first on :data:`sys.meta_path` (when this module is imported, by
``agrame_vdb/__init__.py``) that resolves ``agrame_vdb.migrations`` to
the ``migrations/`` beside this ``agrame_vdb/``, so the package and its
migrations always come from the same tree. It does nothing in an installed
package (``agrame_vdb/migrations/`` is there).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

_NAME = "agrame_vdb.migrations"


class _MigrationsFinder(importlib.abc.MetaPathFinder):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != _NAME:
            return None  # its submodules (versions, ...) are found through its __path__
        return importlib.util.spec_from_file_location(
            fullname, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)]
        )


def source_migrations(package_dir: Path) -> Path | None:
    """The ``migrations/`` folder of the checkout ``package_dir`` (``agrame_vdb/``) lies
    in, when the package itself has none; else None."""
    if (package_dir / "migrations").is_dir():
        return None  # installed: the wheel put it inside the package
    root = package_dir.parent
    folder = root / "migrations"
    if (root / "pyproject.toml").is_file() and (folder / "__init__.py").is_file() and (folder / "versions").is_dir():
        return folder
    return None


def install(package_dir: Path = Path(__file__).parent) -> None:
    folder = source_migrations(package_dir)
    if folder is not None and not any(isinstance(f, _MigrationsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MigrationsFinder(folder))


install()
