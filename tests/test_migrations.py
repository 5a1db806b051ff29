"""Migrations on the embedded engines: the schema chain, add units, blue/green.

References are independent of the runner: digests of the passages as written
(``digest_passages``), the encoder's own alignment of units, the written arrays.
Each engine gets a fresh store; Milvus Lite is skipped with its reason where its
packages are missing.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agrame_vdb import connect
from agrame_vdb.errors import AliasError, InvalidSchemaError, MigrationError, SchemaMismatchError
from agrame_vdb.migrations import (
    MigrationState,
    add_units,
    convert_storage,
    digest,
    digest_passages,
    downgrade,
    load_migrations,
    pending,
    reindex,
    rollback,
    status,
    upgrade,
)
from agrame_vdb.migrations import abort as abort_migration
from agrame_vdb.migrations.operations import doc_token_offsets, next_generation
from agrame_vdb.repository import SCHEMA_VERSION, CollectionSchema, StoredPassage
from agrame_vdb.units import Passage

from . import engines
from .conformance._data import DIM, make_passages, unit_vectors


ENGINES = engines.params("memory", "qdrant-local-path", "qdrant-edge", "milvus-lite")


@pytest.fixture(params=ENGINES)
def repo(request, tmp_path):
    r = connect(request.param.url(tmp_path))
    yield r
    r.close()


@pytest.fixture
def states(tmp_path) -> Path:
    return tmp_path / "states"


class Crash(RuntimeError):
    """Stands for a process killed mid-migration."""


def crash_after(pages: int):
    seen = {"n": 0}

    def on_page(state: MigrationState) -> None:
        seen["n"] += 1
        if seen["n"] == pages:
            raise Crash(f"killed after page {pages} of step {state.step_name}")

    return on_page


def v1_collection(repo, name="docs", n=30, dim=DIM):
    """A populated collection as agrame-vdb 0.1 (schema version 1) wrote it."""
    repo.create_collection(CollectionSchema(name, dim, schema_version=1, indexed_fields={"lang": "keyword"}))
    passages = [dataclasses.replace(p, schema_version=1) for p in make_passages(n, dim=dim)]
    repo.upsert(name, passages)
    return passages


def same_content(a, b):
    return (a.count, a.ids, a.vectors, a.records) == (b.count, b.ids, b.vectors, b.records)


# --------------------------------------------------------------------------- the chain


def test_chain_is_ordered_and_complete():
    chain = load_migrations()
    assert [m.version for m in chain] == list(range(1, SCHEMA_VERSION + 1))
    assert len({m.id for m in chain}) == len(chain)
    for m in chain:
        assert m.id.startswith(f"v{m.version:04d}_") and m.description
    files = sorted(p.stem for p in (Path(__file__).parents[1] / "migrations/versions").glob("v*.py"))
    assert files == [m.id for m in chain]


def test_upgrade_through_every_migration_loses_nothing(repo, states):
    written = v1_collection(repo)
    reference = digest_passages(written)
    assert same_content(digest(repo, "docs"), reference)
    assert [m.version for m in pending(repo, "docs")] == list(range(2, SCHEMA_VERSION + 1))

    result = upgrade(repo, "docs", state_dir=states, page=7)
    assert (result.from_version, result.to_version) == (1, SCHEMA_VERSION)
    assert repo.open_collection("docs").schema_version == SCHEMA_VERSION
    assert same_content(digest(repo, "docs"), reference)  # count, ids, vectors, units, text, metadata
    fetched = repo.fetch("docs", [p.id for p in written]).passages
    assert {p.schema_version for p in fetched} == {SCHEMA_VERSION}
    assert dict(repo.open_collection("docs").indexed_fields) == {"lang": "keyword"}
    st = status(repo, "docs", state_dir=states)
    assert st.up_to_date and st.pending == () and st.history[-1]["operation"] == "upgrade"
    # the library writes to it again
    new = make_passages(1, seed=9)[0]
    repo.upsert("docs", [dataclasses.replace(new, id="00000000-0000-4000-8000-000000000001")])
    assert repo.count("docs") == len(written) + 1


def test_downgrade_and_upgrade_again(repo, states):
    written = v1_collection(repo)
    reference = digest_passages(written)
    with pytest.raises(MigrationError, match="does not match"):  # its tokenizer disagrees with the stored encodings
        upgrade(repo, "docs", state_dir=states, options={"model": "default"})
    assert status(repo, "docs", state_dir=states).in_progress is None  # a failed check leaves nothing to resume
    upgrade(repo, "docs", state_dir=states)
    assert repo.open_collection("docs").model is None
    result = downgrade(repo, "docs", to=1, state_dir=states)
    assert result.to_version == 1
    schema = repo.open_collection("docs")
    assert schema.schema_version == 1 and schema.model is None
    assert same_content(digest(repo, "docs"), reference)
    assert {p.schema_version for p in repo.fetch("docs", [p.id for p in written])} == {1}
    upgrade(repo, "docs", state_dir=states)
    assert same_content(digest(repo, "docs"), reference)


def test_older_collection_is_refused_with_the_upgrade_command(repo):
    v1_collection(repo)
    p = make_passages(1, seed=5)[0]
    with pytest.raises(SchemaMismatchError, match="agrame-vdb migrate up --collection docs"):
        repo.upsert("docs", [p])
    with pytest.raises(SchemaMismatchError, match="agrame-vdb migrate up"):
        repo.create_collection(CollectionSchema("docs", DIM))  # what the indexer does first
    assert repo.count("docs") == 30  # reads still work


def test_newer_collection_is_refused_for_writing(tmp_path):
    root = tmp_path / "edge"
    repo = connect(f"qdrant-edge://{root}")
    repo.create_collection(CollectionSchema("docs", DIM))
    written = make_passages(5)
    repo.upsert("docs", written)
    repo.close()
    record = root / "docs" / "collection.json"  # as a newer agrame-vdb would leave it
    data = json.loads(record.read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    record.write_text(json.dumps(data))
    repo = connect(f"qdrant-edge://{root}")
    try:
        assert repo.count("docs") == 5  # reading is allowed
        for write in (
            lambda: repo.upsert("docs", [make_passages(1, seed=3)[0]]),
            lambda: repo.delete("docs", [written[0].id]),
            lambda: repo.delete_by_doc_id("docs", "doc-0"),
            lambda: repo.create_collection(CollectionSchema("docs", DIM)),
        ):
            with pytest.raises(SchemaMismatchError, match="newer than this agrame-vdb") as err:
                write()
            assert "migrate down" in str(err.value) or "upgrade agrame-vdb" in str(err.value)
        with pytest.raises(MigrationError, match="newer"):
            upgrade(repo, "docs", state_dir=tmp_path / "s")
        assert repo.count("docs") == 5
    finally:
        repo.close()
    with pytest.raises(SchemaMismatchError):
        connect("memory://").create_collection(CollectionSchema("x", DIM, schema_version=SCHEMA_VERSION + 1))


def test_interrupted_upgrade_resumes(repo, states):
    written = v1_collection(repo)
    reference = digest_passages(written)
    with pytest.raises(Crash):
        upgrade(repo, "docs", state_dir=states, page=7, on_page=crash_after(2))
    st = status(repo, "docs", state_dir=states)
    assert st.in_progress and "stamp-passages" in st.in_progress and "14 passages done" in st.in_progress
    assert repo.open_collection("docs").schema_version == 1  # the record moves last
    with pytest.raises(MigrationError, match="unfinished migration"):
        downgrade(repo, "docs", to=1, state_dir=states)  # another operation waits
    with pytest.raises(MigrationError, match="unfinished migration"):
        upgrade(repo, "docs", state_dir=states, options={"model": "other"})  # other arguments too
    result = upgrade(repo, "docs", state_dir=states, page=7)
    assert result.resumed
    assert result.counts["stamp-passages"] == 30  # every passage once in all: 14 before, 16 after
    assert repo.open_collection("docs").schema_version == SCHEMA_VERSION
    assert same_content(digest(repo, "docs"), reference)
    assert status(repo, "docs", state_dir=states).in_progress is None


def test_upgrade_is_a_noop_when_up_to_date(repo, states):
    repo.create_collection(CollectionSchema("docs", DIM))
    result = upgrade(repo, "docs", state_dir=states)
    assert result.from_version == result.to_version == SCHEMA_VERSION and not result.counts
    with pytest.raises(MigrationError, match="--to must be a schema version"):
        downgrade(repo, "docs", to=SCHEMA_VERSION + 1, state_dir=states)


def test_update_schema_only_changes_what_may_change():
    repo = connect("memory://")
    repo.create_collection(CollectionSchema("docs", DIM))
    with pytest.raises(InvalidSchemaError, match="dim"):
        repo.update_schema(CollectionSchema("docs", DIM + 1))
    with pytest.raises(InvalidSchemaError, match="dtype"):
        repo.update_schema(CollectionSchema("docs", DIM, dtype="float16"))
    got = repo.update_schema(CollectionSchema("docs", DIM, indexed_fields={"lang": "keyword"}, model="m"))
    assert repo.open_collection("docs") == got


# --------------------------------------------------------------------------- add units


TEXTS = [
    "The Eiffel Tower is in Paris. It was finished in 1889. Gustave Eiffel's company built it.",
    "Water boils at 100 degrees Celsius at sea level. At altitude it boils at a lower temperature.",
    "Mitochondria make most of the cell's ATP. They have their own DNA.",
    "A short passage without a full stop",
]


@pytest.fixture(scope="module")
def encoded(encoder):
    """Real encodings: with sentences (the reference) and without (what is stored)."""
    passages = [Passage.create(f"doc-{i}", 0, t) for i, t in enumerate(TEXTS)]
    with_sentences = encoder.encode_passages(passages)
    bare = [
        StoredPassage.create(p.doc_id, p.index, e.token_vectors, pooled=e.pooled, text=p.text, metadata={"lang": "en"})
        for p, e in zip(passages, encoder.encode_passages(passages, sentences=False))
    ]
    return passages, with_sentences, bare


def test_doc_offsets_from_the_tokenizer_equal_the_encoders(encoder):
    texts = TEXTS + ["x " * 600]  # the last one is cut at doc_maxlen
    mine = doc_token_offsets(encoder.tokenizer, encoder.config, texts)
    theirs = encoder._tokenize_documents(texts)
    assert [(tuple(o), e) for o, e in mine] == [(d.offsets, d.encoded_chars) for d in theirs]


def test_add_sentences_without_reencoding(repo, states, encoded, encoder):
    passages, reference, bare = encoded
    repo.create_collection(CollectionSchema("docs", encoder.dim))
    repo.upsert("docs", bare)
    before = digest(repo, "docs")
    with pytest.raises(MigrationError, match="--model"):
        add_units(repo, "docs", state_dir=states)  # the collection does not record its model
    with pytest.raises(Crash):
        add_units(repo, "docs", model="minilm-frozen-128", state_dir=states, page=2, on_page=crash_after(1))
    result = add_units(repo, "docs", model="minilm-frozen-128", state_dir=states, page=2)
    assert result.resumed and result.counts["passages"] == 4
    after = digest(repo, "docs")
    assert (after.count, after.ids, after.vectors) == (before.count, before.ids, before.vectors)
    for p, e in zip(repo.fetch("docs", [b.id for b in bare]).passages, reference):
        assert p.units == e.units  # what encoding with sentences gives
        assert np.array_equal(p.tokens, e.token_vectors)
    again = add_units(repo, "docs", model="minilm-frozen-128", state_dir=states)  # idempotent
    assert again.counts == {"skipped": 4}


def test_add_propositions_from_a_file(tmp_path, states, encoded, encoder):
    _, _, bare = encoded
    repo = connect(f"qdrant-edge://{tmp_path}/edge")
    repo.create_collection(CollectionSchema("docs", encoder.dim, model="minilm-frozen-128"))
    repo.upsert("docs", bare)
    text = bare[0].text
    at = {w: (text.index(w), text.index(w) + len(w)) for w in ("Eiffel Tower", "Paris", "1889")}
    spans = [[at["Eiffel Tower"], at["Paris"]], [at["1889"]]]
    f = tmp_path / "props.jsonl"
    f.write_text(json.dumps({"doc_id": "doc-0", "passage_index": 0, "units": spans}) + "\n")
    add_units(repo, "docs", kind="proposition", units=f, state_dir=states)  # the model the schema records
    got = repo.fetch("docs", [bare[0].id, bare[1].id]).passages
    props = [u for u in got[0].units if u.kind == "proposition"]
    assert [u.text_in(text) for u in props] == ["Eiffel Tower Paris", "1889"]
    offsets, _ = doc_token_offsets(encoder.tokenizer, encoder.config, [text])[0]
    for u in props:  # every token position lies inside the unit's characters
        for pos in u.token_positions:
            s, e = offsets[pos]
            assert any(s < ce and e > cs for cs, ce in u.char_spans)
    assert not [u for u in got[1].units if u.kind == "proposition"]
    repo.close()


def test_upgrade_records_the_model_that_matches(states, encoded, encoder):
    _, _, bare = encoded
    repo = connect("memory://")
    repo.create_collection(CollectionSchema("docs", encoder.dim, schema_version=1))
    repo.upsert("docs", [dataclasses.replace(p, schema_version=1) for p in bare])
    upgrade(repo, "docs", state_dir=states, options={"model": "minilm-frozen-128"})
    assert repo.open_collection("docs").model == "minilm-frozen-128"
    add_units(repo, "docs", state_dir=states)  # the recorded model gives the tokenizer
    assert all(any(u.kind == "sentence" for u in p.units) for p in repo.fetch("docs", [b.id for b in bare]))


def test_add_units_refuses_another_models_encoding(states, encoded, encoder):
    _, _, bare = encoded
    repo = connect("memory://")
    repo.create_collection(CollectionSchema("docs", encoder.dim))
    p = bare[0]
    longer = np.vstack([p.tokens, p.tokens[:2]])  # as if encoded by a tokenizer that cut more pieces
    repo.upsert("docs", [dataclasses.replace(p, tokens=longer)])
    with pytest.raises(MigrationError, match="another model"):
        add_units(repo, "docs", model="minilm-frozen-128", state_dir=states)


# --------------------------------------------------------------------------- blue/green


class Searcher(threading.Thread):
    """Searches through an alias in a loop until stopped; records every failure."""

    def __init__(self, repo, alias: str, pin: bool = False) -> None:
        super().__init__(daemon=True)
        self.repo, self.alias, self.pin = repo, alias, pin
        self.errors: list[BaseException] = []
        self.answered: dict[str, int] = {}
        self.halt = threading.Event()
        self.rng = np.random.default_rng(0)

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                # pinned: resolve once per request, then ask that collection (its dim may differ)
                name = self.repo.resolve(self.alias) if self.pin else self.alias
                dim = self.repo.open_collection(name).dim
                q = unit_vectors(self.rng, 1, dim)[0]
                cands = self.repo.candidates(name, q, limit=3)
                got = self.repo.fetch(name, [c.id for c in cands], strict=True)
                assert len(got) == len(cands) == 3
                self.answered[str(got.passages[0].dim)] = self.answered.get(str(got.passages[0].dim), 0) + 1
            except BaseException as exc:  # noqa: BLE001 - every failure counts
                self.errors.append(exc)
            time.sleep(0.001)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def test_convert_storage_blue_green_searches_never_fail(repo, states):
    repo.create_collection(CollectionSchema("docs_a", DIM, indexed_fields={"lang": "keyword"}))
    written = make_passages(40)
    repo.upsert("docs_a", written)
    with pytest.raises(MigrationError, match="not an alias"):
        convert_storage(repo, "docs_a", dtype="float16", state_dir=states)
    repo.create_alias("docs", "docs_a")
    searcher = Searcher(repo, "docs")
    searcher.start()
    try:
        time.sleep(0.05)
        with pytest.raises(Crash):
            convert_storage(repo, "docs", dtype="float16", state_dir=states, page=8, on_page=crash_after(2))
        assert repo.resolve("docs") == "docs_a"  # nothing switched yet
        result = convert_storage(repo, "docs", dtype="float16", state_dir=states, page=8)
        time.sleep(0.05)
    finally:
        searcher.stop()
    assert not searcher.errors, searcher.errors[:3]
    assert sum(searcher.answered.values()) > 5
    assert result.resumed and result.target == "docs_a__g2" and result.previous == "docs_a"
    assert repo.resolve("docs") == "docs_a__g2"
    new = repo.open_collection("docs")
    assert (new.name, new.dtype, new.dim, dict(new.indexed_fields)) == ("docs_a__g2", "float16", DIM, {"lang": "keyword"})
    assert repo.count("docs") == repo.count("docs_a") == 40
    for p, q in zip(written, repo.fetch("docs", [p.id for p in written])):
        assert q.units == p.units and q.text == p.text and dict(q.metadata) == dict(p.metadata)
        assert np.allclose(q.tokens, p.tokens, atol=1e-3)
    back = rollback(repo, "docs", state_dir=states)
    assert back.target == "docs_a" and repo.resolve("docs") == "docs_a"
    assert same_content(digest(repo, "docs"), digest_passages(written))


class Projected:
    """Another model with another dim: the real encoder, its vectors projected to ``dim``."""

    def __init__(self, encoder, dim: int) -> None:
        self.encoder, self.dim = encoder, dim
        self.w = np.random.default_rng(7).normal(size=(encoder.dim, dim)).astype(np.float32)

    def encode_passages(self, passages, units=None, *, sentences=True, batch_size=32):
        out = []
        for e in self.encoder.encode_passages(passages, units, sentences=sentences, batch_size=batch_size):
            v = e.token_vectors @ self.w
            out.append(dataclasses.replace(e, token_vectors=(v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)))
        return out


def test_reindex_with_another_dim_blue_green(repo, states, encoded, encoder):
    _, reference, _ = encoded
    stored = [
        StoredPassage.create(e.passage.doc_id, 0, e.token_vectors, pooled=e.pooled, units=e.units, text=e.passage.text)
        for e in reference
    ]
    repo.create_collection(CollectionSchema("kb", encoder.dim))
    repo.upsert("kb", stored)
    repo.create_alias("kb_live", "kb")
    other = Projected(encoder, 48)
    searcher = Searcher(repo, "kb_live", pin=True)
    searcher.start()
    try:
        with pytest.raises(Crash):
            reindex(repo, "kb_live", encoder=other, into="kb_small", state_dir=states, page=2, on_page=crash_after(1))
        result = reindex(repo, "kb_live", encoder=other, into="kb_small", state_dir=states, page=2)
        time.sleep(0.05)
    finally:
        searcher.stop()
    assert not searcher.errors, searcher.errors[:3]
    assert result.resumed and repo.resolve("kb_live") == "kb_small"
    assert repo.open_collection("kb_live").dim == 48
    expected = other.encode_passages([e.passage for e in reference], [[dataclasses.replace(u, token_ranges=()) for u in e.units] for e in reference], sentences=False)
    for p, e in zip(repo.fetch("kb_live", [s.id for s in stored]), expected):
        assert p.units == e.units and p.text == e.passage.text
        np.testing.assert_allclose(p.tokens, e.token_vectors, atol=1e-5)


def test_abort_drops_the_half_built_collection(states):
    repo = connect("memory://")
    repo.create_collection(CollectionSchema("a", DIM))
    repo.upsert("a", make_passages(20))
    repo.create_alias("live", "a")
    with pytest.raises(Crash):
        convert_storage(repo, "live", dtype="int8", state_dir=states, page=5, on_page=crash_after(1))
    assert "a__g2" in repo.list_collections()
    state = abort_migration(repo, "live", state_dir=states)
    assert state is not None and state.operation == "convert"
    assert repo.list_collections() == ["a"] and repo.resolve("live") == "a"
    with pytest.raises(MigrationError, match="nothing to roll back"):
        rollback(repo, "live", state_dir=states)


def test_next_generation_names(tmp_path):
    repo = connect("memory://")
    for name in ("docs", "docs__g2", "x" * 64):
        repo.create_collection(CollectionSchema(name, DIM))
    assert next_generation(repo, "docs") == "docs__g3"
    assert next_generation(repo, "docs__g2") == "docs__g3"
    long = next_generation(repo, "x" * 64)
    assert len(long) == 64 and long.endswith("__g2")


def test_alias_errors_are_clear():
    repo = connect("memory://")
    repo.create_collection(CollectionSchema("a", DIM))
    with pytest.raises(AliasError, match="is a collection"):
        repo.switch_alias("a", "a")
    with pytest.raises(InvalidSchemaError):
        repo.create_alias("bad name", "a")
