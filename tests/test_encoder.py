"""The multi-vector encoder on real text: alignment, truncation, markers, dtypes."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

from agrame_vdb import InvalidInputError, Passage, Unit
from agrame_vdb.encoder import MultiVectorEncoder

from . import datasets
from .conftest import data_file


def _normalised(encoder: MultiVectorEncoder, text: str) -> str:
    normalizer = encoder.tokenizer.backend_tokenizer.normalizer
    return re.sub(r"\s+", "", normalizer.normalize_str(text) if normalizer else text)


def _assert_units_decode_to_their_text(encoder, encoded) -> tuple[int, int]:
    """Every unit's tokens decode back to its text (the part that was encoded), up to normalisation."""
    checked = unknown = 0
    unk = encoder.tokenizer.unk_token_id
    for e in encoded:
        for unit in e.units:
            if unk in (e.token_ids[p] for p in unit.token_positions):
                unknown += 1
                continue
            decoded = "".join(encoder.tokenizer.decode(list(e.token_ids[s:t])) for s, t in unit.token_ranges)
            expected = "".join(_normalised(encoder, e.passage.text[s : min(t, e.encoded_chars)]) for s, t in unit.char_spans)
            assert re.sub(r"\s+", "", decoded) == expected, (unit, decoded, expected)
            checked += 1
    return checked, unknown


def test_sentence_units_on_scifact_decode_back(encoder):
    items = list(datasets.scifact(data_file("scifact", "corpus.jsonl"), limit=60))
    encoded = encoder.encode_passages([p for p, _ in items], [u for _, u in items])
    for (passage, units), e in zip(items, encoded, strict=True):
        assert e.passage is passage
        assert e.token_vectors.dtype == np.float32 and e.token_vectors.shape == (len(e.token_ids), 128)
        np.testing.assert_allclose(np.linalg.norm(e.token_vectors, axis=1), 1.0, atol=1e-5)
        assert not e.truncated or e.encoded_chars < len(passage.text)
    checked, unknown = _assert_units_decode_to_their_text(encoder, encoded)
    assert checked > 300 and unknown <= checked // 20


def test_sentence_units_on_wikiqa_decode_back(encoder):
    items = list(datasets.wikiqa(data_file("wikiqa", "WikiQA-dev.tsv"), limit=40))
    encoded = encoder.encode_passages([p for p, _ in items], [u for _, u in items])
    checked, unknown = _assert_units_decode_to_their_text(encoder, encoded)
    assert checked > 150 and unknown <= checked // 20


def test_non_contiguous_propositions_decode_back(encoder):
    items = list(datasets.propsegment(data_file("propsegment")))[:150]
    encoded = encoder.encode_passages([p for p, _, _ in items], [u for _, u, _ in items], sentences=False)
    non_contiguous = sum(len(u.token_ranges) > 1 for e in encoded for u in e.units)
    checked, unknown = _assert_units_decode_to_their_text(encoder, encoded)
    assert checked > 300 and non_contiguous > 20, (checked, non_contiguous)
    for (_, units, _), e in zip(items, encoded, strict=True):
        assert [u.char_spans for u in e.units] == [u.char_spans for u in units]


def test_units_past_the_truncation_are_reported(encoder, caplog):
    from dataclasses import replace

    short = MultiVectorEncoder(encoder.checkpoint, device="cpu")
    short.config = replace(short.config, doc_maxlen=12)  # 9 text tokens
    text = "The cat sat on the mat today. A second sentence follows here. And a third one."
    with caplog.at_level(logging.WARNING, logger="agrame_vdb.encoder"):
        [e] = short.encode_passages([Passage.create("d", 0, text)])
    assert e.n_tokens == 12 and e.encoded_chars < len(text)
    assert [u.index for u in e.units] == [0, 1]  # sentence 1 is cut, not lost
    assert [(t.unit.index, t.dropped) for t in e.truncated] == [(1, False), (2, True)]
    assert "dropped" in caplog.text


def test_markers_are_single_tokens_in_the_vocabulary(encoder):
    tok = encoder.tokenizer
    vocab_size = len(tok)
    for kind, marker in (("query", "[unused0]"), ("document", "[unused1]"), ("subpassage", "[unused2]")):
        assert tok.convert_ids_to_tokens(encoder.marker_ids[kind]) == marker
    assert len(tok) == vocab_size  # nothing was added
    q = encoder.tokenize_queries(["what is a marker?"], "query")["input_ids"][0]
    s = encoder.tokenize_queries(["what is a marker?"], "subpassage")["input_ids"][0]
    assert q[1] == encoder.marker_ids["query"] and s[1] == encoder.marker_ids["subpassage"]
    assert (q[2:] == s[2:]).all() and q.shape == (32,)
    assert (q[q.ne(tok.mask_token_id)].shape[0]) == 2 + len(tok.tokenize("what is a marker?")) + 1
    [e] = encoder.encode_passages([Passage.create("d", 0, "A passage.")])
    assert e.token_ids[:2] == (tok.cls_token_id, encoder.marker_ids["document"]) and e.token_ids[-1] == tok.sep_token_id


def test_query_and_subpassage_markers_give_different_embeddings(encoder):
    texts = ["what causes the disease?", "when was the tower built"]
    q = encoder.encode_queries(texts)
    s = encoder.encode_queries(texts, subpassage=True)
    assert q.shape == s.shape == (2, 32, 128)
    assert not np.allclose(q, s, atol=1e-3)
    again = encoder.encode_queries(texts)
    np.testing.assert_array_equal(q, again)  # deterministic


def test_passages_keep_their_order_when_batched_by_length(encoder):
    texts = ["Short one.", "A much longer passage with many more words in it than the others have.", "Medium sized text here."]
    passages = [Passage.create("d", i, t) for i, t in enumerate(texts)]
    together = encoder.encode_passages(passages, batch_size=2)
    alone = [encoder.encode_passages([p])[0] for p in passages]
    for a, b in zip(together, alone, strict=True):
        assert a.passage.id == b.passage.id
        np.testing.assert_allclose(a.token_vectors, b.token_vectors, atol=1e-5)


def test_bf16_is_close_to_fp32(encoder):
    bf16 = MultiVectorEncoder(encoder.checkpoint, device="cpu", dtype="bf16")
    assert bf16.dtype == torch.bfloat16
    p = [Passage.create("d", 0, "Bacteria resist antibiotics through efflux pumps and mutations.")]
    a = encoder.encode_passages(p)[0].token_vectors
    b = bf16.encode_passages(p)[0].token_vectors
    assert b.dtype == np.float32 and (a * b).sum(1).min() > 0.98
    # the fp32 encoder was not changed by building the bf16 one
    assert next(encoder.transformer.parameters()).dtype == torch.float32


@pytest.mark.parametrize("bad", [[], [""], ["   "], [None], "a bare string"])
def test_bad_queries_are_rejected(encoder, bad):
    with pytest.raises(InvalidInputError):
        encoder.encode_queries(bad)


def test_bad_passage_arguments_are_rejected(encoder):
    p = Passage.create("d", 0, "Text.")
    with pytest.raises(InvalidInputError):
        encoder.encode_passages(p)
    with pytest.raises(InvalidInputError):
        encoder.encode_passages([p], units=[[], []])
    with pytest.raises(InvalidInputError):
        encoder.encode_passages(["not a passage"])
    with pytest.raises(InvalidInputError):
        encoder.encode_passages([p], batch_size=0)
