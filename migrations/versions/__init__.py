"""The schema migrations, one module per version: ``v<NNNN>_<what>.py`` defining
``MIGRATION = Migration(...)`` (see :mod:`agrame_vdb.migrate`). How to add one:
``migrations/README.md``; a new file starts from ``migrations/script.py.tmpl``.
"""
