"""Cutting documents into passages: budgets, sentence boundaries, overlap, units across cuts."""

from __future__ import annotations

import re

import pytest

from agrame_vdb.chunking import Chunker, ChunkingOptions
from agrame_vdb.documents import Document
from agrame_vdb.errors import InvalidInputError, InvalidRecordError
from agrame_vdb.checkpoints import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    tok, config = load_tokenizer()
    assert config.doc_maxlen == 512
    return tok


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


SENTENCES = [f"Sentence {i} tells that item {i * 3} weighs {i + 10} kilograms." for i in range(20)]
TEXT = " ".join(SENTENCES)


def test_passages_are_runs_of_whole_sentences_within_the_budget(tokenizer):
    chunks = Chunker(tokenizer, 512, ChunkingOptions(max_tokens=40)).chunk(Document("d", TEXT))
    assert len(chunks) > 3 and [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.n_tokens == count(tokenizer, c.text) <= 40
        assert TEXT[c.start : c.start + len(c.text)] == c.text
        # whole sentences only, each one a unit with its document-level number
        assert [u.text_in(c.text) for u in c.units] == [s for s in SENTENCES if s in c.text]
        assert [u.index for u in c.units] == [SENTENCES.index(u.text_in(c.text)) for u in c.units]
    assert " ".join(c.text for c in chunks) == TEXT  # no overlap: the passages tile the text


def test_the_default_budget_is_what_the_model_takes(tokenizer):
    [chunk] = Chunker(tokenizer, 512).chunk(Document("d", TEXT))
    assert chunk.text == TEXT and len(chunk.units) == 20
    with pytest.raises(InvalidInputError, match="more than the model encodes"):
        Chunker(tokenizer, 512, ChunkingOptions(max_tokens=600))
    with pytest.raises(InvalidInputError, match="less than half"):
        Chunker(tokenizer, 512, ChunkingOptions(max_tokens=40, overlap=20))


def test_overlap_repeats_whole_sentences(tokenizer):
    chunks = Chunker(tokenizer, 512, ChunkingOptions(max_tokens=40, overlap=15)).chunk(Document("d", TEXT))
    for a, b in zip(chunks, chunks[1:]):
        first_of_b = b.units[0].text_in(b.text)
        assert a.units[-1].text_in(a.text) == first_of_b  # the last sentence of a starts b
        assert b.units[0].index == a.units[-1].index
        assert b.n_tokens <= 40
    covered = sorted({u.index for c in chunks for u in c.units})
    assert covered == list(range(20))


def test_a_sentence_longer_than_the_budget_is_cut_between_words_and_clipped(tokenizer):
    long = "This single sentence keeps going " + " ".join(f"word{i}" for i in range(60)) + " until it ends."
    text = f"A short opener. {long} A short closer."
    doc = Document.from_json({"id": "d", "text": text, "units": [{"kind": "claim", "spans": [[0, 40]]}]})
    chunks = Chunker(tokenizer, 512, ChunkingOptions(max_tokens=32)).chunk(doc)
    assert all(c.n_tokens <= 32 for c in chunks)
    pieces = [(c.text, [u for u in c.units if u.kind == "sentence" and u.index == 1]) for c in chunks]
    parts = [u.text_in(t) for t, us in pieces for u in us]
    assert len(parts) >= 3 and " ".join(parts) == long  # the long sentence, clipped into each passage
    for c in chunks:
        assert not re.search(r"word\d+$", c.text) or c.text.endswith(tuple(f"word{i}" for i in range(60)))
        assert c.text == c.text.strip()
    # the claim crosses the first cut: each side keeps its part
    claim_parts = [u.text_in(c.text) for c in chunks for u in c.units if u.kind == "claim"]
    assert "".join(claim_parts).replace(" ", "") == text[:40].replace(" ", "")


def test_title_in_text_starts_every_passage_and_shifts_units(tokenizer):
    doc = Document("d", TEXT, title="Weights of items")
    chunks = Chunker(tokenizer, 512, ChunkingOptions(max_tokens=40, title_in_text=True)).chunk(doc)
    for c in chunks:
        assert c.text.startswith("Weights of items\n") and c.n_tokens <= 40
        assert c.metadata["title"] == "Weights of items"
        assert all(u.text_in(c.text) in SENTENCES for u in c.units)
    plain = Chunker(tokenizer, 512, ChunkingOptions(max_tokens=40)).chunk(doc)
    assert plain[0].metadata["title"] == "Weights of items" and not plain[0].text.startswith("Weights")
    with pytest.raises(InvalidRecordError, match="title takes"):
        Chunker(tokenizer, 512, ChunkingOptions(max_tokens=16, title_in_text=True)).chunk(
            Document("d", TEXT, title="A very long title that takes most of the budget of a passage")
        )


def test_given_passages_are_kept_as_they_are(tokenizer):
    doc = Document.from_json({"id": "d", "metadata": {"a": 1}, "passages": [
        TEXT, {"text": "Two sentences. Here.", "units": [{"kind": "claim", "spans": [0, 3]}], "metadata": {"b": 2}}]})
    chunks = Chunker(tokenizer, 512, ChunkingOptions(max_tokens=20)).chunk(doc)
    assert [c.text for c in chunks] == [TEXT, "Two sentences. Here."]
    assert chunks[0].n_tokens > 20  # never cut further; the encoder truncates past doc_maxlen
    assert [(u.kind, u.index) for u in chunks[1].units] == [("sentence", 0), ("sentence", 1), ("claim", 0)]
    assert dict(chunks[1].metadata) == {"a": 1, "b": 2} and chunks[1].start is None


def test_no_sentences_keeps_only_given_units(tokenizer):
    doc = Document.from_json({"id": "d", "text": TEXT, "units": [{"kind": "claim", "spans": [0, 8]}]})
    [chunk] = Chunker(tokenizer, 512, ChunkingOptions(sentences=False)).chunk(doc)
    assert [(u.kind, u.index) for u in chunk.units] == [("claim", 0)]


def test_a_unit_the_tokenizer_cannot_see_rejects_the_document(tokenizer):
    text = "Visible words \u200b\u200b and more."
    doc = Document.from_json({"id": "d", "text": text, "units": [{"kind": "claim", "spans": [14, 16]}]})
    with pytest.raises(InvalidRecordError, match="covers no token"):
        Chunker(tokenizer, 512).chunk(doc)
    with pytest.raises(InvalidRecordError, match="no token"):
        Chunker(tokenizer, 512).chunk(Document("d", "\u200b\u200b"))
