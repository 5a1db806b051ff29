"""Showing a job's progress: a bar on a terminal, plain log lines elsewhere.

Both are callables taking an :class:`~agrame_vdb.indexer.IndexProgress`, to pass
as ``on_progress``; :func:`progress_reporter` picks one. :func:`counter_bar` is a
plain bar that counts steps (the trainer's).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TextIO

__all__ = ["BarProgress", "LogProgress", "progress_reporter", "counter_bar"]


def _line(p: Any) -> str:
    done = f"{p.fraction:.0%} done, " if p.fraction is not None else ""
    return (
        f"{done}{p.passages:,} passages written ({p.encoded:,} encoded), {p.documents:,} documents, "
        f"{p.rejected:,} rejected, "
        f"{p.skipped:,} skipped; {p.tokens_per_second:,.0f} tokens/s, {p.elapsed:,.0f} s"
    )


class LogProgress(AbstractContextManager["LogProgress"]):
    """One plain line at most every ``every`` seconds (for logs and CI), and a last one."""

    def __init__(self, every: float = 10.0, stream: TextIO | None = None, prefix: str = "index: ") -> None:
        self.every = every
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self._last = 0.0
        self._latest: Any = None

    def __call__(self, p: Any) -> None:
        self._latest = p
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            print(self.prefix + _line(p), file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._latest is not None and time.monotonic() - self._last > 0.5:
            print(self.prefix + _line(self._latest), file=self.stream, flush=True)


class BarProgress(AbstractContextManager["BarProgress"]):
    """A rich progress bar on stderr: share of the input done (written, and the encoded
    part of the batch in flight), with its ETA; passages written and encoded, tokens/s."""

    def __init__(self, description: str = "indexing") -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[passages]} passages written ({task.fields[encoded]} encoded) · "
                       "{task.fields[documents]} docs · {task.fields[rejected]} rejected · {task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task(
            description, total=1000, documents="0", passages="0", encoded="0", rejected="0", tps="0"
        )

    def __enter__(self) -> BarProgress:
        self._progress.start()
        return self

    def __call__(self, p: Any) -> None:
        self._progress.update(
            self._task,
            completed=int(1000 * p.fraction) if p.fraction is not None else None,
            documents=f"{p.documents:,}",
            passages=f"{p.passages:,}",
            encoded=f"{p.encoded:,}",
            rejected=f"{p.rejected:,}",
            tps=f"{p.tokens_per_second:,.0f}",
        )

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


def progress_reporter(bar: bool | None = None, every: float = 10.0) -> AbstractContextManager[Callable[[Any], None]]:
    """A bar when ``bar`` (default: when stderr is a terminal), else log lines."""
    if bar is None:
        bar = sys.stderr.isatty()
    return BarProgress() if bar else LogProgress(every)


def counter_bar(total: int, label: str, quiet: bool) -> tuple[Callable[..., None], Callable[[], None]]:
    """A rich bar on stderr counting to ``total`` (or nothing when ``quiet``): ``advance(n, info)`` and ``stop()``."""
    if quiet:
        return (lambda n, info="": None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=False,
    )
    progress.start()
    task = progress.add_task(label, total=total, info="")

    def advance(n: int, info: str = "") -> None:
        progress.update(task, advance=n, info=info)

    return advance, progress.stop
