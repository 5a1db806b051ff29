"""The examples in the modules' docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    ["agrame_vdb.maxsim", "agrame_vdb.packing", "agrame_vdb.shards", "agrame_vdb.index_batch",
     "agrame_vdb.repositories._placement"],
)
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
