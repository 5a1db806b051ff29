"""The ``agrame-vdb`` command."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Annotated, Any, Optional

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
    typer.Option("--model", help="Model directory (agrame, PyLate/sentence-transformers, Stanford ColBERT or plain encoder) or a packaged model's name (plain-base, minilm-plain-qprime, minilm-frozen-128); default: plain-base."),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
DtypeOption = Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16.")]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress and warnings.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _close(repository: Any) -> None:
    """Close the store a command opened (None: it never opened); failing to close is a
    warning, not the command's error."""
    if repository is None:
        return
    try:
        repository.close()
    except AgrameError as exc:
        typer.secho(f"warning: closing the store failed: {exc}", err=True)


def _fail(exc: AgrameError) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@app.command()
def index(
    file: Annotated[Path, typer.Argument(help="Documents: JSON Lines or Parquet, one record each (see agrame_vdb.documents).")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to write (created when missing).")],
    store: Annotated[str, typer.Option("--store", help="Store URL, as connect() takes it.")] = "qdrant-edge://./agrame-data",
    format: Annotated[str, typer.Option("--format", help="auto, jsonl, parquet, scifact or beir.")] = "auto",
    model: ModelOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "float32",
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Text tokens per passage; default: all the model takes (doc_maxlen - 3).")] = None,
    overlap: Annotated[int, typer.Option("--overlap", help="Tokens of whole sentences repeated from one passage in the next.")] = 0,
    sentences: Annotated[bool, typer.Option("--sentences/--no-sentences", help="Store the sentences found automatically as units.")] = True,
    title_in_text: Annotated[bool, typer.Option("--title-in-text", help="Start every passage's text with the document title.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Passages written, then checkpointed, at a time.")] = 256,
    encode_batch_size: Annotated[int, typer.Option("--encode-batch-size", help="Passages encoded at a time.")] = 32,
    shard: Annotated[str, typer.Option("--shard", help="i/N: index only the documents whose id hashes to shard i of N.")] = "0/1",
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Checkpoint file; default: in <edge store>/.agrame-jobs or ./.agrame-jobs.")] = None,
    rejects: Annotated[Optional[Path], typer.Option("--rejects", help="Rejects file (JSON Lines); default: beside the checkpoint.")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore an existing checkpoint and index from the start.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read, check and chunk every record; write nothing, load no model weights.")] = False,
    storage: Annotated[str, typer.Option("--storage", help="Token-vector storage of a new collection: float32, float16 or int8.")] = "float32",
    on_disk: Annotated[bool, typer.Option("--on-disk", help="Keep a new collection's token vectors on disk.")] = False,
    index_field: Annotated[Optional[list[str]], typer.Option("--index-field", help="NAME:TYPE metadata field to index for filters (keyword, integer, float, bool); repeatable.")] = None,
    retries: Annotated[int, typer.Option("--retries", help="Attempts per repository call when the store is unavailable.")] = 8,
    optimize: Annotated[bool, typer.Option("--optimize/--no-optimize", help="Build the engine's indexes at the end.")] = True,
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar; default: when stderr is a terminal, else log lines.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Index documents into a collection: resumable (checkpoints), idempotent, shardable.

    Run the same command again after a crash to resume. Exit code 2 on an error; the
    message says how to resume when the checkpoint allows it.
    """
    from .chunking import ChunkingOptions
    from .indexer import IndexJob, RetryPolicy, default_job_paths, parse_shard
    from .progress import progress_reporter

    repository = None
    try:
        shard_pair = parse_shard(shard)
        fields: dict[str, str] = {}
        for item in index_field or []:
            name, sep, ftype = item.partition(":")
            if not sep:
                raise AgrameError(f"--index-field takes NAME:TYPE (e.g. lang:keyword), got {item!r}")
            fields[name] = ftype
        default_checkpoint, default_rejects = default_job_paths(store, collection, file, shard_pair)
        if not dry_run:
            from .repositories import connect

            repository = connect(store)
        job = IndexJob(
            file, repository, collection, model=model, device=device, dtype=dtype, format=format,
            chunking=ChunkingOptions(max_tokens=max_tokens, overlap=overlap, sentences=sentences, title_in_text=title_in_text),
            batch_size=batch_size, encode_batch_size=encode_batch_size, shard=shard_pair,
            checkpoint=checkpoint or default_checkpoint, rejects=rejects or (None if dry_run else default_rejects),
            restart=restart, dry_run=dry_run, retry=RetryPolicy(attempts=retries), storage_dtype=storage,
            on_disk=on_disk, indexed_fields=fields, optimize=optimize, store=store,
        )
        with progress_reporter(progress) as report:
            job.on_progress = report
            summary = job.run()
    except AgrameError as exc:
        raise _fail(exc) from exc
    except KeyboardInterrupt:
        typer.secho("interrupted: run the same command again to resume from the last checkpoint", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=130) from None
    finally:
        _close(repository)
    typer.echo(json.dumps(summary.to_json(), indent=2) if json_output else summary.format())


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", help="Training config: TOML, JSON or YAML (see agrame_vdb.training.trainer).")],
    seed: Annotated[Optional[int], typer.Option("--seed", help="Override the config's seed.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Override the config's number of steps.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Override where the model is written.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Override where the log and checkpoints go.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Override the config's device (cpu, cuda[:N], auto).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Train a model with the multi-granular loss; prints a JSON summary at the end.

    The config's relative paths are relative to the config file; overrides given
    here are relative to the current directory.
    """
    from .training import load_config
    from .training import train as run_training

    try:
        cfg, root = load_config(
            config, seed=seed, steps=steps, device=device,
            output=str(output.resolve()) if output is not None else None,
            run_dir=str(run_dir.resolve()) if run_dir is not None else None,
        )
        result = run_training(cfg, root, quiet=quiet)
    except AgrameError as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps({
        "output": str(result.output), "run_dir": str(result.run_dir), "log": str(result.run_dir / "train_log.jsonl"),
        "steps": result.steps, "examples": result.examples, "passages_cached": result.passages_cached,
        "seconds": round(result.seconds, 1), "first_loss": round(result.first_loss, 4), "last_loss": round(result.last_loss, 4),
        "validation": {k: round(v, 4) for k, v in result.validation.items()},
    }))


@app.command(name="eval")
def eval_command(
    dataset: Annotated[str, typer.Option("--dataset", help="wikiqa, scifact, propsegment or squad (a training set).")],
    path: Annotated[Path, typer.Option("--path", help="The data set file or folder (e.g. wikiqa/WikiQA-dev.tsv, scifact/, propsegment/).")],
    model: Annotated[Optional[list[Path]], typer.Option("--model", help="Model directory; repeat to compare models (default: the shipped model).")] = None,
    store: Annotated[Optional[str], typer.Option("--store", help="Store URL, as connect() takes it; collections agrame_eval_* are replaced. Default: a temporary Qdrant Edge store, removed afterwards.")] = None,
    configuration: Annotated[Optional[list[str]], typer.Option("--configuration", help="Only these configurations (repeatable); default: all.")] = None,
    candidates: Annotated[int, typer.Option("--candidates", "-n", help="First-stage candidates per query (the planner's default first stage); 0: every passage (exhaustive).")] = 200,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of S(q,p) in the alpha configuration.")] = 1.0,
    split: Annotated[str, typer.Option("--split", help="SciFact claims / PropSegmEnt document clusters: heldout, train or all.")] = "heldout",
    distractors: Annotated[int, typer.Option("--distractors", help="SciFact: abstracts added beside the cited ones.")] = 300,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N queries.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per configuration and model.")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "float32",
) -> None:
    """Evaluate models side by side at unit and passage level (P@1, R@5, MRR@10, nDCG@10).

    Configurations: the model's base used plainly (plain-base, the baseline), units
    encoded on their own (sentence-encoding), and passages encoded whole with units
    ranked by span MaxSim with [Q], with [Q'], and with [Q'] plus alpha times the
    passage score. Everything runs through the planner over the store (a temporary
    Qdrant Edge store by default) with its default first stage (200 pooled candidates).
    """
    import dataclasses
    import tempfile

    from .encoder import MultiVectorEncoder
    from .evaluation import CONFIGURATIONS, evaluate, read_dataset, results_table
    from .repositories import connect

    options: dict[str, object] = (
        {"split": split, "distractors": distractors} if dataset == "scifact" else {"split": split} if dataset == "propsegment" else {}
    )
    repository = None
    scratch = None
    stack = contextlib.ExitStack()
    try:
        if limit is not None and limit < 1:
            raise AgrameError(f"--limit must be >= 1, got {limit}")
        data = read_dataset(dataset, path, **options)
        if limit is not None:
            data = dataclasses.replace(data, queries=data.queries[:limit])
        configs = tuple(configuration or CONFIGURATIONS)
        if store is None:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="agrame-eval-"))
            store = f"qdrant-edge://{scratch}/store"
        repository = connect(store)
        results = []
        for directory in model or [None]:
            encoder = MultiVectorEncoder.load(directory, device=device, dtype=dtype)
            name = "default" if directory is None else str(directory)
            found = evaluate(data, encoder, repository, model_name=name, configurations=configs,
                             candidates=candidates, alpha=alpha, store="qdrant-edge (temporary)" if scratch else store)
            results.extend(found)
            if json_output:
                for r in found:
                    typer.echo(json.dumps({**r.to_json(), "queries": len(data.queries), "passages": len(data.passages),
                                           "units": sum(len(u) for u in data.units), "dtype": dtype}))
    except AgrameError as exc:
        raise _fail(exc) from exc
    finally:
        _close(repository)
        stack.close()
    if not json_output:
        typer.echo(results_table(results, ("P@1", "R@5", "MRR@10", "nDCG@10")))


migrate_app = typer.Typer(
    help="Collection migrations: schema versions (status/up/down), units added in place, and "
    "blue/green re-indexing behind an alias (reindex/convert/rollback). Every one resumes when run again.",
    no_args_is_help=True,
)
app.add_typer(migrate_app, name="migrate")

MigrateCollection = Annotated[str, typer.Option("--collection", "-c", help="Collection, or alias, to migrate.")]
MigrateStore = Annotated[str, typer.Option("--store", help="Store URL, as connect() takes it.")]
MigrateStateDir = Annotated[
    Optional[Path],
    typer.Option("--state-dir", help="Where migration states go; default: <edge store>/.agrame-migrations or ./.agrame-migrations."),
]
MigrateJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
_DEFAULT_STORE = "qdrant-edge://./agrame-data"


def _migrate(store: str, json_output: bool, action: object) -> None:
    """Connect, run ``action(repository, on_page)``, print its result; AgrameError -> exit 2."""
    import sys

    from .repositories import connect

    def on_page(state: object) -> None:
        if sys.stderr.isatty():
            typer.echo(f"\r{state.step_name}: {state.done:,} passages", err=True, nl=False)  # type: ignore[attr-defined]

    repository = None
    try:
        repository = connect(store)
        result = action(repository, on_page)  # type: ignore[operator]
    except AgrameError as exc:
        raise _fail(exc) from exc
    except KeyboardInterrupt:
        typer.secho("interrupted: run the same command again to resume the migration", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=130) from None
    finally:
        _close(repository)
    if sys.stderr.isatty():
        typer.echo("", err=True)
    typer.echo(json.dumps(result.to_json(), indent=2) if json_output else result.format())


@migrate_app.command("status")
def migrate_status(
    collection: MigrateCollection, store: MigrateStore = _DEFAULT_STORE, state_dir: MigrateStateDir = None,
    json_output: MigrateJson = False,
) -> None:
    """The collection's schema version against this agrame-vdb's, pending migrations, an unfinished one, aliases."""
    from . import migrations

    _migrate(store, json_output, lambda repo, _: migrations.status(repo, collection, state_dir=state_dir))


@migrate_app.command("up")
def migrate_up(
    collection: MigrateCollection, store: MigrateStore = _DEFAULT_STORE,
    to: Annotated[Optional[int], typer.Option("--to", help="Schema version to stop at; default: this agrame-vdb's.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Record the model that encoded the collection ('default': the shipped one); checked against the stored token counts.")] = None,
    state_dir: MigrateStateDir = None, json_output: MigrateJson = False,
) -> None:
    """Upgrade a collection in place through every pending schema migration."""
    from . import migrations

    options = {"model": model} if model else {}
    _migrate(store, json_output, lambda repo, on_page: migrations.upgrade(
        repo, collection, to=to, options=options, state_dir=state_dir, on_page=on_page))


@migrate_app.command("down")
def migrate_down(
    collection: MigrateCollection,
    to: Annotated[int, typer.Option("--to", help="Schema version to go back to (for an older agrame-vdb).")],
    store: MigrateStore = _DEFAULT_STORE, state_dir: MigrateStateDir = None, json_output: MigrateJson = False,
) -> None:
    """Undo schema migrations in place, down to version --to."""
    from . import migrations

    _migrate(store, json_output, lambda repo, on_page: migrations.downgrade(
        repo, collection, to=to, state_dir=state_dir, on_page=on_page))


@migrate_app.command("add-units")
def migrate_add_units(
    collection: MigrateCollection, store: MigrateStore = _DEFAULT_STORE,
    kind: Annotated[str, typer.Option("--kind", help="Unit kind to add: sentence (found by the splitter), or any kind given with --units.")] = "sentence",
    units: Annotated[Optional[Path], typer.Option("--units", help='JSON Lines: {"id": PASSAGE_ID (or "doc_id" + "passage_index"), "units": [[[start, end], ...], ...]}.')] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model whose tokenizer encoded the collection; default: the one the collection records.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace units of this kind that passages already have.")] = False,
    state_dir: MigrateStateDir = None, json_output: MigrateJson = False,
) -> None:
    """Give every passage units of a kind, without re-encoding (the stored text is re-tokenized only)."""
    from . import migrations

    _migrate(store, json_output, lambda repo, on_page: migrations.add_units(
        repo, collection, kind=kind, units=units, model=model, replace=replace, state_dir=state_dir, on_page=on_page))


IntoOption = Annotated[Optional[str], typer.Option("--into", help="Name of the new collection; default: <current>__g<N+1>.")]
DropOldOption = Annotated[bool, typer.Option("--drop-old", help="Drop the old collection after the switch (no rollback then).")]
OnDiskOption = Annotated[Optional[bool], typer.Option("--on-disk/--in-ram", help="Token vectors of the new collection on disk or in RAM; default: as now.")]


@migrate_app.command("reindex")
def migrate_reindex(
    collection: Annotated[str, typer.Option("--collection", "-c", help="The alias your searches use.")],
    store: MigrateStore = _DEFAULT_STORE,
    model: Annotated[Optional[str], typer.Option("--model", help="The new model directory ('default': the shipped one).")] = None,
    source: Annotated[Optional[Path], typer.Option("--source", help="Re-index from this documents file instead of the stored text.")] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="float32, float16 or int8 for the new collection; default: as now.")] = None,
    on_disk: OnDiskOption = None, into: IntoOption = None, drop_old: DropOldOption = False,
    device: DeviceOption = "auto", state_dir: MigrateStateDir = None, json_output: MigrateJson = False,
) -> None:
    """Re-encode into a new collection with another model (or dim), then switch the alias to it (blue/green)."""
    from . import migrations

    _migrate(store, json_output, lambda repo, on_page: migrations.reindex(
        repo, collection, model=model or "default", source=source, dtype=storage, on_disk=on_disk, into=into,
        drop_old=drop_old, device=device, state_dir=state_dir, on_page=on_page))


@migrate_app.command("convert")
def migrate_convert(
    collection: Annotated[str, typer.Option("--collection", "-c", help="The alias your searches use.")],
    store: MigrateStore = _DEFAULT_STORE,
    storage: Annotated[Optional[str], typer.Option("--storage", help="float32, float16 or int8 (scalar quantization).")] = None,
    on_disk: OnDiskOption = None, into: IntoOption = None, drop_old: DropOldOption = False,
    state_dir: MigrateStateDir = None, json_output: MigrateJson = False,
) -> None:
    """Copy into a new collection with other storage, then switch the alias to it (blue/green)."""
    from . import migrations

    _migrate(store, json_output, lambda repo, on_page: migrations.convert_storage(
        repo, collection, dtype=storage, on_disk=on_disk, into=into, drop_old=drop_old, state_dir=state_dir,
        on_page=on_page))


@migrate_app.command("rollback")
def migrate_rollback(
    collection: Annotated[str, typer.Option("--collection", "-c", help="The alias to switch back.")],
    store: MigrateStore = _DEFAULT_STORE, state_dir: MigrateStateDir = None, json_output: MigrateJson = False,
) -> None:
    """Switch an alias back to the collection it pointed at before its last reindex/convert."""
    from . import migrations

    _migrate(store, json_output, lambda repo, _: migrations.rollback(repo, collection, state_dir=state_dir))


@migrate_app.command("abort")
def migrate_abort(
    collection: MigrateCollection, store: MigrateStore = _DEFAULT_STORE, state_dir: MigrateStateDir = None,
) -> None:
    """Forget an unfinished migration (a half-built blue/green collection is dropped)."""
    from . import migrations

    class _Done:
        def __init__(self, state: object) -> None:
            self.state = state

        def to_json(self) -> dict:
            return {"aborted": None if self.state is None else self.state.describe()}  # type: ignore[attr-defined]

        def format(self) -> str:
            return "no unfinished migration" if self.state is None else f"aborted: {self.state.describe()}"  # type: ignore[attr-defined]

    _migrate(store, False, lambda repo, _: _Done(migrations.abort(repo, collection, state_dir=state_dir)))


@migrate_app.command("alias")
def migrate_alias(
    alias: Annotated[str, typer.Argument(help="Alias name.")],
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Collection to point it at (created or switched atomically).")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias (never its collection).")] = False,
    store: MigrateStore = _DEFAULT_STORE,
) -> None:
    """Create, switch or delete an alias; with neither option, list every alias."""

    class _Aliases:
        def __init__(self, table: dict, note: str = "") -> None:
            self.table, self.note = table, note

        def to_json(self) -> dict:
            return self.table

        def format(self) -> str:
            lines = [f"{a} -> {c}" for a, c in sorted(self.table.items())] or ["no aliases"]
            return "\n".join(([self.note] if self.note else []) + lines)

    def act(repo: object, _: object) -> _Aliases:
        if delete and collection:
            raise AgrameError("give --collection to point the alias, or --delete, not both")
        if delete:
            found = repo.delete_alias(alias)  # type: ignore[attr-defined]
            note = f"deleted alias {alias}" if found else f"no alias {alias}"
        elif collection:
            before = repo.switch_alias(alias, collection)  # type: ignore[attr-defined]
            note = f"{alias} -> {repo.resolve(alias)}" + (f" (was {before})" if before else " (new)")  # type: ignore[attr-defined]
        else:
            note = ""
        return _Aliases(repo.list_aliases(), note)  # type: ignore[attr-defined]

    _migrate(store, False, act)


@app.command()
def demo(
    store: Annotated[str, typer.Option("--store", help="Store URL, as connect() takes it.")] = "qdrant-edge://./agrame-data",
    k: Annotated[int, typer.Option("-k", "--top-k", help="Results per question.")] = 3,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "float32",
    explain: Annotated[bool, typer.Option("--explain", help="Print the time of each step of every search.")] = False,
) -> None:
    """The main job on the bundled sample: index 200 SciFact abstracts, then search them
    at passage and sentence level (a second run only searches)."""
    from .demo import run_demo
    from .progress import progress_reporter

    try:
        with progress_reporter(None) as report:
            run = run_demo(store, k=k, device=device, dtype=dtype, on_progress=report)
    except AgrameError as exc:
        raise _fail(exc) from exc
    typer.echo(run.summary.format())
    for response in run.responses:
        _print_results(response, explain)


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
        "query_augmentation": cfg.query_augmentation, "projection": enc.projection is not None,
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


def _read_queries(path: Path) -> list[tuple[object, str]]:
    """(id, text) pairs of a JSON Lines file of ``{"id": ..., "text": ...}``."""
    out: list[tuple[object, str]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AgrameError(f"cannot read the queries file {path} as UTF-8 text: {exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AgrameError(f"{path}:{n} is not JSON: {exc}") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise AgrameError(f'{path}:{n}: each line must be an object with a non-empty "text" (and an "id")')
        out.append((row.get("id", n), row["text"]))
    if not out:
        raise AgrameError(f"{path} holds no queries")
    return out


def _print_results(response: object, explain: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    r = response  # a SearchResponse
    table = Table(title=f"{r.query!r}: top {r.k} {r.granularity}" + ("s" if not r.granularity.endswith("s") else ""))  # type: ignore[attr-defined]
    for col, just in (("#", "right"), ("score", "right"), ("doc", "left"), ("unit", "left"), ("text", "left")):
        table.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    for res in r.results:  # type: ignore[attr-defined]
        unit = "" if res.unit_index is None else f"{res.unit_kind} {res.unit_index}"
        parts = f"{res.score:.3f}" if res.unit_score is None else f"{res.score:.3f}\n({res.unit_score:.2f}+{res.alpha:g}*{res.passage_score:.2f})"
        table.add_row(str(res.rank), parts, f"{res.doc_id}#{res.passage_index}", unit, res.text)
    console.print(table)
    if explain:
        _print_timings(r.timings, console)  # type: ignore[attr-defined]


def _print_timings(t: object, console: object = None) -> None:
    from rich.console import Console

    c = console or Console(stderr=True)
    d = t.to_json()  # type: ignore[attr-defined]
    c.print(  # type: ignore[attr-defined]
        f"encode {d['encode_ms']:.1f} ms | candidates {d['candidates_ms']:.1f} ms ({d['n_candidates']}, {d['first_stage']}) | "
        f"fetch {d['fetch_ms']:.1f} ms ({d['n_fetched']} read, {d['cache_hits']} cached) | rerank {d['rerank_ms']:.1f} ms | "
        f"total {d['total_ms']:.1f} ms" + (f" (per query of a batch of {d['batch_size']})" if d["batch_size"] > 1 else "")
    )


@app.command()
def search(
    query: Annotated[Optional[str], typer.Argument(help="The query (or use --queries FILE).")] = None,
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to search.")] = ...,  # type: ignore[assignment]
    store: Annotated[str, typer.Option("--store", help="Store URL, as connect() takes it.")] = "qdrant-edge://./agrame-data",
    granularity: Annotated[str, typer.Option("--granularity", "-g", help="passage, sentence, proposition or any unit kind.")] = "passage",
    k: Annotated[int, typer.Option("-k", "--top-k", help="Results per query.")] = 10,
    candidates: Annotated[int, typer.Option("--candidates", "-n", help="First-stage candidates scored per query.")] = 200,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the passage score when ranking units.")] = 1.0,
    filter: Annotated[Optional[str], typer.Option("--filter", help='Metadata filter as JSON, e.g. \'{"lang": "en", "year": {"$gte": 2000}}\'.')] = None,
    first_stage: Annotated[str, typer.Option("--first-stage", help="pooled, or maxsim (a pooled prefetch reranked by the engine).")] = "pooled",
    prefetch: Annotated[Optional[int], typer.Option("--prefetch", help="Pooled prefetch of the maxsim first stage.")] = None,
    queries: Annotated[Optional[Path], typer.Option("--queries", help='JSON Lines of {"id": ..., "text": ...}: one output line per query.')] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON: an array of results (one line per query with --queries).")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Print the time of each step (encode, candidates, fetch, rerank).")] = False,
    matches: Annotated[bool, typer.Option("--matches", help="Add matched token positions and their character spans.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Queries of a --queries file searched together.")] = 16,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "float32",
) -> None:
    """Search a collection at any granularity: passages, sentences, propositions.

    With --json, prints one JSON array of results, each with passage_id, doc_id,
    granularity, unit_index, score (and its parts), text and char_spans ([start, end)
    offsets into passage_text). --explain adds the timings (to stderr with --json).
    """
    from .encoder import MultiVectorEncoder
    from .planner import Planner
    from .repositories import connect
    from .repository import Filter

    if (query is None) == (queries is None):
        raise _fail(AgrameError("give either a QUERY or --queries FILE"))
    repository = None
    try:
        parsed_filter = Filter.from_json(filter) if filter else None
        batch = _read_queries(queries) if queries is not None else [(None, query)]
        if batch_size < 1:
            raise AgrameError(f"--batch-size must be >= 1, got {batch_size}")
        repository = connect(store)
        encoder = MultiVectorEncoder.load(model, device=device, dtype=dtype)
        planner = Planner(
            repository, collection, encoder, candidates=candidates, alpha=alpha, first_stage=first_stage,
            prefetch=prefetch, device=device,
        )
        for start in range(0, len(batch), batch_size):
            chunk = batch[start : start + batch_size]
            responses = planner.search_batch(
                [text for _, text in chunk], granularity, k, parsed_filter, matches=matches
            )
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
    except AgrameError as exc:
        raise _fail(exc) from exc
    finally:
        _close(repository)


@app.command()
def cite(
    answer: Annotated[str, typer.Argument(help="The answer text ('-' reads it from stdin).")],
    passage: Annotated[Optional[list[str]], typer.Option("--passage", "-p", help="A source passage's text; repeatable, in order.")] = None,
    ids: Annotated[Optional[list[str]], typer.Option("--id", help="A source passage's id in --collection; repeatable, in order.")] = None,
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Collection holding the --id passages.")] = None,
    store: Annotated[str, typer.Option("--store", help="Store URL, as connect() takes it.")] = "qdrant-edge://./agrame-data",
    granularity: Annotated[str, typer.Option("--granularity", "-g", help="Unit kind to cite (sentence, proposition, ...) or passage.")] = "sentence",
    margin: Annotated[float, typer.Option("--margin", help="How much the best passage's score (per query token) must beat the others'.")] = 0.1,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="Cite only when the best score (per query token) reaches this.")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the passage score added to the unit's.")] = 0.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the cited answer as JSON.")] = False,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "float32",
) -> None:
    """Add citations to an answer from the passages it was generated from.

    Each answer sentence is cited with the passage whose best unit supports it by
    --margin over the others; prints the marked answer and each supporting unit.
    """
    import sys

    from .cite import cite as cite_answer
    from .encoder import MultiVectorEncoder

    repository = None
    try:
        text = sys.stdin.read() if answer == "-" else answer
        if bool(passage) == bool(ids):
            raise AgrameError("give the source passages either as --passage TEXT or as --id ID (with --collection)")
        encoder = MultiVectorEncoder.load(model, device=device, dtype=dtype)
        sources: list[object]
        if ids:
            if not collection:
                raise AgrameError("--id needs --collection (and --store)")
            from .repositories import connect

            repository = connect(store)
            sources = list(repository.fetch(collection, ids, strict=True).passages)
        else:
            sources = list(passage or [])
        result = cite_answer(text, sources, encoder, granularity=granularity, margin=margin, min_score=min_score, alpha=alpha)  # type: ignore[arg-type]
    except AgrameError as exc:
        raise _fail(exc) from exc
    finally:
        _close(repository)
    typer.echo(json.dumps(result.to_json(), ensure_ascii=False, indent=2) if json_output else result.to_text().rstrip("\n"))


if __name__ == "__main__":  # pragma: no cover
    app()
