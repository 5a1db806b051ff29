"""Real servers for the integration tests, found once per session, or a skip reason.

Each server comes from its environment variable (``QDRANT_URL``,
``MILVUS_URI``), else from testcontainers, running the image
``docker-compose.yml`` pins, where a Docker engine answers
(``docker.from_env().ping()``); else every test that needs it is skipped with the
reason (here: the DockerException the ping raises).
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_lock = threading.Lock()
_found: dict[str, tuple[str | None, str]] = {}


def compose_image(service: str) -> str:
    """The image docker-compose.yml pins for ``service`` (one source of truth)."""
    import yaml

    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][service]["image"]


def docker_reason() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        import docker  # type: ignore[import-not-found]

        docker.from_env().ping()
    except Exception as exc:  # docker.errors.DockerException without an engine
        return f"no Docker engine for testcontainers ({type(exc).__name__}: {exc})"
    return None


def _qdrant() -> tuple[str | None, str]:
    if os.environ.get("QDRANT_URL"):
        return os.environ["QDRANT_URL"], ""
    why = docker_reason()
    if why:
        return None, f"no QDRANT_URL and {why}"
    try:
        from testcontainers.qdrant import QdrantContainer  # type: ignore[import-not-found]
    except ImportError as exc:
        return None, f"no QDRANT_URL, and testcontainers[qdrant] is not installed ({exc})"
    try:
        container = QdrantContainer(compose_image("qdrant"))
        container.start()
    except Exception as exc:
        return None, f"testcontainers could not start {compose_image('qdrant')}: {type(exc).__name__}: {exc}"
    atexit.register(container.stop)
    return f"http://{container.get_container_host_ip()}:{container.get_exposed_port(6333)}", ""


def _milvus() -> tuple[str | None, str]:
    if os.environ.get("MILVUS_URI"):
        from tests.milvus_servers import _store_url

        return _store_url(os.environ["MILVUS_URI"]), ""
    why = docker_reason()
    if why:
        return None, f"no MILVUS_URI and {why}"
    try:
        from testcontainers.milvus import MilvusContainer  # type: ignore[import-not-found]
    except ImportError as exc:
        return None, f"no MILVUS_URI, and testcontainers[milvus] is not installed ({exc})"
    try:  # Milvus standalone with embedded etcd and local storage, as testcontainers runs it
        container = MilvusContainer(compose_image("milvus"))
        container.start()
    except Exception as exc:
        return None, f"testcontainers could not start {compose_image('milvus')}: {type(exc).__name__}: {exc}"
    atexit.register(container.stop)
    return f"milvus://{container.get_container_host_ip()}:{container.get_exposed_port(19530)}", ""


FINDERS: dict[str, Callable[[], tuple[str | None, str]]] = {"qdrant-server": _qdrant, "milvus-server": _milvus}


def server_url(name: str) -> str:
    """The store URL of server ``name``, or skip the test with the reason there is none."""
    with _lock:
        if name not in _found:
            _found[name] = FINDERS[name]()
        url, reason = _found[name]
    if url is None:
        pytest.skip(reason)
    return url


@pytest.fixture(params=sorted(FINDERS), ids=sorted(FINDERS))
def server(request) -> str:
    return server_url(request.param)
