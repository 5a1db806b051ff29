"""Servers for tests started with testcontainers, where a Docker engine answers."""

from __future__ import annotations

import atexit
import importlib


def testcontainer_url(
    env: str, name: str, module: str, class_name: str, image: str, port: int, scheme: str, extra: str = ""
) -> tuple[str | None, str]:
    """Start ``image`` as ``testcontainers.<module>.<class_name>`` (stopped at exit):
    its ``scheme://host:port`` URL, or None and why there is none (``env``, the
    variable that would have named a server, is in the reason)."""
    try:
        import docker  # type: ignore[import-not-found]

        docker.from_env().ping()
    except Exception as exc:  # docker.errors.DockerException without an engine
        return None, f"no {env} and no Docker engine for testcontainers ({type(exc).__name__}: {exc})"
    try:
        container_class = getattr(importlib.import_module(f"testcontainers.{module}"), class_name)
    except ImportError as exc:
        return None, f"no {env}, and testcontainers{extra} is not installed ({exc})"
    try:
        container = container_class(image)
        container.start()
    except Exception as exc:
        return None, f"testcontainers could not start {name}: {type(exc).__name__}: {exc}"
    atexit.register(container.stop)
    return f"{scheme}://{container.get_container_host_ip()}:{container.get_exposed_port(port)}", ""
