"""Run one bad-input case: it must end in the library's typed error or a clean result,
never a raw exception, a panic (pyo3's PanicException is a BaseException) or a hang."""

from __future__ import annotations

import threading
from typing import Any, Callable

from agrame_vdb.errors import AgrameError

from . import report

TIMEOUT_S = 20.0


class Outcome:
    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None


def typed_or_ok(fn: Callable[[], Any], what: str, *, timeout: float = TIMEOUT_S) -> Outcome:
    """``fn()`` in a thread (to detect a hang); raise AssertionError unless it returned or
    raised an AgrameError with a message."""
    out = Outcome()

    def target() -> None:
        try:
            out.value = fn()
        except BaseException as exc:  # noqa: BLE001 - a panic is a BaseException
            out.error = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    report.add(bad_inputs_tried=1)
    if t.is_alive():
        raise AssertionError(f"{what}: hung for more than {timeout} s")
    exc = out.error
    if exc is not None:
        if not isinstance(exc, AgrameError):
            raise AssertionError(f"{what}: raised {type(exc).__module__}.{type(exc).__qualname__}: {exc!r}") from exc
        if len(str(exc).strip()) < 10:
            raise AssertionError(f"{what}: {type(exc).__name__} with an unhelpful message {str(exc)!r}")
    return out
