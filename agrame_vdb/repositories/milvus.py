"""Milvus behind the repository protocol: Milvus Lite (embedded) or a Milvus server.

``connect("milvus-lite:///data/agrame.db")`` opens Milvus Lite in process (its
"file" is a directory; one process at a time); ``connect("milvus://host:19530")``
a server (``?secure=1`` for TLS, token from ``?token=`` or ``MILVUS_TOKEN``,
``?db_name=``). Options (URL query or keyword arguments):

==================  =========================================================  ================
option              meaning                                                    default
==================  =========================================================  ================
``layout``          ``tokens`` (portable) or ``struct`` (Array of Structs,     ``tokens``
                    Milvus >= 2.6.4) for collections created from now on
``first_stage``     ``pooled``, or ``tokens``: per-token ANN aggregated per    ``pooled``
                    passage when ``candidates()`` gets query tokens
``pooled_index``    index of the pooled vector: FLAT (exact), HNSW, AUTOINDEX  FLAT (Lite),
                                                                               HNSW (server)
``token_index``     index of the token vectors (``tokens`` layout)             FLAT
``token_k``         hits per query token of the ``tokens`` first stage         64
``consistency``     read consistency on a server (Session: read your writes)   Session
``retries``         attempts of a server call on transient errors              3
``timeout``         seconds per server call                                    60
==================  =========================================================  ================

Portable layout (``layout=tokens``), two Milvus collections per agrame collection
``name``:

- ``name`` (passages): ``id`` (the UUID string, primary key), ``pnum`` (the
  passage number, below), ``tok_base`` and ``n_tokens`` (where its current token
  rows are), ``doc_id``, ``passage_index``, ``text``, ``units`` (compact JSON),
  ``metadata`` (JSON), ``fx`` (the filter document of
  :mod:`._milvus_filter`), ``schema_version`` and ``pooled`` (a vector with a
  COSINE index: the first stage). The agrame schema is kept in the collection
  property ``agrame``.
- ``name__tokens`` (tokens): one row per token vector: ``pk`` (INT64 primary
  key), ``pnum`` (INVERTED/STL_SORT index) and ``vec`` (an IP index).

Ids. Passage ids are UUID strings; token rows need int64 keys. A passage's
*number* ``pnum`` is a 49-bit BLAKE2b hash of its id (``pnum_candidates``); when
another id already owns that number (probability ~n²/2⁵⁰ for n passages) the next
hash (``id/1``, ``id/2``, …) is tried, and the number in use is stored in the
passage row, so readers never recompute it. A token's key is
``pk = pnum·2¹⁴ + gen·2¹³ + t`` for its position ``t < 8192`` and a generation
bit ``gen``: each passage owns the key block ``[pnum·2¹⁴, (pnum+1)·2¹⁴)``.

Write order (one ``upsert`` batch), and why no half-written passage is visible:

1. read the batch's existing rows (their number and generation);
2. write the token rows into the *other* generation (``gen`` = 1 − old; 0 for a
   new passage): the visible version's rows are not touched;
3. write the passage rows: the commit marker of each passage (one row, atomic),
   pointing at the new generation and its token count;
4. for a rewritten passage, delete the rest of its key block: the old generation
   and anything past the new count (a longer old version, leftovers of a failed
   write).

Readers see a passage only through its row, and read exactly the ``n_tokens`` rows
from ``tok_base`` it names. A failure after step 2 leaves the old version whole and
visible (the new token rows are unreachable; the next write of the passage
overwrites or deletes them); after step 3 the new version is complete. A reader
that finds fewer token rows than its row names (a concurrent rewrite committed and
cleaned in between) reads the row again. ``delete`` removes the passage row first,
then its token rows. ``collect_garbage()`` removes token rows no passage row
reaches (left by a failed write or delete); it reads every token key, so it is not
part of ``optimize()``, which flushes and builds indexes.

First stage. ``candidates(pooled)`` searches the pooled vectors (COSINE).
``candidates(pooled, tokens=q)`` takes the pooled top ``prefetch``, fetches their
token rows by key and ranks them by exact MaxSim (float64, in numpy):
``maxsim_rerank`` is True on every layout. With ``first_stage=tokens`` the
candidates come instead from an ANN search of every query token over the token
rows, aggregated per passage as in colbert-live (sum over query tokens of the best
hit; a query token without a hit in a passage counts its lowest hit), filtered on
the passage rows, completed by the pooled stage when too few pass the filter.

Storage dtypes: float16 and int8 collections are accepted and stored as float32
(``storage_options_honoured`` is False); fetch returns what was written.

Consistency on a server: reads are ``Session`` (they wait for this process's
writes); a delete answers no usable timestamp on Milvus 2.3, so reads of a
collection in the seconds after this client deleted from it are ``Strong``.
Aliases are Milvus aliases of the passages collection.

Struct layout (``layout=struct``, Milvus >= 2.6.4): one collection; the token
vectors are an ``ARRAY<STRUCT{vec}>`` field with a ``MAX_SIM_IP`` HNSW index, so
writes are single-row atomic and ``candidates(tokens=...)`` reranks by the
engine's own MAX_SIM. Milvus Lite and 2.3 servers *silently drop* such a field:
the field is checked by reading the schema back, and a clear
UnsupportedOperationError is raised where it is missing.

Limits of a Milvus server are enforced here, before any write, also on Milvus
Lite (which accepts more): dim <= 32768, units <= 65535 UTF-8 bytes, the
metadata's filter document <= 65536 bytes as JSON, at most 8192
token vectors per passage (4096 in the struct layout), at most 16384 hits per
search. Text, doc id (65535 UTF-8 bytes) and metadata (65536 bytes as JSON) are
held to a server's limits by the shared checks, on every engine. Long ``in``
lists and large requests are split into chunks.

Milvus Lite: a collection with an index reopens released, so it is loaded on
open; index specs are created on the empty collection and built by ``load`` or
after a flush, never inside a long ``create_index`` call (which times out).

Logging: pymilvus logs every failed call at ERROR, with a traceback, on its own
stderr handler, before raising. The calls this repository makes turn those
exceptions into typed errors, so a filter on the ``pymilvus`` loggers (added when
the first repository is created) drops the records logged *during this
repository's calls* and hands them to this module's logger at DEBUG
(``agrame_vdb.repositories.milvus``); pymilvus's levels and handlers are left
alone, and what it logs during a caller's own pymilvus calls still shows.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..errors import (
    AgrameError,
    CollectionNotFoundError,
    ConcurrentAccessError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidSchemaError,
    InvalidVectorError,
    RepositoryError,
    SchemaMismatchError,
    StoreUnavailableError,
    TransientRepositoryError,
    UnsupportedOperationError,
)
from ..repository import (
    MAX_STRING_BYTES,
    Candidate,
    Capabilities,
    CollectionSchema,
    Filter,
    IdPage,
    RepositoryBase,
    StoredPassage,
)
from ..redact import redact_url, secret_parts, url_secrets
from . import StoreURL, _grpc_transient, _option_bool, _option_number
from ._codec import units_from_json, units_to_json
from ._milvus_filter import TRUE, filter_document, to_expr

try:
    from pymilvus import DataType, MilvusClient
    from pymilvus.exceptions import MilvusException
except ImportError as exc:  # pragma: no cover - connect() turns this into StoreUnavailableError
    raise ModuleNotFoundError(str(exc), name="pymilvus") from exc

__all__ = [
    "MilvusRepository",
    "MilvusCapabilities",
    "from_url",
    "pnum_candidates",
    "token_pk",
    "TOKEN_BITS",
    "MAX_TOKENS",
    "STRUCT_MAX_TOKENS",
]

T = TypeVar("T")

# ----------------------------------------------------------------------------- layout constants

TOKEN_BITS = 13
#: token vectors per passage in the portable layout
MAX_TOKENS = 1 << TOKEN_BITS
#: token vectors per passage in the struct layout (a server's ARRAY max_capacity)
STRUCT_MAX_TOKENS = 4096
_BLOCK_BITS = TOKEN_BITS + 1  # a generation bit above the token index
PNUM_BITS = 63 - _BLOCK_BITS
_PNUM_ATTEMPTS = 64
TOKENS_SUFFIX = "__tokens"
PROPERTY = "agrame"
LAYOUT_FORMAT = 1

# server limits (Milvus Lite accepts more; we hold everything to these)
MAX_DIM = 32768
MAX_VARCHAR = MAX_STRING_BYTES  # 65535, for text and doc id on every engine
MAX_JSON = 65536
MAX_TOPK = 16384
_QUERY_CAP = 16384  # offset + limit of one query
_IN_CHUNK = 1000  # values of one `in` list of strings
_PK_CHUNK = 2000  # keys of one `pk in [...]` list (Milvus Lite slows down past a few thousand)
_REQUEST_BYTES = 16 << 20  # target size of one insert / query answer (servers take 64 MB)
# A Session read does not wait for this client's deletes (a delete answers no usable
# timestamp on Milvus 2.3): reads of a collection this long after a delete are Strong.
_STRONG_AFTER_DELETE = 5.0

_F_ID = "id"
_F_PNUM = "pnum"
_F_BASE = "tok_base"
_F_NTOK = "n_tokens"
_F_DOC = "doc_id"
_F_INDEX = "passage_index"
_F_TEXT = "text"
_F_UNITS = "units"
_F_META = "metadata"
_F_FX = "fx"
_F_VERSION = "schema_version"
_F_POOLED = "pooled"
_F_STRUCT = "tokens"
_F_SVEC = "vec"
_STRUCT_ANNS = f"{_F_STRUCT}[{_F_SVEC}]"
_T_PK = "pk"
_T_PNUM = "pnum"
_T_VEC = "vec"

_READ_FIELDS = [_F_ID, _F_BASE, _F_NTOK, _F_DOC, _F_INDEX, _F_TEXT, _F_UNITS, _F_META, _F_VERSION, _F_POOLED]
_LAYOUTS = ("tokens", "struct")
_FIRST_STAGES = ("pooled", "tokens")
_INDEX_TYPES = ("FLAT", "HNSW", "AUTOINDEX", "IVF_FLAT")
_CONSISTENCY = ("Strong", "Session", "Bounded", "Eventually")


def token_pk(pnum: int, gen: int, t: int) -> int:
    """The primary key of token ``t`` of generation ``gen`` of passage number ``pnum``."""
    return (pnum << _BLOCK_BITS) | (gen << TOKEN_BITS) | t


def pnum_candidates(pid: str) -> Iterable[int]:
    """The passage numbers ``pid`` may take, in order of preference (49-bit hashes).

    >>> next(iter(pnum_candidates("00000000-0000-4000-8000-000000000000"))) < 2**49
    True
    """
    for attempt in range(_PNUM_ATTEMPTS):
        h = hashlib.blake2b(f"{pid}/{attempt}".encode("ascii"), digest_size=8).digest()
        yield int.from_bytes(h, "big") & ((1 << PNUM_BITS) - 1)


@dataclass(frozen=True, slots=True)
class MilvusCapabilities(Capabilities):
    """Capabilities plus what is particular to Milvus.

    ``layout``: the layout new collections get (``tokens`` or ``struct``);
    ``struct_maxsim``: the server is new enough for Array of Structs with MAX_SIM
    (>= 2.6.4; the field itself is checked by reading the schema back);
    ``first_stage``: ``pooled`` or ``tokens``; ``server_version`` as reported.
    """

    layout: str = "tokens"
    struct_maxsim: bool = False
    first_stage: str = "pooled"
    server_version: str = ""


# ----------------------------------------------------------------------------- URL


def from_url(url: StoreURL, **options: Any) -> MilvusRepository:
    kwargs: dict[str, Any] = {}
    for name in ("layout", "first_stage", "pooled_index", "token_index", "consistency", "token", "db_name"):
        if name in options:
            kwargs[name] = options.pop(name)
    for name, kind in (("retries", int), ("timeout", float), ("token_k", int)):
        if name in options:
            kwargs[name] = _option_number(options.pop(name), name, kind)
    secure = _option_bool(options.pop("secure"), "secure") if "secure" in options else False
    if options:
        raise InvalidInputError(
            f"unknown options for Milvus: {sorted(options)}; known: layout, first_stage, pooled_index, "
            "token_index, token_k, consistency, retries, timeout, token, db_name, secure"
        )
    if url.scheme == "milvus-lite":
        if not url.location:
            raise InvalidInputError(f"milvus-lite needs a path, as in milvus-lite:///data/agrame.db; got {url.shown!r}")
        if secure or "token" in kwargs or "db_name" in kwargs:
            raise InvalidInputError("secure, token and db_name are server options; Milvus Lite takes none")
        return MilvusRepository(path=url.location, **kwargs)
    loc = url.location.rstrip("/")
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:/\[\]\s]+)(?::(\d+))?(/[A-Za-z0-9_]*)?", loc)
    if not m or not 1 <= int(m[2] or 19530) <= 65535:
        raise InvalidInputError(
            f"a Milvus server URL looks like milvus://host:19530[/db_name], got {url.shown!r} "
            "(credentials go in ?token=user:password or MILVUS_TOKEN, not before the host)"
        )
    return MilvusRepository(uri=f"{'https' if secure else 'http'}://{loc}", **kwargs)


# ----------------------------------------------------------------------------- Milvus Lite processes

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


# ----------------------------------------------------------------------------- errors

log = logging.getLogger(__name__)
#: set while a MilvusRepository is inside one of its engine calls
_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("agrame_milvus_call", default=False)


class _OwnCallsFilter(logging.Filter):
    """Drops pymilvus's records logged during this library's calls (they become typed
    errors); passes them on to this module's logger at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _IN_CALL.get():
            return True
        if log.isEnabledFor(logging.DEBUG):
            log.debug("pymilvus %s (%s): %s", record.levelname, record.name, record.getMessage())
        return False


_FILTER = _OwnCallsFilter()


def _quiet_pymilvus() -> None:
    """Put the filter on every pymilvus logger there is (idempotent); a filter acts on
    the records of its own logger only, so each one gets it."""
    names = ["pymilvus", *(n for n in list(logging.Logger.manager.loggerDict) if n.startswith("pymilvus."))]
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc) or repr(exc)
    return msg if len(msg) <= 400 else msg[:397] + "..."


def is_transient(exc: BaseException) -> bool:
    """Whether a pymilvus / gRPC exception is worth retrying."""
    if _grpc_transient(exc):
        return True
    name = type(exc).__name__
    if name in ("MilvusUnavailableException", "FutureTimeoutError"):
        return True
    msg = _message(exc).lower()
    return isinstance(exc, MilvusException) and any(
        s in msg for s in ("unavailable", "fail connecting", "deadline exceeded", "rate limit", "too many requests")
    )


def _not_loaded(exc: BaseException) -> bool:
    msg = _message(exc).lower()
    return isinstance(exc, MilvusException) and ("not loaded" in msg or "released" in msg or "not load" in msg)


# ----------------------------------------------------------------------------- the repository


class MilvusRepository(RepositoryBase):
    """Milvus Lite (``path=``) or a Milvus server (``uri=``); see the module docs."""

    batch_size = 128

    def __init__(
        self,
        *,
        path: str | None = None,
        uri: str | None = None,
        token: str | None = None,
        db_name: str | None = None,
        layout: str = "tokens",
        first_stage: str = "pooled",
        pooled_index: str | None = None,
        token_index: str = "FLAT",
        token_k: int = 64,
        consistency: str = "Session",
        retries: int = 3,
        timeout: float = 60.0,
    ) -> None:
        super().__init__()
        if (path is None) == (uri is None):
            raise InvalidInputError("give exactly one of path= (Milvus Lite) or uri= (a Milvus server)")
        if layout not in _LAYOUTS:
            raise InvalidInputError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        if first_stage not in _FIRST_STAGES:
            raise InvalidInputError(f"first_stage must be one of {_FIRST_STAGES}, got {first_stage!r}")
        for what, value in (("pooled_index", pooled_index), ("token_index", token_index)):
            if value is not None and str(value).upper() not in _INDEX_TYPES:
                raise InvalidInputError(f"{what} must be one of {_INDEX_TYPES}, got {value!r}")
        if consistency not in _CONSISTENCY:
            raise InvalidInputError(f"consistency must be one of {_CONSISTENCY}, got {consistency!r}")
        if not isinstance(retries, int) or retries < 1:
            raise InvalidInputError(f"retries must be an int >= 1, got {retries!r}")
        if not isinstance(token_k, int) or not 1 <= token_k <= MAX_TOPK:
            raise InvalidInputError(f"token_k must be an int in [1, {MAX_TOPK}], got {token_k!r}")
        self._lite = path is not None
        self.engine = "milvus-lite" if self._lite else "milvus-server"
        self._path = os.path.abspath(path) if path is not None else None
        self._where = self._path or redact_url(uri or "")
        tok = token if token is not None else os.environ.get("MILVUS_TOKEN")
        self._secrets = frozenset(url_secrets(uri or "") | secret_parts(tok))
        _quiet_pymilvus()
        self._layout = layout
        self._first_stage = first_stage
        self._pooled_index = (pooled_index or ("FLAT" if self._lite else "HNSW")).upper()
        self._token_index = token_index.upper()
        self._token_k = token_k
        self._consistency = consistency
        self._retries = retries
        self._timeout = timeout
        self._loaded: set[str] = set()
        self._layouts: dict[str, str] = {}
        self._deleted_at: dict[str, float] = {}
        #: test hook: called with a step name between the writes of an upsert
        self._checkpoint: Callable[[str], None] | None = None
        self._lite_uri: str | None = None
        with self._engine("connect"):
            if self._lite:
                self._lite_uri = _lite_open(self._path)  # type: ignore[arg-type]
            try:
                if self._lite:
                    self._client = MilvusClient(uri=self._lite_uri)
                else:
                    kwargs: dict[str, Any] = {"uri": uri, "timeout": timeout}
                    if tok:
                        kwargs["token"] = tok
                    if db_name:
                        kwargs["db_name"] = db_name
                    self._client = MilvusClient(**kwargs)
                self.server_version = str(self._call(self._client.get_server_version))
            except BaseException:
                client = getattr(self, "_client", None)
                if client is not None:
                    client.close()
                if self._lite:
                    _lite_close(self._path)  # type: ignore[arg-type]
                raise
        self._version = _parse_version(self.server_version)

    # ----- plumbing

    @contextmanager
    def _engine(self, op: str, collection: str | None = None) -> Iterator[None]:
        outer = _IN_CALL.set(True)  # pymilvus's own ERROR records of these calls are filtered
        try:
            with super()._engine(op, collection):
                yield
        finally:
            _IN_CALL.reset(outer)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if self._lite or not is_transient(exc) or attempt >= self._retries:
                    if is_transient(exc) and not self._lite:
                        raise TransientRepositoryError(
                            f"Milvus at {self._where} still failing after {attempt} attempts: "
                            f"{type(exc).__name__}: {_message(exc)}; check that it is running and reachable"
                        ) from exc
                    raise
                time.sleep(min(0.2 * 2**attempt, 5.0))

    def _translate_error(self, exc: BaseException, op: str, collection: str | None) -> AgrameError | None:
        if not isinstance(exc, Exception):
            return None
        msg = _message(exc)
        low = msg.lower()
        if collection and "collection" in low and ("not exist" in low or "not found" in low):
            return CollectionNotFoundError(f"collection {collection!r} does not exist in {self._where}")
        if type(exc).__name__ == "ConnectionConfigException" and self._lite:
            return ConcurrentAccessError(
                f"the Milvus Lite store at {self._where} could not be opened ({msg}); "
                "it may be open in another process"
            )
        if is_transient(exc):
            return TransientRepositoryError(f"{self.engine} at {self._where} failed to {op}: {msg}")
        where = f" on collection {collection!r}" if collection else ""
        return RepositoryError(f"{self.engine} failed to {op}{where}: {type(exc).__name__}: {msg}")

    def _read(self, names: Sequence[str], fn: Callable[..., T], *args: Any, write: bool = False, **kwargs: Any) -> T:
        """A call that needs loaded collections (reads, deletes by expression); loads them
        first, and again when someone released them."""
        self._ensure_loaded(names)
        kwargs.setdefault("timeout", self._timeout)
        if not self._lite and not write:
            recent = time.monotonic() - _STRONG_AFTER_DELETE
            strong = any(self._deleted_at.get(n, -math.inf) > recent for n in names)
            kwargs.setdefault("consistency_level", "Strong" if strong else self._consistency)
        try:
            return self._call(fn, *args, **kwargs)
        except MilvusException as exc:
            if not _not_loaded(exc):
                raise
            for n in names:
                self._loaded.discard(n)
            self._ensure_loaded(names)
            return self._call(fn, *args, **kwargs)

    def _ensure_loaded(self, names: Sequence[str]) -> None:
        todo = [n for n in names if n not in self._loaded]
        if not todo:
            return
        pending = []
        for n in todo:
            state = self._call(self._client.get_load_state, n)
            if _state_name(state) == "Loaded":
                self._loaded.add(n)
            else:
                pending.append(n)
        if not pending:
            return
        if self._lite:
            for n in pending:
                self._call(self._client.load_collection, n)  # builds indexes; retry-safe
                self._loaded.add(n)
            return
        for n in pending:
            if _state_name(self._call(self._client.get_load_state, n)) != "Loading":
                self._call(self._client.load_collection, n, _async=True)
        deadline = time.monotonic() + max(self._timeout, 120.0)
        while pending:
            pending = [n for n in pending if _state_name(self._call(self._client.get_load_state, n)) != "Loaded"]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TransientRepositoryError(f"Milvus at {self._where} did not load {pending} in time")
            time.sleep(0.05)
        self._loaded.update(todo)

    def _layout_of(self, schema: CollectionSchema) -> str:
        return self._layouts.get(schema.name, "tokens")

    def _names(self, schema: CollectionSchema) -> list[str]:
        if self._layout_of(schema) == "struct":
            return [schema.name]
        return [schema.name, schema.name + TOKENS_SUFFIX]

    def _struct_supported(self) -> bool:
        return not self._lite and self._version >= (2, 6, 4)

    def _capabilities(self) -> Capabilities:
        return MilvusCapabilities(
            engine=self.engine,
            maxsim_rerank=True,
            dtypes=frozenset(("float32", "float16", "int8")),
            storage_options_honoured=False,
            persistent=True,
            exclusive=self._lite,
            filter_ops=frozenset(("eq", "in", "range", "and", "or", "not")),
            fetch_atol={"float32": 0.0, "float16": 0.0, "int8": 0.0},
            approximate_first_stage=self._pooled_index != "FLAT",
            layout=self._layout,
            struct_maxsim=self._struct_supported(),
            first_stage=self._first_stage,
            server_version=self.server_version,
        )

    def collection_layout(self, name: str) -> str:
        """The layout of an existing collection: ``tokens`` or ``struct``."""
        return self._layout_of(self._schema(name))

    # ----- collections

    def _load_schema(self, name: str) -> CollectionSchema | None:
        if name.endswith(TOKENS_SUFFIX) or not self._call(self._client.has_collection, name):
            return None
        desc = self._call(self._client.describe_collection, name)
        if desc.get("collection_name", name) != name:
            return None  # ``name`` is an alias (Milvus answers for its collection)
        raw = (desc.get("properties") or {}).get(PROPERTY)
        if raw is None:
            raise SchemaMismatchError(
                f"collection {name!r} in {self._where} was not created by agrame-vdb (no {PROPERTY!r} property)"
            )
        try:
            meta = json.loads(raw)
            schema = CollectionSchema.from_json(meta["schema"])
            layout = meta.get("layout", "tokens")
        except (ValueError, KeyError, TypeError) as exc:
            raise SchemaMismatchError(f"collection {name!r} has an unreadable {PROPERTY!r} property: {raw!r}") from exc
        if layout == "struct" and not _has_struct_field(desc):
            raise SchemaMismatchError(
                f"collection {name!r} should hold its token vectors in the Array-of-Structs field "
                f"{_F_STRUCT!r}, but the server reports no such field"
            )
        if layout == "tokens" and not self._call(self._client.has_collection, name + TOKENS_SUFFIX):
            raise SchemaMismatchError(
                f"collection {name!r} has lost its token collection {name + TOKENS_SUFFIX!r}; drop and re-index it"
            )
        self._layouts[name] = layout
        return schema

    def _property(self, schema: CollectionSchema, layout: str) -> str:
        return json.dumps(
            {"schema": schema.to_json(), "layout": layout, "format": LAYOUT_FORMAT, "token_bits": TOKEN_BITS},
            separators=(",", ":"),
        )

    def _create(self, schema: CollectionSchema) -> None:
        name = schema.name
        if name.endswith(TOKENS_SUFFIX):
            raise InvalidSchemaError(
                f"collection names ending in {TOKENS_SUFFIX!r} are reserved for Milvus token collections: {name!r}"
            )
        if schema.dim > MAX_DIM:
            raise InvalidSchemaError(f"Milvus vector fields hold at most {MAX_DIM} dims; got dim={schema.dim}")
        layout = self._layout
        tokens_name = name + TOKENS_SUFFIX
        if self._call(self._client.has_collection, tokens_name):
            self._call(self._client.drop_collection, tokens_name)  # leftover of an interrupted drop
        created: list[str] = []
        try:
            created.append(name)  # dropped again if anything below fails
            self._create_passages(schema, layout)
            if layout == "tokens":
                self._create_tokens(schema)
                created.append(tokens_name)
            self._layouts[name] = layout
            self._ensure_loaded(created)
        except BaseException:
            for n in reversed(created):
                try:
                    if self._client.has_collection(n):
                        self._client.drop_collection(n)
                except Exception:
                    pass
                self._loaded.discard(n)
            self._layouts.pop(name, None)
            raise

    def _create_passages(self, schema: CollectionSchema, layout: str) -> None:
        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field(_F_ID, DataType.VARCHAR, is_primary=True, max_length=36)
        s.add_field(_F_PNUM, DataType.INT64)
        s.add_field(_F_BASE, DataType.INT64)
        s.add_field(_F_NTOK, DataType.INT64)
        s.add_field(_F_DOC, DataType.VARCHAR, max_length=MAX_VARCHAR)
        s.add_field(_F_INDEX, DataType.INT64)
        s.add_field(_F_TEXT, DataType.VARCHAR, max_length=MAX_VARCHAR)
        s.add_field(_F_UNITS, DataType.VARCHAR, max_length=MAX_VARCHAR)
        s.add_field(_F_META, DataType.JSON)
        s.add_field(_F_FX, DataType.JSON)
        s.add_field(_F_VERSION, DataType.INT64)
        s.add_field(_F_POOLED, DataType.FLOAT_VECTOR, dim=schema.dim)
        if layout == "struct":
            st = MilvusClient.create_struct_field_schema()
            st.add_field(_F_SVEC, DataType.FLOAT_VECTOR, dim=schema.dim)
            s.add_field(
                _F_STRUCT, DataType.ARRAY, element_type=DataType.STRUCT, struct_schema=st, max_capacity=STRUCT_MAX_TOKENS
            )
        self._call(
            self._client.create_collection,
            schema.name,
            schema=s,
            consistency_level="Strong" if self._lite else self._consistency,
            properties={PROPERTY: self._property(schema, layout)},
        )
        if layout == "struct" and not _has_struct_field(self._call(self._client.describe_collection, schema.name)):
            raise UnsupportedOperationError(
                f"{self.engine} {self.server_version} at {self._where} dropped the Array-of-Structs field "
                f"{_F_STRUCT!r} when creating {schema.name!r} (read back from its schema): the struct layout "
                "with MAX_SIM needs a Milvus server >= 2.6.4; use layout=tokens here"
            )
        ip = self._client.prepare_index_params()
        ip.add_index(_F_POOLED, **_vector_index(self._pooled_index, "COSINE"))
        if layout == "struct":
            ip.add_index(
                _STRUCT_ANNS,
                index_name="tokens_maxsim",
                index_type="HNSW",
                metric_type="MAX_SIM_IP",
                params={"M": 16, "efConstruction": 200},
            )
        self._add_scalar_index(ip, _F_PNUM, "int")
        self._add_scalar_index(ip, _F_DOC, "str")
        self._call(self._client.create_index, schema.name, ip, sync=False)
        if self._lite:
            self._call(self._client.release_collection, schema.name)

    def _create_tokens(self, schema: CollectionSchema) -> None:
        name = schema.name + TOKENS_SUFFIX
        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field(_T_PK, DataType.INT64, is_primary=True)
        s.add_field(_T_PNUM, DataType.INT64)
        s.add_field(_T_VEC, DataType.FLOAT_VECTOR, dim=schema.dim)
        self._call(
            self._client.create_collection,
            name,
            schema=s,
            consistency_level="Strong" if self._lite else self._consistency,
            properties={PROPERTY: json.dumps({"role": "tokens", "of": schema.name})},
        )
        ip = self._client.prepare_index_params()
        ip.add_index(_T_VEC, **_vector_index(self._token_index, "IP"))
        self._add_scalar_index(ip, _T_PNUM, "int")
        self._call(self._client.create_index, name, ip, sync=False)
        if self._lite:
            self._call(self._client.release_collection, name)

    def _add_scalar_index(self, ip: Any, field: str, kind: str) -> None:
        if self._lite or self._version >= (2, 4, 0):
            ip.add_index(field, index_type="INVERTED")
        elif kind == "int":
            ip.add_index(field, index_type="STL_SORT")  # Milvus 2.3 has no INVERTED index

    def _add_indexes(self, schema: CollectionSchema, new_fields: dict[str, str]) -> None:
        # Filters read the filter document ``fx``; the indexed fields are recorded in the schema.
        self._call(
            self._client.alter_collection_properties,
            schema.name,
            properties={PROPERTY: self._property(schema, self._layout_of(schema))},
        )

    # ----- aliases: Milvus aliases of the passages collection (the base resolves an
    # alias to its collection before any other hook runs)

    def _aliases(self) -> dict[str, str]:
        names = (self._call(self._client.list_aliases) or {}).get("aliases", [])
        out = {}
        for alias in names:
            if not alias.endswith(TOKENS_SUFFIX):
                out[alias] = self._call(self._client.describe_alias, alias)["collection_name"]
        return out

    def _set_alias(self, alias: str, collection: str, previous: str | None) -> None:
        if previous is None:
            self._call(self._client.create_alias, collection, alias)
        else:
            self._call(self._client.alter_alias, collection, alias)  # atomic: old target or new

    def _delete_alias(self, alias: str) -> None:
        self._call(self._client.drop_alias, alias)

    def _list_collections(self) -> list[str]:
        return [n for n in self._call(self._client.list_collections) if not n.endswith(TOKENS_SUFFIX)]

    def _drop(self, name: str) -> bool:
        existed = self._call(self._client.has_collection, name)
        if existed:
            self._call(self._client.drop_collection, name)
        if self._call(self._client.has_collection, name + TOKENS_SUFFIX):
            self._call(self._client.drop_collection, name + TOKENS_SUFFIX)
        self._loaded.discard(name)
        self._loaded.discard(name + TOKENS_SUFFIX)
        self._layouts.pop(name, None)
        return bool(existed)

    # ----- writes

    def _check_passage(self, p: Any, schema: CollectionSchema, versions: frozenset[int] | None = None) -> None:  # type: ignore[override]
        """The shared checks, then a Milvus server's limits (run for every passage before any write)."""
        RepositoryBase._check_passage(p, schema, versions)
        _check_limits(p, STRUCT_MAX_TOKENS if self._layout_of(schema) == "struct" else MAX_TOKENS)

    def _step(self, name: str) -> None:
        if self._checkpoint is not None:
            self._checkpoint(name)

    def _upsert(self, schema: CollectionSchema, passages: Sequence[StoredPassage]) -> None:
        if self._layout_of(schema) == "struct":
            rows = [self._passage_row(p, 0, 0) | {_F_STRUCT: [{_F_SVEC: v} for v in p.tokens.tolist()]} for p in passages]
            self._write_rows(schema.name, rows, [_row_bytes(r, schema.dim, p.n_tokens + 1) for r, p in zip(rows, passages)])
            return
        tokens_name = schema.name + TOKENS_SUFFIX
        ids = [p.id for p in passages]
        old = {r[_F_ID]: (r[_F_PNUM], r[_F_BASE]) for r in self._rows(schema, ids, [_F_ID, _F_PNUM, _F_BASE])}
        pnums = self._allocate(schema, [i for i in ids if i not in old], {v[0] for v in old.values()})
        plan = []
        for p in passages:
            if p.id in old:
                pnum, base = old[p.id]
                gen = 1 - ((base >> TOKEN_BITS) & 1)
            else:
                pnum, gen = pnums[p.id], 0
            plan.append((p, pnum, token_pk(pnum, gen, 0)))
        # 1. token rows of the new generation: invisible until their passage row names them
        self._write_tokens(tokens_name, schema.dim, plan)
        self._step("tokens-written")
        # 2. passage rows: the commit markers
        rows = [self._passage_row(p, pnum, base) for p, pnum, base in plan]
        self._write_rows(schema.name, rows, [_row_bytes(r, schema.dim, 1) for r in rows])
        self._step("passages-written")
        # 3. everything else in the key block of each rewritten passage: the old generation
        # and stale tails (a new passage's block holds rows only after a failed write:
        # unreachable, and removed by collect_garbage)
        ranges = []
        for p, pnum, base in plan:
            if p.id not in old:
                continue
            block = pnum << _BLOCK_BITS
            if base > block:
                ranges.append((block, base))
            ranges.append((base + p.n_tokens, block + (1 << _BLOCK_BITS)))
        for chunk in _chunks(ranges, 200):
            self._delete_expr(tokens_name, " or ".join(f"({_T_PK} >= {a} and {_T_PK} < {b})" for a, b in chunk))
        self._step("cleaned")

    def _passage_row(self, p: StoredPassage, pnum: int, base: int) -> dict[str, Any]:
        return {
            _F_ID: p.id,
            _F_PNUM: pnum,
            _F_BASE: base,
            _F_NTOK: p.n_tokens,
            _F_DOC: p.doc_id,
            _F_INDEX: p.index,
            _F_TEXT: p.text,
            _F_UNITS: _units_json(p),
            _F_META: dict(p.metadata),
            _F_FX: filter_document(p.doc_id, p.index, p.metadata),
            _F_VERSION: p.schema_version,
            _F_POOLED: p.pooled,
        }

    def _write_tokens(self, name: str, dim: int, plan: list[tuple[StoredPassage, int, int]]) -> None:
        pks = np.concatenate([np.arange(base, base + p.n_tokens, dtype=np.int64) for p, _, base in plan])
        pnums = np.concatenate([np.full(p.n_tokens, pnum, dtype=np.int64) for p, pnum, _ in plan])
        vecs = np.concatenate([p.tokens for p, _, _ in plan]).astype("<f4", copy=False)
        per_call = max(1, min(20_000, _REQUEST_BYTES // (dim * 4 + 16)))
        conn = _handler(self._client)
        for start in range(0, len(pks), per_call):
            sl = slice(start, start + per_call)
            if conn is None:  # pymilvus without the handler: row dicts (slower)
                rows = [{_T_PK: int(k), _T_PNUM: int(n), _T_VEC: v.tolist()} for k, n, v in zip(pks[sl], pnums[sl], vecs[sl])]
                self._call(self._client.upsert, name, rows, timeout=self._timeout)
                continue
            request = _token_upsert_request(name, pks[sl], pnums[sl], vecs[sl])
            self._call(conn.upsert, name, [], upsert_param=request, schema={"fields": []}, timeout=self._timeout)

    def _write_rows(self, name: str, rows: list[dict[str, Any]], sizes: list[int]) -> None:
        """Upsert row dicts, in requests of at most ``_REQUEST_BYTES`` (estimated)."""
        start, total = 0, 0
        for i, size in enumerate(sizes):
            if i > start and total + size > _REQUEST_BYTES:
                self._call(self._client.upsert, name, rows[start:i], timeout=self._timeout)
                start, total = i, 0
            total += size
        if start < len(rows):
            self._call(self._client.upsert, name, rows[start:], timeout=self._timeout)

    def _allocate(self, schema: CollectionSchema, new_ids: list[str], taken_here: set[int]) -> dict[str, int]:
        """Passage numbers for ids without a row: the first free candidate of each."""
        out: dict[str, int] = {}
        gens = {i: iter(pnum_candidates(i)) for i in new_ids}
        want = {i: next(gens[i]) for i in new_ids}
        used = set(taken_here)
        while want:
            owners = {}
            for chunk in _chunks(sorted(set(want.values())), _PK_CHUNK):
                expr = f"{_F_PNUM} in [{', '.join(map(str, chunk))}]"
                for r in self._query(schema.name, [schema.name], expr, [_F_ID, _F_PNUM]):
                    owners[r[_F_PNUM]] = r[_F_ID]
            retry = {}
            for pid, num in sorted(want.items()):
                if num in used or num in owners:
                    try:
                        retry[pid] = next(gens[pid])
                    except StopIteration:  # pragma: no cover - 64 collisions in a row
                        raise RepositoryError(f"no free passage number for {pid} after {_PNUM_ATTEMPTS} tries") from None
                else:
                    out[pid] = num
                    used.add(num)
            want = retry
        return out

    def _delete_ids(self, name: str, ids: list[Any]) -> None:
        for chunk in _chunks(ids, _IN_CHUNK if ids and isinstance(ids[0], str) else _PK_CHUNK):
            self._deleted_at[name] = time.monotonic()
            self._call(self._client.delete, name, ids=chunk, timeout=self._timeout)
        self._deleted_at[name] = time.monotonic()

    def _delete_expr(self, name: str, expr: str) -> None:
        self._deleted_at[name] = time.monotonic()
        self._read([name], self._client.delete, name, filter=expr, write=True)
        self._deleted_at[name] = time.monotonic()

    def _delete(self, schema: CollectionSchema, ids: list[str]) -> None:
        if self._layout_of(schema) == "struct":
            self._delete_ids(schema.name, ids)
            return
        rows = self._rows(schema, ids, [_F_ID, _F_PNUM])
        self._delete_rows(schema, [(r[_F_ID], r[_F_PNUM]) for r in rows])

    def _delete_rows(self, schema: CollectionSchema, rows: list[tuple[str, int]]) -> None:
        if not rows:
            return
        self._delete_ids(schema.name, [i for i, _ in rows])  # passage rows first: invisible from here
        self._step("passages-deleted")
        tokens_name = schema.name + TOKENS_SUFFIX
        for chunk in _chunks(sorted({n for _, n in rows}), _PK_CHUNK):
            self._delete_expr(tokens_name, f"{_T_PNUM} in [{', '.join(map(str, chunk))}]")

    def _delete_where(self, schema: CollectionSchema, filter: Filter) -> None:
        expr = to_expr(filter)
        while True:
            rows = self._query(schema.name, [schema.name], expr, [_F_ID, _F_PNUM], limit=_QUERY_CAP)
            if not rows:
                return
            if self._layout_of(schema) == "struct":
                self._delete_ids(schema.name, [r[_F_ID] for r in rows])
            else:
                self._delete_rows(schema, [(r[_F_ID], r[_F_PNUM]) for r in rows])
            if len(rows) < _QUERY_CAP:
                return

    # ----- reads

    def _query(
        self, name: str, load: Sequence[str], expr: str, fields: list[str], limit: int | None = None
    ) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"filter": expr, "output_fields": fields}
        if limit is not None:
            kwargs["limit"] = limit
        return list(self._read(load, self._client.query, name, **kwargs))

    def _rows(self, schema: CollectionSchema, ids: list[str], fields: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for chunk in _chunks(ids, _IN_CHUNK):
            expr = f"{_F_ID} in [{', '.join(json.dumps(i) for i in chunk)}]"
            out.extend(self._query(schema.name, [schema.name], expr, fields))
        return out

    def _count(self, schema: CollectionSchema, filter: Filter | None) -> int:
        res = self._read([schema.name], self._client.query, schema.name, filter=to_expr(filter), output_fields=["count(*)"])
        return int(res[0]["count(*)"]) if res else 0

    def _search_params(self, index: str, metric: str, limit: int) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if index == "HNSW":
            params["ef"] = min(max(limit, 64), 32768)
        elif index == "IVF_FLAT":
            params["nprobe"] = 32
        return {"metric_type": metric, "params": params}

    def _pooled_search(self, schema: CollectionSchema, q: np.ndarray, limit: int, expr: str) -> list[Candidate]:
        if limit > MAX_TOPK:
            raise InvalidInputError(f"Milvus returns at most {MAX_TOPK} hits per search; got limit/prefetch {limit}")
        qn = (q.astype(np.float64) / np.linalg.norm(q)).astype(np.float32)
        res = self._read(
            [schema.name],
            self._client.search,
            schema.name,
            data=[qn.tolist()],
            anns_field=_F_POOLED,
            limit=limit,
            filter=expr,
            output_fields=[_F_ID],
            search_params=self._search_params(self._pooled_index, "COSINE", limit),
        )
        hits = [(str(_hit_key(h, _F_ID)), float(h["distance"])) for h in (res[0] if res else [])]
        hits.sort(key=lambda t: (-t[1], t[0]))
        return [Candidate(i, s, "pooled") for i, s in hits]

    def _candidates(
        self,
        schema: CollectionSchema,
        pooled: np.ndarray,
        tokens: np.ndarray | None,
        limit: int,
        prefetch: int,
        filter: Filter | None,
        *,
        versions: bool = False,  # no version stamps on candidates: Candidate.version stays None
    ) -> list[Candidate]:
        expr = to_expr(filter)
        if tokens is None:
            return self._pooled_search(schema, pooled, limit, expr)
        if limit > MAX_TOPK or prefetch > MAX_TOPK:
            raise InvalidInputError(f"Milvus returns at most {MAX_TOPK} hits per search; got limit {limit}, prefetch {prefetch}")
        if self._layout_of(schema) == "struct":
            first = self._pooled_search(schema, pooled, prefetch, expr)
            return self._engine_maxsim(schema, tokens, [c.id for c in first], limit)
        if self._first_stage == "tokens":
            ids = self._token_first_stage(schema, tokens, prefetch, expr)
            if len(ids) < limit:  # few token hits pass the filter: complete with the pooled stage
                ids += [c.id for c in self._pooled_search(schema, pooled, prefetch, expr) if c.id not in set(ids)]
        else:
            ids = [c.id for c in self._pooled_search(schema, pooled, prefetch, expr)]
        return self._rerank(schema, tokens, ids, limit)

    def _rerank(self, schema: CollectionSchema, qt: np.ndarray, ids: list[str], limit: int) -> list[Candidate]:
        """Exact MaxSim ``sum_i max_j q_i . d_j`` over the candidates' stored token vectors."""
        if not ids:
            return []
        found = self._read_passages(schema, ids, with_fields=False)
        order = [i for i in ids if i in found]
        if not order:
            return []
        mats = [found[i][1] for i in order]
        offsets = np.cumsum([0] + [m.shape[0] for m in mats[:-1]])
        sims = np.concatenate(mats).astype(np.float64) @ qt.astype(np.float64).T  # [sum n, Lq]
        scores = np.maximum.reduceat(sims, offsets, axis=0).sum(axis=1)
        ranked = sorted(zip(order, scores.tolist()), key=lambda t: (-t[1], t[0]))
        return [Candidate(i, float(s), "maxsim") for i, s in ranked[:limit]]

    def _engine_maxsim(self, schema: CollectionSchema, qt: np.ndarray, ids: list[str], limit: int) -> list[Candidate]:
        """The server's MAX_SIM_IP over the Array-of-Structs field, restricted to ``ids``."""
        if not ids:
            return []
        from pymilvus.client.embedding_list import EmbeddingList

        expr = f"{_F_ID} in [{', '.join(json.dumps(i) for i in ids)}]"
        res = self._read(
            [schema.name],
            self._client.search,
            schema.name,
            data=[EmbeddingList(np.ascontiguousarray(qt, dtype=np.float32))],
            anns_field=_STRUCT_ANNS,
            limit=min(limit, len(ids)),
            filter=expr,
            output_fields=[_F_ID],
            search_params={"metric_type": "MAX_SIM_IP", "params": {"ef": min(max(len(ids), 64), 32768)}},
        )
        hits = [(str(_hit_key(h, _F_ID)), float(h["distance"])) for h in (res[0] if res else [])]
        hits.sort(key=lambda t: (-t[1], t[0]))
        return [Candidate(i, s, "maxsim") for i, s in hits]

    def _token_first_stage(self, schema: CollectionSchema, qt: np.ndarray, prefetch: int, expr: str) -> list[str]:
        """colbert-live: ANN per query token, hits aggregated per passage (sum of per-token maxima)."""
        tokens_name = schema.name + TOKENS_SUFFIX
        k = min(MAX_TOPK, max(self._token_k, 1))
        res = self._read(
            [tokens_name],
            self._client.search,
            tokens_name,
            data=[np.ascontiguousarray(v, dtype=np.float32).tolist() for v in qt],
            anns_field=_T_VEC,
            limit=k,
            output_fields=[],
            search_params=self._search_params(self._token_index, "IP", k),
        )
        hits: list[list[tuple[int, float]]] = [[(int(_hit_key(h, _T_PK)), float(h["distance"])) for h in row] for row in res]
        pnums = sorted({pk >> _BLOCK_BITS for row in hits for pk, _ in row})
        if not pnums:
            return []
        owners: dict[int, tuple[str, int, int]] = {}
        for chunk in _chunks(pnums, _PK_CHUNK):
            where = f"{_F_PNUM} in [{', '.join(map(str, chunk))}]"
            if expr:
                where = f"({where}) and {expr}"
            for r in self._query(schema.name, [schema.name], where, [_F_ID, _F_PNUM, _F_BASE, _F_NTOK]):
                owners[r[_F_PNUM]] = (r[_F_ID], r[_F_BASE], r[_F_NTOK])
        best: dict[str, np.ndarray] = {}
        floor = np.zeros(len(hits))
        for qi, row in enumerate(hits):
            valid = []
            for pk, score in row:
                owner = owners.get(pk >> _BLOCK_BITS)
                if owner is None or not owner[1] <= pk < owner[1] + owner[2]:
                    continue  # filtered out, or not a current token row
                valid.append(score)
                arr = best.setdefault(owner[0], np.full(len(hits), np.nan))
                if np.isnan(arr[qi]) or score > arr[qi]:
                    arr[qi] = score
            floor[qi] = min(valid) if valid else 0.0
        approx = {pid: float(np.where(np.isnan(a), floor, a).sum()) for pid, a in best.items()}
        return [pid for pid, _ in sorted(approx.items(), key=lambda t: (-t[1], t[0]))[:prefetch]]

    def _read_passages(
        self, schema: CollectionSchema, ids: list[str], *, with_fields: bool
    ) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
        """Rows and token matrices of the stored ``ids`` (re-reading rows a concurrent write moved)."""
        fields = _READ_FIELDS if with_fields else [_F_ID, _F_BASE, _F_NTOK]
        struct = self._layout_of(schema) == "struct"
        if struct:
            fields = [*fields, _F_STRUCT]
        out: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
        todo = ids
        for _attempt in range(4):
            rows = self._rows(schema, todo, fields)
            if struct:
                for r in rows:
                    mat = np.asarray([e[_F_SVEC] for e in r[_F_STRUCT]], dtype=np.float32).reshape(-1, schema.dim)
                    out[r[_F_ID]] = (r, mat)
                return out
            spans = {r[_F_ID]: (int(r[_F_BASE]), int(r[_F_NTOK])) for r in rows}
            mats, short = self._read_tokens(schema, spans)
            for r in rows:
                if r[_F_ID] not in short:
                    out[r[_F_ID]] = (r, mats[r[_F_ID]])
            if not short:
                return out
            todo = sorted(short)
        raise RepositoryError(
            f"token rows of {len(todo)} passages of {schema.name!r} kept changing while being read "
            "(concurrent rewrites?); try again"
        )

    def _read_tokens(
        self, schema: CollectionSchema, spans: dict[str, tuple[int, int]]
    ) -> tuple[dict[str, np.ndarray], set[str]]:
        """Token matrices by id, in token order, and the ids whose rows were not all there."""
        if not spans:
            return {}, set()
        tokens_name = schema.name + TOKENS_SUFFIX
        order = list(spans)
        total = sum(n for _, n in spans.values())
        wanted = np.empty(total, dtype=np.int64)
        pos = 0
        for pid in order:
            base, n = spans[pid]
            wanted[pos : pos + n] = np.arange(base, base + n, dtype=np.int64)
            pos += n
        sort = np.argsort(wanted, kind="stable")
        keys = wanted[sort]
        vecs = np.zeros((total, schema.dim), dtype=np.float32)
        seen = np.zeros(total, dtype=bool)
        per = max(1, min(_PK_CHUNK, _REQUEST_BYTES // (schema.dim * 4 + 16)))
        for start in range(0, total, per):
            chunk = keys[start : start + per]
            expr = f"{_T_PK} in [{', '.join(map(str, chunk.tolist()))}]"
            res = self._read([tokens_name], self._client.query, tokens_name, filter=expr, output_fields=[_T_PK, _T_VEC])
            pks, mat = _columns(res, _T_PK, _T_VEC, schema.dim)
            if not len(pks):
                continue
            at = np.searchsorted(keys, pks)
            ok = (at < total) & (keys[np.minimum(at, total - 1)] == pks)
            vecs[sort[at[ok]]] = mat[ok]
            seen[sort[at[ok]]] = True
        out: dict[str, np.ndarray] = {}
        short: set[str] = set()
        pos = 0
        for pid in order:
            n = spans[pid][1]
            if not seen[pos : pos + n].all():
                short.add(pid)
            else:
                m = vecs[pos : pos + n]
                m.setflags(write=False)
                out[pid] = m
            pos += n
        return out, short

    def _fetch(self, schema: CollectionSchema, ids: list[str]) -> dict[str, StoredPassage]:
        found = self._read_passages(schema, ids, with_fields=True)
        out = {}
        for pid, (r, tokens) in found.items():
            pooled = np.asarray(r[_F_POOLED], dtype=np.float32)
            pooled.setflags(write=False)
            out[pid] = StoredPassage._trusted(
                pid,
                r[_F_DOC],
                int(r[_F_INDEX]),
                tokens,
                pooled,
                units_from_json(json.loads(r[_F_UNITS])) if r[_F_UNITS] else (),
                r[_F_TEXT],
                r[_F_META] or {},
                int(r[_F_VERSION]),
            )
        return out

    def _list_ids(self, schema: CollectionSchema, filter: Filter | None, limit: int, offset: str | None) -> IdPage:
        """Ids in id order, by windows of the id space (ids are near-uniform UUIDs)."""
        total = self._count(schema, filter)
        if total == 0:
            return IdPage(())
        expr = to_expr(filter)
        want = limit + 1
        space = 1 << 48
        lo = 0 if offset is None else int(offset.replace("-", "")[:12], 16)
        width = max(1, space * min(2 * want, 8000) // total)
        cur = offset
        got: list[str] = []
        while True:
            hi = lo + width
            bound = None if hi >= space else _id_bound(hi)
            conds = [f'({_F_ID} >= "{cur}")'] if cur is not None else []
            if bound is not None:
                conds.append(f'({_F_ID} < "{bound}")')
            if expr:
                conds.append(expr)
            rows = self._query(schema.name, [schema.name], " and ".join(conds) or TRUE, [_F_ID], limit=_QUERY_CAP)
            if len(rows) >= _QUERY_CAP and width > 1:
                width = max(1, width // 4)  # too dense: a narrower window from the same start
                continue
            got.extend(r[_F_ID] for r in rows)
            if len(got) >= want or bound is None:
                break
            cur, lo = bound, hi
            width *= 2
        got.sort()
        return IdPage(tuple(got[:limit]), got[limit] if len(got) > limit else None)

    # ----- maintenance

    def _optimize(self, schema: CollectionSchema) -> None:
        names = self._names(schema)
        for n in names:
            self._call(self._client.flush, n, timeout=self._timeout)
        if self._lite:  # indexes of the flushed segments are built by load (retry-safe)
            for n in names:
                self._call(self._client.load_collection, n, timeout=self._timeout)

    def collect_garbage(self, collection: str) -> int:
        """Delete token rows no passage row reaches (left by failed writes); how many."""
        schema = self._schema(collection)
        if self._layout_of(schema) != "tokens":
            return 0
        with self._lock, self._engine("collect garbage", collection):
            tokens_name = schema.name + TOKENS_SUFFIX
            pks = self._all_values(tokens_name, [tokens_name], _T_PK)
            if not len(pks):
                return 0
            spans: dict[int, tuple[int, int]] = {}
            for chunk in _chunks(sorted({int(p) >> _BLOCK_BITS for p in pks}), _PK_CHUNK):
                expr = f"{_F_PNUM} in [{', '.join(map(str, chunk))}]"
                for r in self._query(schema.name, [schema.name], expr, [_F_PNUM, _F_BASE, _F_NTOK]):
                    spans[int(r[_F_PNUM])] = (int(r[_F_BASE]), int(r[_F_NTOK]))
            bad = []
            for pk in pks.tolist():
                span = spans.get(pk >> _BLOCK_BITS)
                if span is None or not span[0] <= pk < span[0] + span[1]:
                    bad.append(pk)
            self._delete_ids(tokens_name, bad)
            return len(bad)

    def _all_values(self, name: str, load: Sequence[str], field: str) -> np.ndarray:
        """Every value of the INT64 primary key ``field``, by key windows (one query answers
        at most 16384 rows, and not necessarily the smallest keys)."""
        res = self._read(load, self._client.query, name, filter="", output_fields=["count(*)"])
        total = int(res[0]["count(*)"]) if res else 0
        out: list[int] = []
        top = 1 << 63
        lo = 0
        width = max(1, top // max(1, total) * max(1, _QUERY_CAP // 2))
        while lo < top and total:
            hi = min(top, lo + width)
            expr = f"{field} >= {lo}" + (f" and {field} < {hi}" if hi < top else "")  # 2**63 is no int64
            rows = self._query(name, load, expr, [field], limit=_QUERY_CAP)
            if len(rows) >= _QUERY_CAP and width > 1:
                width = max(1, width // 4)  # too dense: a narrower window from the same start
                continue
            out.extend(int(r[field]) for r in rows)
            lo = hi
            width = width * 2 if len(rows) < _QUERY_CAP // 4 else width
        return np.asarray(sorted(out), dtype=np.int64)

    # ----- aliases: Milvus's own, on the passage collection only. The base class
    # resolves an alias to the agrame collection before any hook runs, and the token
    # collection is always ``<collection>__tokens``, so one ``alter_alias`` switches both.

    def _aliases(self) -> dict[str, str]:
        names = self._call(self._client.list_aliases).get("aliases", [])
        return {a: self._call(self._client.describe_alias, a)["collection_name"] for a in names}

    def _set_alias(self, alias: str, collection: str, previous: str | None) -> None:
        if alias.endswith(TOKENS_SUFFIX):
            raise InvalidSchemaError(f"alias names ending in {TOKENS_SUFFIX!r} are reserved: {alias!r}")
        if previous is None:
            self._call(self._client.create_alias, collection, alias)
        else:
            self._call(self._client.alter_alias, collection, alias)

    def _delete_alias(self, alias: str) -> None:
        self._call(self._client.drop_alias, alias)

    def _close(self) -> None:
        try:
            self._client.close()
        finally:
            if self._lite and self._path is not None:
                _lite_close(self._path)


# ----------------------------------------------------------------------------- helpers


def _hit_key(hit: Any, pk: str) -> Any:
    """The primary key of a search hit (keyed by the field's name, or ``id``)."""
    for key in (pk, "id"):
        try:
            return hit[key]
        except (KeyError, TypeError):
            pass
    return hit.id


def _state_name(state: Any) -> str:
    s = state.get("state") if isinstance(state, dict) else state
    return getattr(s, "name", str(s))


def _parse_version(text: str) -> tuple[int, int, int]:
    """``v2.3.5-lite`` -> (2, 3, 5); Milvus Lite (``milvus_lite-3.2.2``) -> (0, 0, 0)."""
    if text.startswith("milvus_lite"):
        return (0, 0, 0)
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else (0, 0, 0)


def _has_struct_field(desc: dict[str, Any]) -> bool:
    for f in desc.get("fields", []):
        if f.get("name") == _F_STRUCT and f.get("element_type") == DataType.STRUCT:
            return True
    return False


def _vector_index(kind: str, metric: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if kind == "HNSW":
        params = {"M": 16, "efConstruction": 128}
    elif kind == "IVF_FLAT":
        params = {"nlist": 1024}
    return {"index_type": kind, "metric_type": metric, "params": params}


def _units_json(p: StoredPassage) -> str:
    return json.dumps(units_to_json(p.units), separators=(",", ":")) if p.units else ""


def _row_bytes(row: dict[str, Any], dim: int, vectors: int) -> int:
    """An estimate of a passage row's bytes in a request."""
    size = 256 + dim * 4 * vectors
    for key in (_F_TEXT, _F_DOC, _F_UNITS):
        size += _utf8_len(row[key])
    for key in (_F_META, _F_FX):
        size += len(json.dumps(row[key], separators=(",", ":")))
    return size


def _utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


def _check_limits(p: StoredPassage, max_tokens: int) -> None:
    """A Milvus server's limits on one passage (InvalidInputError children)."""
    what = f"passage {p.id}"
    if not isinstance(p.tokens, np.ndarray) or p.tokens.ndim != 2:
        return  # the shared checks report it
    if p.tokens.shape[0] > max_tokens:
        raise InvalidVectorError(
            f"{what} has {p.tokens.shape[0]} token vectors; a Milvus passage holds at most {max_tokens} "
            "(split the passage)"
        )
    # text, doc id and metadata sizes: the shared checks (the same limits on every engine)
    units = _units_json(p)
    if _utf8_len(units) > MAX_VARCHAR:
        raise InvalidInputError(
            f"{what}: its units take {_utf8_len(units)} UTF-8 bytes; Milvus strings hold at most {MAX_VARCHAR}"
        )
    try:
        fx = json.dumps(filter_document(p.doc_id, p.index, p.metadata), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidMetadataError(f"{what}: metadata is not JSON: {exc}") from exc
    if _utf8_len(fx) > MAX_JSON:
        raise InvalidMetadataError(
            f"{what}: the filter index of its metadata takes {_utf8_len(fx)} bytes (long lists of numbers take "
            f"~350 bytes per number); Milvus holds at most {MAX_JSON}: drop or shorten list-valued metadata"
        )


def _chunks(seq: Sequence[T] | list[T], size: int) -> Iterable[list[T]]:
    seq = list(seq)
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _id_bound(prefix: int) -> str:
    """The id-string bound for a 48-bit prefix: ``xxxxxxxx-xxxx``."""
    h = f"{prefix:012x}"
    return f"{h[:8]}-{h[8:]}"


def _handler(client: Any) -> Any:
    """pymilvus's connection handler, whose ``upsert`` takes a prepared request (or None)."""
    get = getattr(client, "_get_connection", None)
    try:
        conn = get() if get is not None else None
    except Exception:
        return None
    return conn if conn is not None and hasattr(conn, "upsert") else None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _token_upsert_request(name: str, pks: np.ndarray, pnums: np.ndarray, vecs: np.ndarray) -> Any:
    """An UpsertRequest of token rows, built column-wise: the vectors go in as one packed
    little-endian float32 block instead of one Python float each."""
    from pymilvus.grpc_gen import milvus_pb2

    req = milvus_pb2.UpsertRequest(collection_name=name, num_rows=len(pks))
    for field, values in ((_T_PK, pks), (_T_PNUM, pnums)):
        f = req.fields_data.add()
        f.type = DataType.INT64
        f.field_name = field
        f.scalars.long_data.data.extend(values.tolist())
    f = req.fields_data.add()
    f.type = DataType.FLOAT_VECTOR
    f.field_name = _T_VEC
    f.vectors.dim = int(vecs.shape[1])
    raw = np.ascontiguousarray(vecs, dtype="<f4").tobytes()
    f.vectors.float_vector.MergeFromString(b"\x0a" + _varint(len(raw)) + raw)  # FloatArray.data, packed
    return req


def _columns(res: Any, key: str, vec: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and vectors of a query answer without per-float Python objects where possible."""
    rows = list.__getitem__(res, slice(None)) if isinstance(res, list) else list(res)
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
    for fd in getattr(res, "_lazy_field_data", ()) or ():
        if getattr(fd, "field_name", None) == vec and len(fd.valid_data) == 0:
            data = fd.vectors.float_vector.data
            if len(data) == len(rows) * dim:
                pks = np.fromiter((r[key] for r in rows), dtype=np.int64, count=len(rows))
                return pks, np.asarray(data, dtype=np.float32).reshape(len(rows), dim)
    full = list(res)  # materialises the vectors as Python lists
    pks = np.fromiter((r[key] for r in full), dtype=np.int64, count=len(full))
    return pks, np.asarray([r[vec] for r in full], dtype=np.float32).reshape(len(full), dim)

