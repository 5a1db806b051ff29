"""Milvus servers for the tests, each found once per session, or a reason to skip.

- ``embedded()``: the real C++ Milvus 2.3.5 of the PyPI package ``milvus`` (no
  Docker), started on first use in a temporary folder and stopped at the end of
  the session (``stop_embedded``, also registered with atexit). Its load and
  time-tick intervals are shortened so the per-test collections load quickly.
  Every port it opens is a free one picked here, its embedded etcd's too (through
  ``etcd.config.path``), so it starts beside any other Milvus on the machine.
  It listens on all interfaces; the tests connect on 127.0.0.1 only.
- ``external()``: ``MILVUS_URI`` (``http://host:19530``, ``https://…`` or
  ``milvus://host:19530``; token from ``MILVUS_TOKEN``), else a testcontainers
  Milvus where a Docker engine answers.
- ``external_struct()``: the external server when it is Milvus >= 2.6.4 (Array of
  Structs with MAX_SIM), as a ``layout=struct`` store URL.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import threading
from urllib.parse import urlsplit

from .containers import testcontainer_url

_lock = threading.Lock()
_embedded: dict[str, object] = {}
_external: dict[str, tuple[str | None, str]] = {}

#: milvus.yaml settings of the embedded test server (defaults 1000, 500, 200 ms)
EMBEDDED_TUNING = {"queryCoord.checkInterval": 100, "queryCoord.distPullInterval": 100, "proxy.timeTickInterval": 50}
STRUCT_MIN_VERSION = (2, 6, 4)
START_TIMEOUT_S = 90
#: the key of the embedded etcd's peer port among the ports picked (not a milvus.yaml setting)
ETCD_PEER_PORT = "etcd_peer_port"


def embedded() -> tuple[str | None, str]:
    """A ``milvus://127.0.0.1:port`` URL of the embedded 2.3.5 server, or None and why."""
    with _lock:
        if "url" in _embedded:
            return _embedded["url"], ""  # type: ignore[return-value]
        if "reason" in _embedded:
            return None, _embedded["reason"]  # type: ignore[return-value]
        try:
            import pymilvus  # noqa: F401
            from milvus import MilvusServer
        except ImportError as exc:
            _embedded["reason"] = f"the embedded Milvus server needs the packages milvus==2.3.5 and pymilvus ({exc})"
            return None, _embedded["reason"]  # type: ignore[return-value]
        base = tempfile.mkdtemp(prefix="agrame-milvus-")
        ports = free_ports(_EmbeddedConfig.port_keys())
        server = MilvusServer(_EmbeddedConfig.make(_etcd_config(base, ports)))
        server.set_base_dir(base)
        for key, value in EMBEDDED_TUNING.items():
            server.config.set(key, value)
        server.config.configs.update({k: v for k, v in ports.items() if k != ETCD_PEER_PORT})
        server.wait_for_started = False
        try:
            server.start()
            server.wait_started(timeout=START_TIMEOUT_S * 1000)
        except Exception as exc:
            try:
                server.stop()
            finally:
                shutil.rmtree(base, ignore_errors=True)
            _embedded["reason"] = f"the embedded Milvus 2.3.5 server did not start: {type(exc).__name__}: {exc}"
            return None, _embedded["reason"]  # type: ignore[return-value]
        _embedded.update(server=server, base=base, url=f"milvus://127.0.0.1:{server.listen_port}")
        atexit.register(stop_embedded)
        return _embedded["url"], ""  # type: ignore[return-value]


def free_ports(keys: list[str]) -> dict[str, int]:
    """A free ephemeral port for each of ``keys`` (the ``*_port`` settings of the embedded
    server, and its etcd's peer port), so that a second server on the machine (another
    test session) or a port in TIME_WAIT cannot make it pick a taken one."""
    socks, out = [], {}
    try:
        for key in keys:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            out[key] = s.getsockname()[1]
    finally:
        for s in socks:
            s.close()
    return out


def _etcd_config(base: str, ports: dict[str, int]) -> str:
    """Write the embedded etcd's own config (its client port is the server's ``etcd_port``,
    its peer port ``ETCD_PEER_PORT``) and return its path. Without it the embedded etcd
    listens on 2379 and 2380 whatever milvus.yaml says, and a second server on the
    machine cannot start."""
    client, peer = f"http://127.0.0.1:{ports['etcd_port']}", f"http://127.0.0.1:{ports[ETCD_PEER_PORT]}"
    path = os.path.join(base, "embed-etcd.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"listen-client-urls: {client}\nadvertise-client-urls: {client}\nlisten-peer-urls: {peer}\n"
                f"initial-advertise-peer-urls: {peer}\ninitial-cluster: default={peer}\n")
    return path


class _EmbeddedConfig:
    """MilvusServerConfig of the test server: ``etcd.config.path`` names the embedded
    etcd's config file (Milvus 2.3.5 reads it with etcd's ``embed.ConfigFromFile``; the
    package's template has no such key, so it is added), and the port probe sets
    SO_REUSEADDR, as the servers themselves do: a port left in TIME_WAIT by a server
    stopped moments ago is free to them."""

    @staticmethod
    def port_keys() -> list[str]:
        from milvus import MilvusServerConfig

        return [key for key in MilvusServerConfig().configurable_items if key.endswith("_port")] + [ETCD_PEER_PORT]

    @staticmethod
    def make(etcd_config: str) -> object:
        from milvus import MilvusServerConfig

        class Config(MilvusServerConfig):
            def load_template(self):  # type: ignore[no-untyped-def]
                super().load_template()
                if "\netcd:\n" not in self.template_text:
                    raise RuntimeError(f"no etcd section in the milvus package's {self.template_file}")
                self.template_text = self.template_text.replace(
                    "\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_config}\n", 1
                )

            def try_bind_port(self, port):  # type: ignore[no-untyped-def]
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                    sock.listen()
                    return sock
                except OSError:
                    sock.close()
                    return None

        return Config()


def stop_embedded() -> None:
    """Stop the embedded server if this process started it (idempotent)."""
    with _lock:
        server = _embedded.pop("server", None)
        base = _embedded.pop("base", None)
        _embedded.pop("url", None)
    if server is not None:
        server.stop()  # terminate, then kill after 1 s
    if base is not None:
        shutil.rmtree(str(base), ignore_errors=True)


def _store_url(uri: str) -> str:
    """``http://h:p`` -> ``milvus://h:p``; ``https://h:p`` -> ``milvus://h:p?secure=1``."""
    if uri.startswith("milvus://"):
        return uri
    parts = urlsplit(uri if "://" in uri else f"http://{uri}")
    host = f"{parts.hostname}:{parts.port or 19530}"
    return f"milvus://{host}" + ("?secure=1" if parts.scheme == "https" else "")


def external() -> tuple[str | None, str]:
    """A store URL of an external Milvus server, or None and why there is none."""
    with _lock:
        if "server" not in _external:
            _external["server"] = _find_external()
        return _external["server"]


def _find_external() -> tuple[str | None, str]:
    if os.environ.get("MILVUS_URI"):
        return _store_url(os.environ["MILVUS_URI"]), ""
    return testcontainer_url("MILVUS_URI", "milvus", "MilvusContainer", 19530, "milvus")


def server_version(url: str) -> tuple[int, int, int]:
    from agrame_vdb import connect
    from agrame_vdb.repositories.milvus import _parse_version

    repo = connect(url)
    try:
        return _parse_version(repo.server_version)  # type: ignore[attr-defined]
    finally:
        repo.close()


def external_struct() -> tuple[str | None, str]:
    """The external server as a ``layout=struct`` store, when it is Milvus >= 2.6.4."""
    url, reason = external()
    if url is None:
        return None, f"the struct layout needs a Milvus server >= 2.6.4: {reason}"
    with _lock:
        if "struct" in _external:
            return _external["struct"]
    try:
        version = server_version(url)
    except Exception as exc:
        found: tuple[str | None, str] = (None, f"cannot reach the Milvus server at {url}: {exc}")
    else:
        if version < STRUCT_MIN_VERSION:
            found = (None, f"the Milvus server at {url} is {'.'.join(map(str, version))}; Array of Structs "
                     f"with MAX_SIM needs >= {'.'.join(map(str, STRUCT_MIN_VERSION))}")
        else:
            found = (url + ("&" if "?" in url else "?") + "layout=struct", "")
    with _lock:
        _external["struct"] = found
    return found
