"""The main job's commands: index, search, cite, and the model's encode and info,
the demo and the version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..errors import AgrameError
from ._common import DEFAULT_STORE, DeviceOption, DtypeOption, ModelOption, StoreOption, app, connect_store, failures

if TYPE_CHECKING:
    from rich.console import Console, JustifyMethod
    from rich.text import Text

    from ..planner import SearchResponse, SearchResult, Timings
    from ..repository import StoredPassage


@app.command()
def index(
    file: Annotated[Path, typer.Argument(help="Documents: JSON Lines or Parquet, one record each (see agrame_vdb.documents).")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to write (created when missing).")],
    store: StoreOption = DEFAULT_STORE,
    format: Annotated[str, typer.Option("--format", help="auto, jsonl, parquet, scifact or beir.")] = "auto",
    model: ModelOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Text tokens per passage; default: all the model takes (doc_maxlen - 3).")] = None,
    overlap: Annotated[int, typer.Option("--overlap", help="Tokens of whole sentences repeated from one passage in the next.")] = 0,
    sentences: Annotated[bool, typer.Option("--sentences/--no-sentences", help="Store the sentences found automatically as units.")] = True,
    title_in_text: Annotated[bool, typer.Option("--title-in-text", help="Start every passage's text with the document title.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Passages written, then checkpointed, at a time.")] = 256,
    encode_batch_size: Annotated[int, typer.Option("--encode-batch-size", help="Passages encoded at a time.")] = 32,
    encode_token_budget: Annotated[Optional[int], typer.Option("--encode-token-budget", help="Encode as many passages at a time as fit this many padded tokens (at most --encode-batch-size); default: 16384 on a GPU, none on a CPU.")] = None,
    overlap_writes: Annotated[Optional[bool], typer.Option("--overlap-writes/--no-overlap-writes", help="Write a batch while the next one is encoded; default: on a GPU.")] = None,
    shard: Annotated[str, typer.Option("--shard", help="i/N: index only the documents whose id hashes to shard i of N; env/N takes i from JOB_COMPLETION_INDEX (each pod of a Kubernetes Indexed Job).")] = "0/1",
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Checkpoint file; default: in <edge store>/.agrame-jobs or ./.agrame-jobs.")] = None,
    rejects: Annotated[Optional[Path], typer.Option("--rejects", help="Rejects file (JSON Lines); default: beside the checkpoint.")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore an existing checkpoint and index from the start.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read, check and chunk every record; write nothing, load no model weights.")] = False,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Token-vector storage of a new collection: float32, float16, int8 or binary (sign bits, an int8 rerank copy); default float16 (an existing collection keeps its own).")] = None,
    on_disk: Annotated[bool, typer.Option("--on-disk", help="Keep a new collection's token vectors on disk.")] = False,
    index_field: Annotated[Optional[list[str]], typer.Option("--index-field", help="NAME:TYPE metadata field to index for filters (keyword, integer, float, bool); repeatable.")] = None,
    lexical: Annotated[bool, typer.Option("--lexical/--no-lexical", help="Give a new collection BM25 lexical vectors of the text (for the lexical and hybrid first stages) where the engine has them.")] = True,
    token_pooling: Annotated[int, typer.Option("--token-pooling", help="Pool each passage's token vectors by this factor (Ward clusters, never across a unit boundary); 1: none. Recorded in the collection.")] = 1,
    retries: Annotated[int, typer.Option("--retries", help="Attempts per repository call when the store is unavailable.")] = 8,
    optimize: Annotated[bool, typer.Option("--optimize/--no-optimize", help="Build the engine's indexes at the end.")] = True,
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar; default: when stderr is a terminal, else log lines.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Index documents into a collection: resumable (checkpoints), idempotent, shardable.

    Run the same command again after a crash to resume. Exit code 2 on an error; the
    message says how to resume when the checkpoint allows it.
    """
    from ..chunking import ChunkingOptions
    from ..indexer import IndexJob, RetryPolicy, default_job_paths, parse_shard
    from ..progress import progress_reporter

    with failures("run the same command again to resume from the last checkpoint") as opened:
        shard_pair = parse_shard(shard)
        fields: dict[str, str] = {}
        for item in index_field or []:
            name, sep, ftype = item.partition(":")
            if not sep:
                raise AgrameError(f"--index-field takes NAME:TYPE (e.g. lang:keyword), got {item!r}")
            fields[name] = ftype
        default_checkpoint, default_rejects = default_job_paths(store, collection, file, shard_pair)
        repository = None if dry_run else connect_store(opened, store)
        job = IndexJob(
            file, repository, collection, model=model, device=device, dtype=dtype, format=format,
            chunking=ChunkingOptions(max_tokens=max_tokens, overlap=overlap, sentences=sentences, title_in_text=title_in_text),
            batch_size=batch_size, encode_batch_size=encode_batch_size, shard=shard_pair,
            encode_token_budget=encode_token_budget, overlap=overlap_writes,
            checkpoint=checkpoint or default_checkpoint, rejects=rejects or (None if dry_run else default_rejects),
            restart=restart, dry_run=dry_run, retry=RetryPolicy(attempts=retries), storage_dtype=storage,
            on_disk=on_disk, indexed_fields=fields, lexical=lexical, token_pooling=token_pooling, optimize=optimize,
            store=store,
        )
        with progress_reporter(progress) as report:
            job.on_progress = report
            summary = job.run()
    typer.echo(json.dumps(summary.to_json(), indent=2) if json_output else summary.format())


@app.command()
def search(
    query: Annotated[Optional[str], typer.Argument(help="The query (or use --queries FILE).")] = None,
    *,
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to search.")],
    store: StoreOption = DEFAULT_STORE,
    granularity: Annotated[str, typer.Option("--granularity", "-g", help="passage, sentence, proposition or any unit kind.")] = "passage",
    k: Annotated[int, typer.Option("-k", "--top-k", help="Results per query.")] = 10,
    candidates: Annotated[int, typer.Option("--candidates", "-n", help="First-stage candidates scored per query.")] = 200,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the passage score when ranking units.")] = 1.0,
    filter: Annotated[Optional[str], typer.Option("--filter", help='Metadata filter as JSON, e.g. \'{"lang": "en", "year": {"$gte": 2000}}\'.')] = None,
    first_stage: Annotated[str, typer.Option("--first-stage", help="auto (hybrid where the collection has lexical vectors, else pooled), pooled, lexical (BM25), hybrid (pooled + lexical, reciprocal rank fusion) or maxsim (a pooled prefetch reranked by the engine).")] = "auto",
    prefetch: Annotated[Optional[int], typer.Option("--prefetch", help="Pooled prefetch of the maxsim first stage.")] = None,
    dense_candidates: Annotated[Optional[int], typer.Option("--dense-candidates", help="Hybrid: pooled candidates fused (default: --candidates).")] = None,
    lexical_candidates: Annotated[Optional[int], typer.Option("--lexical-candidates", help="Hybrid: lexical candidates fused (default: --candidates).")] = None,
    queries: Annotated[Optional[Path], typer.Option("--queries", help='JSON Lines of {"id": ..., "text": ...}: one output line per query.')] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON: an array of results (one line per query with --queries).")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Print the time of each step (encode, candidates, fetch, rerank).")] = False,
    matches: Annotated[bool, typer.Option("--matches", help="Add matched token positions and their character spans.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Queries of a --queries file searched together.")] = 16,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write the results as a self-contained HTML page: units shaded by score, matched tokens (--matches) underlined.")] = None,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Search a collection at any granularity: passages, sentences, propositions.

    In the terminal, a unit result shows its passage cut around it with the unit
    highlighted; a passage result the whole passage. With --json, prints one JSON
    array of results, each with passage_id, doc_id, granularity, unit_index, score (and
    its parts), text and char_spans ([start, end) offsets into passage_text).
    --explain adds the timings (to stderr with --json).
    """
    from ..encoder import MultiVectorEncoder
    from ..planner import Planner
    from ..repository import Filter

    with failures() as opened:
        if (query is None) == (queries is None):
            raise AgrameError("give either a QUERY or --queries FILE")
        parsed_filter = Filter.from_json(filter) if filter else None
        batch = _read_queries(queries) if queries is not None else [(None, query or "")]
        if batch_size < 1:
            raise AgrameError(f"--batch-size must be >= 1, got {batch_size}")
        repository = connect_store(opened, store)
        encoder = MultiVectorEncoder.load(model, device=device, dtype=dtype)
        planner = Planner(
            repository, collection, encoder, candidates=candidates, alpha=alpha, first_stage=first_stage,
            prefetch=prefetch, dense_candidates=dense_candidates, lexical_candidates=lexical_candidates, device=device,
        )
        pages: list[dict[str, Any]] = []
        for start in range(0, len(batch), batch_size):
            chunk = batch[start : start + batch_size]
            responses = planner.search_batch(
                [text for _, text in chunk], granularity, k, parsed_filter, matches=matches
            )
            pages.extend(r.to_json(timings=False) for r in responses)
            for (qid, _), response in zip(chunk, responses, strict=True):
                results = [r.to_json() for r in response.results]
                if queries is not None and json_output:
                    row: dict[str, object] = {"id": qid, "results": results}
                    if explain:
                        row["timings"] = response.timings.to_json()
                    typer.echo(json.dumps(row, ensure_ascii=False))
                elif json_output:
                    typer.echo(json.dumps(results, ensure_ascii=False, indent=2))
                    if explain:
                        _print_timings(response.timings)
                else:
                    _print_results(response, explain)
        if html is not None:
            from ..display import render_html

            try:
                html.write_text(render_html(pages), encoding="utf-8")
            except OSError as exc:
                raise AgrameError(f"cannot write the HTML page {html}: {exc}") from exc
            if not json_output:
                typer.echo(f"wrote {html}", err=True)


def _read_queries(path: Path) -> list[tuple[Any, str]]:
    """(id, text) pairs of a JSON Lines file of ``{"id": ..., "text": ...}`` (the id
    defaults to the line number)."""
    from ..documents import read_json_lines

    out: list[tuple[Any, str]] = []
    for n, row in read_json_lines(path, what="the queries file"):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise AgrameError(f'{path}:{n}: each line must be an object with a non-empty "text" (and an "id")')
        out.append((row.get("id", n), row["text"]))
    if not out:
        raise AgrameError(f"{path} holds no queries")
    return out


_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("#", "right"), ("score", "right"), ("doc", "left"), ("unit", "left"), ("text", "left"),
)


def _shown_text(res: SearchResult) -> Text:
    """A passage result's whole passage; a unit result's passage cut around the unit,
    the unit highlighted (a search engine's snippet)."""
    from rich.text import Text

    from ..display import snippet

    if res.unit_index is None:
        return Text(res.passage_text)
    s = snippet(res.passage_text, res.char_spans, width=120)
    return Text.assemble(("…" if s.cut_start else "") + s.before, (s.unit, "bold black on yellow"),
                         s.after + ("…" if s.cut_end else ""))


def _print_results(response: SearchResponse, explain: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    r = response
    table = Table(title=f"{r.query!r}: top {r.k} {r.granularity}" + ("s" if not r.granularity.endswith("s") else ""))
    for col, just in _COLUMNS:
        table.add_column(col, justify=just, overflow="fold")
    for res in r.results:
        unit = "" if res.unit_index is None else f"{res.unit_kind} {res.unit_index}"
        parts = f"{res.score:.3f}" if res.unit_score is None else f"{res.score:.3f}\n({res.unit_score:.2f}+{res.alpha:g}*{res.passage_score:.2f})"
        table.add_row(str(res.rank), parts, f"{res.doc_id}#{res.passage_index}", unit, _shown_text(res))
    console.print(table)
    if explain:
        _print_timings(r.timings, console)


def _print_timings(t: Timings, console: Console | None = None) -> None:
    from rich.console import Console

    c = console or Console(stderr=True)
    d = t.to_json()
    c.print(
        f"encode {d['encode_ms']:.1f} ms | candidates {d['candidates_ms']:.1f} ms ({d['n_candidates']}, {d['first_stage']}) | "
        f"fetch {d['fetch_ms']:.1f} ms ({d['n_fetched']} read, {d['cache_hits']} cached) | rerank {d['rerank_ms']:.1f} ms | "
        f"total {d['total_ms']:.1f} ms" + (f" (per query of a batch of {d['batch_size']})" if d["batch_size"] > 1 else "")
    )


@app.command()
def cite(
    answer: Annotated[str, typer.Argument(help="The answer text ('-' reads it from stdin).")],
    passage: Annotated[Optional[list[str]], typer.Option("--passage", "-p", help="A source passage's text; repeatable, in order.")] = None,
    ids: Annotated[Optional[list[str]], typer.Option("--id", help="A source passage's id in --collection; repeatable, in order.")] = None,
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Collection holding the --id passages.")] = None,
    store: StoreOption = DEFAULT_STORE,
    granularity: Annotated[str, typer.Option("--granularity", "-g", help="Unit kind to cite (sentence, proposition, ...) or passage.")] = "sentence",
    margin: Annotated[float, typer.Option("--margin", help="How much the best passage's score (per query token) must beat the others'.")] = 0.1,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="Cite only when the best score (per query token) reaches this.")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the passage score added to the unit's.")] = 0.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the cited answer as JSON.")] = False,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Add citations to an answer from the passages it was generated from.

    Each answer sentence is cited with the passage whose best unit supports it by
    --margin over the others; prints the marked answer and each supporting unit.
    """
    import sys

    from ..cite import cite as cite_answer
    from ..encoder import MultiVectorEncoder

    with failures() as opened:
        text = sys.stdin.read() if answer == "-" else answer
        if bool(passage) == bool(ids):
            raise AgrameError("give the source passages either as --passage TEXT or as --id ID (with --collection)")
        encoder = MultiVectorEncoder.load(model, device=device, dtype=dtype)
        sources: list[str] | list[StoredPassage]
        if ids:
            if not collection:
                raise AgrameError("--id needs --collection (and --store)")
            sources = list(connect_store(opened, store).fetch(collection, ids, strict=True).passages)
        else:
            sources = list(passage or [])
        result = cite_answer(text, sources, encoder, granularity=granularity, margin=margin, min_score=min_score, alpha=alpha)
    typer.echo(json.dumps(result.to_json(), ensure_ascii=False, indent=2) if json_output else result.to_text().rstrip("\n"))


@app.command()
def encode(
    texts: Annotated[list[str], typer.Argument(help="Texts to encode.")],
    query: Annotated[bool, typer.Option("--query", help="Encode as queries with [Q].")] = False,
    subpassage: Annotated[bool, typer.Option("--subpassage", help="Encode as queries with [Q'].")] = False,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Encode texts and print, per text, its token count and units (JSON lines)."""
    from ..encoder import MultiVectorEncoder
    from ..units import Passage

    with failures():
        enc = MultiVectorEncoder.load(model, device=device, dtype=dtype)
        if query or subpassage:
            vectors = enc.encode_queries(texts, subpassage=subpassage)
            for text, v in zip(texts, vectors, strict=True):
                typer.echo(json.dumps({"text": text, "shape": list(v.shape)}))
            return
        encoded = enc.encode_passages([Passage.create("cli", i, t) for i, t in enumerate(texts)])
    for e in encoded:
        typer.echo(json.dumps({
            "text": e.passage.text,
            "shape": list(e.token_vectors.shape),
            "units": [{"kind": u.kind, "index": u.index, "char_spans": u.char_spans, "token_ranges": u.token_ranges,
                       "text": u.text_in(e.passage.text)} for u in e.units],
            "truncated": [str(t) for t in e.truncated],
        }))


@app.command()
def info(model: ModelOption = None, device: DeviceOption = "auto", dtype: DtypeOption = "auto") -> None:
    """Describe a model: its format, dim, markers and lengths, read from its files.

    Loads no weights (nor torch): "device" is printed as asked, and "dtype" made
    concrete where that needs no GPU (auto for --device cpu, an alias such as bf16);
    with --device auto or cuda, dtype auto stays "auto" (what it becomes depends on
    the GPU torch finds when the model is loaded).
    """
    from ..model_settings import SUBPASSAGE_LAYERS_FILE, compute_dtype_name, read_settings

    with failures():
        settings = read_settings(model)
        shown_dtype = dtype if dtype.lower() == "auto" and device != "cpu" else compute_dtype_name(dtype, device)
    cfg = settings.config
    typer.echo(json.dumps({
        "path": str(settings.path), "format": settings.format, "dim": cfg.dim,
        "query_maxlen": cfg.query_maxlen, "doc_maxlen": cfg.doc_maxlen,
        "markers": {"query": cfg.query_marker, "document": cfg.doc_marker, "subpassage": cfg.subpassage_marker},
        "query_augmentation": cfg.query_augmentation, "projection": settings.has_projection,
        "projection_scope": cfg.projection_scope,
        "subpassage_layers": (settings.path / SUBPASSAGE_LAYERS_FILE).is_file() if settings.format == "agrame" else False,
        "unit_coverage": cfg.unit_coverage, "device": device, "dtype": shown_dtype,
    }, indent=2))


@app.command()
def demo(
    store: StoreOption = DEFAULT_STORE,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Results per question.")] = 3,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    explain: Annotated[bool, typer.Option("--explain", help="Print the time of each step of every search.")] = False,
) -> None:
    """The main job on the bundled sample: index 200 SciFact abstracts, then search them
    at passage and sentence level (a second run only searches)."""
    from ..demo import run_demo
    from ..progress import progress_reporter

    with failures(), progress_reporter(None) as report:
        run = run_demo(store, k=k, device=device, dtype=dtype, on_progress=report)
    typer.echo(run.summary.format())
    for response in run.responses:
        _print_results(response, explain)


@app.command()
def version() -> None:
    """Print the version."""
    from .. import __version__

    typer.echo(__version__)
