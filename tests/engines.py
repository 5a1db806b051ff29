"""The engines the tests run on, written once.

The conformance suite (tests/conformance) runs on all of them; other tests take the
ones they need by id (``params("memory", "qdrant-edge")``). To add an engine, append an
:class:`~agrame_vdb.testing.EngineCase` to ``LOCAL`` (or to ``SERVERS``, with a finder
that returns the server's URL or a reason to skip): every test that runs on all the
engines then runs on it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from agrame_vdb.testing import EngineCase

from . import milvus_servers
from .containers import testcontainer_url


def _milvus_lite_marks() -> tuple:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError as exc:
        return (pytest.mark.skip(reason=f"Milvus Lite needs pymilvus and milvus-lite ({exc})"),)
    return ()


#: embedded engines: no server, always there (Milvus Lite where its packages are installed)
LOCAL: list[EngineCase] = [
    EngineCase("memory", lambda d: "memory://"),
    EngineCase("qdrant-local-memory", lambda d: "qdrant-local://:memory:"),
    EngineCase("qdrant-local-path", lambda d: f"qdrant-local://{d}/local", persistent=True, exclusive=True),
    EngineCase("qdrant-edge", lambda d: f"qdrant-edge://{d}/edge", persistent=True, exclusive=True),
    EngineCase(
        "qdrant-edge-nocopy", lambda d: f"qdrant-edge://{d}/edge?token_copy=0", persistent=True, exclusive=True
    ),
    EngineCase(
        "milvus-lite",
        lambda d: f"milvus-lite://{d}/milvus.db",
        persistent=True,
        exclusive=True,
        marks=_milvus_lite_marks(),
    ),
]


def qdrant_server() -> tuple[str | None, str]:
    """The URL of a Qdrant server for tests, or None and why there is none."""
    if os.environ.get("QDRANT_URL"):
        return os.environ["QDRANT_URL"], ""
    return testcontainer_url("QDRANT_URL", "qdrant", "QdrantContainer", 6333, "http")


#: server name -> its finder; each runs once per session
FINDERS: dict[str, Callable[[], tuple[str | None, str]]] = {
    "qdrant-server": qdrant_server,
    # the real C++ Milvus 2.3.5 of the PyPI package `milvus`, started once per session
    "milvus-embedded": milvus_servers.embedded,
    # MILVUS_URI or testcontainers; the struct layout only on Milvus >= 2.6.4
    "milvus-server": milvus_servers.external,
    "milvus-server-struct": milvus_servers.external_struct,
}
_lock = threading.Lock()
_found: dict[str, tuple[str | None, str]] = {}


def server_url(name: str) -> str:
    """The store URL of server ``name``, or skip the test with the reason there is none."""
    with _lock:
        if name not in _found:
            _found[name] = FINDERS[name]()
        url, reason = _found[name]
    if url is None:
        pytest.skip(reason)
    return url


def _server(name: str) -> EngineCase:
    return EngineCase(
        name, lambda _tmp: server_url(name), persistent=True, shared=True, marks=(pytest.mark.server,)
    )


#: servers: found from an environment variable, started (testcontainers, the embedded
#: Milvus), or skipped with the reason
SERVERS: list[EngineCase] = [_server(name) for name in FINDERS]

ALL: list[EngineCase] = LOCAL + SERVERS


def pick(*ids: str) -> list[EngineCase]:
    """The engines named, in that order."""
    by_id = {case.id: case for case in ALL}
    return [by_id[i] for i in ids]


def params(*ids: str) -> list[Any]:
    """The engines named (all of them without ids), as ``pytest.param`` with their ids and marks."""
    return [case.param() for case in (pick(*ids) if ids else ALL)]
