"""The conformance suite, shipped: base test classes every repository must pass.

This package needs **pytest** >= 9.1 (``pip install 'agrame-vdb[testing]'``); the rest of
``agrame_vdb`` never imports it, so the library itself runs without pytest.

An engine served by :func:`agrame_vdb.repositories.register_scheme` gets the whole
suite by subclassing :class:`ConformanceTests` and overriding one fixture,
``engine`` (scope ``"class"``, a classmethod), which says how to reach a fresh store::

    # test_my_engine.py
    import pytest
    from agrame_vdb.repositories import register_scheme
    from agrame_vdb.testing import ConformanceTests, EngineCase

    register_scheme("mine", "my_package.agrame_engine")   # defines from_url(url, **options)

    class TestMyEngine(ConformanceTests):
        @pytest.fixture(scope="class")
        @classmethod
        def engine(cls):
            return EngineCase("mine", lambda tmp: f"mine://{tmp}/db", persistent=True, exclusive=True)

``EngineCase.url`` gets a fresh temporary directory and returns the store URL (a
server ignores the directory and may ``pytest.skip`` when it is not there); its
flags say what the engine promises: ``persistent`` (a second ``connect`` sees the
data), ``exclusive`` (a second process gets ConcurrentAccessError), ``shared`` (a
server: collections get unique names and are dropped after each test). To run the
suite on several engines, give the fixture ``params=[case.param() for case in
cases]`` and return ``request.param``.

The parts can also be taken alone: :class:`RepositoryTests` (collections, writes,
filters, candidates, fetch, persistence, concurrency), :class:`BadInputTests`,
:class:`AliasTests`, :class:`ProtocolTests` (the protocols, id paging), :class:`ValueTests` (values at the limits) and
:class:`EngineMaxSimTests` (an engine-side MaxSim equals the library's) and
:class:`LexicalTests` (lexical candidates equal a BM25 reference, hybrid fuses two
filtered branches, a collection without lexical vectors names the migration).
References are independent of the engines: Python predicates for filters, numpy
cosine for the first stage, numpy MaxSim for the rerank, the written arrays for
fetch (:mod:`agrame_vdb.testing.data`).
"""

from __future__ import annotations

import pytest

# failures in the shipped test classes show their values, as in a test file of one's own
pytest.register_assert_rewrite(
    "agrame_vdb.testing.aliases",
    "agrame_vdb.testing.bad_input",
    "agrame_vdb.testing.engine_maxsim",
    "agrame_vdb.testing.engines",
    "agrame_vdb.testing.lexical",
    "agrame_vdb.testing.protocol",
    "agrame_vdb.testing.repository",
    "agrame_vdb.testing.values",
)

from .aliases import AliasTests  # noqa: E402
from .bad_input import BadInputTests  # noqa: E402
from .engine_maxsim import EngineMaxSimTests  # noqa: E402
from .engines import EngineCase, EngineFixtures, Store  # noqa: E402
from .lexical import LexicalTests  # noqa: E402
from .protocol import ProtocolTests  # noqa: E402
from .repository import RepositoryTests  # noqa: E402
from .values import ValueTests  # noqa: E402

__all__ = [
    "AliasTests",
    "BadInputTests",
    "ConformanceTests",
    "EngineCase",
    "EngineFixtures",
    "EngineMaxSimTests",
    "LexicalTests",
    "ProtocolTests",
    "RepositoryTests",
    "Store",
    "ValueTests",
]


class ConformanceTests(
    RepositoryTests, ProtocolTests, BadInputTests, AliasTests, ValueTests, EngineMaxSimTests, LexicalTests
):
    """The whole conformance suite. Subclass it and override the fixture ``engine``."""
