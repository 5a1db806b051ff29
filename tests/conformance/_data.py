"""The suite's data helpers, for the tests that import them from here: they live in
:mod:`agrame_vdb.testing.data`."""

from agrame_vdb.testing.data import DIM, cosine_order, make_passages, maxsim, unit_vectors

__all__ = ["DIM", "cosine_order", "make_passages", "maxsim", "unit_vectors"]
