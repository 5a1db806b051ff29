"""The conformance suite (:mod:`agrame_vdb.testing`) on every engine of the project,
as any engine gets it: a subclass of ConformanceTests whose ``engine`` fixture names
the engines (tests/engines.py: the embedded ones always, the servers where found)."""

from __future__ import annotations

import pytest

from agrame_vdb.testing import ConformanceTests, EngineCase

from .. import engines


class TestProjectEngines(ConformanceTests):
    @pytest.fixture(scope="class", params=engines.params())
    @classmethod
    def engine(cls, request: pytest.FixtureRequest) -> EngineCase:
        return request.param
