"""A side store of token vectors as raw bytes, for engines that are slow to hand them back.

Qdrant Edge returns a multivector as nested Python lists: 200 passages of 130
tokens are 3.3 million Python floats, ~350 ms to get into numpy. Kept beside the
shard, the same 200 passages come back in a few ms. Two files:

- ``<name>.<nonce>.bin``: the vectors, appended passage after passage and read
  through one memory map, so a read is a gather of slices into one array, with no
  per-passage copy. Their form is the store's ``dtype`` code (``agrame_vdb.token_rows``):
  little-endian float32 (``f4``), float16 (``f2``, float16 collections), int8 with
  a float32 scale per token (``i8``, int8 collections: ``dim + 4`` bytes a token) or
  a passage's sign bits then its ``i8`` rows (``b1``, binary collections:
  ``dim / 8 + dim + 4`` bytes a token). float32 rows are read back as one float32
  array; the others are handed over as stored (``EncodedTokens``) and expanded by the
  MaxSim kernel a chunk at a time.
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

Each row also carries a ``checksum`` (xxh3-64) of its vector bytes and its units
blob, checked on every read: a row whose bytes or units were damaged (a disk
error, a stray write) is left out, so the engine's vectors are read for it, and it
is deleted from the index (its bytes become dead); :attr:`TokenStore.damaged`
counts such rows and the first one is logged as a warning. The kind names have a
checksum of their own in ``meta``, checked at open; the index's other values are
checked for type and range at open (a damaged index is then unreadable: the
repository sets it aside). Checking is bound by memory: 200 passages of 130
128-d tokens (13 MB) take ~1.3 ms of CPU with xxh3 read from the page cache
(``zlib.crc32``: ~4.9 ms; both ~4x faster on bytes already in the CPU cache), of a
side-store read of ~3.3 ms before the check; measured on a loaded 2-core machine.

The store records its rows' code in ``meta`` (``dtype``), beside the data file's
name: one code per data file. A store from before that key is in the code it was
written in then (``legacy``: f4, or f2 for float16 collections) and keeps writing
it; :meth:`TokenStore.compact` (from ``optimize()``) rewrites the rows in the code
asked for (an int8 collection's f4 rows become i8) and switches both in one
transaction. Rows keep their checksum state: a checked row gets the checksum of its
new bytes, a row without one stays without until :meth:`TokenStore.seal`.

Stores written before the data file keep their vectors in a ``data`` blob and
their units as JSON text (or none): such rows are still read, and ``compact``
moves them to the current form. Stores written before the ``checksum`` column get
it (empty) at open and an ``unchecked`` mark in ``meta``: while it is there, rows
without a checksum are read as before; :meth:`TokenStore.seal` gives them one once
the repository has compared them with the engine's own vectors and units (from
``optimize()``), and drops the mark when none is left. Without the mark, a row
without a checksum counts as damaged. SQLite runs in WAL mode with
synchronous=NORMAL (durability comes from the engine).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from ..unit_table import UnitTable
from ..units import Unit
from ._codec import units_from_text
from ..token_rows import CODES, ENCODED_CODES, EncodedTokens, RowFormat

__all__ = ["TokenRows", "TokenStore", "new_version"]

_CHUNK = 500  # ids per IN (...) query, below SQLite's variable limit
_COMPACT_WHEN_DEAD = 0.25  # share of the data file that is dead bytes before compact() rewrites it
_NO_UNITS = 0x5EED  # the checksum seed of a row without units (NULL), unlike b"" (no units at all)
_UNCHECKED = "unchecked"  # meta key: rows without a checksum may be from before the column

_xxh3 = xxhash.xxh3_64_intdigest

log = logging.getLogger(__name__)


def _checksum(part: Any, units: bytes | None) -> int:
    """The xxh3-64 of a row's vector bytes, seeded with that of its units blob, as
    SQLite's signed 64-bit integer."""
    digest = _xxh3(part, _NO_UNITS if units is None else _xxh3(units))
    return digest - (1 << 64) if digest >= 1 << 63 else digest


def _kinds_checksum(names: Sequence[str]) -> int:
    return _checksum("\x00".join(names).encode(), None)


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
    """``id -> (version, [n, dim] vectors, units)`` in a SQLite index and a data file.

    ``code`` is the form rows should have (``agrame_vdb.token_rows``); ``legacy`` the one a store
    from before the ``dtype`` key was written in (default: ``code``). New rows are
    written in the store's current code until :meth:`compact` moves them all to ``code``.
    """

    def __init__(self, path: str | os.PathLike[str], dim: int, code: str, *, legacy: str | None = None) -> None:
        self.path = Path(path)
        self.dim = dim
        self._wanted = RowFormat(code, dim)
        self._legacy = code if legacy is None else legacy
        if self._legacy not in CODES:
            raise ValueError(f"unknown token row code {self._legacy!r}")
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
            "n INTEGER NOT NULL, data BLOB NOT NULL, units TEXT, pos INTEGER, checksum INTEGER)"
        )
        con.execute("CREATE TABLE IF NOT EXISTS kinds (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)")
        con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
        columns = {row[1] for row in con.execute("PRAGMA table_info(tokens)")}
        for column, ctype in (("units", "TEXT"), ("pos", "INTEGER"), ("checksum", "INTEGER")):
            if column not in columns:  # a store from before this column
                self._transaction(lambda column=column, ctype=ctype: self._add_column(column, ctype))
        self._damaged_seen: set[tuple[str, Any]] = set()
        self.damaged = 0  # rows found damaged (left out, the engine read instead)
        self._kinds = self._read_kinds()
        self._kind_names = self._names()
        meta = dict(con.execute("SELECT key, value FROM meta"))
        self._unchecked = meta.get(_UNCHECKED) == 1  # anything else: every row must have a checksum
        if "kinds_sum" not in meta:  # a store from before the kinds' checksum
            self._transaction(self._set_kinds_checksum)
        elif meta["kinds_sum"] != _kinds_checksum(self._kind_names):
            raise sqlite3.DatabaseError(f"the unit kind names in {self.path} fail their checksum")
        code = meta.get("dtype")
        if code is None:  # a new store, or one from before the key: its rows are in the legacy code
            has_rows = con.execute("SELECT 1 FROM tokens LIMIT 1").fetchone() is not None
            code = self._legacy if has_rows else self._wanted.code
            self._transaction(lambda: self._set_code(code))
        elif code not in CODES:
            raise sqlite3.DatabaseError(f"{self.path} records {code!r} as its rows' form: not one it writes")
        self._use_format(code)
        name, end = meta.get("data_file"), meta.get("data_end", 0)
        ours = rf"{re.escape(self.path.name)}\.[0-9a-f]{{8}}\.bin"  # never a path: a damaged name must not lead elsewhere
        if name is not None and not (isinstance(name, str) and re.fullmatch(ours, name)):
            raise sqlite3.DatabaseError(f"{self.path} names {name!r} as its data file: not one it writes")
        if type(end) is not int or end < 0:
            raise sqlite3.DatabaseError(f"{self.path} records {end!r} as its data file's end")
        if name is None or not (self.path.parent / name).exists():
            # no data file yet, or it was lost: rows pointing into it are gone
            name, end = f"{self.path.name}.{secrets.token_hex(4)}.bin", 0

            def restart() -> None:
                con.execute("DELETE FROM tokens WHERE pos IS NOT NULL")
                self._set_meta(name, 0)
                if con.execute("SELECT 1 FROM tokens LIMIT 1").fetchone() is None:
                    self._set_code(self._wanted.code)  # nothing left in the old form

            self._transaction(restart)
            self._use_format(con.execute("SELECT value FROM meta WHERE key = 'dtype'").fetchone()[0])
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

    def _use_format(self, code: str) -> None:
        self._format = self._wanted if code == self._wanted.code else RowFormat(code, self.dim)
        self._row_bytes = self._format.row_bytes

    def _set_code(self, code: str) -> None:
        self._con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dtype', ?)", (code,))

    @property
    def code(self) -> str:
        """The form of the rows now (``compact`` moves them to the one asked for)."""
        return self._format.code

    def _add_column(self, column: str, ctype: str) -> None:
        self._con.execute(f"ALTER TABLE tokens ADD COLUMN {column} {ctype}")
        if column == "checksum" and self._con.execute("SELECT 1 FROM tokens LIMIT 1").fetchone():
            self._con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, 1)", (_UNCHECKED,))

    def _read_kinds(self) -> dict[str, int]:
        kinds = {name: i for i, name in self._con.execute("SELECT id, name FROM kinds")}
        ok = all(type(k) is str and type(i) is int for k, i in kinds.items())
        if not ok or sorted(kinds.values()) != list(range(len(kinds))):
            raise sqlite3.DatabaseError(f"the unit kinds table of {self.path} is damaged")
        return kinds

    def _set_kinds_checksum(self, names: Sequence[str] | None = None) -> None:
        value = _kinds_checksum(self._kind_names if names is None else names)
        self._con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('kinds_sum', ?)", (value,))

    def _names(self, kinds: dict[str, int] | None = None) -> tuple[str, ...]:
        kinds = self._kinds if kinds is None else kinds
        names = [""] * (max(kinds.values(), default=-1) + 1)
        for name, i in kinds.items():
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
            blobs = [self._format.encode(t) for _, _, t, _ in rows]
            start = self._end
            data = b"".join(blobs)
            written = 0
            while written < len(data):  # pwrite may write less than asked
                written += os.pwrite(self._fd, data[written:], start + written)
            os.fdatasync(self._fd)  # the bytes are on disk before any row points at them
            positions = np.concatenate([[start], start + np.cumsum([len(b) for b in blobs])]).tolist()
            records = []
            for j, (pid, version, t, units) in enumerate(rows):
                blob = None if units is None else UnitTable.encode(units, kinds)
                records.append((pid, version, t.shape[0], b"", blob, positions[j], _checksum(blobs[j], blob)))
            end = positions[-1]

            def body() -> None:
                add_kinds()
                self._con.executemany(
                    "INSERT OR REPLACE INTO tokens (id, version, n, data, units, pos, checksum) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    records,
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
        """Set ``(id, version, units)`` where the row is still at that version (rows from
        before the units column: they have no checksum until :meth:`seal`)."""
        rows = list(rows)
        with self._lock:
            kinds, add_kinds = self._numbering(units for *_, units in rows)
            data = [(UnitTable.encode(units, kinds), pid, version) for pid, version, units in rows]

            def body() -> None:
                add_kinds()
                if data:
                    self._con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, 1)", (_UNCHECKED,))
                self._con.executemany("UPDATE tokens SET units = ?, checksum = NULL WHERE id = ? AND version = ?", data)

            self._transaction(body)
            self._unchecked = self._unchecked or bool(data)
            self._use_numbering(kinds)

    def _numbering(self, unit_lists: Iterable[Sequence[Unit] | None]) -> tuple[dict[str, int], Callable[[], None]]:
        """The kind numbering with the new kinds of ``unit_lists`` added, and what
        records them (to run in the writing transaction)."""
        new = sorted({u.kind for units in unit_lists for u in units or () if u.kind not in self._kinds})
        kinds = dict(self._kinds)
        kinds.update({k: len(kinds) + j for j, k in enumerate(new)})

        def add() -> None:
            if new:
                self._con.executemany("INSERT INTO kinds (id, name) VALUES (?, ?)", [(kinds[k], k) for k in new])
                self._set_kinds_checksum(self._names(kinds))

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
        """The rows of ``ids`` found whole (a damaged row is left out, counted in
        :attr:`damaged` and deleted: the engine's vectors are read instead)."""
        rows: dict[str, tuple[int, int, bytes | str | None]] = {}
        parts: dict[str, np.ndarray] = {}
        damaged: list[tuple[int, str, Any]] = []
        with self._lock:
            view = self._view()
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                sql = (
                    "SELECT rowid, id, version, n, pos, data, units, checksum FROM tokens "
                    f"WHERE id IN ({','.join('?' * len(chunk))})"
                )
                for rowid, pid, version, n, pos, blob, units, checksum in self._con.execute(sql, chunk):
                    part = self._part(view, n, pos, blob, units, checksum)
                    if part is None:
                        damaged.append((rowid, pid, version))
                        continue
                    rows[pid] = (version, n, units)
                    parts[pid] = part
            if damaged:
                self._drop_damaged(damaged)
        return TokenRows(rows, parts)

    def _part(self, view: np.ndarray, n: Any, pos: Any, blob: Any, units: Any, checksum: Any) -> np.ndarray | None:
        """A row's vector bytes (a view), or None when the row is damaged: its values
        of the wrong type or out of range, or its bytes and units not those its
        checksum was taken of (or no checksum where every row must have one)."""
        if type(n) is not int or n < 0 or not (units is None or type(units) in (bytes, str)):
            return None
        size = n * self._row_bytes
        if pos is None:  # a row from before the data file
            if type(blob) is not bytes or len(blob) != size or not (checksum is None and self._unchecked):
                return None
            return np.frombuffer(blob, dtype=np.uint8)
        if type(pos) is not int or pos < 0 or pos + size > len(view):
            return None
        part = view[pos : pos + size]
        if checksum is None:
            return part if self._unchecked else None
        if type(checksum) is not int or type(units) is str or _checksum(part, units) != checksum:
            return None
        return part

    def _drop_damaged(self, damaged: list[tuple[int, str, Any]]) -> None:
        """Count (once each), log and delete damaged rows."""
        new = [(rowid, pid) for rowid, pid, version in damaged if (pid, version) not in self._damaged_seen]
        self._damaged_seen.update((pid, version) for _, pid, version in damaged)
        if not new:
            return
        self._count_damaged([pid for _, pid in new])
        try:
            self._transaction(
                lambda: self._con.executemany("DELETE FROM tokens WHERE rowid = ? AND id = ?", new)
            )
        except sqlite3.Error as exc:  # still left out of every read: counted once above
            log.debug("token copy %s: could not drop damaged rows: %s", self.path, exc)

    def batch(self, rows: TokenRows, ids: Sequence[str]) -> np.ndarray | EncodedTokens:
        """The vectors of ``ids`` (rows of ``rows``) one after another: float32 rows as
        one new C-contiguous float32 ``[sum n, dim]`` array; float16, int8 and binary
        rows as they are stored, gathered into one :class:`~agrame_vdb.token_rows.EncodedTokens`
        (the MaxSim kernel expands them a chunk at a time; binary: the sign bits
        gathered, the int8 rerank rows left as views of the memory map)."""
        parts = [rows._parts[pid] for pid in ids]
        if self._format.code in ENCODED_CODES:
            return self._format.encoded(parts)
        return self._format.expand(parts)

    def get(self, ids: Sequence[str]) -> dict[str, tuple[int, np.ndarray]]:
        """``id -> (version, float32 [n, dim] copy)`` of the rows found whole."""
        rows = self.read(ids)
        return {pid: (row[0], self._format.expand([rows._parts[pid]])) for pid, row in rows.rows.items()}

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

    def _count_damaged(self, ids: Sequence[str]) -> None:
        """Count damaged rows: the first of the store logged as a warning, later ones at debug level."""
        if not ids:
            return
        if not self.damaged:
            log.warning(
                "token copy %s: passage %s's vector bytes or units fail their checksum (a damaged file); the "
                "engine's vectors are read for it and the row is dropped (damaged rows are counted in the "
                "repository's diagnostics; further ones are logged at debug level)", self.path, ids[0],
            )
        else:
            log.debug("token copy %s: %d more damaged rows dropped: %s", self.path, len(ids), list(ids[:5]))
        self.damaged += len(ids)

    def unchecked(self) -> list[str]:
        """Ids of the rows without a checksum (written before the checksum column)."""
        with self._lock:
            return [row[0] for row in self._con.execute("SELECT id FROM tokens WHERE checksum IS NULL")]

    def seal(self, truth: dict[str, tuple[Any, np.ndarray, Sequence[Unit]]]) -> tuple[int, int]:
        """Give rows without a checksum one where they hold what the engine does:
        ``truth`` is ``id -> (version, vectors, units)`` read from the engine. A row
        at that version whose vectors (in the store's form) and units are the same is
        sealed, any other such row deleted (the engine is read for it). Once no row is
        left without a checksum, the store's ``unchecked`` mark goes. Returns the
        counts sealed and deleted."""
        with self._lock:
            view = self._view()
            ids = list(truth)
            sealed: list[tuple[int, int]] = []
            dropped: list[tuple[int]] = []
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                sql = (
                    "SELECT rowid, id, version, n, pos, units FROM tokens "
                    f"WHERE checksum IS NULL AND id IN ({','.join('?' * len(chunk))})"
                )
                for rowid, pid, version, n, pos, units in self._con.execute(sql, chunk).fetchall():
                    if pos is None or type(units) is str:
                        continue  # an older form: compact() moves it first
                    expected_version, vectors, expected_units = truth[pid]
                    part = self._part(view, n, pos, None, units, None)
                    same = (
                        part is not None
                        and type(units) is bytes
                        and version == expected_version
                        and part.tobytes() == self._format.encode(vectors)
                        and all(u.kind in self._kinds for u in expected_units)
                        and units == UnitTable.encode(expected_units, self._kinds)
                    )
                    if same:
                        sealed.append((_checksum(part, units), rowid))
                    else:
                        dropped.append((rowid,))

            def body() -> None:
                self._con.executemany("UPDATE tokens SET checksum = ? WHERE rowid = ?", sealed)
                self._con.executemany("DELETE FROM tokens WHERE rowid = ?", dropped)
                if not self._con.execute("SELECT 1 FROM tokens WHERE checksum IS NULL LIMIT 1").fetchone():
                    self._con.execute("DELETE FROM meta WHERE key = ?", (_UNCHECKED,))

            self._transaction(body)
            mark = self._con.execute("SELECT 1 FROM meta WHERE key = ?", (_UNCHECKED,)).fetchone()
            self._unchecked = mark is not None
            return len(sealed), len(dropped)

    def ids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._con.execute("SELECT id FROM tokens")}

    # ----- upkeep

    def stats(self) -> dict[str, int]:
        """Rows, live and dead bytes of the data file, rows in an older form, rows
        without a checksum, rows found damaged since the store was opened."""
        with self._lock:
            rows, live, old, unchecked = self._con.execute(
                "SELECT count(*), coalesce(sum(CASE WHEN pos IS NOT NULL THEN n END), 0), "
                "coalesce(sum(pos IS NULL OR typeof(units) = 'text'), 0), "
                "coalesce(sum(checksum IS NULL), 0) FROM tokens"
            ).fetchone()
            live *= self._row_bytes
            return {
                "rows": rows, "live_bytes": live, "dead_bytes": self._end - live, "old_rows": old,
                "unchecked_rows": unchecked, "damaged_rows": self.damaged,
            }

    def compact(self) -> bool:
        """Rewrite the data file with the live rows only, once dead bytes are a quarter
        of it, rows are in an older form (their vectors in a blob, their units JSON
        text: turned to the binary form) or in another code than the one asked for
        (turned to it: a checked row gets the checksum of its new bytes). Returns
        whether it rewrote.

        The new file is written and synced under a new name, then one transaction
        points every row at it; a crash before that commit leaves the old file in use
        (the new one is removed at the next open)."""
        with self._lock:
            stats = self.stats()
            convert = self._format is not self._wanted
            if not convert and not stats["old_rows"] and stats["dead_bytes"] <= _COMPACT_WHEN_DEAD * max(self._end, 1):
                return False
            name = f"{self.path.name}.{secrets.token_hex(4)}.bin"
            path = self.path.parent / name
            view = self._view()
            moved: list[tuple[int, bytes | str | None, Any, str]] = []
            damaged: set[str] = set()  # the engine's vectors are read for these until they are written again
            pos = 0
            # old rows' blobs are read one at a time: a store of them can be larger than memory
            listed = self._con.execute(
                "SELECT id, n, pos, length(data), units, checksum FROM tokens ORDER BY pos"
            ).fetchall()
            parsed = {}
            for pid, _, _, _, units, _ in listed:
                if isinstance(units, str):
                    try:
                        parsed[pid] = units_from_text(units)
                    except (ValueError, TypeError, IndexError):  # damaged JSON units
                        damaged.add(pid)
            kinds, add_kinds = self._numbering(parsed.values())
            with open(path, "wb") as out:
                for pid, n, old_pos, blob_size, units, checksum in listed:
                    if pid in damaged:
                        continue
                    if old_pos is not None:
                        part = self._part(view, n, old_pos, None, units, checksum)
                    elif type(n) is int and blob_size == n * self._row_bytes and self._unchecked and checksum is None:
                        part = self._con.execute("SELECT data FROM tokens WHERE id = ?", (pid,)).fetchone()[0]
                    else:
                        part = None
                    if part is None:
                        damaged.add(pid)
                        continue
                    raw = part if type(part) is bytes else part.tobytes()
                    if pid in parsed:
                        units = UnitTable.encode(parsed[pid], kinds)
                    if convert:
                        raw = self._wanted.encode(self._format.expand([np.frombuffer(raw, dtype=np.uint8)]))
                        if checksum is not None:  # checked just now, by _part
                            checksum = _checksum(raw, units)
                    out.write(raw)
                    moved.append((pos, units, checksum, pid))
                    pos += len(raw)
                out.flush()
                os.fsync(out.fileno())

            def body() -> None:
                add_kinds()
                self._con.executemany("DELETE FROM tokens WHERE id = ?", [(pid,) for pid in damaged])
                self._con.executemany(
                    "UPDATE tokens SET pos = ?, data = x'', units = ?, checksum = ? WHERE id = ?", moved
                )
                self._set_meta(name, pos)
                if convert:
                    self._set_code(self._wanted.code)

            try:
                self._transaction(body)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            fd = os.open(path, os.O_RDWR)
            os.close(self._fd)
            self._fd, self._data_path, self._end, self._map = fd, path, pos, None
            self._use_format(self._wanted.code)
            self._use_numbering(kinds)
            self._remove_other_data_files()
            self._count_damaged(sorted(damaged - {pid for pid, _ in self._damaged_seen}))
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
