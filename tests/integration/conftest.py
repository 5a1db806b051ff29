"""Real servers for the integration tests: the server engines of tests/engines.py.

Each server comes from its environment variable (``QDRANT_URL``, ``MILVUS_URI``),
else from testcontainers (tests/containers.py), running the image
``docker-compose.yml`` pins, where a Docker engine answers; else every test that
needs it is skipped with the reason (here: the DockerException the ping raises).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .. import engines

ROOT = Path(__file__).resolve().parents[2]

#: the servers the integration tests run on
SERVERS = ["qdrant-server", "milvus-server"]


@pytest.fixture(params=engines.params(*SERVERS))
def server(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store URL of one server, or a skip with the reason there is none."""
    return request.param.url(tmp_path)
