"""The ``agrame-vdb`` command."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import AgrameError

app = typer.Typer(
    name="agrame-vdb",
    help="Any-granularity ranking (AGRaME) with multi-vector embeddings on vector databases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ModelOption = Annotated[
    Optional[Path],
    typer.Option("--model", help="Model directory (agrame, PyLate/sentence-transformers, Stanford ColBERT or plain encoder); default: the shipped model."),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
DtypeOption = Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16.")]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress and warnings.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fail(exc: AgrameError) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@app.command()
def version() -> None:
    """Print the version."""
    from . import __version__

    typer.echo(__version__)


@app.command()
def info(model: ModelOption = None, device: DeviceOption = "auto", dtype: DtypeOption = "float32") -> None:
    """Describe a model: its format, dim, markers and lengths."""
    from .encoder import MultiVectorEncoder

    try:
        enc = MultiVectorEncoder.load(model, device=device, dtype=dtype)
    except AgrameError as exc:
        raise _fail(exc) from exc
    cfg = enc.config
    typer.echo(json.dumps({
        "path": str(enc.checkpoint.path), "format": enc.checkpoint.format, "dim": cfg.dim,
        "query_maxlen": cfg.query_maxlen, "doc_maxlen": cfg.doc_maxlen,
        "markers": {"query": cfg.query_marker, "document": cfg.doc_marker, "subpassage": cfg.subpassage_marker},
        "device": str(enc.device), "dtype": str(enc.dtype).removeprefix("torch."),
    }, indent=2))


@app.command()
def encode(
    texts: Annotated[list[str], typer.Argument(help="Texts to encode.")],
    query: Annotated[bool, typer.Option("--query", help="Encode as queries with [Q].")] = False,
    subpassage: Annotated[bool, typer.Option("--subpassage", help="Encode as queries with [Q'].")] = False,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "float32",
) -> None:
    """Encode texts and print, per text, its token count and units (JSON lines)."""
    from .encoder import MultiVectorEncoder
    from .units import Passage

    try:
        enc = MultiVectorEncoder.load(model, device=device, dtype=dtype)
        if query or subpassage:
            vectors = enc.encode_queries(texts, subpassage=subpassage)
            for text, v in zip(texts, vectors, strict=True):
                typer.echo(json.dumps({"text": text, "shape": list(v.shape)}))
            return
        encoded = enc.encode_passages([Passage.create("cli", i, t) for i, t in enumerate(texts)])
    except AgrameError as exc:
        raise _fail(exc) from exc
    for e in encoded:
        typer.echo(json.dumps({
            "text": e.passage.text,
            "shape": list(e.token_vectors.shape),
            "units": [{"kind": u.kind, "index": u.index, "char_spans": u.char_spans, "token_ranges": u.token_ranges,
                       "text": u.text_in(e.passage.text)} for u in e.units],
            "truncated": [str(t) for t in e.truncated],
        }))


if __name__ == "__main__":  # pragma: no cover
    app()
