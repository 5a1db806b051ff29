"""Collection operations: add units in place; re-index or convert storage blue/green.

**Adding a unit kind without re-encoding.** A unit is a set of token positions
inside the passage's one stored encoding, so new units (sentences the splitter
finds, propositions from elsewhere, custom spans) need only the map from token
positions to characters. That map comes from the tokenizer alone: the stored
encoding is ``[CLS] [D] text [SEP]``, so re-tokenizing the stored text with the
model's tokenizer (``return_offsets_mapping``, cut at ``doc_maxlen`` less the special tokens as the
encoder cuts) gives every position's character span, with no forward pass.
:func:`add_units` checks, per passage, that the tokenizer gives exactly as many
positions as the passage has token vectors (else the collection was encoded with
another model or length, and it stops), aligns the new units with
:func:`~agrame_vdb.units.align_units` and rewrites the passage with its token
vectors unchanged.

**Blue/green.** A model, dim or storage change cannot happen in place (the engines
fix a collection's vectors at creation), so :func:`reindex` and
:func:`convert_storage` write a new collection beside the live one, check it
holds the same passages, and then switch the alias the searches use to it in one
atomic step (Qdrant's and Milvus's own aliases; an alias table on Qdrant Edge and
in memory). Searches through the alias keep answering from the old collection
until the switch and from the new one after it. The old collection is kept for
:func:`rollback` unless ``drop_old``. Writers should pause during the copy:
passages written to the old collection after the copy has passed them are caught
up only by id (ids missing from the new collection are copied, ids gone from the
old one deleted), not by content.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..protocol import MigratableRepository
from ..errors import InvalidInputError, MigrationError
from ..lexical import LexicalSpec
from ..repository import DTYPES, SCHEMA_VERSION, CollectionSchema, StoredPassage, check_name
from ..units import SENTENCE, Span, Unit, align_units, split_sentences, units_from_char_spans
from .reports import MigrationResult
from .runner import DEFAULT_PAGE, _open, _Run
from .state import MigrationState, _state_file

if TYPE_CHECKING:
    from ..checkpoints import EncoderConfig

__all__ = [
    "add_units",
    "reindex",
    "convert_storage",
    "rollback",
    "load_doc_tokenizer",
    "doc_token_offsets",
    "next_generation",
]

DocTokenizer = Callable[[Sequence[str]], list[tuple[tuple[Span | None, ...], int]]]
UnitSource = Callable[[StoredPassage], Iterable[Unit | Span | Sequence[Span]]]
_GEN_RE = re.compile(r"\A(?P<base>.+?)__g(?P<n>\d+)\Z")


# --------------------------------------------------------------------------- tokenizer only


def doc_token_offsets(tokenizer: Any, config: EncoderConfig, texts: Sequence[str]) -> list[tuple[tuple[Span | None, ...], int]]:
    """Per text: the character span of every position of its document encoding
    (None for the special positions: ``[CLS] [D] text [SEP]``, or ``[CLS] text [SEP]``
    for a model without a document marker), and where the encoded text ends. The
    layout of :class:`~agrame_vdb.encoder.MultiVectorEncoder` (:mod:`agrame_vdb.layout`)."""
    from ..layout import document_tokens

    return [(d.offsets, d.encoded_chars) for d in document_tokens(tokenizer, config, texts)]


def load_doc_tokenizer(model: Any = None, encoder: Any = None) -> DocTokenizer:
    """A function from texts to document offsets (see :func:`doc_token_offsets`) for a
    loaded ``encoder``, or a ``model`` (directory or name; ``"default"``/None: the
    default model) whose tokenizer is loaded without its weights where the format
    allows it."""
    if encoder is not None:
        return lambda texts: doc_token_offsets(encoder.tokenizer, encoder.config, texts)
    from ..checkpoints import load_tokenizer

    tokenizer, config = load_tokenizer(model)
    return lambda texts: doc_token_offsets(tokenizer, config, texts)


# --------------------------------------------------------------------------- add units


def _unit_source(units: UnitSource | str | Path | Mapping[str, Any] | None, kind: str) -> UnitSource:
    if units is None:
        if kind != SENTENCE:
            raise InvalidInputError(
                f"units of kind {kind!r} need a source (a function, or a JSON Lines file of "
                '{"id": ..., "units": [[[start, end], ...], ...]}); only sentences are found automatically'
            )
        return lambda p: split_sentences(p.text)
    if callable(units):
        return units
    table: dict[str, list[Any]] = {}
    if isinstance(units, Mapping):
        table = {str(k): list(v) for k, v in units.items()}
    else:
        path = Path(units)
        from ..documents import read_json_lines
        from ..units import passage_id

        for n, rec in read_json_lines(path, what="the units file"):
            try:
                pid = rec["id"] if "id" in rec else passage_id(rec["doc_id"], int(rec["passage_index"]))
                table[str(pid)] = list(rec["units"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInputError(
                    f"{path}:{n}: a units record is {{\"id\": PASSAGE_ID or \"doc_id\" + \"passage_index\", "
                    f"\"units\": [[[start, end], ...], ...]}} ({exc})"
                ) from exc
    return lambda p: table.get(p.id, ())


def _as_units(found: Iterable[Any], p: StoredPassage, kind: str) -> list[Unit]:
    items = list(found)
    if all(isinstance(u, Unit) for u in items):
        return [dataclasses.replace(u, kind=kind, index=i, token_ranges=()) for i, u in enumerate(items)]
    return units_from_char_spans(p.text, items, kind=kind)


def add_units(
    repository: MigratableRepository,
    collection: str,
    *,
    kind: str = SENTENCE,
    units: UnitSource | str | Path | Mapping[str, Any] | None = None,
    model: str | None = None,
    encoder: Any = None,
    replace: bool = False,
    state_dir: str | Path | None = None,
    page: int = DEFAULT_PAGE,
    on_page: Callable[[MigrationState], None] | None = None,
) -> MigrationResult:
    """Give every passage of a collection units of ``kind`` without re-encoding it.

    ``units``: where the units come from: None finds sentences with the splitter;
    a function ``passage -> units`` (Unit records or character spans, one item
    per unit); a JSON Lines file or a mapping from passage id to lists of spans.
    The tokenizer is the ``encoder``'s, else ``model``'s, else the model the
    collection records (schema version 2). Passages that already have units of
    ``kind`` keep them unless ``replace``. Units past a truncated encoding keep the
    tokens they have (``truncated`` count); those with none are dropped
    (``dropped``). Resumable; the collection must be at this library's version.
    """
    schema = _open(repository, collection)
    name = schema.name
    if schema.schema_version != SCHEMA_VERSION:
        from ..repository import newer_hint, upgrade_hint

        hint = upgrade_hint if schema.schema_version < SCHEMA_VERSION else newer_hint
        raise MigrationError(hint(name, schema.schema_version))
    if schema.token_pooling is not None:
        raise MigrationError(
            f"collection {collection!r} stores token rows pooled by {schema.token_pooling}: they are no longer the "
            "tokenizer's positions, so units cannot be added without re-encoding; re-index the documents with "
            "their units (agrame-vdb index --token-pooling ...)"
        )
    Unit(kind, 0, ((0, 1),))  # checks the kind's spelling
    model = model or schema.model
    if encoder is None and not model:
        raise MigrationError(
            f"collection {collection!r} does not record the model that encoded it: give --model (the model "
            "directory, or 'default' for the shipped one); only its tokenizer is loaded"
        )
    source = _unit_source(units, kind)
    params = {"kind": kind, "replace": replace, "model": model if encoder is None else "<encoder>",
              "units": str(units) if isinstance(units, (str, Path)) else type(units).__name__}
    run = _Run(repository, collection, "add_units", params, state_dir, on_page, page)
    with run.file.locked():
        state = run.begin(name, name, ["add-units"])
        tokenize = load_doc_tokenizer(model, encoder)
        for ids in run.pages(name):
            todo: list[StoredPassage] = []
            for p in repository.fetch(name, ids).passages:
                if not replace and any(u.kind == kind for u in p.units):
                    run.count("skipped", 1)
                    continue
                todo.append(p)
            if not todo:
                continue
            offsets = tokenize([p.text if p.text else " " for p in todo])
            out = []
            for p, (offs, encoded) in zip(todo, offsets):
                if len(offs) != p.n_tokens:
                    raise MigrationError(
                        f"passage {p.id} has {p.n_tokens} token vectors but the tokenizer of "
                        f"{model or 'the encoder'} gives {len(offs)} positions for its text: the collection was "
                        "encoded with another model or length; give the model that encoded it"
                    )
                new = _as_units(source(p), p, kind) if p.text else []
                aligned = align_units(new, offs, encoded)
                kept_units = tuple(u for u in p.units if u.kind != kind)
                run.count("truncated", sum(1 for t in aligned.truncated if not t.dropped))
                run.count("dropped", sum(1 for t in aligned.truncated if t.dropped))
                run.count("units", len(aligned.units))
                out.append(dataclasses.replace(p, units=kept_units + aligned.units))
            repository.upsert(name, out)
            run.count("passages", len(out))
        result = MigrationResult("add_units", collection, name, name, schema.schema_version, schema.schema_version,
                                 dict(state.counts), run.resumed)
        run.finish({"kind": kind})
        return result


# --------------------------------------------------------------------------- blue/green


def next_generation(repository: MigratableRepository, current: str) -> str:
    """The next free ``<base>__g<N>`` name after collection ``current`` (no collection's
    and no alias's)."""
    m = _GEN_RE.fullmatch(current)
    base, n = (m.group("base"), int(m.group("n"))) if m else (current, 1)
    taken = set(repository.list_collections()) | set(repository.list_aliases())
    for g in range(n + 1, n + 10_000):
        suffix = f"__g{g}"
        candidate = base[: 64 - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
    raise MigrationError(f"no free generation name after {current!r}")


def _alias_of(repository: MigratableRepository, alias: str) -> str:
    aliases = repository.list_aliases()
    if alias not in aliases:
        schema = _open(repository, alias)
        raise MigrationError(
            f"{alias!r} is a collection, not an alias: a blue/green migration switches the alias your searches "
            f"use. Create one (agrame-vdb migrate alias NAME --collection {schema.name}, or "
            f"repository.create_alias), search through it, and run this on the alias"
        )
    return aliases[alias]


def _check_target(repository: MigratableRepository, target: str, *, new: bool) -> None:
    """A blue/green migration writes into ``target`` and deletes what the source lacks
    from it, so it must be a collection of its own: never an alias (that would write
    into, and empty, the collection the alias points at), and not one that exists
    before the run (``new``)."""
    aliases = repository.list_aliases()
    if target in aliases:
        raise MigrationError(
            f"{target!r} is an alias (of collection {aliases[target]!r}), not a new collection: the migration "
            f"would overwrite {aliases[target]!r}; give --into a name no collection or alias has (nothing was changed)"
        )
    if new and target in repository.list_collections():
        raise MigrationError(f"collection {target!r} exists already; give another --into, or drop it first")


Transform = Callable[[list[StoredPassage]], list[StoredPassage]]


def _blue_green(
    repository: MigratableRepository,
    alias: str,
    operation: str,
    params: dict[str, Any],
    new_schema: Callable[[CollectionSchema, str], CollectionSchema],
    transform: Transform | None,
    *,
    into: str | None,
    drop_old: bool,
    state_dir: str | Path | None,
    page: int,
    on_page: Callable[[MigrationState], None] | None,
    fill: Callable[[_Run, str], None] | None = None,
) -> MigrationResult:
    if into is not None:
        check_name(into, "new collection")
    run = _Run(repository, alias, operation, {**params, "into": into, "drop_old": drop_old}, state_dir, on_page, page)
    with run.file.locked():
        unfinished = run.unfinished()
        if unfinished is not None:
            source, target = unfinished.source, unfinished.target
        else:
            source = _alias_of(repository, alias)
            target = into or next_generation(repository, source)
        _check_target(repository, target, new=unfinished is None)
        if source == target:
            raise MigrationError(f"the new collection must differ from the live one ({source!r})")
        plan = ["create", "copy", "catch-up", "optimize", "switch"] + (["drop-old"] if drop_old else [])
        state = run.begin(source, target, plan)
        src_schema = repository.open_collection(source)
        while state.step < len(plan):
            step = plan[state.step]
            if step == "create":
                _check_target(repository, target, new=False)  # an alias made since the run began
                made = repository.create_collection(new_schema(src_schema, target))
                if made.name != target:
                    raise MigrationError(f"{target!r} stands for collection {made.name!r}; give another --into")
            elif step == "copy":
                if fill is not None:
                    fill(run, target)
                else:
                    for ids in run.pages(source):
                        _copy(repository, source, target, ids, transform, run)
            elif step == "catch-up":
                if fill is None:
                    _catch_up(repository, source, target, transform, run)
                n_src, n_dst = repository.count(source), repository.count(target)
                state.extra.update(source_count=n_src, target_count=n_dst)
                if fill is None and n_src != n_dst:
                    raise MigrationError(
                        f"after the copy {target!r} holds {n_dst} passages and {source!r} {n_src}: the old collection "
                        "is still being written; pause its writers and run this again (it resumes)"
                    )
            elif step == "optimize":
                repository.optimize(target)
            elif step == "switch":
                previous = repository.switch_alias(alias, target)
                state.extra["previous"] = previous
            elif step == "drop-old":
                if source not in repository.list_aliases().values():
                    repository.drop_collection(source)
            run.next_step()
        previous = state.extra.get("previous", source)
        result = MigrationResult(operation, alias, source, target, src_schema.schema_version, SCHEMA_VERSION,
                                 dict(state.counts), run.resumed, alias=alias, previous=previous)
        run.finish({"alias": alias, "previous": previous, "dropped_old": drop_old})
        return result


def _copy(repository: MigratableRepository, source: str, target: str, ids: list[str], transform: Transform | None, run: _Run) -> None:
    passages = list(repository.fetch(source, ids).passages)
    if not passages:
        return
    out = transform(passages) if transform is not None else passages
    out = [p if p.schema_version == SCHEMA_VERSION else dataclasses.replace(p, schema_version=SCHEMA_VERSION) for p in out]
    repository.upsert(target, out)
    run.count("copied", len(out))


def _catch_up(repository: MigratableRepository, source: str, target: str, transform: Transform | None, run: _Run) -> None:
    """Copy ids the source has and the target lacks; delete ids the source no longer has."""
    src = set(repository.iter_ids(source))
    dst = set(repository.iter_ids(target))
    missing = sorted(src - dst)
    for start in range(0, len(missing), run.page):
        _copy(repository, source, target, missing[start : start + run.page], transform, run)
    extra = sorted(dst - src)
    if extra:
        repository.delete(target, extra)
        run.count("deleted", len(extra))


def _derived(src: CollectionSchema, target: str, **changes: Any) -> CollectionSchema:
    return CollectionSchema(
        target,
        changes.get("dim", src.dim),
        changes.get("dtype") or src.dtype,
        src.on_disk if changes.get("on_disk") is None else changes["on_disk"],
        SCHEMA_VERSION,
        dict(src.indexed_fields),  # type: ignore[arg-type]
        changes.get("model", src.model),
        changes["lexical"] if "lexical" in changes else src.lexical,
        src.token_pooling,  # a copy keeps the rows as they are; a re-encoding pools them again alike
    )


def convert_storage(
    repository: MigratableRepository,
    alias: str,
    *,
    dtype: str | None = None,
    on_disk: bool | None = None,
    lexical: bool | LexicalSpec | None = None,
    into: str | None = None,
    drop_old: bool = False,
    state_dir: str | Path | None = None,
    page: int = DEFAULT_PAGE,
    on_page: Callable[[MigrationState], None] | None = None,
) -> MigrationResult:
    """Copy the collection behind ``alias`` into a new one with another token-vector
    storage (``dtype``: float32, float16, int8 or binary; ``on_disk``)
    or lexical vectors (``lexical``: True for the default :class:`~agrame_vdb.lexical.LexicalSpec`,
    a spec, or False for none; None keeps the source's) and switch the alias to it
    (blue/green; see the module docs). Vectors are copied, not re-encoded: float16
    rounds them; float16 back to float32 does not restore them. Lexical vectors are
    computed from the stored text as each passage is written into the new collection."""
    if dtype is not None and dtype not in DTYPES:
        raise InvalidInputError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if lexical is not None and not isinstance(lexical, (bool, LexicalSpec)):
        raise InvalidInputError(f"lexical must be True, False, a LexicalSpec or None, got {lexical!r}")
    if dtype is None and on_disk is None and lexical is None:
        raise InvalidInputError("convert_storage needs dtype=, on_disk= or lexical=")
    changes: dict[str, Any] = {"dtype": dtype, "on_disk": on_disk}
    if lexical is not None:
        changes["lexical"] = LexicalSpec() if lexical is True else lexical or None
    params = {"dtype": dtype, "on_disk": on_disk}
    if lexical is not None:  # in the run's identity only when asked (a resumed run must ask the same)
        params["lexical"] = None if changes["lexical"] is None else changes["lexical"].to_json()
    return _blue_green(
        repository, alias, "convert", params,
        lambda src, target: _derived(src, target, **changes), None,
        into=into, drop_old=drop_old, state_dir=state_dir, page=page, on_page=on_page,
    )


def reindex(
    repository: MigratableRepository,
    alias: str,
    *,
    model: str | None = None,
    encoder: Any = None,
    source: str | Path | None = None,
    dtype: str | None = None,
    on_disk: bool | None = None,
    into: str | None = None,
    drop_old: bool = False,
    device: str = "auto",
    encode_batch_size: int = 32,
    index_options: Mapping[str, Any] | None = None,
    state_dir: str | Path | None = None,
    page: int = DEFAULT_PAGE,
    on_page: Callable[[MigrationState], None] | None = None,
) -> MigrationResult:
    """Re-encode the collection behind ``alias`` with another model (its dim may
    differ) into a new collection, then switch the alias to it (blue/green).

    The encoder is ``encoder``, else loaded from ``model`` (``"default"``: the
    shipped one). Passages are re-encoded from their stored text, with their
    units realigned to the new tokenizer (ids, text, metadata kept); or, with
    ``source`` (a documents file), the new collection is filled by an
    :class:`~agrame_vdb.indexer.IndexJob` (its own checkpoint makes it resumable;
    ``index_options`` go to it). The new collection records ``model``.
    """
    if encoder is None and not model:
        raise InvalidInputError("reindex needs model= (a model directory, or 'default') or encoder=")
    if dtype is not None and dtype not in DTYPES:
        raise InvalidInputError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    loaded: dict[str, Any] = {}

    def get_encoder() -> Any:
        if "e" not in loaded:
            if encoder is not None:
                loaded["e"] = encoder
            else:
                from ..encoder import MultiVectorEncoder

                loaded["e"] = MultiVectorEncoder.load(model, device=device)
        return loaded["e"]

    recorded = model if model else getattr(getattr(encoder, "checkpoint", None), "path", None)
    recorded = str(recorded) if recorded else None

    def new_schema(src: CollectionSchema, target: str) -> CollectionSchema:
        return _derived(src, target, dim=int(get_encoder().dim), dtype=dtype, on_disk=on_disk, model=recorded)

    def transform(passages: list[StoredPassage]) -> list[StoredPassage]:
        # the copy runs before the switch: the alias still names the source, whose factor the new one keeps
        pooling = repository.open_collection(alias).token_pooling or 1
        return _reencode(get_encoder(), passages, encode_batch_size, pooling)

    fill = None
    if source is not None:
        src_path = Path(source)

        def fill(run: _Run, target: str) -> None:
            from ..indexer import IndexJob

            directory = run.file.directory
            checkpoint = None if directory is None else directory / f"{run.collection}.index-checkpoint.json"
            made = repository.open_collection(target)
            opts = {"batch_size": page, "encode_batch_size": encode_batch_size, **dict(index_options or {})}
            summary = IndexJob(src_path, repository, target, encoder=get_encoder(), checkpoint=checkpoint,
                               storage_dtype=made.dtype, on_disk=made.on_disk, indexed_fields=dict(made.indexed_fields),
                               token_pooling=made.token_pooling or 1, **opts).run()
            run.count("copied", summary.passages)
            run.count("rejected", summary.rejected)
            if checkpoint is not None:
                with contextlib.suppress(FileNotFoundError):
                    checkpoint.unlink()

    params = {"model": model if encoder is None else recorded or "<encoder>", "source": str(source) if source else None,
              "dtype": dtype, "on_disk": on_disk}
    return _blue_green(
        repository, alias, "reindex", params, new_schema, transform,
        into=into, drop_old=drop_old, state_dir=state_dir, page=page, on_page=on_page, fill=fill,
    )


def _reencode(encoder: Any, passages: list[StoredPassage], batch_size: int, token_pooling: int = 1) -> list[StoredPassage]:
    from ..pooling import pool_encoded
    from ..units import Passage

    empty = [p.id for p in passages if not p.text.strip()]
    if empty:
        raise MigrationError(
            f"cannot re-encode passage {empty[0]} (and {len(empty) - 1} more): it stores no text; "
            "re-index from the documents instead (source=FILE / --source FILE)"
        )
    inputs = [Passage(p.id, p.doc_id, p.text, p.index, p.metadata) for p in passages]
    units = [[dataclasses.replace(u, token_ranges=()) for u in p.units] for p in passages]
    encoded = encoder.encode_passages(inputs, units, sentences=False, batch_size=batch_size)
    out = []
    for p, e in zip(passages, encoded, strict=True):
        tokens, pooled_units = pool_encoded(e, token_pooling)
        out.append(StoredPassage(id=p.id, doc_id=p.doc_id, index=p.index, tokens=tokens, pooled=e.pooled,
                                 units=tuple(pooled_units), text=p.text, metadata=p.metadata))
    return out


def rollback(repository: MigratableRepository, alias: str, *, state_dir: str | Path | None = None) -> MigrationResult:
    """Switch ``alias`` back to the collection it pointed at before its last blue/green
    migration (kept unless that migration dropped it)."""
    file = _state_file(repository, alias, state_dir)
    with file.locked():
        if file.load() is not None:
            raise MigrationError(f"{alias!r} has an unfinished migration; finish or abort it before a rollback")
        current = _alias_of(repository, alias)
        for record in reversed(file.history()):
            if record.get("alias") == alias and record.get("target") == current and record.get("previous"):
                previous = record["previous"]
                if previous not in repository.list_collections():
                    now = repository.list_aliases().get(previous)
                    raise MigrationError(
                        f"the collection {previous!r} that {alias!r} pointed at before was dropped"
                        + (f" ({previous!r} is now an alias of {now!r}: nothing was switched)" if now else "")
                    )
                repository.switch_alias(alias, previous)
                file.append_history({"operation": "rollback", "collection": alias, "alias": alias, "source": current,
                                     "target": previous, "previous": current})
                schema = repository.open_collection(previous)
                return MigrationResult("rollback", alias, current, previous, schema.schema_version,
                                       schema.schema_version, {}, alias=alias, previous=current)
        raise MigrationError(f"no blue/green migration of {alias!r} to {current!r} is recorded: nothing to roll back")

