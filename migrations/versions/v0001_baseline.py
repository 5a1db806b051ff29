"""Version 1: the first stored layout; there is nothing to upgrade from.

Layout of version 1 (every engine): a named multivector ``tokens`` (MaxSim,
no HNSW) and a dense ``pooled`` vector; the payload holds ``doc_id``,
``passage_index``, ``text``, ``units``, ``metadata`` and ``schema_version``;
the collection's schema record holds name, dim, dtype, on_disk, schema_version
and indexed_fields.
"""

from agrame_vdb.migrate import Migration

MIGRATION = Migration(
    id="v0001_baseline",
    version=1,
    description="the first layout (collections are created at it; nothing to migrate)",
    upgrade=(),
    downgrade=None,
)
