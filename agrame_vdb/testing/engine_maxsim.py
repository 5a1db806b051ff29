"""Independent check: the engine's own MAX_SIM equals agrame_vdb.maxsim and numpy.

The passage score of a rerank inside the engine (Qdrant's multivector MAX_SIM
comparator) must be the same number as ``agrame_vdb.maxsim.passage_scores`` on
the same vectors, and as a numpy brute force.
"""

from __future__ import annotations

import numpy as np
import pytest

from ..repository import CollectionSchema

from .data import DIM, make_passages, maxsim, unit_vectors
from .engines import EngineFixtures


class EngineMaxSimTests(EngineFixtures):
    """The engine's own MaxSim equals the library's."""

    def test_engine_maxsim_equals_library_maxsim(self, store, repo):
        if not repo.capabilities().maxsim_rerank:
            pytest.skip(f"{repo.capabilities().engine} has no engine-side MaxSim")
        kernels = pytest.importorskip("agrame_vdb.maxsim", reason="agrame_vdb.maxsim is not there yet")
        name = store.collection
        repo.create_collection(CollectionSchema(name, DIM))
        passages = make_passages(25, seed=11)
        repo.upsert(name, passages)
        rng = np.random.default_rng(12)
        for n_query in (1, 7, 32):
            qt = unit_vectors(rng, n_query)
            # negative and unnormalised scores too: scale some query tokens
            qt[: n_query // 2] *= -1.5
            got = repo.candidates(name, unit_vectors(rng, 1)[0], tokens=qt, limit=25, prefetch=25)
            assert len(got) == 25
            engine = {c.id: c.score for c in got}
            ids = [p.id for p in passages]
            lib = np.asarray(kernels.passage_scores(qt, [p.tokens for p in passages]), dtype=np.float64)
            brute = np.array([maxsim(qt, p.tokens) for p in passages])
            np.testing.assert_allclose(lib, brute, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose([engine[i] for i in ids], brute, rtol=1e-5, atol=1e-5)
            # and the engine ranks by that score
            assert [c.id for c in got] == [ids[k] for k in np.argsort(-brute, kind="stable")]
