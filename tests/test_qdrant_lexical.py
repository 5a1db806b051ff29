"""qdrant-client's lexical layout: a sparse ``lexical`` vector with IDF, rewritten
with the point, and hybrid candidates fused by Qdrant with the library's RRF."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import models

from agrame_vdb import CollectionSchema, connect
from agrame_vdb.fusion import rrf
from agrame_vdb.records import StoredPassage
from agrame_vdb.testing.data import DIM, unit_vectors
from agrame_vdb.testing.lexical import QUERIES, SPEC, assert_ranking, bm25_reference, lexical_passages

from . import engines

ENGINES = engines.params("qdrant-local-memory", "qdrant-local-path")


@pytest.fixture(params=ENGINES)
def repo(request, tmp_path):
    r = connect(request.param.url(tmp_path))
    yield r
    r.close()


def _config(repo, name):
    return repo._client.get_collection(name).config.params


def test_only_lexical_collections_get_the_sparse_vector(repo):
    repo.create_collection(CollectionSchema("plain", DIM))
    repo.create_collection(CollectionSchema("lex", DIM, lexical=SPEC))
    assert not _config(repo, "plain").sparse_vectors
    sparse = _config(repo, "lex").sparse_vectors
    assert set(sparse) == {"lexical"}
    assert sparse["lexical"].modifier == models.Modifier.IDF


def test_a_rewrite_without_words_drops_the_old_vector(repo):
    repo.create_collection(CollectionSchema("c", DIM, lexical=SPEC))
    passages = lexical_passages()
    repo.upsert("c", passages)
    first = passages[0]
    wordless = StoredPassage.create(first.doc_id, first.index, first.tokens, text="— … —", metadata=first.metadata)
    repo.upsert("c", [wordless])
    now = [wordless] + passages[1:]
    for query in QUERIES:
        got = repo.lexical_candidates("c", query, limit=100)
        assert first.id not in {c.id for c in got}
        assert_ranking(got, bm25_reference(query, now), 100)  # N leaves it out too
    stored = repo._client.retrieve("c", [first.id], with_vectors=True)[0].vector
    assert "lexical" not in stored


@pytest.mark.parametrize("rrf_k", (1, 60))
def test_hybrid_scores_and_versions_equal_the_library_fusion(repo, rrf_k):
    repo.create_collection(CollectionSchema("c", DIM, lexical=SPEC))
    passages = lexical_passages()
    repo.upsert("c", passages)
    pooled = unit_vectors(np.random.default_rng(3), 1)[0]
    for query in QUERIES:
        got = repo.hybrid_candidates(
            "c", pooled, query, limit=12, dense_limit=10, lexical_limit=7, rrf_k=rrf_k, with_versions=True
        )
        dense = repo.candidates("c", pooled, limit=10, with_versions=True)
        lexical = repo.lexical_candidates("c", query, limit=7, with_versions=True)
        fused = {c.id: c for c in rrf([dense, lexical], limit=100, k=rrf_k)}
        assert len(got) == min(12, len(fused))
        for c in got:
            assert c.stage == "hybrid"
            assert c.score == pytest.approx(fused[c.id].score, rel=1e-9)
            assert c.version is not None and c.version == fused[c.id].version
