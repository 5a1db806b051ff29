"""An engine registered with ``register_scheme`` gets the whole conformance suite by
subclassing :class:`agrame_vdb.testing.ConformanceTests`, and passes it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from agrame_vdb import connect
from agrame_vdb.repositories import _SCHEMES, known_schemes, register_scheme
from agrame_vdb.testing import ConformanceTests, EngineCase

from . import third_party_engine
from .third_party_engine import SCHEME, ThirdPartyRepository


@pytest.fixture(scope="module")
def registered():
    """The scheme registered for this module's tests only (register_scheme has no inverse)."""
    register_scheme(SCHEME, third_party_engine.__name__)
    yield SCHEME
    _SCHEMES.pop(SCHEME, None)


class TestThirdPartyEngine(ConformanceTests):
    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, registered: str) -> EngineCase:
        return EngineCase("third-party", lambda tmp: f"{registered}://")

    def test_the_suite_runs_on_the_third_party_repository(self, repo, readonly):
        """The suite's fixtures reach the registered engine, not the memory one it derives from."""
        for r in (repo, readonly[1]):
            assert type(r) is ThirdPartyRepository and r.capabilities().engine == SCHEME


def test_the_scheme_is_registered(registered):
    assert SCHEME in known_schemes()
    repo = connect(f"{SCHEME}://")
    assert type(repo) is ThirdPartyRepository and repo.capabilities().engine == SCHEME
    repo.close()


def test_the_subclass_has_every_conformance_case():
    def cases(cls: type) -> set[str]:
        return {name for name in dir(cls) if name.startswith("test_")}

    assert cases(TestThirdPartyEngine) - cases(ConformanceTests) == {"test_the_suite_runs_on_the_third_party_repository"}
    assert cases(ConformanceTests) <= cases(TestThirdPartyEngine)
    assert len(cases(ConformanceTests)) >= 30


_WITHOUT_PYTEST = textwrap.dedent(
    """
    import sys
    sys.modules["pytest"] = None  # as if it were not installed
    import agrame_vdb, agrame_vdb.repositories.memory, agrame_vdb.planner, agrame_vdb.migrations
    agrame_vdb.connect("memory://").close()
    try:
        import agrame_vdb.testing
    except ImportError as exc:
        print("testing needs pytest:", exc)
    """
)


def test_the_library_does_not_need_pytest():
    """Only agrame_vdb.testing imports pytest (it is in the 'testing' extra, not a dependency)."""
    out = subprocess.run([sys.executable, "-c", _WITHOUT_PYTEST], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("testing needs pytest:"), out.stdout
