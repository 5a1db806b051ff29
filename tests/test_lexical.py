"""The lexical first stage outside the engines: the tokenisation and BM25 vectors
against hand-computed numbers, the schema record, reciprocal rank fusion, and the
planner, indexer, migration and evaluation wiring of the lexical and hybrid stages
(on the memory engine; every engine's equality with the reference is in the
conformance suite, agrame_vdb/testing/lexical.py)."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest

from agrame_vdb import migrations
from agrame_vdb.errors import InvalidInputError, InvalidSchemaError, LexicalUnavailableError
from agrame_vdb.filters import Eq, Not
from agrame_vdb.fusion import rrf
from agrame_vdb.lexical import LexicalIndex, LexicalSpec, document_vector, idf, query_vector, term_id, words
from agrame_vdb.planner import Planner
from agrame_vdb.records import Candidate
from agrame_vdb.repositories import connect
from agrame_vdb.repository import CollectionSchema, StoredPassage
from agrame_vdb.units import Passage

# ----------------------------------------------------------------- tokenisation and vectors


def test_words_are_nfkc_case_folded_word_runs():
    assert words("Straße STRASSE ﬁne Ｆｕｌｌ-width x_1 ß") == ["strasse", "strasse", "fine", "full", "width", "x_1", "ss"]
    assert words("  ,.;!  — ") == []
    assert words("naïve café 北京 2024") == ["naïve", "café", "北京", "2024"]


def test_term_ids_are_crc32_below_the_reserved_top():
    assert term_id("gene") == zlib.crc32(b"gene")
    assert all(0 <= term_id(w) < 2**32 - 1 for w in ("a", "brca1", "北京", "x" * 300))


def test_document_vector_is_the_bm25_term_frequency_part():
    spec = LexicalSpec(k1=1.5, b=0.5, avgdl=4.0)
    v = document_vector("cat cat dog", spec).as_dict()
    norm = 1.5 * (1 - 0.5 + 0.5 * 3 / 4.0)
    assert v[term_id("cat")] == pytest.approx(2 * 2.5 / (2 + norm))
    assert v[term_id("dog")] == pytest.approx(1 * 2.5 / (1 + norm))
    assert list(document_vector("b a c", spec).indices) == sorted(term_id(w) for w in "abc")
    assert len(document_vector("!!", spec)) == 0
    assert query_vector("dog cat dog", spec).as_dict() == {term_id("dog"): 2.0, term_id("cat"): 1.0}


def test_idf_is_qdrants_formula():
    assert idf(1, 10) == pytest.approx(math.log((10 - 1 + 0.5) / 1.5 + 1))
    assert idf(10, 10) > 0  # a term in every passage still counts a little


def test_the_exact_index_scores_bm25_and_forgets_removed_passages():
    spec = LexicalSpec(avgdl=3.0)
    index = LexicalIndex()
    texts = {"a": "cat sat", "b": "cat cat dog", "c": "dog"}
    for key, text in texts.items():
        index.add(key, document_vector(text, spec))
    q = query_vector("cat", spec)
    w_a = document_vector("cat sat", spec).as_dict()[term_id("cat")]
    assert index.scores(q) == pytest.approx({
        "a": float(idf(2, 3)) * w_a,
        "b": float(idf(2, 3)) * document_vector("cat cat dog", spec).as_dict()[term_id("cat")],
    })
    index.remove("b")
    index.add("c", document_vector("", spec))  # a rewrite without words leaves the index
    assert len(index) == 1
    assert index.scores(q) == pytest.approx({"a": float(idf(1, 1)) * w_a})


@pytest.mark.parametrize("bad", [{"tokenizer": "bert"}, {"k1": -1}, {"b": 1.5}, {"avgdl": 0}, {"k1": True}, {"nope": 1}])
def test_a_bad_spec_is_refused(bad):
    with pytest.raises(InvalidSchemaError):
        LexicalSpec.from_json(bad)


def test_the_schema_record_carries_the_spec():
    s = CollectionSchema("docs", 4, lexical=LexicalSpec(avgdl=50))
    record = json.loads(json.dumps(s.to_json()))
    assert record["lexical"] == {"tokenizer": "words-v1", "k1": 1.2, "b": 0.75, "avgdl": 50.0}
    assert CollectionSchema.from_json(record) == s
    assert "lexical" not in CollectionSchema("docs", 4).to_json()
    assert CollectionSchema.from_json({**record, "lexical": None}).lexical is None
    with pytest.raises(InvalidSchemaError):
        CollectionSchema("docs", 4, lexical={"tokenizer": "other"})


# ----------------------------------------------------------------- fusion


def test_rrf_sums_reciprocal_ranks():
    a = [Candidate("x", 0.9), Candidate("y", 0.5, version=7)]
    b = [Candidate("y", 3.0, "lexical"), Candidate("z", 2.0, "lexical"), Candidate("x", 1.0, "lexical")]
    got = rrf([a, b], limit=3, k=1)
    scores = {c.id: c.score for c in got}
    assert scores == pytest.approx({"x": 1 / 2 + 1 / 4, "y": 1 / 3 + 1 / 2, "z": 1 / 3})
    assert [c.id for c in got] == ["y", "x", "z"]
    assert {c.stage for c in got} == {"hybrid"} and got[0].version == 7
    assert rrf([a, b], limit=1, k=1)[0].id == "y"


# ----------------------------------------------------------------- the planner over the memory engine

RARE = "The BRCA7 locus was mapped in 1998."
TEXTS = [
    "Cats sleep for most of the day and hunt at night.",
    "Dogs were domesticated from wolves thousands of years ago.",
    RARE,
    "Rivers carry sediment from mountains to the sea.",
    "The stock market fell sharply on Monday morning.",
]


@pytest.fixture(scope="module")
def encoded(plain_encoder):
    passages = [Passage.create(f"d{i}", 0, t, {"n": i}) for i, t in enumerate(TEXTS)]
    return [
        StoredPassage.create(e.passage.doc_id, 0, e.token_vectors, units=e.units, text=e.passage.text,
                             metadata=dict(e.passage.metadata))
        for e in plain_encoder.encode_passages(passages)
    ]


def _repo(encoded, lexical):
    repo = connect("memory://")
    repo.create_collection(CollectionSchema("c", encoded[0].dim, lexical=LexicalSpec() if lexical else None,
                                            indexed_fields={"n": "integer"}))
    repo.upsert("c", encoded)
    return repo


def test_auto_is_hybrid_with_lexical_vectors_and_pooled_without(encoded, plain_encoder):
    assert Planner(_repo(encoded, True), "c", plain_encoder, device="cpu").first_stage == "hybrid"
    assert Planner(_repo(encoded, False), "c", plain_encoder, device="cpu").first_stage == "pooled"


def test_lexical_stages_on_a_collection_without_lexical_vectors_name_the_migration(encoded, plain_encoder):
    repo = _repo(encoded, False)
    for stage in ("lexical", "hybrid"):
        with pytest.raises(LexicalUnavailableError, match="migrate convert"):
            Planner(repo, "c", plain_encoder, first_stage=stage, device="cpu")
    planner = Planner(repo, "c", plain_encoder, device="cpu")
    with pytest.raises(LexicalUnavailableError):
        planner.search("brca7", first_stage="lexical")


def test_lexical_first_stage_reaches_a_rare_term(encoded, plain_encoder):
    repo = _repo(encoded, True)
    lexical = Planner(repo, "c", plain_encoder, candidates=1, first_stage="lexical", device="cpu")
    hit = lexical.search("what about brca7", k=1).results[0]
    assert hit.doc_id == "d2"
    assert hit.first_stage_score == pytest.approx(repo.lexical_candidates("c", "what about brca7", limit=1)[0].score)
    hybrid = Planner(repo, "c", plain_encoder, candidates=3, first_stage="hybrid", device="cpu").search("brca7 locus", k=1)
    assert hybrid.results[0].doc_id == "d2" and hybrid.timings.first_stage == "hybrid"
    # a filter applies to the lexical branch too: no other passage has the word
    assert [r.doc_id for r in lexical.search("brca7", k=3, filter=Not(Eq("n", 2))).results] == []


def test_the_hybrid_branch_sizes_reach_the_repository(encoded, plain_encoder):
    repo = _repo(encoded, True)
    seen = []
    real = repo.hybrid_candidates

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    repo.hybrid_candidates = spy
    Planner(repo, "c", plain_encoder, candidates=3, dense_candidates=2, lexical_candidates=4, rrf_k=7,
            device="cpu").search("brca7", k=1)
    assert [(s["limit"], s["dense_limit"], s["lexical_limit"], s["rrf_k"]) for s in seen] == [(3, 2, 4, 7)]


def test_search_vectors_takes_the_query_text_for_the_lexical_stages(encoded, plain_encoder):
    from agrame_vdb.encoder import encode_queries

    repo = _repo(encoded, True)
    q, _ = encode_queries(plain_encoder, ["brca7"], both=False)
    auto = Planner(repo, "c", plain_encoder, candidates=2, device="cpu")
    assert auto.search_vectors(q[0]).timings.first_stage == "pooled"  # no text: auto falls back
    assert auto.search_vectors(q[0], query_text="brca7").timings.first_stage == "hybrid"
    with pytest.raises(InvalidInputError, match="query_text"):
        Planner(repo, "c", plain_encoder, first_stage="lexical", device="cpu").search_vectors(q[0])
    with pytest.raises(InvalidInputError):
        Planner(repo, "c", plain_encoder, rrf_k=0, device="cpu")


# ----------------------------------------------------------------- indexer, migration, evaluation


class _NoLexical:
    """The memory engine as an engine without sparse vectors would present itself."""

    def __init__(self, repo):
        self._repo = repo

    def capabilities(self):
        import dataclasses

        return dataclasses.replace(self._repo.capabilities(), lexical=False)

    def __getattr__(self, name):
        return getattr(self._repo, name)


def test_the_indexer_gives_new_collections_lexical_vectors_where_the_engine_has_them(plain_encoder):
    from agrame_vdb.documents import Document
    from agrame_vdb.indexer import IndexJob

    docs = [Document("a", "Cats sleep a lot."), Document("b", "The BRCA7 locus.")]
    repo = connect("memory://")
    IndexJob(docs, repo, "on", encoder=plain_encoder).run()
    assert repo.open_collection("on").lexical == LexicalSpec()
    [hit] = repo.lexical_candidates("on", "brca7", limit=5)
    assert repo.fetch("on", [hit.id]).passages[0].doc_id == "b"
    IndexJob(docs, repo, "off", encoder=plain_encoder, lexical=False).run()
    assert repo.open_collection("off").lexical is None
    IndexJob(docs, _NoLexical(repo), "plain", encoder=plain_encoder).run()
    assert repo.open_collection("plain").lexical is None
    with pytest.raises(InvalidInputError):
        IndexJob(docs, repo, "x", encoder=plain_encoder, lexical="yes")


def test_migrate_convert_adds_lexical_vectors_without_re_encoding(encoded, tmp_path):
    repo = _repo(encoded, False)
    repo.create_alias("live", "c")
    result = migrations.convert_storage(repo, "live", lexical=True, state_dir=tmp_path)
    assert result.counts["copied"] == len(encoded)
    target = repo.resolve("live")
    assert target != "c" and repo.open_collection("live").lexical == LexicalSpec()
    for p in encoded:  # the token vectors are copied as they were
        np.testing.assert_array_equal(repo.fetch("live", [p.id]).passages[0].tokens, p.tokens)
    reference = LexicalIndex()
    for p in encoded:
        reference.add(p.id, document_vector(p.text, LexicalSpec()))
    got = repo.lexical_candidates("live", "brca7 locus dogs", limit=10)
    assert {c.id: c.score for c in got} == pytest.approx(reference.scores(query_vector("brca7 locus dogs", LexicalSpec())))
    with pytest.raises(InvalidInputError):
        migrations.convert_storage(repo, "live", lexical="yes", state_dir=tmp_path)


def test_cli_index_search_and_migrate_convert_lexical(tmp_path):
    """The whole path on Qdrant Edge through the CLI: a collection indexed without lexical
    vectors refuses the lexical stage naming the migration; migrate convert --lexical adds
    them; search --first-stage lexical then finds a passage by a rare word."""
    from typer.testing import CliRunner

    from agrame_vdb.cli import app

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    store = f"qdrant-edge://{tmp_path}/edge"
    run = CliRunner().invoke
    made = run(app, ["index", str(docs), "-c", "docs", "--store", store, "--no-lexical", "--device", "cpu", "--no-progress"])
    assert made.exit_code == 0, made.output
    refused = run(app, ["search", "brca7", "-c", "docs", "--store", store, "--first-stage", "lexical", "--device", "cpu"])
    assert refused.exit_code == 2 and "migrate convert" in refused.output and "--lexical" in refused.output
    auto = run(app, ["search", "brca7", "-c", "docs", "--store", store, "--json", "--device", "cpu", "--explain"])
    assert auto.exit_code == 0, auto.output  # auto: pooled on a collection without lexical vectors
    assert run(app, ["migrate", "alias", "live", "-c", "docs", "--store", store]).exit_code == 0
    conv = run(app, ["migrate", "convert", "-c", "live", "--lexical", "--store", store, "--json"])
    assert conv.exit_code == 0, conv.output
    assert json.loads(conv.output)["counts"]["copied"] == len(TEXTS)
    found = run(app, ["search", "brca7", "-c", "live", "--store", store, "--first-stage", "lexical", "-k", "5",
                      "--candidates", "5", "--json", "--device", "cpu"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.output)
    assert [h["doc_id"] for h in hits] == ["d2"]  # the only passage with the word
    hybrid = run(app, ["search", "brca7 locus", "-c", "live", "--store", store, "--json", "--device", "cpu"])
    assert hybrid.exit_code == 0 and json.loads(hybrid.output)[0]["doc_id"] == "d2"
    narrow = run(app, ["search", "brca7", "-c", "live", "--store", store, "--json", "--device", "cpu", "-k", "1",
                       "--candidates", "1", "--dense-candidates", "1", "--lexical-candidates", "1"])
    assert narrow.exit_code == 0, narrow.output
    assert len(json.loads(narrow.output)) == 1
    bad = run(app, ["search", "x", "-c", "live", "--store", store, "--dense-candidates", "0", "--device", "cpu"])
    assert bad.exit_code == 2 and "dense_candidates" in bad.output
