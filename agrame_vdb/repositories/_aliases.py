"""The alias part of :class:`~agrame_vdb.repositories.base.RepositoryBase`.

An alias stands for a collection in every call that takes a collection name
(``drop_collection`` excepted); blue/green re-indexing switches one from a
collection to its successor in one atomic step. Engines keep the table (the three
hooks); this mixin checks names and targets, caches look-ups on shared servers for
:data:`ALIAS_TTL_S`, and creates, switches and deletes aliases through the hooks.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import AliasError, UnsupportedOperationError
from ..validation import check_name

if TYPE_CHECKING:
    from ..records import Capabilities
    from ..schema import CollectionSchema

__all__ = ["ALIAS_TTL_S", "AliasMixin"]

#: seconds a shared server's alias look-up is reused (another client may move an
#: alias; an operation on a collection that has gone looks again at once)
ALIAS_TTL_S = 1.0


class AliasMixin:
    """Aliases over the engine's three alias hooks (see the module docstring)."""

    engine: ClassVar[str]
    _lock: threading.RLock
    _schemas: dict[str, CollectionSchema]
    _alias_cache: tuple[float, dict[str, str]] | None
    _alias_ttl_s: float | None

    if TYPE_CHECKING:  # given by RepositoryBase

        def _check_open(self) -> None: ...

        def _schema(self, name: str) -> CollectionSchema: ...

        def _load_schema(self, name: str) -> CollectionSchema | None: ...

        def _capabilities(self) -> Capabilities: ...

        def _engine(self, op: str, collection: str | None = None) -> AbstractContextManager[None]: ...

    # alias hooks: engines with aliases override all three (names given are checked,
    # targets exist and are collections, aliases never point at aliases)

    def _aliases(self) -> dict[str, str]:
        """Every alias of the store and the collection it points at."""
        return {}

    def _set_alias(self, alias: str, collection: str, previous: str | None) -> None:
        """Point ``alias`` at ``collection`` atomically: create it (``previous`` None)
        or move it from ``previous``; a reader sees the old target or the new one."""
        raise UnsupportedOperationError(f"{self.engine} has no collection aliases in this version of agrame-vdb")

    def _delete_alias(self, alias: str) -> None:
        raise UnsupportedOperationError(f"{self.engine} has no collection aliases in this version of agrame-vdb")

    # ----- look-ups and changes

    def _alias_map(self, *, refresh: bool = False) -> dict[str, str]:
        """alias -> collection, cached for ``alias_ttl`` seconds on shared servers
        (another client may move an alias), asked every time elsewhere."""
        ttl = self._alias_ttl()
        cached = self._alias_cache
        now = time.monotonic()
        if not refresh and ttl > 0 and cached is not None and now - cached[0] < ttl:
            return cached[1]
        with self._engine("list aliases"):
            found = dict(self._aliases())
        self._alias_cache = (now, found)
        return found

    def _alias_ttl(self) -> float:
        if self._alias_ttl_s is None:
            caps = self._capabilities()
            # one process owns an embedded store: its own look-ups are cheap and exact
            self._alias_ttl_s = 0.0 if caps.exclusive or not caps.persistent else ALIAS_TTL_S
        return self._alias_ttl_s

    def _check_alias_name(self, alias: Any) -> str:
        return check_name(alias, "alias")

    def _alias_target_collection(self, collection: str) -> str:
        """The concrete collection an alias will point at (an alias given resolves)."""
        return self._schema(collection).name

    def resolve(self, name: str) -> str:
        """The collection ``name`` stands for: the alias's target, or ``name`` itself
        when it is a collection (CollectionNotFoundError when it is neither)."""
        return self._schema(name).name

    def list_aliases(self) -> dict[str, str]:
        """Every alias and the collection it points at, sorted by alias."""
        self._check_open()
        return dict(sorted(self._alias_map(refresh=True).items()))

    def create_alias(self, alias: str, collection: str) -> None:
        """Make ``alias`` stand for ``collection`` in every collection-taking call.
        AliasError when the alias exists or a collection has that name."""
        self._check_open()
        alias = self._check_alias_name(alias)
        with self._lock:
            target = self._alias_target_collection(collection)
            current = self._alias_map(refresh=True)
            if alias in current:
                raise AliasError(
                    f"alias {alias!r} exists (it points at {current[alias]!r}); move it with switch_alias"
                )
            self._check_not_collection(alias)
            with self._engine("create alias", alias):
                self._set_alias(alias, target, None)
            self._alias_cache = None

    def switch_alias(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection`` in one atomic step (creating it when
        missing): searches through the alias answer from the old collection or the
        new one, never from neither. Returns the collection it pointed at before."""
        self._check_open()
        alias = self._check_alias_name(alias)
        with self._lock:
            target = self._alias_target_collection(collection)
            previous = self._alias_map(refresh=True).get(alias)
            if previous is None:
                self._check_not_collection(alias)
            if previous != target:
                with self._engine("switch alias", alias):
                    self._set_alias(alias, target, previous)
            self._alias_cache = None
            return previous

    def delete_alias(self, alias: str) -> bool:
        """Remove an alias (never its collection); False when there was none."""
        self._check_open()
        alias = self._check_alias_name(alias)
        with self._lock:
            if alias not in self._alias_map(refresh=True):
                return False
            with self._engine("delete alias", alias):
                self._delete_alias(alias)
            self._alias_cache = None
            return True

    def _check_not_collection(self, alias: str) -> None:
        with self._engine("open collection", alias):
            clash = alias in self._schemas or self._load_schema(alias) is not None
        if clash:
            raise AliasError(f"{alias!r} is a collection; an alias needs a name no collection has")
