"""Unit-aware token pooling (agrame_vdb.pooling) and its index-time option, against
independent references: cells recomputed from the units' token positions as sets,
Ward clusters from scipy, means and MaxSim in numpy, spans from the source text."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from agrame_vdb import CollectionSchema, IndexJob, Unit, connect
from agrame_vdb.cli import app
from agrame_vdb.encoder import encode_queries
from agrame_vdb.errors import InvalidInputError, InvalidSchemaError, MigrationError, SchemaMismatchError
from agrame_vdb.evaluation import EvalDataset, EvalQuery, evaluate
from agrame_vdb.lexical import LexicalSpec
from agrame_vdb.maxsim import unit_scores
from agrame_vdb.migrate import add_units, convert_storage, reindex
from agrame_vdb.planner import Planner
from agrame_vdb.units import Passage, units_from_char_spans
import agrame_vdb.pooling as pooling
from agrame_vdb.pooling import pool_encoded, pool_unit_tokens, token_groups, ward_clusters

from .indexing_helpers import FakeEncoder, write_jsonl

BAD_FACTORS = [0, -1, 1.5, 2.0, "2", True, None]


# --------------------------------------------------------------------------- references


def ref_signature(n, units, protected=()):
    """Each position's cell key: the set of units (by position in ``units``) holding it,
    or ``("protected", t)``: from ``Unit.token_positions``, not from ranges."""
    keys = [frozenset() for _ in range(n)]
    for j, u in enumerate(units):
        for t in u.token_positions:
            keys[t] = keys[t] | {j}
    for t in protected:
        keys[t] = ("protected", t)
    return keys


def ref_rows(vectors, group):
    """A pooled row by hand: the token itself, or the normalised mean of the group."""
    if len(group) == 1:
        return vectors[group[0]].astype(np.float64)
    mean = vectors[list(group)].astype(np.float64).mean(axis=0)
    return mean / np.linalg.norm(mean)


def ref_maxsim(q, rows):
    return float((q.astype(np.float64) @ rows.astype(np.float64).T).max(axis=1).sum())


def random_passage(rng, n=None):
    """Unit-norm token vectors, sentences tiling the text rows (rows 0 and n-1 special),
    and propositions: random non-contiguous subsets, some across sentences."""
    n = int(rng.integers(8, 70)) if n is None else n
    dim = int(rng.integers(4, 24))
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cuts = sorted(set(rng.integers(2, n - 1, size=int(rng.integers(1, 4))).tolist()) | {1, n - 1})
    units = [Unit("sentence", i, ((i, i + 1),), ((a, b),)) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    for i in range(int(rng.integers(0, 4))):
        picked = sorted(set(rng.integers(1, n - 1, size=int(rng.integers(1, 12))).tolist()))
        ranges = [(p, p + 1) for p in picked]
        units.append(Unit("proposition", i, ((i, i + 1),), tuple(ranges)))
    return x, tuple(units), (0, n - 1)


# --------------------------------------------------------------------------- the pure function


def test_doctests():
    result = doctest.testmod(pooling, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_ward_clusters_are_scipys_ward_cut_at_k():
    from scipy.cluster.hierarchy import fcluster, linkage

    rng = np.random.default_rng(7)
    for _ in range(200):
        n, dim = int(rng.integers(2, 50)), int(rng.integers(2, 30))
        x = rng.standard_normal((n, dim))
        k = int(rng.integers(1, n + 1))
        labels = fcluster(linkage(x, "ward"), k, "maxclust")
        ref = sorted(tuple(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels))
        assert sorted(tuple(c.tolist()) for c in ward_clusters(x, k)) == ref


@pytest.mark.parametrize("factor", [2, 3, 5, 100])
def test_pooled_rows_stay_in_their_cells_and_units_point_at_theirs(factor):
    rng = np.random.default_rng(factor)
    for _ in range(40):
        x, units, protected = random_passage(rng)
        n = len(x)
        rows, pooled_units = pool_unit_tokens(x, units, factor, protected=protected)
        groups = token_groups(x, units, factor, protected=protected)
        keys = ref_signature(n, units, protected)
        # the groups partition the positions, and no group mixes two cells
        assert sorted(t for g in groups for t in g.tolist()) == list(range(n))
        assert all(len({keys[t] for t in g.tolist()}) == 1 for g in groups)
        # ceil(n_cell / factor) rows a cell; protected rows alone
        cells = {}
        for t, key in enumerate(keys):
            cells.setdefault(key, []).append(t)
        per_cell = {}
        for g in groups:
            per_cell[keys[g[0]]] = per_cell.get(keys[g[0]], 0) + 1
        assert per_cell == {key: math.ceil(len(ts) / factor) for key, ts in cells.items()}
        assert len(rows) == sum(math.ceil(len(ts) / factor) for ts in cells.values())
        # a cell's rows are contiguous
        for key in cells:
            at = [r for r, g in enumerate(groups) if keys[g[0]] == key]
            assert at == list(range(at[0], at[0] + len(at)))
        # each row is its group's normalised mean (a group of one: the token unchanged)
        for r, g in enumerate(groups):
            np.testing.assert_allclose(rows[r], ref_rows(x, g.tolist()), atol=1e-6, rtol=0)
            if len(g) == 1:
                assert rows[r].tobytes() == x[g[0]].tobytes()
        for p in protected:
            assert any(g.tolist() == [p] and rows[r].tobytes() == x[p].tobytes() for r, g in enumerate(groups))
        # a unit's rows are exactly the groups of its own cells: they cover its tokens, none other
        for u, pu in zip(units, pooled_units):
            assert (pu.kind, pu.index, pu.char_spans) == (u.kind, u.index, u.char_spans)
            mine = set(u.token_positions)
            expected = [r for r, g in enumerate(groups) if set(g.tolist()) <= mine]
            assert pu.token_positions == expected
            assert sorted(t for r in expected for t in groups[r].tolist()) == sorted(mine)


def test_unit_scores_over_pooled_rows_are_maxsim_over_the_pooled_cells():
    """The library's kernel on the pooled rows and units = numpy MaxSim over the rows
    pooled from each unit's own cells, recomputed here from the cell keys."""
    rng = np.random.default_rng(11)
    for _ in range(25):
        x, units, protected = random_passage(rng)
        keys = ref_signature(len(x), units, protected)
        rows, pooled_units = pool_unit_tokens(x, units, 2, protected=protected)
        groups = token_groups(x, units, 2, protected=protected)
        q = rng.standard_normal((5, x.shape[1])).astype(np.float32)
        got = unit_scores(q, [rows], [list(pooled_units)])[0]
        for j, u in enumerate(units):
            own = [g.tolist() for g in groups if j in keys[g[0]] and not isinstance(keys[g[0]], tuple)]
            ref = ref_maxsim(q, np.stack([ref_rows(x, g) for g in own]))
            assert got[j] == pytest.approx(ref, abs=1e-4)


def test_factor_one_is_the_identity_bytes_for_bytes():
    rng = np.random.default_rng(3)
    x, units, protected = random_passage(rng)
    rows, out = pool_unit_tokens(x, units, 1, protected=protected)
    assert rows.tobytes() == x.tobytes() and rows.dtype == x.dtype and out == units
    # a factor that merges nothing (every cell one token) keeps the rows and their order too
    singles = tuple(Unit("sentence", i, ((i, i + 1),), ((i, i + 1),)) for i in range(len(x)))
    rows, out = pool_unit_tokens(x, singles, 4)
    assert rows.tobytes() == x.tobytes() and out == singles


def test_pooling_is_deterministic():
    rng = np.random.default_rng(5)
    x, units, protected = random_passage(rng, n=64)
    x = np.concatenate([x, x[:10]])  # exact ties: repeated tokens
    units = units + (Unit("custom", 0, ((0, 1),), ((64, 74),)),)
    a = pool_unit_tokens(x, units, 3, protected=protected)
    b = pool_unit_tokens(x.copy(), list(units), 3, protected=list(protected))
    assert a[0].tobytes() == b[0].tobytes() and a[1] == b[1]


@pytest.mark.parametrize("factor", BAD_FACTORS)
def test_a_bad_factor_is_refused(factor):
    x, units, _ = random_passage(np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="token pooling factor"):
        pool_unit_tokens(x, units, factor)


def test_bad_vectors_and_units_are_refused():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(InvalidInputError, match="past the passage"):
        pool_unit_tokens(x, (Unit("sentence", 0, ((0, 1),), ((0, 4),)),), 2)
    with pytest.raises(InvalidInputError, match="no token ranges"):
        pool_unit_tokens(x, (Unit("sentence", 0, ((0, 1),)),), 2)
    with pytest.raises(InvalidInputError, match="inside a unit"):
        pool_unit_tokens(x, (Unit("sentence", 0, ((0, 1),), ((0, 2),)),), 2, protected=[1])
    with pytest.raises(InvalidInputError, match="floating-point"):
        pool_unit_tokens(np.zeros((0, 3), np.float32), (), 2)


# --------------------------------------------------------------------------- the schema record


def test_the_schema_record_is_unchanged_without_pooling():
    before = {"name": "c", "dim": 4, "dtype": "float32", "on_disk": False, "schema_version": 2,
              "indexed_fields": {}, "model": None}  # the record as written before token pooling
    for schema in (CollectionSchema("c", 4), CollectionSchema("c", 4, token_pooling=1), CollectionSchema("c", 4, token_pooling=None)):
        assert json.dumps(schema.to_json()) == json.dumps(before)
        assert schema.token_pooling is None
    pooled = CollectionSchema("c", 4, token_pooling=3)
    assert pooled.to_json() == {**before, "token_pooling": 3}
    assert CollectionSchema.from_json(pooled.to_json()) == pooled
    assert CollectionSchema.from_json(before).token_pooling is None
    with pytest.raises(SchemaMismatchError, match="token_pooling"):
        CollectionSchema("c", 4).check_compatible(pooled)
    for bad in (0, -2, 1.5, "2", True):
        with pytest.raises(InvalidSchemaError, match="token_pooling"):
            CollectionSchema("c", 4, token_pooling=bad)


# --------------------------------------------------------------------------- indexing


class _Spy:
    """A repository that records every call reaching it."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        self.calls.append(name)
        return getattr(self.inner, name)


@pytest.mark.parametrize("factor", BAD_FACTORS)
def test_index_job_refuses_a_bad_factor_before_the_engine(tmp_path, factor):
    spy = _Spy(connect("memory://"))
    with pytest.raises(InvalidInputError, match="token pooling factor"):
        IndexJob([{"id": "a", "text": "One sentence."}], spy, "docs", encoder=FakeEncoder(), token_pooling=factor)
    assert spy.calls == []


def test_cli_index_refuses_a_bad_factor_and_writes_nothing(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "text": "One sentence. Two."}])
    store = f"qdrant-edge://{tmp_path / 'edge'}"
    result = CliRunner().invoke(app, ["index", str(src), "-c", "docs", "--store", store, "--token-pooling", "0"])
    assert result.exit_code == 2 and "token pooling factor" in result.output
    repo = connect(store)
    try:
        assert repo.list_collections() == []
    finally:
        repo.close()


def test_cli_index_with_token_pooling_records_it(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "text": "Bees make honey. Honey keeps for years."}])
    store = f"qdrant-edge://{tmp_path / 'edge'}"
    result = CliRunner().invoke(app, ["index", str(src), "-c", "docs", "--store", store, "--token-pooling", "2",
                                      "--device", "cpu", "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["token_pooling"] == 2 and 0 < summary["rows"] < summary["tokens"]
    repo = connect(store)
    try:
        assert repo.open_collection("docs").token_pooling == 2
        assert repo.fetch_tokens("docs", list(repo.iter_ids("docs"))).tokens.shape[0] == summary["rows"]
    finally:
        repo.close()


def test_index_job_pools_rows_counts_them_and_keeps_the_factor(tmp_path):
    docs = [{"id": f"d{i}", "text": "The tower is tall and old. It was built in 1889 by many workers. Paris likes it."}
            for i in range(3)]
    fake = FakeEncoder()
    repo = connect("memory://")
    checkpoint = tmp_path / "job.json"
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    summary = IndexJob(src, repo, "docs", encoder=fake, token_pooling=2, checkpoint=checkpoint).run()
    assert repo.open_collection("docs").token_pooling == 2
    assert json.loads(checkpoint.read_text())["job"]["token_pooling"] == 2
    stored = repo.fetch("docs", list(repo.iter_ids("docs")), strict=True)
    assert summary.rows == sum(p.n_tokens for p in stored) < summary.tokens
    assert "rows after token pooling by 2" in summary.format()
    for p in stored:
        [e] = fake.encode_passages([Passage(p.id, p.doc_id, p.text, p.index)])
        rows, units = pool_encoded(e, 2)
        stored_rows = rows.astype(np.float16).astype(np.float32)  # the default storage, float16
        assert p.tokens.tobytes() == stored_rows.tobytes() and p.units == units
        np.testing.assert_allclose(p.pooled, e.pooled, atol=1e-6)  # the first stage: the original tokens' mean
    # rows pooled otherwise cannot join the collection
    with pytest.raises(SchemaMismatchError, match="token_pooling"):
        IndexJob(docs, repo, "docs", encoder=fake).run()
    # without pooling the job's identity (its checkpoint) is as before
    IndexJob(src, repo, "plain", encoder=fake, checkpoint=tmp_path / "plain.json").run()
    assert "token_pooling" not in json.loads((tmp_path / "plain.json").read_text())["job"]


def test_edge_schema_file_without_pooling_is_byte_identical(tmp_path):
    root = tmp_path / "edge"
    repo = connect(f"qdrant-edge://{root}")
    try:
        IndexJob([{"id": "a", "text": "One sentence. Two."}], repo, "docs", encoder=FakeEncoder()).run()
        IndexJob([{"id": "a", "text": "One sentence. Two."}], repo, "pooled", encoder=FakeEncoder(), token_pooling=2).run()
    finally:
        repo.close()
    record = {"name": "docs", "dim": 16, "dtype": "float16", "on_disk": False, "schema_version": 2, "indexed_fields": {},
              "model": None, "lexical": LexicalSpec().to_json()}
    assert (root / "docs" / "collection.json").read_text() == json.dumps(record, indent=1)
    pooled = json.loads((root / "pooled" / "collection.json").read_text())
    assert pooled == {**record, "name": "pooled", "token_pooling": 2}


DOCS = [
    ("Bees make honey in summer. Honey keeps for years without spoiling. Ancient jars of honey were found in tombs.",
     [[(0, 4), (33, 48)], [(75, 88)]]),  # "Bees keeps for years" across two sentences; "jars of honey"
    ("Glaciers move slowly down valleys. They carve deep fjords near the sea. Ice melts faster in warm years.",
     [[(0, 8), (40, 57)], [(72, 81), (92, 102)]]),  # across sentences; "Ice melts ... warm years" within one
]


@pytest.mark.parametrize("engine", ["memory", "qdrant-edge"])
def test_index_and_search_pooled_collection_returns_right_spans_and_scores(tmp_path, plain_encoder, engine):
    """End to end: pooled rows written through the engine, sentences and propositions
    ranked by the planner with the spans of the source text, and scores that are numpy
    MaxSim over the rows pooled from each unit's own cells."""
    records = [{"id": f"doc{i}", "text": text, "units": [{"kind": "proposition", "spans": spans} for spans in props]}
               for i, (text, props) in enumerate(DOCS)]
    repo = connect("memory://" if engine == "memory" else f"qdrant-edge://{tmp_path / 'edge'}")
    try:
        IndexJob(records, repo, "docs", encoder=plain_encoder, token_pooling=2).run()
        assert repo.open_collection("docs").token_pooling == 2
        planner = Planner(repo, "docs", plain_encoder, device="cpu")
        for query in ("how long does honey keep?", "what carves fjords?", "glaciers melting in warm years"):
            _, sq = encode_queries(plain_encoder, [query], both=True)
            for granularity in ("sentence", "proposition"):
                results = planner.search(query, granularity, k=3, alpha=0.0).results
                assert results
                for r in results:
                    text = DOCS[int(r.doc_id[3:])][0]
                    assert r.text == " ".join(text[s:e] for s, e in r.char_spans)
                    if granularity == "proposition":
                        assert [list(s) for s in r.char_spans] == [list(s) for s in DOCS[int(r.doc_id[3:])][1][r.unit_index]]
                    # the reference: this passage encoded here, its unit's own cells pooled by hand
                    [e] = plain_encoder.encode_passages([Passage.create(r.doc_id, 0, text)],
                                                        [units_from_char_spans(text, DOCS[int(r.doc_id[3:])][1], "proposition")])
                    unit_at = [(u.kind, u.index) for u in e.units].index((granularity, r.unit_index))
                    protected = [i for i, off in enumerate(e.token_offsets) if off is None]
                    keys = ref_signature(e.n_tokens, e.units, protected)
                    own = [g.tolist() for g in token_groups(e.token_vectors, e.units, 2, protected=protected)
                           if unit_at in keys[g[0]] and not isinstance(keys[g[0]], tuple)]
                    assert e.units[unit_at].char_spans == r.char_spans
                    ref = ref_maxsim(sq[0], np.stack([ref_rows(e.token_vectors, g) for g in own]))
                    assert r.unit_score == pytest.approx(ref, abs=2e-3)
    finally:
        repo.close()


# --------------------------------------------------------------------------- migrations and evaluation


def test_migrations_keep_the_factor_and_add_units_refuses(tmp_path):
    fake = FakeEncoder()
    repo = connect("memory://")
    docs = [{"id": f"d{i}", "text": "Rivers flow to the sea. Rain fills them again in spring."} for i in range(3)]
    IndexJob(docs, repo, "docs", encoder=fake, token_pooling=3).run()
    repo.create_alias("live", "docs")
    before = {p.id: p for p in repo.fetch("docs", list(repo.iter_ids("docs")), strict=True)}
    converted = convert_storage(repo, "live", dtype="float16", state_dir=tmp_path / "s1")
    assert repo.open_collection(converted.target).token_pooling == 3
    for p in repo.fetch(converted.target, list(before), strict=True):
        assert p.tokens.shape == before[p.id].tokens.shape and p.units == before[p.id].units
    re = reindex(repo, "live", encoder=fake, state_dir=tmp_path / "s2")
    assert repo.open_collection(re.target).token_pooling == 3
    for p in repo.fetch(re.target, list(before), strict=True):
        [e] = fake.encode_passages([Passage(p.id, p.doc_id, p.text, p.index)])
        rows, units = pool_encoded(e, 3)
        np.testing.assert_allclose(p.tokens, rows, atol=1e-3, rtol=0)  # the alias is at the float16 copy now
        assert p.units == units
    with pytest.raises(MigrationError, match="pooled by 3"):
        add_units(repo, "docs", encoder=fake, kind="custom", units=lambda p: [(0, 5)], state_dir=tmp_path / "s3")


def test_evaluate_with_token_pooling_reports_rows_and_bytes(plain_encoder):
    text = "The Eiffel Tower is in Paris. It was finished in 1889. It is made of wrought iron."
    spans = [(0, 29), (30, 54), (55, 82)]
    p = Passage.create("doc0", 0, text)
    ds = EvalDataset("tiny", (p,), (tuple(units_from_char_spans(text, spans, kind="sentence")),),
                     (EvalQuery("q1", "when was the tower finished?", {p.id: 1}, {(p.id, 1): 1}),))
    repo = connect("memory://")
    kw = {"configurations": ["passage-span-q", "sentence-encoding"], "candidates": 1, "recall_at": ()}
    plain = evaluate(ds, plain_encoder, repo, **kw)
    pooled = evaluate(ds, plain_encoder, repo, token_pooling=2, **kw)
    for a, b in zip(plain, pooled):
        assert a.token_pooling == 1 and b.token_pooling == 2
        assert a.rows == a.tokens == b.tokens and b.rows < b.tokens
        # the default storage, float16: 2 bytes a value
        assert a.bytes_per_token == 384 * 2 and b.bytes_per_token == pytest.approx(384 * 2 * b.rows / b.tokens)
        assert b.to_json()["rows"] == b.rows and b.to_json()["token_pooling"] == 2
    for factor in (0, 1.5):
        with pytest.raises(InvalidInputError, match="token pooling factor"):
            evaluate(ds, plain_encoder, repo, token_pooling=factor, **kw)
    assert repo.list_collections() == []
