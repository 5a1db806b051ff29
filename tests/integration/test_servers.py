"""End to end against real servers: index -> search -> migrate, and the conformance suite.

Runs where ``QDRANT_URL`` / ``MILVUS_URI`` is set or a Docker engine answers
(testcontainers starts the images docker-compose.yml pins); skipped with the
reason elsewhere. Collections get unique names and are dropped afterwards, so a
shared server is left as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from agrame_vdb import connect
from agrame_vdb.migrations import convert_storage, digest, digest_passages, rollback, status, upgrade
from agrame_vdb.repository import SCHEMA_VERSION, CollectionSchema

from ..conformance._data import DIM, make_passages, unit_vectors
from ..engines import server_url
from .conftest import ROOT, SERVERS

pytestmark = pytest.mark.server

DOCS = [
    {"id": "eiffel", "text": "The Eiffel Tower is in Paris. It was finished in 1889 for the World's Fair."},
    {"id": "boil", "text": "Water boils at 100 degrees Celsius at sea level. At altitude it boils at a lower temperature."},
    {"id": "cell", "text": "Mitochondria make most of a cell's ATP. They carry their own DNA."},
]


@pytest.fixture
def names(server):
    """(store URL, a unique prefix); everything named with it is dropped afterwards."""
    prefix = f"it_{uuid.uuid4().hex[:10]}"
    yield server, prefix
    repo = connect(server)
    try:
        for alias, target in repo.list_aliases().items():
            if alias.startswith(prefix):
                repo.delete_alias(alias)
        for name in repo.list_collections():
            if name.startswith(prefix):
                repo.drop_collection(name)
    finally:
        repo.close()


def test_index_search_migrate(names, tmp_path, request):
    from agrame_vdb import index_documents
    from agrame_vdb.planner import Planner

    url, prefix = names
    encoder = request.getfixturevalue("encoder")  # loaded only once a server is there
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    repo = connect(url)
    try:
        blue = f"{prefix}_blue"
        summary = index_documents(source, repo, blue, encoder=encoder, checkpoint=tmp_path / "ck.json")
        assert summary.passages == 3 and summary.rejected == 0
        alias = f"{prefix}_live"
        repo.create_alias(alias, blue)
        planner = Planner(repo, alias, encoder=encoder)
        top = planner.search("When was the Eiffel Tower finished?", granularity="sentence", k=1)
        assert top[0].doc_id == "eiffel" and top[0].text in DOCS[0]["text"]
        before = digest(repo, alias)

        errors: list[BaseException] = []
        halt = threading.Event()

        def search_loop() -> None:
            rng = np.random.default_rng(0)
            while not halt.is_set():
                try:
                    q = unit_vectors(rng, 1, encoder.dim)[0]
                    got = repo.fetch(alias, [c.id for c in repo.candidates(alias, q, limit=2)], strict=True)
                    assert len(got) == 2
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
                time.sleep(0.005)

        t = threading.Thread(target=search_loop, daemon=True)
        t.start()
        try:
            result = convert_storage(repo, alias, dtype="float16", state_dir=tmp_path / "states")
        finally:
            halt.set()
            t.join(10)
        assert not errors, errors[:3]
        assert repo.resolve(alias) == result.target and repo.open_collection(alias).dtype == "float16"
        assert digest(repo, alias).count == before.count == 3
        assert planner.search("When was the Eiffel Tower finished?", granularity="sentence", k=1)[0].doc_id == "eiffel"
        rollback(repo, alias, state_dir=tmp_path / "states")
        assert repo.resolve(alias) == blue and digest(repo, alias) == before
    finally:
        repo.close()


def test_schema_upgrade_on_server(names, tmp_path):
    url, prefix = names
    repo = connect(url)
    try:
        name = f"{prefix}_old"
        repo.create_collection(CollectionSchema(name, DIM, schema_version=1))
        written = [dataclasses.replace(p, schema_version=1) for p in make_passages(20)]
        repo.upsert(name, written)
        upgrade(repo, name, state_dir=tmp_path / "s", page=6)
        assert status(repo, name, state_dir=tmp_path / "s").version == SCHEMA_VERSION
        got = digest(repo, name)
        ref = digest_passages(written)
        assert (got.count, got.ids, got.vectors, got.records) == (ref.count, ref.ids, ref.vectors, ref.records)
    finally:
        repo.close()


def test_alias_switch_reaches_another_client(names):
    url, prefix = names
    a, b = connect(url), connect(url)
    try:
        for suffix, n in (("one", 3), ("two", 5)):
            a.create_collection(CollectionSchema(f"{prefix}_{suffix}", DIM))
            a.upsert(f"{prefix}_{suffix}", make_passages(n))
        a.create_alias(f"{prefix}_alias", f"{prefix}_one")
        assert b.count(f"{prefix}_alias") == 3
        a.switch_alias(f"{prefix}_alias", f"{prefix}_two")
        deadline = time.monotonic() + 5
        while b.count(f"{prefix}_alias") != 5:  # b may trust its look-up for ALIAS_TTL_S
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("engine", SERVERS)
def test_conformance_suite_on_the_server(engine):
    """The whole conformance suite against this server (in a child pytest, same finders)."""
    url = server_url(engine)
    env = dict(os.environ)
    env["QDRANT_URL" if engine == "qdrant-server" else "MILVUS_URI"] = url
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "conformance"),
         "-k", engine, "-m", "server"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
