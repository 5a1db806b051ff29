"""The schema migrations, one module per version: ``v<NNNN>_<what>.py`` defining
``MIGRATION = Migration(...)`` (see :mod:`agrame_vdb.migrations`).

To add version N: raise ``SCHEMA_VERSION`` in :mod:`agrame_vdb.repository` to N,
add ``vNNNN_<what>.py`` here with ``version=N``, its ``upgrade`` steps (and its
``downgrade`` steps, or ``downgrade=None`` when it cannot be undone), make the
repositories write the new layout, and extend ``tests/test_migrations.py``'s
chain test with a collection written at N - 1.
"""
