"""Passages, units, sentence splitting, PropSegmEnt words and char→token alignment."""

from __future__ import annotations

import itertools
import json

import pytest

from agrame_vdb import (
    InvalidInputError,
    InvalidUnitError,
    Passage,
    Unit,
    align_units,
    passage_id,
    proposition_from_word_indices,
    segment,
    split_sentences,
    units_from_char_spans,
    word_spans,
)

from agrame_vdb.units import sentence_spans

from .conftest import data_file


def test_passage_ids_are_deterministic_and_distinct():
    assert passage_id("doc", 0) == passage_id("doc", 0)
    ids = {passage_id(d, i) for d in ("a", "b", "a b") for i in range(50)}
    assert len(ids) == 150
    p = Passage.create("doc", 3, "Some text.", {"lang": "en"})
    assert p.id == passage_id("doc", 3) and p.index == 3 and p.metadata["lang"] == "en"
    with pytest.raises(TypeError):
        p.metadata["lang"] = "fr"  # read-only


@pytest.mark.parametrize(
    "kwargs",
    [
        {"doc_id": "", "index": 0, "text": "x"},
        {"doc_id": "d", "index": -1, "text": "x"},
        {"doc_id": "d", "index": 0, "text": "   "},
        {"doc_id": "d", "index": 0, "text": b"bytes"},
        {"doc_id": "d", "index": 0, "text": "x", "metadata": ["not", "a", "mapping"]},
    ],
)
def test_bad_passages_are_rejected(kwargs):
    with pytest.raises(InvalidInputError):
        Passage.create(**kwargs)


def test_split_sentences_trims_and_handles_abbreviations():
    text = "  Dr. Smith went to Washington, D.C. on Jan. 5th.  He said: \"It is 3.5 p.m.\" Then he left!  "
    units = split_sentences(text)
    texts = [u.text_in(text) for u in units]
    assert texts[0] == "Dr. Smith went to Washington, D.C. on Jan. 5th."
    assert texts[-1] == "Then he left!"
    assert [u.index for u in units] == list(range(len(units)))
    assert all(u.kind == "sentence" for u in units)
    for u in units:
        (s, e), = u.char_spans
        assert not text[s].isspace() and not text[e - 1].isspace()


def test_split_sentences_on_real_abstracts_recovers_most_boundaries():
    path = data_file("scifact", "corpus.jsonl")
    agree = total = 0
    with open(path, encoding="utf-8") as fh:
        for _, line in zip(range(100), fh):
            sentences = [s.strip() for s in json.loads(line)["abstract"] if s.strip()]
            text = " ".join(sentences)
            found = {u.text_in(text) for u in split_sentences(text)}
            agree += sum(s in found for s in sentences)
            total += len(sentences)
    assert agree / total > 0.85, f"splitter agreed with the gold sentences on only {agree}/{total}"


def test_sentence_spans_cuts_where_punkt_took_a_word_for_an_abbreviation():
    text = ("Infection raises the risk of gastric cancer. Here we show why. Smith et al. Found it first. "
            "Cases vs. Controls differed. It rose from 3.5 to 4 mg. Elevated levels of p65/RelA. Were seen.")
    found = [text[a:b] for a, b in sentence_spans(text)]
    assert found[:2] == ["Infection raises the risk of gastric cancer.", "Here we show why."]
    assert "Smith et al. Found it first." in found  # an abbreviation: no cut
    assert "Cases vs. Controls differed." in found
    assert [u.char_spans[0] for u in split_sentences(text)] == sentence_spans(text)


def test_sentence_spans_refine_punkt_and_recover_more_gold_boundaries():
    """Against SciFact's own sentence lists (an independent reference): every boundary
    Punkt finds is kept, and recall rises at no cost in precision."""
    from agrame_vdb.units import punkt_spans

    path = data_file("scifact", "corpus.jsonl")
    counts = {"punkt": [0, 0], "spans": [0, 0]}  # [true boundaries found, boundaries found]
    gold_total = 0
    with open(path, encoding="utf-8") as fh:
        for _, line in zip(range(1500), fh):
            sentences = [s.strip() for s in json.loads(line)["abstract"] if s.strip()]
            text = " ".join(sentences)
            gold = set(itertools.accumulate(len(s) + 1 for s in sentences[:-1]))
            gold = {g - 1 for g in gold}
            gold_total += len(gold)
            punkt = punkt_spans(text)
            spans = sentence_spans(text)
            assert {e for _, e in punkt} <= {e for _, e in spans}
            for name, found in (("punkt", punkt), ("spans", spans)):
                ends = {e for _, e in found[:-1]}
                counts[name][0] += len(ends & gold)
                counts[name][1] += len(ends)
    recall = {k: tp / gold_total for k, (tp, _) in counts.items()}
    precision = {k: tp / n for k, (tp, n) in counts.items()}
    assert recall["spans"] > recall["punkt"] + 0.002, recall
    assert precision["spans"] >= precision["punkt"] - 0.0005, precision


def test_units_from_char_spans_merges_and_validates():
    text = "alpha beta gamma delta"
    [u] = units_from_char_spans(text, [[(11, 16), (0, 5), (3, 6)]])
    assert u.char_spans == ((0, 6), (11, 16)) and u.kind == "custom"
    assert u.text_in(text) == "alpha  gamma"
    for bad in ([(0, 99)], [(5, 5)], [(-1, 3)], [[]], [(5, 6)], ["ab"]):
        with pytest.raises(InvalidUnitError):
            units_from_char_spans(text, bad)


def test_unit_kind_must_be_an_identifier():
    with pytest.raises(InvalidUnitError):
        Unit("Not A Kind!", 0, ((0, 1),))
    assert Unit("claim", 0, ((0, 1),)).kind == "claim"


def test_word_spans_match_propsegment_tokenisation():
    clusters = json.loads(data_file("propsegment", "document_clusters.dev.json").read_text(encoding="utf-8"))
    checked = 0
    for cluster in clusters:
        for doc in cluster["documents"]:
            for sentence in doc["sentences"]:
                expected = [
                    (t["character_offset_of_token_in_sentence"], t["character_offset_of_token_in_sentence"] + len(t["text"]))
                    for t in sentence["tokens"]
                ]
                assert word_spans(sentence["sentence_text"]) == expected, sentence["sentence_text"]
                checked += 1
    assert checked > 100


def test_non_contiguous_proposition_from_word_indices():
    text = "Maleficent is an American fantasy film from 2014."
    unit = proposition_from_word_indices(text, [0, 1, 2, 5, 6, 7], index=4, offset=10)
    # words 0-2 and 5-7 are two stretches; offsets move into the passage
    assert unit.kind == "proposition" and unit.index == 4
    assert unit.char_spans == ((10, 26), (44, 58))
    assert unit.text_in(" " * 10 + text) == "Maleficent is an film from 2014"
    with pytest.raises(InvalidUnitError):
        proposition_from_word_indices(text, [99], index=0)
    with pytest.raises(InvalidUnitError):
        proposition_from_word_indices(text, [], index=0)


def test_align_units_hand_computed():
    # positions: 0 [CLS], 1 [D], 2..5 words, 6 [SEP]
    offsets = [None, None, (0, 3), (4, 7), (7, 8), (9, 12), None]
    units = [Unit("sentence", 0, ((0, 8),)), Unit("sentence", 1, ((9, 12),)), Unit("proposition", 0, ((0, 3), (9, 12)))]
    aligned = align_units(units, offsets, encoded_chars=12)
    assert [u.token_ranges for u in aligned.units] == [((2, 5),), ((5, 6),), ((2, 3), (5, 6))]
    assert aligned.units[2].token_positions == [2, 5]
    assert aligned.truncated == ()


def test_align_units_reports_truncation():
    offsets = [None, None, (0, 3), (4, 7), None]  # the text went on to char 20 but was cut after char 7
    units = [Unit("sentence", 0, ((0, 7),)), Unit("sentence", 1, ((4, 12),)), Unit("sentence", 2, ((13, 20),))]
    aligned = align_units(units, offsets, encoded_chars=7)
    assert [u.index for u in aligned.units] == [0, 1]
    cut, dropped = aligned.truncated
    assert (cut.unit.index, cut.dropped) == (1, False) and cut.unit.token_ranges == ((3, 4),)
    assert (dropped.unit.index, dropped.dropped) == (2, True)
    assert "dropped" in str(dropped) and "doc_maxlen" in str(dropped)


def test_segment_adds_given_units_and_rejects_outside_ones():
    p = Passage.create("d", 0, "One sentence. Two sentences.")
    units = segment(p, units=[Unit("custom", 0, ((0, 3),))])
    assert [u.kind for u in units] == ["sentence", "sentence", "custom"]
    given = segment(p, units=[Unit("sentence", 0, ((0, 28),))])
    assert len(given) == 1  # given sentences replace the splitter's
    with pytest.raises(InvalidUnitError):
        segment(p, units=[Unit("custom", 0, ((20, 40),))])


def test_a_doc_id_with_a_lone_surrogate_is_a_typed_error():
    from agrame_vdb.errors import InvalidInputError
    from agrame_vdb.units import passage_id

    with pytest.raises(InvalidInputError, match="lone surrogate"):
        passage_id("\ud800", 0)
