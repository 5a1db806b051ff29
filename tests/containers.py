"""Servers for tests started with testcontainers, where a Docker engine answers.

The images are the ones docker-compose.yml pins (:func:`compose_image`): the
compose file is the one place an image version is written.
"""

from __future__ import annotations

import atexit
import importlib
from pathlib import Path

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def compose_image(service: str) -> str:
    """The image docker-compose.yml pins for ``service``."""
    import yaml

    return yaml.safe_load(COMPOSE_FILE.read_text())["services"][service]["image"]


def testcontainer_url(env: str, service: str, class_name: str, port: int, scheme: str) -> tuple[str | None, str]:
    """Start the compose image of ``service`` as ``testcontainers.<service>.<class_name>``
    (stopped at exit): its ``scheme://host:port`` URL, or None and why there is none
    (``env``, the variable that would have named a server, is in the reason)."""
    try:
        import docker  # type: ignore[import-not-found]

        docker.from_env().ping()
    except Exception as exc:  # docker.errors.DockerException without an engine
        return None, f"no {env} and no Docker engine for testcontainers ({type(exc).__name__}: {exc})"
    try:
        container_class = getattr(importlib.import_module(f"testcontainers.{service}"), class_name)
    except ImportError as exc:
        return None, f"no {env}, and testcontainers[{service}] is not installed ({exc})"
    image = compose_image(service)
    try:
        container = container_class(image)
        container.start()
    except Exception as exc:
        return None, f"testcontainers could not start {image}: {type(exc).__name__}: {exc}"
    atexit.register(container.stop)
    return f"{scheme}://{container.get_container_host_ip()}:{container.get_exposed_port(port)}", ""
