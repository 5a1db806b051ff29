"""Post-hoc citations on a hand-made case, with the real default encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from agrame_vdb import CollectionSchema, StoredPassage, connect
from agrame_vdb.cite import cite, cite_ids
from agrame_vdb.encoder import encode_queries
from agrame_vdb.errors import InvalidInputError, MissingPassagesError
from agrame_vdb.units import Passage, units_from_char_spans

PASSAGES = [
    "The Eiffel Tower was completed in 1889. It is 330 metres tall.",
    "Bananas are a yellow fruit. They grow in tropical regions.",
    "Mount Everest is the highest mountain on Earth. It lies in the Himalayas.",
]
ANSWER = "The Eiffel Tower is 330 metres tall. Everest is in the Himalayas. Bananas grow in the tropics. I hope this helps!"


@pytest.fixture(scope="module")
def encoder(untrained_encoder):
    """This module's hand-made cases (which words match, which sentence is chitchat) were
    calibrated on the untrained model; pin it so they test the mechanism, not the weights."""
    return untrained_encoder


@pytest.fixture(scope="module")
def cited(encoder):
    return cite(ANSWER, PASSAGES, encoder)


@pytest.fixture(scope="module")
def encoded(encoder):
    """The passages encoded once, with the ids cite() gives texts."""
    return encoder.encode_passages([Passage.create(f"passage-{i + 1}", 0, t) for i, t in enumerate(PASSAGES)])


def test_each_sentence_cites_its_source_and_chitchat_is_left_alone(cited):
    assert [s.text for s in cited.sentences] == [
        "The Eiffel Tower is 330 metres tall.", "Everest is in the Himalayas.", "Bananas grow in the tropics.", "I hope this helps!",
    ]
    assert [None if s.citation is None else s.citation.marker for s in cited.sentences] == [1, 3, 2, None]
    assert cited.text == (
        "The Eiffel Tower is 330 metres tall. [1] Everest is in the Himalayas. [3] "
        "Bananas grow in the tropics. [2] I hope this helps!"
    )
    everest = cited.sentences[1].citation
    assert everest.unit_text == "It lies in the Himalayas." and everest.unit_kind == "sentence" and everest.unit_index == 1
    bananas = cited.sentences[2].citation
    assert bananas.unit_text == "They grow in tropical regions."


def test_citation_fields_are_consistent(cited):
    for s in cited.sentences:
        assert cited.answer[s.char_span[0]:s.char_span[1]] == s.text
        assert len(s.passage_scores) == len(PASSAGES)
        c = s.citation
        if c is None:
            continue
        src = cited.sources[c.marker - 1]
        assert (src.passage_id, src.doc_id) == (c.passage_id, c.doc_id)
        assert " ".join(src.text[a:b] for a, b in c.char_spans) == c.unit_text
        others = [v for i, v in enumerate(s.passage_scores) if i != c.marker - 1]
        assert c.score == s.passage_scores[c.marker - 1] == max(s.passage_scores)
        assert c.margin == pytest.approx(c.score - max(others)) and c.margin >= cited.margin


def test_scores_are_the_best_unit_maxsim_per_query_token(encoder, cited, encoded):
    """Independent reference: a Python loop over each passage's sentences."""
    _, sq = encode_queries(encoder, [s.text for s in cited.sentences], both=True)
    for b, s in enumerate(cited.sentences):
        for p, e in enumerate(encoded):
            sim = sq[b].astype(np.float64) @ e.token_vectors.T.astype(np.float64)
            best = max(sim[:, u.token_positions].max(axis=1).sum() for u in e.units) / sq.shape[1]
            assert s.passage_scores[p] == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize("which", ["encoder", "plain_encoder"])
def test_coverage_adds_each_units_coverage_by_the_sentence(request, which, monkeypatch):
    """Independent reference: (S(q',u) + alpha * S(q,p) + beta * W * C(u,q')) / Lq per unit,
    C the mean over the unit's tokens of their best real query token (rows not all zero:
    the plain model zeroes its padding), W the real tokens of that sentence."""
    import dataclasses

    enc = request.getfixturevalue(which)
    encoded = enc.encode_passages([Passage.create(f"passage-{i + 1}", 0, t) for i, t in enumerate(PASSAGES)])
    got = cite(ANSWER, encoded, enc, alpha=0.3, coverage=0.5, margin=0.0)
    q, sq = encode_queries(enc, [s.text for s in got.sentences], both=True)
    for b, s in enumerate(got.sentences):
        real = np.any(sq[b] != 0, axis=1)
        for p, e in enumerate(encoded):
            d = e.token_vectors.T.astype(np.float64)
            sim = sq[b].astype(np.float64) @ d
            s_p = (q[b].astype(np.float64) @ d).max(axis=1).sum()
            best = max(
                sim[:, u.token_positions].max(axis=1).sum() + 0.3 * s_p
                + 0.5 * real.sum() * sim[real][:, u.token_positions].max(axis=0).mean()
                for u in e.units
            ) / sq.shape[1]
            assert s.passage_scores[p] == pytest.approx(best, abs=1e-5)
    if which == "plain_encoder":
        assert not np.any(sq[0] != 0, axis=1).all()  # padding rows were there to leave out
    # the encoder's setting is what cite uses by default; coverage=0 turns it off
    without = cite(ANSWER, encoded, enc, alpha=0.3, margin=0.0)
    monkeypatch.setattr(enc, "config", dataclasses.replace(enc.config, unit_coverage={"sentence": 0.5}))
    by_setting = cite(ANSWER, encoded, enc, alpha=0.3, margin=0.0)
    assert [x.passage_scores for x in by_setting.sentences] == [x.passage_scores for x in got.sentences]
    off = cite(ANSWER, encoded, enc, alpha=0.3, margin=0.0, coverage=0)
    assert [x.passage_scores for x in off.sentences] == [x.passage_scores for x in without.sentences]
    passages = cite(ANSWER, encoded, enc, granularity="passage")  # whole passages: no units, no coverage
    monkeypatch.undo()
    assert [x.passage_scores for x in passages.sentences] == [
        x.passage_scores for x in cite(ANSWER, encoded, enc, granularity="passage").sentences
    ]


def test_json_and_text_output(cited):
    data = json.loads(json.dumps(cited.to_json()))
    assert data["text"] == cited.text and len(data["sentences"]) == 4 and len(data["sources"]) == 3
    assert data["sentences"][0]["citation"]["unit_text"].startswith("The Eiffel Tower")
    assert data["sentences"][3]["citation"] is None
    text = cited.to_text()
    assert text.startswith(cited.text) and "[3] 'Everest is in the Himalayas.' <- passage-3 sentence 1" in text


def test_records_serialise_as_they_always_have():
    """The JSON of every record, key order included, as the hand-written to_json wrote it
    (tests/data/cited_answer.json was made by that code)."""
    import math
    from pathlib import Path

    from agrame_vdb.cite import Citation, CitedAnswer, CitedSentence, Source

    c1 = Citation(marker=1, passage_id="a#0", doc_id="a", unit_kind="sentence", unit_index=0, unit_text="The tower.",
                  char_spans=((0, 10),), score=0.625, margin=0.125)
    c2 = Citation(marker=2, passage_id="b#0", doc_id="b", unit_kind="passage", unit_index=None, unit_text="Bananas.",
                  char_spans=((0, 8), (9, 12)), score=0.5, margin=math.inf)
    sentences = (
        CitedSentence(0, "Tower.", (0, 6), c1, (0.625, 0.5)),
        CitedSentence(1, "Bananas.", (7, 15), c2, (None, 0.5)),
        CitedSentence(2, "Hi.", (16, 19), None, (0.1, 0.0)),
    )
    sources = (Source(1, "a#0", "a", "The tower."), Source(2, "b#0", "b", "Bananas. Yes"))
    answer = CitedAnswer("Tower. Bananas. Hi.", "Tower. [1] Bananas. [2] Hi.", sentences, sources, "sentence", 0.1)
    golden = (Path(__file__).parent / "data" / "cited_answer.json").read_text()
    assert json.dumps(answer.to_json(), indent=1) + "\n" == golden
    assert c2.margin == math.inf  # only its JSON says null


def test_margin_and_min_score_settings(encoder, encoded, cited):
    assert cite(ANSWER, encoded, encoder).text == cited.text  # encoded passages give the same
    strict = cite(ANSWER, encoded, encoder, margin=5.0)
    assert strict.citations == [] and strict.text == ANSWER
    loose = cite(ANSWER, encoded, encoder, margin=0.0)
    assert len(loose.citations) == 4
    floor = cite(ANSWER, encoded, encoder, margin=0.0, min_score=0.99)
    assert floor.citations == []
    single = cite("Bananas grow in the tropics.", [encoded[1]], encoder)
    assert single.sentences[0].citation.marker == 1 and single.sentences[0].citation.margin == float("inf")
    assert json.loads(json.dumps(single.to_json()))["sentences"][0]["citation"]["margin"] is None


def test_passage_granularity_and_custom_markers(encoder, encoded):
    out = cite(ANSWER, encoded, encoder, granularity="passage", marker="<{n}>")
    assert "Everest is in the Himalayas. <3>" in out.text
    c = out.sentences[1].citation
    assert c.unit_index is None and c.unit_text == PASSAGES[2] and c.char_spans == ((0, len(PASSAGES[2])),)


def test_propositions_from_stored_passages(encoder):
    text = PASSAGES[0]
    props = units_from_char_spans(text, [[(0, 16), (17, 38)], [(40, 62)]], kind="proposition")
    [e] = encoder.encode_passages([Passage.create("eiffel", 0, text)], [props])
    stored = StoredPassage.create("eiffel", 0, e.token_vectors, units=e.units, text=text)
    [other] = encoder.encode_passages([Passage.create("bananas", 0, PASSAGES[1])])
    out = cite("It is 330 metres tall.", [stored, other], encoder, granularity="proposition", margin=0.0)
    c = out.sentences[0].citation
    assert c.doc_id == "eiffel" and c.unit_kind == "proposition" and c.unit_text == "It is 330 metres tall."
    with pytest.raises(InvalidInputError, match="proposition"):
        cite("x y z.", [other], encoder, granularity="proposition")


def test_passages_by_id_from_a_repository(encoder, cited, encoded):
    repo = connect("memory://")
    repo.create_collection(CollectionSchema("cite", dim=encoder.dim))
    stored = [StoredPassage.create(e.passage.doc_id, 0, e.token_vectors, units=e.units, text=e.passage.text) for e in encoded]
    repo.upsert("cite", stored)
    out = cite_ids(ANSWER, repo, "cite", [p.id for p in stored], encoder)
    assert out.text == cited.text
    got = np.array([s.passage_scores for s in out.sentences], dtype=np.float64)
    np.testing.assert_allclose(got, [s.passage_scores for s in cited.sentences], atol=1e-5)
    with pytest.raises(MissingPassagesError):
        cite_ids(ANSWER, repo, "cite", [stored[0].id, "00000000-0000-0000-0000-000000000000"], encoder)


def test_bad_input(encoder):
    with pytest.raises(InvalidInputError):
        cite("", PASSAGES, encoder)
    with pytest.raises(InvalidInputError):
        cite(ANSWER, [], encoder)
    with pytest.raises(InvalidInputError):
        cite(ANSWER, PASSAGES[0], encoder)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        cite(ANSWER, PASSAGES, encoder, margin=-1)
    with pytest.raises(InvalidInputError):
        cite(ANSWER, PASSAGES, encoder, marker="[n]")
    with pytest.raises(InvalidInputError):
        cite(ANSWER, [3], encoder)  # type: ignore[list-item]
    for bad in (-0.5, float("nan"), float("inf"), "0.5", True):
        with pytest.raises(InvalidInputError, match="coverage"):
            cite(ANSWER, PASSAGES, encoder, coverage=bad)  # type: ignore[arg-type]


runner = CliRunner()


def test_cli_cite(cited, encoder):
    from agrame_vdb.cli import app

    args = ["cite", ANSWER, *[x for p in PASSAGES for x in ("--passage", p)], "--device", "cpu", "--dtype", "float32",
            "--model", str(encoder.checkpoint.path)]  # the model the case was calibrated on
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["text"] == cited.text
    assert [s["citation"] and s["citation"]["marker"] for s in data["sentences"]] == [1, 3, 2, None]
    text = runner.invoke(app, args)
    assert text.exit_code == 0 and text.stdout.startswith(cited.text)
    assert runner.invoke(app, ["cite", ANSWER, "--device", "cpu"]).exit_code == 2  # no passages
    assert runner.invoke(app, ["cite", ANSWER, "--id", "x", "--device", "cpu"]).exit_code == 2  # no collection
