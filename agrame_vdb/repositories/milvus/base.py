"""The connection to Milvus Lite or a Milvus server and the plumbing of every call."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from ...errors import (
    AgrameError,
    CollectionNotFoundError,
    ConcurrentAccessError,
    InvalidInputError,
    RepositoryError,
    TransientRepositoryError,
)
from ...redact import redact_url, secret_parts, url_secrets
from ...records import Capabilities
from .. import _placement
from ..base import RepositoryBase
from ...schema import CollectionSchema
from .calls import _IN_CALL, _message, _not_loaded, _quiet_pymilvus, call_with_retries, is_transient
from .layout import MAX_TOPK, TOKENS_SUFFIX, MilvusCapabilities, _parse_version, _state_name
from .lite import _lite_close, _lite_open

T = TypeVar("T")

_LAYOUTS = ("tokens", "struct")
_FIRST_STAGES = ("pooled", "tokens")
_INDEX_TYPES = ("FLAT", "HNSW", "AUTOINDEX", "IVF_FLAT")
_CONSISTENCY = ("Strong", "Session", "Bounded", "Eventually")
# A Session read does not wait for this client's deletes (a delete answers no usable
# timestamp on Milvus 2.3): reads of a collection this long after a delete are Strong.
_STRONG_AFTER_DELETE = 5.0


class MilvusBase(RepositoryBase):
    """The connection and what every engine call goes through: options, retries,
    error translation, loading collections, read consistency, capabilities."""

    batch_size = 128
    #: offset + limit of one query
    _QUERY_CAP = 16384
    #: values of one ``in`` list of strings
    _IN_CHUNK = 1000
    #: keys of one ``pk in [...]`` list (Milvus Lite slows down past a few thousand)
    _PK_CHUNK = 2000
    #: target size of one insert / query answer (servers take 64 MB)
    _REQUEST_BYTES = 16 << 20

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
        shards_num: int | None = None,
        replica_number: int | None = None,
    ) -> None:
        super().__init__()
        if (path is None) == (uri is None):
            raise InvalidInputError("give exactly one of path= (Milvus Lite) or uri= (a Milvus server)")
        placement = _placement.counts({"shards_num": shards_num, "replica_number": replica_number})
        if path is not None:
            _placement.refuse_embedded(placement, _placement.MILVUS, "Milvus Lite", _placement.MILVUS_SERVER)
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
        #: keyword arguments of create_collection and load_collection (none: the server's defaults)
        self._shards = {k: v for k, v in placement.items() if k == "shards_num"}
        self._replicas = {k: v for k, v in placement.items() if k == "replica_number"}
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
        """An engine call; on a server retried on transient errors (see ``calls``)."""
        if self._lite:
            return fn(*args, **kwargs)
        return call_with_retries(fn, args, kwargs, retries=self._retries, where=self._where)

    def _translate_error(self, exc: BaseException, op: str, collection: str | None) -> AgrameError | None:
        if not isinstance(exc, Exception):
            return None
        msg = _message(exc)
        low = msg.lower()
        if collection and "collection" in low and ("not exist" in low or "not found" in low):
            return CollectionNotFoundError(f"collection {collection!r} does not exist in {self._where}", collection=collection)
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
                self._call(self._client.load_collection, n, _async=True, **self._replicas)
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

    def _sparse_supported(self) -> bool:
        """Sparse vectors (the lexical first stage): Milvus Lite, or a server >= 2.4
        (Milvus 2.3 has none)."""
        return self._lite or self._version >= (2, 4, 0)

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
            lexical=self._sparse_supported(),
            hybrid_in_engine=False,  # the library fuses (see .lexical)
        )

    def collection_layout(self, name: str) -> str:
        """The layout of an existing collection: ``tokens`` or ``struct``."""
        return self._layout_of(self._schema(name))

    def _close(self) -> None:
        try:
            self._client.close()
        finally:
            if self._lite and self._path is not None:
                _lite_close(self._path)
