"""A server call retried while it fails transiently (tenacity), for every server engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from ..errors import TransientRepositoryError

__all__ = ["call_with_retries"]

T = TypeVar("T")


def call_with_retries(
    fn: Callable[..., T], args: Sequence[Any], kwargs: Mapping[str, Any], *, attempts: int, wait: wait_base,
    transient: Callable[[BaseException], bool], server: str, short: Callable[[BaseException], str] = str,
) -> T:
    """``fn(*args, **kwargs)``, tried up to ``attempts`` times while it fails
    ``transient``-ly; TransientRepositoryError naming ``server`` when the last attempt
    fails so, any other error at once."""
    retrying = Retrying(stop=stop_after_attempt(attempts), wait=wait, retry=retry_if_exception(transient), reraise=True)
    try:
        return retrying(fn, *args, **kwargs)
    except Exception as exc:
        if transient(exc):
            raise TransientRepositoryError(
                f"{server} still failing after {attempts} attempts: {type(exc).__name__}: {short(exc)}; "
                "check that it is running and reachable"
            ) from exc
        raise
