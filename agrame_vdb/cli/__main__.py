"""``python -m agrame_vdb.cli``: the ``agrame-vdb`` command."""

from . import app

app()
