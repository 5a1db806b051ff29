"""A side store of token vectors as raw bytes, for engines that are slow to hand them back.

Qdrant Edge returns a multivector as nested Python lists: 200 passages of 130
tokens are 3.3 million Python floats, ~350 ms to get into numpy. Kept beside the
shard as one SQLite row per passage (little-endian float32, or float16 for float16
collections), the same 200 passages come back in a few ms, for ~8% more disk than
the raw bytes. The row also keeps the passage's units as compact JSON text: Edge
turns the payload's units into Python objects at ~4 ms per 200 passages, while its
version stamp alone takes ~2 ms to read, so a scoring read (``fetch_tokens``) asks
the engine for the stamps only. Rows written before the units column have none
(NULL): their units come from the payload until ``optimize()`` fills them in.

The engine stays the source of truth: each write stamps the passage's payload and
its row with the same random ``version``; a fetch uses a row only when the versions
agree and otherwise reads the engine's vectors. A crash between the engine write
and the row write, a lost or unreadable store, or a shard restored from a snapshot
therefore costs speed, never correctness. Rows are written after the engine
(writing them in a thread during the engine write was measured no faster: the
GIL). SQLite runs in WAL mode with synchronous=NORMAL (no fsync per commit:
durability comes from the engine) and 32 KiB pages (measured: about twice the
write rate of 4 KiB pages for ~64 KiB rows).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["TokenStore", "new_version"]

_DTYPES = {"f4": np.dtype("<f4"), "f2": np.dtype("<f2")}
_CHUNK = 500  # ids per IN (...) query, below SQLite's variable limit


def new_version() -> int:
    """A random 63-bit stamp tying a payload to its token row."""
    return secrets.randbits(63)


class TokenStore:
    """``id -> (version, [n, dim] float32, units JSON)`` in one SQLite file."""

    def __init__(self, path: str | Path, dim: int, code: str) -> None:
        self.path = Path(path)
        self.dim = dim
        self.dtype = _DTYPES[code]
        self._lock = threading.Lock()
        self._con = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._con.execute("PRAGMA page_size=32768")  # before the first table; no-op afterwards
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute("PRAGMA mmap_size=1099511627776")  # all of it (SQLite caps it at its build's maximum)
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, version INTEGER NOT NULL, "
            "n INTEGER NOT NULL, data BLOB NOT NULL, units TEXT)"
        )
        columns = {row[1] for row in self._con.execute("PRAGMA table_info(tokens)")}
        if "units" not in columns:  # a store from before the units column
            self._con.execute("ALTER TABLE tokens ADD COLUMN units TEXT")

    def put(self, rows: Iterable[tuple[str, int, np.ndarray, str | None]]) -> None:
        """Write ``(id, version, tokens, units JSON or None)`` rows."""
        self._write(
            [(i, v, t.shape[0], np.ascontiguousarray(t, dtype=self.dtype).tobytes(), u) for i, v, t, u in rows]
        )

    def _write(self, data: list[tuple[str, int, int, bytes, str | None]]) -> None:
        with self._lock:
            self._con.execute("BEGIN")
            try:
                self._con.executemany("INSERT OR REPLACE INTO tokens (id, version, n, data, units) VALUES (?, ?, ?, ?, ?)", data)
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    def get(self, ids: Sequence[str]) -> dict[str, tuple[int, np.ndarray]]:
        out: dict[str, tuple[int, np.ndarray]] = {}
        with self._lock:
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                sql = f"SELECT id, version, n, data FROM tokens WHERE id IN ({','.join('?' * len(chunk))})"
                for pid, version, n, blob in self._con.execute(sql, chunk):
                    arr = np.frombuffer(blob, dtype=self.dtype).reshape(n, self.dim)
                    out[pid] = (version, arr if self.dtype == _DTYPES["f4"] else arr.astype(np.float32))
        return out

    def get_raw(self, ids: Sequence[str]) -> dict[str, tuple[int, int, bytes, str | None]]:
        """``id -> (version, n, raw bytes, units JSON or None)`` for the rows found whose
        size is right (``n * dim`` values); no array is built (see ``_codec.join_tokens``)."""
        out: dict[str, tuple[int, int, bytes, str | None]] = {}
        row = self.dim * self.dtype.itemsize
        with self._lock:
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                sql = f"SELECT id, version, n, data, units FROM tokens WHERE id IN ({','.join('?' * len(chunk))})"
                for pid, version, n, blob, units in self._con.execute(sql, chunk):
                    if len(blob) == n * row:  # else a damaged row: the engine's vectors are read
                        out[pid] = (version, n, blob, units)
        return out

    def without_units(self) -> list[str]:
        """Ids of the rows written before the units column."""
        with self._lock:
            return [row[0] for row in self._con.execute("SELECT id FROM tokens WHERE units IS NULL")]

    def set_units(self, rows: Iterable[tuple[str, int, str]]) -> None:
        """Fill in ``(id, version, units JSON)`` where the row is still at that version."""
        data = [(u, i, v) for i, v, u in rows]
        with self._lock:
            self._con.execute("BEGIN")
            try:
                self._con.executemany("UPDATE tokens SET units = ? WHERE id = ? AND version = ?", data)
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    def delete(self, ids: Sequence[str]) -> None:
        with self._lock:
            self._con.execute("BEGIN")
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                self._con.execute(f"DELETE FROM tokens WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            self._con.execute("COMMIT")

    def ids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._con.execute("SELECT id FROM tokens")}

    def checkpoint(self) -> None:
        with self._lock:
            self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._con.close()
