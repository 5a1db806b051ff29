"""Oversized input ends soon in a result or a typed error (issue 14): one query,
document or answer costs the work of what the model can use, not of its size.

Sizes are drawn by hypothesis (derandomized in CI). Besides the harness' hang check,
each case checks a bound on work that does not depend on the machine: the encoder's
tokenizer is never handed more than ``MAX_CHARS_PER_TOKEN`` characters per token it
keeps, and cite refuses an answer past its limits before anything is encoded.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agrame_vdb import StoredPassage, connect
from agrame_vdb.chunking import Chunker
from agrame_vdb.cite import MAX_ANSWER_CHARS, MAX_ANSWER_SENTENCES, cite
from agrame_vdb.cli import app
from agrame_vdb.documents import Document
from agrame_vdb.encoder import MAX_CHARS_PER_TOKEN
from agrame_vdb.errors import InvalidInputError
from agrame_vdb.indexer import index_documents
from agrame_vdb.repository import CollectionSchema
from agrame_vdb.units import Passage

from ..conftest import DATA
from ..indexing_helpers import FakeEncoder, make_docs, write_jsonl
from . import report
from .harness import typed_or_ok

EXAMPLES = 12 if report.FULL else 4
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not report.FULL, database=None,
                    suppress_health_check=list(HealthCheck))
TIMEOUT_S = 60.0


def _sentences() -> list[str]:
    path = DATA / "scifact" / "corpus.jsonl"
    if not path.exists():
        return [f"Sentence {i} says that item {i * 3} weighs {i % 90 + 10} kilograms." for i in range(300)]
    with open(path, encoding="utf-8") as fh:
        return [s.strip() for line in itertools.islice(fh, 300) for s in json.loads(line)["abstract"] if s.strip()]


SENTENCES = _sentences()


def oversized(shape: str, n_chars: int) -> str:
    """``n_chars`` characters of one of the shapes an attacker would send."""
    if shape == "prose":
        return " ".join(itertools.islice(itertools.cycle(SENTENCES), n_chars // 80 + 1))[:n_chars]
    if shape == "one word":
        return "x" * n_chars
    if shape == "whitespace tail":  # a short text, then megabytes of blanks
        return "when was the tower built?" + " \n\t" * (n_chars // 3)
    if shape == "cjk":
        return "\u4e2d\u6587\u5b57" * (n_chars // 3)
    return ("a" * 999 + " ") * (n_chars // 1000)  # words too long for any vocabulary


shapes = st.sampled_from(["prose", "one word", "whitespace tail", "cjk", "long words"])
sizes = st.integers(100_000, 3_000_000)


class CountingTokenizer:
    def __init__(self, inner) -> None:
        self.inner, self.longest = inner, 0

    def __call__(self, texts, *args, **kwargs):
        self.longest = max([self.longest, *map(len, [texts] if isinstance(texts, str) else texts)])
        return self.inner(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def encoder():
    from agrame_vdb.encoder import MultiVectorEncoder

    enc = MultiVectorEncoder.load(device="cpu")
    enc.tokenizer = CountingTokenizer(enc.tokenizer)
    return enc


@pytest.fixture(scope="module")
def planner(encoder):
    from agrame_vdb.planner import Planner

    repo = connect("memory://")
    repo.create_collection(CollectionSchema("c", dim=encoder.dim))
    encoded = encoder.encode_passages([Passage.create(f"d{i}", 0, " ".join(SENTENCES[i * 4 : i * 4 + 4])) for i in range(8)])
    repo.upsert("c", [StoredPassage.create(e.passage.doc_id, 0, e.token_vectors, units=e.units, text=e.passage.text)
                      for e in encoded])
    return Planner(repo, "c", encoder)


def _bounded(encoder, n_tokens: int, what: str) -> None:
    tok = encoder.tokenizer
    assert tok.longest <= n_tokens * MAX_CHARS_PER_TOKEN, f"{what}: the tokenizer was given {tok.longest} characters"
    tok.longest = 0


@SETTINGS
@given(shape=shapes, n_chars=sizes, granularity=st.sampled_from(["passage", "sentence"]))
def test_oversized_queries(planner, encoder, shape, n_chars, granularity):
    query = oversized(shape, n_chars)
    out = typed_or_ok(lambda: planner.search(query, granularity=granularity, k=3), f"search({shape}, {n_chars} chars)",
                      timeout=TIMEOUT_S)
    assert out.error is None, out.error  # a long query is a query: it is answered
    _bounded(encoder, encoder.config.query_maxlen, f"a {n_chars}-character {shape} query")


@SETTINGS
@given(shape=shapes, n_chars=sizes)
def test_oversized_passages_to_encode(encoder, shape, n_chars):
    text = oversized(shape, n_chars)
    out = typed_or_ok(lambda: encoder.encode_passages([Passage.create("big", 0, text)]),
                      f"encode_passages({shape}, {n_chars} chars)", timeout=TIMEOUT_S)
    if out.error is None:
        [e] = out.value
        assert e.n_tokens <= encoder.config.doc_maxlen
    _bounded(encoder, encoder.config.doc_maxlen, f"a {n_chars}-character {shape} passage")


@SETTINGS
@given(n_chars=st.integers(100_000, 500_000), units=st.booleans())
def test_an_oversized_document_is_indexed_whole_beside_the_others(tmp_path_factory, n_chars, units):
    """A big document is chunked in linear work and indexed with every passage; the
    small documents around it lose nothing."""
    text = oversized("prose", n_chars)
    record = {"id": "big", "text": text}
    if units:  # a claim over the whole text: clipped into every passage
        record["units"] = [{"kind": "claim", "spans": [[0, 40], [n_chars // 2, n_chars // 2 + 40], [n_chars - 40, n_chars]]}]
    records = [*make_docs(3), record, *make_docs(3, start=3)]
    fake = FakeEncoder()
    chunker = Chunker(fake.tokenizer, fake.config.doc_maxlen)
    expected = {(r["id"], c.index) for r in records for c in chunker.chunk(Document.from_json(r))}
    repo = connect("memory://")
    path = write_jsonl(tmp_path_factory.mktemp("big") / "docs.jsonl", records)
    out = typed_or_ok(lambda: index_documents(path, repo, "docs", encoder=fake), f"index a {n_chars}-char document",
                      timeout=TIMEOUT_S)
    assert out.error is None, out.error
    stored = {(p.doc_id, p.index) for p in repo.fetch("docs", list(repo.iter_ids("docs"))).passages}
    report.add(passages_lost=len(expected - stored))
    assert stored == expected
    repo.close()


@SETTINGS
@given(n_sentences=st.integers(MAX_ANSWER_SENTENCES + 1, 5 * MAX_ANSWER_SENTENCES))
def test_answers_with_too_many_sentences(encoder, n_sentences):
    answer = " ".join(f"Claim {i} holds." for i in range(n_sentences))
    out = typed_or_ok(lambda: cite(answer, SENTENCES[:3], encoder), f"cite({n_sentences} sentences)", timeout=TIMEOUT_S)
    assert isinstance(out.error, InvalidInputError) and "MAX_ANSWER_SENTENCES" in str(out.error)


@SETTINGS
@given(shape=shapes, n_chars=sizes)
def test_oversized_answers_and_passages_to_cite(encoder, shape, n_chars):
    if shape == "prose":  # prose under MAX_ANSWER_CHARS has about MAX_ANSWER_SENTENCES sentences: see above
        n_chars = max(n_chars, MAX_ANSWER_CHARS + 1)
    text = oversized(shape, n_chars)
    out = typed_or_ok(lambda: cite(text, SENTENCES[:3], encoder), f"cite(a {shape} answer of {n_chars} chars)",
                      timeout=TIMEOUT_S)
    if n_chars > MAX_ANSWER_CHARS:
        assert isinstance(out.error, InvalidInputError) and "MAX_ANSWER_CHARS" in str(out.error)
    else:  # one long sentence: a query cut to what the encoder uses
        assert out.error is None, out.error
    small = typed_or_ok(lambda: cite(SENTENCES[0], [text, SENTENCES[1]], encoder),
                        f"cite(a {shape} passage of {n_chars} chars)", timeout=TIMEOUT_S)
    assert small.error is None, small.error
    _bounded(encoder, encoder.config.doc_maxlen, f"a {n_chars}-character {shape} passage to cite")


def test_the_cli_refuses_an_oversized_answer():
    answer = " ".join(f"Claim {i} holds." for i in range(MAX_ANSWER_SENTENCES + 10))
    result = typed_or_ok(lambda: CliRunner().invoke(app, ["cite", "-", "--passage", "A passage.", "--device", "cpu"],
                                                    input=answer), "agrame-vdb cite - (too many sentences)",
                         timeout=TIMEOUT_S).value
    assert result.exit_code == 2 and "MAX_ANSWER_SENTENCES" in result.output, result.output
    assert not isinstance(result.exception, (RuntimeError, MemoryError, ValueError))
