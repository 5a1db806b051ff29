"""Engine calls: which pymilvus errors are transient, the retries of a server call
(tenacity), and pymilvus's own log records of these calls (dropped: they become typed
errors; handed to this package's logger at DEBUG)."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pymilvus.exceptions import MilvusException
from tenacity import wait_exponential

from .._retry import call_with_retries as _retried
from .. import _grpc_transient

T = TypeVar("T")

log = logging.getLogger(__package__)  # agrame_vdb.repositories.milvus
#: set while a MilvusRepository is inside one of its engine calls
_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("agrame_milvus_call", default=False)


class _OwnCallsFilter(logging.Filter):
    """Drops pymilvus's records logged during this library's calls (they become typed
    errors); passes them on to this package's logger at DEBUG."""

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


#: the wait after attempt n of a server call: 0.2 s * 2**n, at most 5 s (0.4, 0.8, 1.6, 3.2, 5, ...)
RETRY_WAIT = wait_exponential(multiplier=0.4, max=5.0)


def call_with_retries(
    fn: Callable[..., T], args: Sequence[Any], kwargs: Mapping[str, Any], *, retries: int, where: str
) -> T:
    """``fn(*args, **kwargs)``, tried up to ``retries`` times while it fails transiently;
    TransientRepositoryError when the last attempt fails so, any other error at once."""
    return _retried(fn, args, kwargs, attempts=retries, wait=RETRY_WAIT, transient=is_transient,
                    server=f"Milvus at {where}", short=_message)
