"""Indexing (and migrating) under injected store faults loses, duplicates and half-writes nothing.

Each seeded run indexes a small corpus through :class:`FaultyRepository`
(transient errors, timeouts after the write, partial batches) with the job's own
retries; when a run fails for good (``JobInterruptedError``) it is resumed with the
same arguments until it finishes. The collection must then equal a clean run's:
same ids and count, same units, text, metadata and token vectors.

The encoder is :class:`tests.indexing_helpers.FakeEncoder` (real tokenizer, units
and token counts; vectors looked up from token ids): the encoder is not under test
here, and a real one would make each run cost seconds instead of milliseconds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from agrame_vdb import connect
from agrame_vdb.chunking import ChunkingOptions
from agrame_vdb.errors import AgrameError, JobInterruptedError, TransientRepositoryError
from agrame_vdb.indexer import RetryPolicy, index_documents

from ..indexing_helpers import FakeEncoder, make_docs, snapshot, write_jsonl
from . import report
from .faults import FaultyRepository

RETRY = RetryPolicy(attempts=3, initial=0.0, maximum=0.0)
OPTIONS = dict(batch_size=5, encode_batch_size=4, chunking=ChunkingOptions(max_tokens=16), retry=RETRY)
MAX_RESUMES = 500

MEMORY_SEEDS = 60 if report.FULL else 8
EDGE_SEEDS = 12 if report.FULL else 2
MILVUS_SEEDS = 4 if report.FULL else 0


@pytest.fixture(scope="module")
def fake():
    return FakeEncoder()


def _corpus(tmp: Path) -> tuple[Path, Path]:
    """An old version of the corpus (longer documents) and the new one: re-indexing
    the new over the old exercises stale-passage deletion under faults too."""
    new = make_docs(30)
    new.insert(7, {"id": "doc-3", "text": "A later record of doc-3 wins. It is short."})  # same id twice
    old = [dict(d, text=d["text"] + " " + " ".join(f"Old sentence {k} adds words." for k in range(6)))
           for d in make_docs(30)]
    return write_jsonl(tmp / "old.jsonl", old), write_jsonl(tmp / "new.jsonl", new)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, fake):
    tmp = tmp_path_factory.mktemp("clean")
    old, new = _corpus(tmp)
    repo = connect("memory://")
    index_documents(old, repo, "docs", encoder=fake, **OPTIONS)
    summary = index_documents(new, repo, "docs", encoder=fake, **OPTIONS)
    return old, new, snapshot(repo, "docs"), summary


def _ids(repo) -> list[str]:
    return list(repo.iter_ids("docs"))


def compare(repo, expected: dict) -> dict[str, int]:
    """lost / duplicated / half-written passages of ``repo`` against ``expected``."""
    ids = _ids(repo)
    got = snapshot(repo, "docs")
    lost = len(set(expected) - set(got))
    duplicated = (len(ids) - len(set(ids))) + (repo.count("docs") - len(expected) if not lost else 0) \
        + len(set(got) - set(expected))
    half = 0
    for pid in set(got) & set(expected):
        a, b = got[pid], expected[pid]
        if (a.text, a.units, a.metadata, a.tokens.shape) != (b.text, b.units, b.metadata, b.tokens.shape) or \
                not np.allclose(a.tokens, b.tokens, atol=1e-6, rtol=0):
            half += 1
    return {"passages_lost": lost, "passages_duplicated": max(duplicated, 0), "passages_half_written": half}


def run_until_done(fn, *, what: str) -> tuple[object, int]:
    """``fn()`` again (a resume with the same arguments) while it fails for good."""
    for resumes in range(MAX_RESUMES):
        try:
            return fn(), resumes
        except (JobInterruptedError, TransientRepositoryError):
            continue
    raise AssertionError(f"{what} did not finish after {MAX_RESUMES} resumes")


def _faulty_index(repo_factory, tmp: Path, seed: int, clean, fake, rate: float = 0.25) -> None:
    old, new, expected, clean_summary = clean
    with repo_factory(tmp) as inner:
        index_documents(old, inner, "docs", encoder=fake, **OPTIONS)  # the previous version, written cleanly
        faulty = FaultyRepository(inner, seed=seed, rate=rate)
        ck = tmp / "ck.json"
        summary, resumes = run_until_done(
            lambda: index_documents(new, faulty, "docs", encoder=fake, checkpoint=ck, rejects=tmp / "rej.jsonl",
                                    **OPTIONS),
            what=f"seed {seed}",
        )
        figures = compare(inner, expected)
        report.add(runs_with_faults=1, faults_injected=faulty.faults, resumes_after_failure=resumes, **figures)
        assert figures == {"passages_lost": 0, "passages_duplicated": 0, "passages_half_written": 0}, (seed, figures)
        for key in ("documents", "passages", "rejected", "records"):
            assert getattr(summary, key) == getattr(clean_summary, key), (seed, key)
        return faulty


@pytest.mark.parametrize("seed", range(MEMORY_SEEDS))
def test_indexing_under_faults_memory(tmp_path, seed, clean, fake):
    faulty = _faulty_index(lambda p: connect("memory://"), tmp_path, seed, clean, fake)
    assert faulty.faults > 0  # the run was really disturbed


@pytest.mark.parametrize("seed", range(EDGE_SEEDS))
def test_indexing_under_faults_qdrant_edge(tmp_path, seed, clean, fake):
    _faulty_index(lambda p: connect(f"qdrant-edge://{p / 'store'}"), tmp_path, 1000 + seed, clean, fake)


@pytest.mark.reliability_full
@pytest.mark.parametrize("seed", range(max(MILVUS_SEEDS, 1)))
def test_indexing_under_faults_milvus_lite(tmp_path, seed, clean, fake):
    pytest.importorskip("milvus_lite")
    _faulty_index(lambda p: connect(f"milvus-lite://{p / 'm.db'}"), tmp_path, 2000 + seed, clean, fake)


def test_a_store_down_for_good_gives_a_typed_error_that_says_how_to_resume(tmp_path, clean, fake):
    old, new, expected, _ = clean
    inner = connect("memory://")
    faulty = FaultyRepository(inner, seed=5, rate=1.0, ops=("upsert",))
    with pytest.raises(JobInterruptedError, match="run the same command again to resume"):
        index_documents(new, faulty, "docs", encoder=fake, checkpoint=tmp_path / "ck.json", **OPTIONS)
    index_documents(new, inner, "docs", encoder=fake, checkpoint=tmp_path / "ck.json", **OPTIONS)
    # the old corpus was never written here, so compare against a clean new-only run
    ref = connect("memory://")
    index_documents(new, ref, "docs", encoder=fake, **OPTIONS)
    assert compare(inner, snapshot(ref, "docs")) == {"passages_lost": 0, "passages_duplicated": 0,
                                                     "passages_half_written": 0}
    report.add(runs_with_faults=1, faults_injected=faulty.faults, resumes_after_failure=1)


# --------------------------------------------------------------------------- migrations

MIGRATION_SEEDS = 50 if report.FULL else 4


@pytest.mark.parametrize("seed", range(MIGRATION_SEEDS))
def test_schema_upgrade_under_faults(tmp_path, seed):
    migrations = pytest.importorskip("agrame_vdb.migrations")
    from agrame_vdb.repository import CollectionSchema

    from ..conformance._data import DIM, make_passages

    inner = connect("memory://")
    inner.create_collection(CollectionSchema("docs", DIM, schema_version=1, indexed_fields={"lang": "keyword"}))
    written = [dataclasses.replace(p, schema_version=1) for p in make_passages(30)]
    inner.upsert("docs", written)
    reference = migrations.digest_passages(written)
    faulty = FaultyRepository(inner, seed=3000 + seed, rate=0.2)

    def up():
        try:
            return migrations.upgrade(faulty, "docs", state_dir=tmp_path / "states", page=7)
        except AgrameError as exc:
            if isinstance(exc, TransientRepositoryError) or "resume" in str(exc) or "again" in str(exc):
                raise TransientRepositoryError(str(exc)) from exc
            raise

    result, resumes = run_until_done(up, what=f"upgrade seed {seed}")
    got = migrations.digest(inner, "docs")
    report.add(migration_runs_with_faults=1, faults_injected=faulty.faults, resumes_after_failure=resumes)
    assert inner.open_collection("docs").schema_version == result.to_version
    assert (got.count, got.ids, got.vectors, got.records) == (reference.count, reference.ids, reference.vectors,
                                                             reference.records)
