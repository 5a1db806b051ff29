"""Engines behind the repository protocol, picked by a URL.

``connect(url)`` works as a SQLAlchemy URL does: the scheme names the engine, the
rest says where the data is. Engine modules are imported only when their scheme is
used, so a missing optional client (pymilvus) breaks only its own scheme.

==========================================  ==============================================
URL                                         engine
==========================================  ==============================================
``memory://``                               exact numpy reference, in process, not persistent
``qdrant-edge:///abs/path``                 Qdrant Edge, embedded, on disk (the default);
``qdrant-edge://rel/path``, ``qdrant-edge:``  relative path, or ``./agrame-data``
``qdrant-local:///abs/path``                qdrant-client local mode on disk (small data)
``qdrant-local://:memory:``, ``qdrant-local:``  local mode in memory
``http://host:6333``, ``https://…``         Qdrant server (API key from ``QDRANT_API_KEY``)
``milvus-lite:///abs/path.db``              Milvus Lite (``agrame_vdb.repositories.milvus``)
``milvus://host:19530``                     Milvus server
==========================================  ==============================================

Query parameters become options of the engine (``?token_copy=0``), as do keyword
arguments: ``connect("qdrant-edge:///data", token_copy=False)``. Each engine declares
the options it takes as a pydantic model (:mod:`._options`): an unknown option is
refused with a message naming the known ones.

Credentials in a URL (``http://user:pass@host``, ``?token=``, ``?api_key=``) are
never shown: messages, reprs and everything kept of a URL use
:func:`agrame_vdb.redact.redact_url`. Embedded engines take a path, not
credentials: ``qdrant-edge://user:pass@x`` is refused (write ``qdrant-edge:rel/a@b``
or ``qdrant-edge:///abs/a@b`` for a path with an ``@``).

>>> connect("nope://x")
Traceback (most recent call last):
...
agrame_vdb.errors.UnknownStoreError: unknown store scheme 'nope' in 'nope://x'; known schemes: http, https, memory, milvus, milvus-lite, qdrant-edge, qdrant-local
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ..errors import InvalidInputError, StoreUnavailableError, UnknownStoreError
from ..redact import redact_url, split_userinfo

if TYPE_CHECKING:
    from .base import RepositoryBase

__all__ = ["connect", "StoreURL", "register_scheme", "known_schemes", "DEFAULT_EDGE_PATH"]

DEFAULT_EDGE_PATH = "./agrame-data"

#: scheme -> module that defines ``from_url(url: StoreURL, **options) -> Repository``
_SCHEMES: dict[str, str] = {
    "memory": "agrame_vdb.repositories.memory",
    "qdrant-edge": "agrame_vdb.repositories.qdrant_edge",
    "qdrant-local": "agrame_vdb.repositories.qdrant",
    "http": "agrame_vdb.repositories.qdrant",
    "https": "agrame_vdb.repositories.qdrant",
    "milvus-lite": "agrame_vdb.repositories.milvus",
    "milvus": "agrame_vdb.repositories.milvus",
}

#: schemes whose location is a path (or nothing): a ``user:pass@`` there is refused
_PATH_SCHEMES = frozenset({"memory", "qdrant-edge", "qdrant-local", "milvus-lite"})


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL.

    ``location`` is everything between ``scheme:`` (and an optional ``//``) and the
    query string: a path for embedded engines (``///abs`` gives ``/abs``, ``//rel``
    gives ``rel``), ``host:port`` for servers. ``base`` is the URL without its
    query string. ``options`` are the query parameters, as strings.
    """

    raw: str
    scheme: str
    location: str
    base: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def shown(self) -> str:
        """The URL as it may be shown or stored: credentials redacted."""
        return redact_url(self.raw)

    def __repr__(self) -> str:
        return f"StoreURL({self.shown!r})"


def known_schemes() -> list[str]:
    return sorted(_SCHEMES)


def register_scheme(scheme: str, module: str) -> None:
    """Serve ``scheme`` with ``module.from_url`` (for engines outside this package)."""
    _SCHEMES[scheme.lower()] = module


def parse_url(url: str) -> StoreURL:
    if not isinstance(url, str) or ":" not in url:
        raise UnknownStoreError(
            f"a store URL looks like 'qdrant-edge:///path' or 'memory://', got {redact_url(url)!r}; "
            f"known schemes: {', '.join(known_schemes())}"
        )
    if "\x00" in url:  # the URL itself is never shown: it may hold a password
        raise InvalidInputError(f"a store URL must not contain a NUL character (found at position {url.index(chr(0))})")
    scheme, rest = url.split(":", 1)
    scheme = scheme.lower()
    rest_no_query, _, query = rest.partition("?")
    if scheme in _PATH_SCHEMES and split_userinfo(rest_no_query)[0] is not None:
        raise InvalidInputError(
            f"{scheme} is embedded and takes a path, not credentials: got {redact_url(url)!r}; for a path "
            f"with an '@' in it write {scheme}:relative/path or {scheme}:///absolute/path"
        )
    location = rest_no_query[2:] if rest_no_query.startswith("//") else rest_no_query
    options = dict(parse_qsl(query, keep_blank_values=True))
    return StoreURL(url, scheme, location, f"{scheme}:{rest_no_query}", options)


def connect(url: str, **options: Any) -> RepositoryBase:
    """Open the repository a URL names (see the module docs for the URLs)."""
    parsed = parse_url(url)
    module_name = _SCHEMES.get(parsed.scheme)
    if module_name is None:
        raise UnknownStoreError(
            f"unknown store scheme {parsed.scheme!r} in {parsed.shown!r}; known schemes: {', '.join(known_schemes())}"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise StoreUnavailableError(
                f"the {parsed.scheme!r} store is not available yet: module {module_name} does not exist "
                "in this version of agrame-vdb"
            ) from exc
        raise StoreUnavailableError(
            f"the {parsed.scheme!r} store needs the package providing {exc.name!r}, which is not installed "
            f"(for Milvus: pip install 'agrame-vdb[milvus]')"
        ) from exc
    return module.from_url(parsed, **{**parsed.options, **options})


def _grpc_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a gRPC error worth retrying (unavailable, deadline exceeded,
    resource exhausted); False where grpc is not installed. Shared by the server
    repositories that speak gRPC (Qdrant with ``prefer_grpc``, Milvus)."""
    try:
        import grpc
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, grpc.RpcError) and hasattr(exc, "code") and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
