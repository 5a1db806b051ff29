"""Version 2: a collection records the model that encoded it.

Why: re-tokenizing stored text (adding units without re-encoding) and re-indexing
with another model both need to know which tokenizer and model produced the stored
token vectors; version 1 did not say. The schema record gains ``model`` (a model
directory or name as ``MultiVectorEncoder.load`` takes it, ``"default"`` for the
shipped model, or null when unknown) and every passage is stamped with version 2.

Upgrade (in place; token vectors are read and written back unchanged):

1. ``check-model``: when ``model=`` is given, re-tokenize the stored text of up to
   64 passages with that model's tokenizer (no forward pass) and check that each
   gives as many positions as the passage has token vectors; a mismatch means the
   collection was encoded with another model or length, and stops the migration.
2. ``stamp-passages``: rewrite every passage with ``schema_version`` 2.
3. ``store-schema``: record version 2 and ``model`` in the collection.

Downgrade: stamp the passages with version 1, then drop ``model`` from the record.
"""

from __future__ import annotations

import dataclasses

from agrame_vdb.errors import MigrationError
from agrame_vdb.migrate import Check, Migration, MigrationContext, RewritePassages, StoreSchema
from agrame_vdb.repository import CollectionSchema

SAMPLE = 64


def _check_model(ctx: MigrationContext) -> None:
    model = ctx.options.get("model")
    if not model:
        return
    from agrame_vdb.migrate.operations import load_doc_tokenizer

    tokenize = load_doc_tokenizer(model)
    repo = ctx.repository
    ids = list(repo.list_ids(ctx.collection, limit=SAMPLE).ids)
    passages = [p for p in repo.fetch(ctx.collection, ids).passages if p.text.strip()]
    for p, (offsets, _) in zip(passages, tokenize([p.text for p in passages])):
        if len(offsets) != p.n_tokens:
            raise MigrationError(
                f"model {model!r} does not match collection {ctx.collection!r}: its tokenizer gives "
                f"{len(offsets)} positions for passage {p.id}, which has {p.n_tokens} token vectors; "
                "give the model that encoded the collection (or leave model out)"
            )


def _record_model(schema: CollectionSchema, ctx: MigrationContext) -> CollectionSchema:
    return dataclasses.replace(schema, model=ctx.options.get("model") or schema.model)


def _forget_model(schema: CollectionSchema, ctx: MigrationContext) -> CollectionSchema:
    return dataclasses.replace(schema, model=None)


MIGRATION = Migration(
    id="v0002_model_reference",
    version=2,
    description="the schema records the model that encoded the collection; passages stamped with version 2",
    upgrade=(
        Check("check-model", _check_model),
        RewritePassages("stamp-passages"),
        StoreSchema("store-schema", _record_model),
    ),
    downgrade=(
        RewritePassages("stamp-passages"),
        StoreSchema("store-schema", _forget_model),
    ),
)
