"""Milvus Lite processes: one in-process server per store path, shared by the
repositories of this process that open it, released with the last of them.

Milvus Lite serves one process at a time: a store another process holds (its
``LOCK`` file is locked) is refused with ConcurrentAccessError before anything starts.
"""

from __future__ import annotations

import os
import threading

from ...errors import ConcurrentAccessError, RepositoryError, StoreUnavailableError

_LITE_LOCK = threading.Lock()
_LITE_USERS: dict[str, int] = {}


def _lite_open(path: str) -> str:
    """Start (or share) the in-process Milvus Lite server of ``path``; its URI."""
    try:
        from milvus_lite.server_manager import server_manager_instance as manager
    except ImportError as exc:
        raise StoreUnavailableError(
            f"milvus-lite:// needs the milvus-lite package ({exc}): pip install 'agrame-vdb[milvus]'"
        ) from exc

    path = os.path.abspath(path)
    with _LITE_LOCK:
        served = path in getattr(manager, "_servers", {})
        if not served and _locked_elsewhere(path):
            raise ConcurrentAccessError(
                f"the Milvus Lite store at {path} is open in another process; Milvus Lite serves one process at "
                "a time: close it there, or use a Milvus server (milvus://host:19530) for concurrent access"
            )
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        uri = manager.start_and_get_uri(path)
        if uri is None:
            if _locked_elsewhere(path):
                raise ConcurrentAccessError(f"the Milvus Lite store at {path} is open in another process")
            raise RepositoryError(f"Milvus Lite could not open {path} (see the milvus_lite log for why)")
        _LITE_USERS[path] = _LITE_USERS.get(path, 0) + 1
        return uri


def _lite_close(path: str) -> None:
    from milvus_lite.server_manager import server_manager_instance as manager

    path = os.path.abspath(path)
    with _LITE_LOCK:
        left = _LITE_USERS.get(path, 0) - 1
        if left > 0:
            _LITE_USERS[path] = left
            return
        _LITE_USERS.pop(path, None)
        manager.release_server(path)


def _locked_elsewhere(path: str) -> bool:
    """Whether another process holds the Milvus Lite lock of ``path``."""
    lock = os.path.join(path, "LOCK")
    if not os.path.exists(lock):
        return False
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: let Milvus Lite report it
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
