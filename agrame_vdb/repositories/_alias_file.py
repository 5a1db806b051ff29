"""Aliases for an engine that has none (Qdrant Edge): a JSON file under its root.

``<root>/aliases.json`` holds ``{"format": 1, "aliases": {alias: collection}}``. A
change is read-modify-write under an exclusive lock (filelock) of ``<root>/.aliases.lock``
(two processes changing aliases do not lose each other's change), and the new
table replaces the file atomically (``atomic.atomic_write_text``), so a
reader in any process sees the old table or the new one. Readers re-read the file
only when its inode, size or modification time changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..atomic import atomic_write_text, file_lock
from ..errors import InvalidSchemaError, RepositoryError
from ..validation import check_name

__all__ = ["ALIAS_FILE", "AliasFile"]

ALIAS_FILE = "aliases.json"
_ALIAS_LOCK = ".aliases.lock"


class AliasFile:
    """The alias table kept in ``root``'s alias file."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self.path = root / ALIAS_FILE
        self._seen: tuple[tuple[int, int, int], dict[str, str]] | None = None

    def read(self) -> dict[str, str]:
        """The table (empty when there is no file), re-read only when the file changed."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        seen = self._seen
        if seen is not None and seen[0] == key:
            return seen[1]
        table = self._load()
        self._seen = (key, table)
        return table

    def _load(self) -> dict[str, str]:
        f = self.path
        try:
            data = json.loads(f.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"the Qdrant Edge alias file {f} is unreadable: {exc}; fix or remove it") from exc
        table = data.get("aliases") if isinstance(data, dict) else None
        if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
            raise RepositoryError(f"the Qdrant Edge alias file {f} is not an alias table; fix or remove it")
        for alias, collection in table.items():  # a target becomes a path under the root: never let one escape it
            try:
                check_name(alias, "alias")
                check_name(collection)
            except InvalidSchemaError as exc:
                raise RepositoryError(
                    f"the Qdrant Edge alias file {f} has a bad entry {alias!r} -> {collection!r} ({exc}); "
                    "fix or remove it"
                ) from None
        return dict(table)

    def change(self, change: Callable[[dict[str, str]], dict[str, str]]) -> None:
        """Replace the table with ``change(table)``, the table read under the lock."""
        with file_lock(self._root / _ALIAS_LOCK):
            table = change(self._load())
            atomic_write_text(self.path, json.dumps({"format": 1, "aliases": dict(sorted(table.items()))}, indent=1),
                              private=False)
            self._seen = None
