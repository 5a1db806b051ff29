"""What every ``agrame-vdb`` command shares: the app, its common options, and how a
command ends on an error (exit code 2, the message in red) or on Ctrl-C (130)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import AgrameError

if TYPE_CHECKING:
    from ..repository import Repository

__all__ = ["app", "DEFAULT_STORE", "StoreOption", "ModelOption", "DeviceOption", "DtypeOption", "failures", "connect_store"]

app = typer.Typer(
    name="agrame-vdb",
    help="Any-granularity ranking (AGRaME) with multi-vector embeddings on vector databases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

#: The store a command opens without ``--store``: a Qdrant Edge folder in the current directory.
DEFAULT_STORE = "qdrant-edge://./agrame-data"

StoreOption = Annotated[str, typer.Option("--store", help="Store URL, as connect() takes it.")]
ModelOption = Annotated[
    Optional[Path],
    typer.Option("--model", help="Model directory (agrame, PyLate/sentence-transformers, Stanford ColBERT or plain encoder) or a packaged model's name (minilm-qprime-query, plain-base, minilm-plain-qprime, minilm-frozen-128); default: minilm-qprime-query."),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
DtypeOption = Annotated[str, typer.Option("--dtype", help="auto (bfloat16 where the CPU or GPU does it fast: AMX, AVX-512 BF16; else float32), float32, bfloat16 or float16.")]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress and warnings.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@contextlib.contextmanager
def failures(interrupted: str | None = None) -> Iterator[contextlib.ExitStack]:
    """The body of a command: an :class:`AgrameError` is printed (``error: ...``, red,
    stderr) and exits with code 2; Ctrl-C exits with 130 and ``interrupted`` (how to
    resume) when given. What the body opens on the stack it gets (a store:
    :func:`connect_store`) is closed at the end either way."""
    opened = contextlib.ExitStack()
    try:
        yield opened
    except AgrameError as exc:
        typer.secho(f"error: {_in_cli_words(exc)}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from exc
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        typer.secho(f"interrupted: {interrupted}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=130) from None
    finally:
        opened.close()


def _in_cli_words(exc: AgrameError) -> str:
    """The error as a command-line user should read it: a missing collection names the
    store's collections and the command that creates one, not a Python call."""
    from ..errors import CollectionNotFoundError

    if isinstance(exc, CollectionNotFoundError) and exc.collection is not None:
        have = "" if exc.existing is None else f" (its collections: {', '.join(exc.existing) or 'none'})"
        return (f"collection {exc.collection!r} does not exist in this store{have}; "
                f"create it with: agrame-vdb index DOCUMENTS.jsonl --collection {exc.collection} "
                "--store <the same --store>")
    return str(exc)


def connect_store(opened: contextlib.ExitStack, store: str) -> Repository:
    """:func:`~agrame_vdb.repositories.connect` ``store``, closed with ``opened``."""
    from ..repositories import connect

    repository = connect(store)
    opened.callback(_close, repository)
    return repository


def _close(repository: Repository) -> None:
    """Close the store a command opened; failing to close is a warning, not the command's error."""
    try:
        repository.close()
    except AgrameError as exc:
        typer.secho(f"warning: closing the store failed: {exc}", err=True)
