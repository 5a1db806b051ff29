"""Bounded work for one input: queries and documents are tokenized from a prefix
that gives the same tokens as the whole text; cite encodes in batches, up to a limit."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agrame_vdb.cite as cite_module
from agrame_vdb.cite import MAX_ANSWER_CHARS, MAX_ANSWER_SENTENCES, cite
from agrame_vdb.encoder import MAX_CHARS_PER_TOKEN, usable_prefix
from agrame_vdb.errors import InvalidInputError
from agrame_vdb.units import Passage, align_units, segment

from .conftest import data_file


def scifact_abstracts(limit: int) -> list[list[str]]:
    with open(data_file("scifact", "corpus.jsonl"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in itertools.islice(fh, limit)]
    return [[s.strip() for s in r["abstract"] if s.strip()] for r in rows]


def _trained(kind: str, corpus: list[str]):
    """A small tokenizer of another family than the shipped WordPiece, trained here."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bytelevel-bpe":  # RoBERTa/GPT-2 style: spaces attach to the next word
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:  # SentencePiece style: NFKC, Metaspace, Unigram
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<unk>"], unk_token="<unk>")
    tok.normalizer = normalizers.NFKC()
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.fixture(scope="module")
def tokenizers(encoder):
    corpus = [" ".join(a) for a in scifact_abstracts(100)]
    return {"wordpiece": encoder.tokenizer, "bytelevel-bpe": _trained("bytelevel-bpe", corpus),
            "unigram": _trained("unigram", corpus)}


def first_tokens(tokenizer, text: str, n: int):
    enc = tokenizer(text, add_special_tokens=False, truncation=True, max_length=n, return_offsets_mapping=True,
                    verbose=False)
    return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]


def check_prefix(tokenizer, text: str, n: int) -> bool:
    """The prefix's first n + 1 tokens (ids and offsets) are the whole text's; True if it was cut."""
    prefix = usable_prefix(tokenizer, text, n)
    assert text.startswith(prefix)
    assert first_tokens(tokenizer, prefix, n + 1) == first_tokens(tokenizer, text, n + 1), (n, prefix[-40:])
    return len(prefix) < len(text)


def test_the_prefix_gives_the_whole_texts_tokens_on_scifact(tokenizers):
    text = " ".join(s for a in scifact_abstracts(60) for s in a)
    starts = range(0, len(text) - 10000, len(text) // 40)
    for name, tok in tokenizers.items():
        cut = 0
        for start, n in zip(starts, itertools.cycle([1, 5, 29, 61, 509])):
            cut += check_prefix(tok, text[start:], n)
        assert cut >= 35, name  # nearly every case was tokenized from a prefix


pieces = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=30),
    st.text(alphabet="ABCxyz0123456789", min_size=1, max_size=150),  # long "words" (WordPiece [UNK] past 100)
    st.sampled_from([" ", "  ", "\t", "\n", "\r\n", "\x1c", "\u200b", "\u00a0", "\u3000", ",", ".", "'s", "-",
                     "\u0301", "e\u0301", "\ufdfa", "\u4e2d\u6587", "\U0001f600", "\x00", "\ufb01"]),
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(parts=st.lists(pieces, min_size=1, max_size=150), n=st.integers(1, 12), which=st.sampled_from(
    ["wordpiece", "bytelevel-bpe", "unigram"]))
def test_the_prefix_gives_the_whole_texts_tokens_on_generated_text(tokenizers, parts, n, which):
    check_prefix(tokenizers[which], "".join(parts), n)


def test_a_text_of_one_endless_word_is_cut_at_the_documented_bound(encoder):
    assert usable_prefix(encoder.tokenizer, "x" * 10**6, 29) == "x" * (29 * MAX_CHARS_PER_TOKEN)


class CountingTokenizer:
    """The encoder's tokenizer, noting the longest text it is given."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.longest = 0

    def __call__(self, texts, *args, **kwargs):
        self.longest = max([self.longest, *map(len, [texts] if isinstance(texts, str) else texts)])
        return self.inner(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture()
def counting(encoder, monkeypatch):
    tok = CountingTokenizer(encoder.tokenizer)
    monkeypatch.setattr(encoder, "tokenizer", tok)
    return tok


def big_text(n_chars: int) -> str:
    sentences = [s for a in scifact_abstracts(400) for s in a]
    return " ".join(itertools.islice(itertools.cycle(sentences), n_chars // 100))[:n_chars]


def test_a_huge_query_is_encoded_from_a_prefix_with_the_same_ids(encoder, counting):
    text = big_text(2_000_000)
    length = encoder.config.query_maxlen
    full_ids, _ = first_tokens(counting.inner, text, length - 3)  # the reference: the whole text, truncated
    batch = encoder.tokenize_queries([text, "a short query"], "subpassage")
    expected = [encoder._cls, encoder.marker_ids["subpassage"], *full_ids, encoder._sep]
    assert batch["input_ids"][0, : len(expected)].tolist() == expected
    assert counting.longest <= (length - 3) * MAX_CHARS_PER_TOKEN  # not two million characters


def test_a_huge_passage_is_encoded_from_a_prefix_with_the_same_tokens(encoder, counting):
    text = big_text(700_000)
    budget = encoder.config.doc_maxlen - 3
    passage = Passage.create("d", 0, text)
    # the reference: the whole text tokenized, cut to the budget, units aligned to that
    full = counting.inner(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = [tuple(o) for o in full["offset_mapping"][:budget]]
    reference = align_units(segment(passage), (None, None, *offsets, None), offsets[-1][1])
    [e] = encoder.encode_passages([passage])
    assert list(e.token_ids[2:-1]) == full["input_ids"][:budget]
    assert list(e.token_offsets[2:-1]) == offsets and e.encoded_chars == offsets[-1][1]
    assert e.units == reference.units and e.truncated == reference.truncated and len(e.truncated) > 1000
    assert counting.longest <= budget * MAX_CHARS_PER_TOKEN


# ----------------------------------------------------------------------------- cite


@pytest.fixture(scope="module")
def cite_case():
    data = [a for a in scifact_abstracts(200) if len(a) >= 4]
    passages = [" ".join(a) for a in data[:4]]
    # sentences of the passages (citable) and of other abstracts (mostly not)
    sentences = [s for a in data[:4] for s in a[:3]] + [s for a in data[4:40] for s in a[:2]]
    rng = np.random.default_rng(7)
    answer = " ".join(sentences[i] for i in rng.permutation(len(sentences))[:60])
    return answer, passages


def test_cite_in_batches_cites_as_in_one_batch(encoder, cite_case, monkeypatch):
    answer, passages = cite_case
    encoded = encoder.encode_passages([Passage.create(f"passage-{i + 1}", 0, t) for i, t in enumerate(passages)])
    monkeypatch.setattr(cite_module, "CITE_BATCH", 10**9)  # the reference: every sentence in one batch
    whole = cite(answer, encoded, encoder, margin=0.02)
    rows = []
    real_embed = type(encoder).embed

    def embed(self, ids, mask, kinds="document"):
        rows.append(ids.shape[0])
        return real_embed(self, ids, mask, kinds)

    monkeypatch.setattr(type(encoder), "embed", embed)
    monkeypatch.setattr(cite_module, "CITE_BATCH", 16)
    got = cite(answer, encoded, encoder, margin=0.02)
    assert len(got.sentences) == len(whole.sentences) > 3 * 16
    assert len(rows) > 3 and max(rows) <= 2 * 16  # [Q] and [Q'] rows of one batch, never the whole answer
    cited = 0
    for s, ref in zip(got.sentences, whole.sentences, strict=True):
        assert (s.index, s.text, s.char_span) == (ref.index, ref.text, ref.char_span)
        np.testing.assert_allclose(s.passage_scores, ref.passage_scores, atol=1e-5)
        if ref.citation is None or abs(ref.citation.margin - 0.02) > 1e-4:  # away from the margin: the same decision
            assert (s.citation is None) == (ref.citation is None)
        if s.citation and ref.citation:
            assert (s.citation.marker, s.citation.unit_index) == (ref.citation.marker, ref.citation.unit_index)
            cited += 1
    assert cited > 10


class NoEncoding:
    def __getattr__(self, name):
        raise AssertionError(f"the encoder was used ({name}) before the answer was refused")


def test_cite_refuses_an_answer_past_its_limits_before_encoding():
    many = " ".join(f"Claim number {i} holds." for i in range(MAX_ANSWER_SENTENCES + 1))
    assert len(many) <= MAX_ANSWER_CHARS
    with pytest.raises(InvalidInputError, match="MAX_ANSWER_SENTENCES"):
        cite(many, ["a passage to cite."], NoEncoding())  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="MAX_ANSWER_CHARS"):
        cite("word " * (MAX_ANSWER_CHARS // 5 + 1), ["a passage to cite."], NoEncoding())  # type: ignore[arg-type]
    few = " ".join(f"Claim number {i} holds." for i in range(3))
    with pytest.raises(AssertionError, match="encoder was used"):  # under the limits, the encoder is reached
        cite(few, ["a passage to cite."], NoEncoding())  # type: ignore[arg-type]
