"""The schema migrations of agrame-vdb collections: one file per version in
``versions/`` (how they work and how to add one: ``README.md`` beside this file).

This folder is the package :mod:`agrame_vdb.migrations` (``pyproject.toml`` maps it
there, so a wheel ships it inside the package). The runner is
:mod:`agrame_vdb.migrate`; its names are re-exported here, so imports written
before it moved (``from agrame_vdb.migrations import upgrade``,
``agrame_vdb.migrations.operations``) keep working.
"""

from __future__ import annotations

import sys

from agrame_vdb import migrate as _migrate
from agrame_vdb.migrate import *  # noqa: F403
from agrame_vdb.migrate import DEFAULT_PAGE, STATE_FORMAT, Step, operations  # noqa: F401

__all__ = list(_migrate.__all__)

# the same module object under its old name (a second import of operations.py would make second classes)
sys.modules.setdefault(f"{__name__}.operations", operations)
