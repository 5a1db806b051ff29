"""Crash-safe files: atomic replaces, durable appends, and locks between processes.

Every small state file the library keeps (job checkpoints, migration states, the
Qdrant Edge schema record and alias table, a training run's resume state) is
written through :func:`atomic_open`: into a temporary file beside the target,
flushed and fsynced, ``os.replace``\\d over the target, then the directory fsynced.
A process killed at any moment leaves the old file or the new one, never a torn
one, and a temporary file is removed when the write fails.

``private`` files (the default) are created readable by their owner only (mode
0600): the temporary file is born so, nothing is ever readable by others. Other
files get the usual ``0666`` less the umask, as :func:`open` gives them.

Locks between processes are :class:`filelock.FileLock` (``flock`` on POSIX, the
lock file stays in place): :func:`file_lock` waits for the lock;
``file_lock(path, wait=False)`` raises :class:`filelock.Timeout` at once when
another holder has it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

__all__ = [
    "atomic_open",
    "atomic_write_text",
    "atomic_write_bytes",
    "private_opener",
    "fsync_directory",
    "file_lock",
    "Timeout",
]

_PRIVATE = 0o600
_SHARED = 0o666  # less the umask, as open() creates files


def private_opener(path: str, flags: int) -> int:
    """An ``opener`` for :func:`open` that creates files readable by their owner only (0600)."""
    return os.open(path, flags, _PRIVATE)


def fsync_directory(directory: str | Path) -> None:
    """Make a rename or a new file in ``directory`` durable (where the file system allows)."""
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, private: bool = True, encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """A file to write ``path``'s new content into (``mode`` ``"w"`` or ``"wb"``); when the
    block ends without an error it replaces ``path`` atomically and durably (see the
    module docs), else ``path`` is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _PRIVATE if private else _SHARED)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def atomic_write_text(path: str | Path, text: str, *, private: bool = True) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably; 0600 unless not ``private``."""
    with atomic_open(path, "w", private=private) as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes, *, private: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically and durably; 0600 unless not ``private``."""
    with atomic_open(path, "wb", private=private) as f:
        f.write(data)


def file_lock(path: str | Path, *, wait: bool = True) -> FileLock:
    """An exclusive lock on ``path`` between processes (and between lock objects of one
    process), used as ``with file_lock(p): ...``. ``wait=False``: acquiring raises
    :class:`Timeout` at once when the lock is held. The lock file is created (its
    directory must exist) and stays after release."""
    return FileLock(str(path), timeout=-1 if wait else 0)
