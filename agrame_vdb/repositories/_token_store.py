"""A side store of token vectors as raw bytes, for engines that are slow to hand them back.

Qdrant Edge returns a multivector as nested Python lists: 200 passages of 130
tokens are 3.3 million Python floats, ~350 ms to get into numpy. Kept beside the
shard, the same 200 passages come back in a few ms. Two files:

- ``<name>.<nonce>.bin``: the vectors, little-endian float32 (float16 for float16
  collections), appended passage after passage and read through one memory map, so
  a read is a gather of slices into one array, with no per-passage copy.
- ``<name>`` (SQLite): one row per passage: its write ``version``, token count,
  byte position in the data file, and its units in the compact binary form of
  :class:`~agrame_vdb.unit_table.UnitTable` (kinds numbered in a ``kinds`` table).

The engine stays the source of truth: each write stamps the passage's payload and
its row with the same random ``version``; a read uses a row only when the versions
agree and otherwise reads the engine's vectors. A crash between the engine write
and the row write, a lost or damaged store, or a shard restored from a snapshot
therefore costs speed, never correctness. Within the store, the bytes are
written and ``fdatasync``-ed before the transaction that points rows at them
commits, and the data file's committed end is recorded in that transaction: at
open, bytes past it (a crash before the commit) are cut off, and if the file is
shorter (lost or truncated), the rows that pointed past its end are dropped, so
a row never points at bytes another passage wrote later. Rewritten or deleted
passages leave dead bytes; :meth:`TokenStore.compact` (from ``optimize()``)
copies the live ones into a new file once they are a quarter of it.

Stores written before the data file keep their vectors in a ``data`` blob and
their units as JSON text (or none): such rows are still read, and ``compact``
moves them to the current form. SQLite runs in WAL mode with synchronous=NORMAL
(durability comes from the engine).
"""

from __future__ import annotations

import mmap
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..unit_table import UnitTable
from ..units import Unit
from ._codec import units_from_text

__all__ = ["TokenRows", "TokenStore", "new_version"]

_DTYPES = {"f4": np.dtype("<f4"), "f2": np.dtype("<f2")}
_CHUNK = 500  # ids per IN (...) query, below SQLite's variable limit
_COMPACT_WHEN_DEAD = 0.25  # share of the data file that is dead bytes before compact() rewrites it


def new_version() -> int:
    """A random 63-bit stamp tying a payload to its token row."""
    return secrets.randbits(63)


@dataclass(frozen=True, slots=True)
class TokenRows:
    """Rows read for some passages: ``id -> (version, token count, units)``, where units
    are bytes (the binary form), JSON text (an old row) or None (an older row: the
    payload has them); the vectors are taken with :meth:`TokenStore.tokens`."""

    rows: dict[str, tuple[int, int, bytes | str | None]]
    _parts: dict[str, np.ndarray]

    def get(self, pid: str) -> tuple[int, int, bytes | str | None] | None:
        return self.rows.get(pid)


class TokenStore:
    """``id -> (version, [n, dim] vectors, units)`` in a SQLite index and a data file."""

    def __init__(self, path: str | os.PathLike[str], dim: int, code: str) -> None:
        self.path = Path(path)
        self.dim = dim
        self.dtype = _DTYPES[code]
        self._row_bytes = dim * self.dtype.itemsize
        self._lock = threading.RLock()
        self._con = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._map: mmap.mmap | None = None
        self._fd = -1
        try:
            self._setup()
        except BaseException:
            self._con.close()
            raise

    # ----- opening

    def _setup(self) -> None:
        con = self._con
        con.execute("PRAGMA page_size=32768")  # before the first table; no-op afterwards
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute(
            "CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, version INTEGER NOT NULL, "
            "n INTEGER NOT NULL, data BLOB NOT NULL, units TEXT, pos INTEGER)"
        )
        columns = {row[1] for row in con.execute("PRAGMA table_info(tokens)")}
        for column in ("units", "pos"):  # a store from before these columns
            if column not in columns:
                con.execute(f"ALTER TABLE tokens ADD COLUMN {column} {'TEXT' if column == 'units' else 'INTEGER'}")
        con.execute("CREATE TABLE IF NOT EXISTS kinds (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)")
        con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
        self._kinds = {name: i for i, name in con.execute("SELECT id, name FROM kinds")}
        self._kind_names = self._names()
        meta = dict(con.execute("SELECT key, value FROM meta"))
        name, end = meta.get("data_file"), int(meta.get("data_end", 0))
        if name is None or not (self.path.parent / name).exists():
            # no data file yet, or it was lost: rows pointing into it are gone
            name, end = f"{self.path.name}.{secrets.token_hex(4)}.bin", 0
            self._transaction(
                lambda: (
                    con.execute("DELETE FROM tokens WHERE pos IS NOT NULL"),
                    self._set_meta(name, 0),
                )
            )
        self._data_path = self.path.parent / name
        self._fd = os.open(self._data_path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        if size > end:  # appended, then a crash before the commit: no row points there
            os.ftruncate(self._fd, end)
        elif size < end:  # cut short: drop the rows that pointed past the end
            self._transaction(
                lambda: (
                    con.execute("DELETE FROM tokens WHERE pos IS NOT NULL AND pos + n * ? > ?", (self._row_bytes, size)),
                    self._set_meta(name, size),
                )
            )
            end = size
        self._end = end
        self._remove_other_data_files()

    def _names(self) -> tuple[str, ...]:
        names = [""] * (max(self._kinds.values(), default=-1) + 1)
        for name, i in self._kinds.items():
            names[i] = name
        return tuple(names)

    def _set_meta(self, name: str, end: int) -> None:
        self._con.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [("data_file", name), ("data_end", end)]
        )

    def _remove_other_data_files(self) -> None:
        """Data files of an interrupted compaction (or the one it replaced)."""
        for f in self.path.parent.glob(f"{self.path.name}.*.bin"):
            if f != self._data_path:
                f.unlink(missing_ok=True)

    def _transaction(self, body: Callable[[], Any]) -> None:
        self._con.execute("BEGIN IMMEDIATE")
        try:
            body()
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    # ----- writing

    @property
    def kinds(self) -> tuple[str, ...]:
        """Unit kind names by their id in stored units."""
        return self._kind_names

    def put(self, rows: Iterable[tuple[str, int, np.ndarray, Sequence[Unit] | None]]) -> None:
        """Write ``(id, version, tokens, units)`` rows."""
        rows = list(rows)
        if not rows:
            return
        with self._lock:
            kinds, add_kinds = self._numbering(units for *_, units in rows)
            blobs = [np.ascontiguousarray(t, dtype=self.dtype).tobytes() for _, _, t, _ in rows]
            start = self._end
            data = b"".join(blobs)
            written = 0
            while written < len(data):  # pwrite may write less than asked
                written += os.pwrite(self._fd, data[written:], start + written)
            os.fdatasync(self._fd)  # the bytes are on disk before any row points at them
            positions = np.concatenate([[start], start + np.cumsum([len(b) for b in blobs])]).tolist()
            records = [
                (pid, version, t.shape[0], b"", None if units is None else UnitTable.encode(units, kinds), positions[j])
                for j, (pid, version, t, units) in enumerate(rows)
            ]
            end = positions[-1]

            def body() -> None:
                add_kinds()
                self._con.executemany(
                    "INSERT OR REPLACE INTO tokens (id, version, n, data, units, pos) VALUES (?, ?, ?, ?, ?, ?)", records
                )
                self._con.execute("UPDATE meta SET value = ? WHERE key = 'data_end'", (end,))

            try:
                self._transaction(body)
            except BaseException:
                os.ftruncate(self._fd, start)  # nothing points there
                raise
            self._end = end
            self._use_numbering(kinds)

    def set_units(self, rows: Iterable[tuple[str, int, Sequence[Unit]]]) -> None:
        """Set ``(id, version, units)`` where the row is still at that version."""
        rows = list(rows)
        with self._lock:
            kinds, add_kinds = self._numbering(units for *_, units in rows)
            data = [(UnitTable.encode(units, kinds), pid, version) for pid, version, units in rows]

            def body() -> None:
                add_kinds()
                self._con.executemany("UPDATE tokens SET units = ? WHERE id = ? AND version = ?", data)

            self._transaction(body)
            self._use_numbering(kinds)

    def _numbering(self, unit_lists: Iterable[Sequence[Unit] | None]) -> tuple[dict[str, int], Callable[[], None]]:
        """The kind numbering with the new kinds of ``unit_lists`` added, and what
        records them (to run in the writing transaction)."""
        new = sorted({u.kind for units in unit_lists for u in units or () if u.kind not in self._kinds})
        kinds = dict(self._kinds)
        kinds.update({k: len(kinds) + j for j, k in enumerate(new)})

        def add() -> None:
            self._con.executemany("INSERT INTO kinds (id, name) VALUES (?, ?)", [(kinds[k], k) for k in new])

        return kinds, add

    def _use_numbering(self, kinds: dict[str, int]) -> None:
        self._kinds = kinds
        self._kind_names = self._names()

    def delete(self, ids: Sequence[str]) -> None:
        with self._lock:

            def body() -> None:
                for start in range(0, len(ids), _CHUNK):
                    chunk = list(ids[start : start + _CHUNK])
                    self._con.execute(f"DELETE FROM tokens WHERE id IN ({','.join('?' * len(chunk))})", chunk)

            self._transaction(body)

    # ----- reading

    def read(self, ids: Sequence[str]) -> TokenRows:
        """The rows of ``ids`` found whole (a damaged row is left out: the engine's
        vectors are read instead)."""
        rows: dict[str, tuple[int, int, bytes | str | None]] = {}
        parts: dict[str, np.ndarray] = {}
        with self._lock:
            view = self._view()
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                sql = f"SELECT id, version, n, pos, data, units FROM tokens WHERE id IN ({','.join('?' * len(chunk))})"
                for pid, version, n, pos, blob, units in self._con.execute(sql, chunk):
                    size = n * self._row_bytes
                    if pos is not None:
                        if pos + size > len(view):
                            continue
                        part = view[pos : pos + size]
                    elif len(blob) == size:  # a row from before the data file
                        part = np.frombuffer(blob, dtype=np.uint8)
                    else:
                        continue
                    rows[pid] = (version, n, units)
                    parts[pid] = part
        return TokenRows(rows, parts)

    def tokens(self, rows: TokenRows, ids: Sequence[str]) -> list[np.ndarray]:
        """The ``[n, dim]`` vectors (views, in the store's dtype) of ``ids``, rows of ``rows``."""
        return [rows._parts[pid].view(self.dtype).reshape(-1, self.dim) for pid in ids]

    def get(self, ids: Sequence[str]) -> dict[str, tuple[int, np.ndarray]]:
        """``id -> (version, float32 [n, dim] copy)`` of the rows found whole."""
        rows = self.read(ids)
        found = list(rows.rows)
        return {
            pid: (rows.rows[pid][0], np.array(t, dtype=np.float32))
            for pid, t in zip(found, self.tokens(rows, found))
        }

    def _view(self) -> np.ndarray:
        """The data file as bytes, mapped again when it has grown."""
        if self._map is None or len(self._map) < self._end:
            self._map = mmap.mmap(self._fd, self._end, access=mmap.ACCESS_READ) if self._end else None
            # an older map is unmapped once the views into it are gone
        if self._map is None:
            return np.zeros(0, dtype=np.uint8)
        return np.frombuffer(self._map, dtype=np.uint8)

    def without_units(self) -> list[str]:
        """Ids of the rows that carry no units (written before the units column)."""
        with self._lock:
            return [row[0] for row in self._con.execute("SELECT id FROM tokens WHERE units IS NULL")]

    def ids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._con.execute("SELECT id FROM tokens")}

    # ----- upkeep

    def stats(self) -> dict[str, int]:
        """Rows, live and dead bytes of the data file, rows in an older form."""
        with self._lock:
            rows, live, old = self._con.execute(
                "SELECT count(*), coalesce(sum(CASE WHEN pos IS NOT NULL THEN n END), 0), "
                "coalesce(sum(pos IS NULL OR typeof(units) = 'text'), 0) FROM tokens"
            ).fetchone()
            live *= self._row_bytes
            return {"rows": rows, "live_bytes": live, "dead_bytes": self._end - live, "old_rows": old}

    def compact(self) -> bool:
        """Rewrite the data file with the live rows only, once dead bytes are a quarter
        of it or rows are in an older form (their vectors in a blob, their units JSON
        text: turned to the binary form). Returns whether it rewrote.

        The new file is written and synced under a new name, then one transaction
        points every row at it; a crash before that commit leaves the old file in use
        (the new one is removed at the next open)."""
        with self._lock:
            stats = self.stats()
            if not stats["old_rows"] and stats["dead_bytes"] <= _COMPACT_WHEN_DEAD * max(self._end, 1):
                return False
            name = f"{self.path.name}.{secrets.token_hex(4)}.bin"
            path = self.path.parent / name
            view = self._view()
            moved: list[tuple[int, bytes | str | None, str]] = []
            damaged: list[str] = []
            pos = 0
            # old rows' blobs are read one at a time: a store of them can be larger than memory
            listed = self._con.execute("SELECT id, n, pos, length(data), units FROM tokens ORDER BY pos").fetchall()
            parsed = {pid: units_from_text(units) for pid, _, _, _, units in listed if isinstance(units, str)}
            kinds, add_kinds = self._numbering(parsed.values())
            with open(path, "wb") as out:
                for pid, n, old_pos, blob_size, units in listed:
                    size = n * self._row_bytes
                    if old_pos is not None and old_pos + size <= len(view):
                        out.write(view[old_pos : old_pos + size].tobytes())
                    elif old_pos is None and blob_size == size:
                        out.write(self._con.execute("SELECT data FROM tokens WHERE id = ?", (pid,)).fetchone()[0])
                    else:  # damaged: the engine's vectors are read until it is written again
                        damaged.append(pid)
                        continue
                    if pid in parsed:
                        units = UnitTable.encode(parsed[pid], kinds)
                    moved.append((pos, units, pid))
                    pos += size
                out.flush()
                os.fsync(out.fileno())

            def body() -> None:
                add_kinds()
                self._con.executemany("DELETE FROM tokens WHERE id = ?", [(pid,) for pid in damaged])
                self._con.executemany("UPDATE tokens SET pos = ?, data = x'', units = ? WHERE id = ?", moved)
                self._set_meta(name, pos)

            try:
                self._transaction(body)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            fd = os.open(path, os.O_RDWR)
            os.close(self._fd)
            self._fd, self._data_path, self._end, self._map = fd, path, pos, None
            self._use_numbering(kinds)
            self._remove_other_data_files()
            return True

    def checkpoint(self) -> None:
        with self._lock:
            self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._con.close()
            self._map = None  # unmapped once no view refers to it
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
