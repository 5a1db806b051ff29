"""The ``agrame-vdb`` command (``agrame_vdb.cli:app``, the console script).

- :mod:`._common`: the app, the options every command shares, and how a command
  ends on an error (exit code 2) or Ctrl-C (130);
- :mod:`.commands`: index, search, cite, encode, info, demo, version;
- :mod:`.train_eval`: train and eval;
- :mod:`.migrate`: the ``migrate`` subcommands.
"""

from __future__ import annotations

from . import commands, migrate, train_eval  # noqa: F401  (each registers its commands on app)
from ._common import DEFAULT_STORE, app

__all__ = ["app", "DEFAULT_STORE"]
