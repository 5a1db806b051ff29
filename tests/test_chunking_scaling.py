"""Chunking places units in linear work, with the output of the old quadratic placement.

The reference is the old ``_place`` (every unit scanned for every passage), kept
here verbatim: the chunker run with it must give the same chunks as the chunker
as it is, on SciFact, PropSegmEnt and generated documents.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agrame_vdb.chunking as chunking
from agrame_vdb.chunking import Chunker, ChunkingOptions, _Placed, _trim
from agrame_vdb.documents import Document
from agrame_vdb.errors import InvalidRecordError
from agrame_vdb.evaluation import read_propsegment
from agrame_vdb.indexer import load_tokenizer
from agrame_vdb.units import Unit

from . import datasets
from .conftest import data_file


def _old_place(text: str, units: list[_Placed], start: int, end: int) -> list[_Placed]:
    """The units (document offsets) that fall in ``[start, end)``, clipped and shifted to it."""
    out = []
    for p in units:
        spans = p.unit.char_spans
        if spans[-1][1] <= start or spans[0][0] >= end:
            continue
        whole = spans[0][0] >= start and spans[-1][1] <= end
        clipped = []
        for s, e in spans:
            if e <= start or s >= end:
                continue
            span = _trim(text, max(s, start), min(e, end))
            if span is not None:
                clipped.append((span[0] - start, span[1] - start))
        if not clipped:
            continue
        out.append(_Placed(replace(p.unit, char_spans=tuple(clipped), token_ranges=()), p.hard and whole))
    return out


def _old_place_all(text, units, bounds):
    return [_old_place(text, units, start, end) for start, end in bounds]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()[0]


def outcome(chunker: Chunker, doc: Document):
    try:
        return chunker.chunk(doc)
    except InvalidRecordError as exc:
        return ("rejected", str(exc))


def reference(chunker: Chunker, doc: Document):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chunking, "_place", _old_place_all)
        return outcome(chunker, doc)


OPTIONS = [ChunkingOptions(), ChunkingOptions(max_tokens=32, overlap=8), ChunkingOptions(max_tokens=48, sentences=False)]


def test_scifact_documents_chunk_as_with_the_old_placement(tokenizer):
    rows = []
    with open(data_file("scifact", "corpus.jsonl"), encoding="utf-8") as fh:
        for line in itertools.islice(fh, 96):
            rows.append(json.loads(line))
    docs = []
    for n, group in enumerate(rows[i : i + 12] for i in range(0, len(rows), 12)):
        sentences = [s.strip() for r in group for s in r["abstract"] if s.strip()]
        text, spans = datasets.join_sentences(sentences)
        given = n % 2 == 0  # half with their sentences given, half split by the splitter
        units = [Unit("sentence", i, (span,)) for i, span in enumerate(spans)] if given else []
        docs.append(Document(f"scifact-{n}", text, title=group[0]["title"], units=tuple(units)))
    compared = 0
    for options in [*OPTIONS, ChunkingOptions(max_tokens=64, title_in_text=True)]:
        chunker = Chunker(tokenizer, 512, options)
        for doc in docs:
            got = outcome(chunker, doc)
            assert got == reference(chunker, doc), (doc.id, options)
            compared += len(got)
    assert compared > 150


def test_propsegment_documents_chunk_as_with_the_old_placement(tokenizer):
    data = read_propsegment(data_file("propsegment"))
    docs = [Document(p.id, p.text, units=units) for p, units in zip(data.passages[:120], data.units[:120], strict=True)]
    crossing = 0
    for options in OPTIONS:
        chunker = Chunker(tokenizer, 512, options)
        for doc in docs:
            got = outcome(chunker, doc)
            assert got == reference(chunker, doc), (doc.id, options)
            if not isinstance(got, tuple):
                seen = [(u.kind, u.index) for c in got for u in c.units if u.kind == "proposition"]
                crossing += len(seen) - len(set(seen))
    assert crossing > 0  # some propositions were clipped across passages


words = st.text(alphabet="abcdefghij.,!?;:-'\u00e9\u4e2d", min_size=1, max_size=12)
gaps = st.sampled_from([" ", " ", " ", "  ", "\n", ". ", "! ", "? ", " \u200b "])


@st.composite
def documents(draw):
    parts = draw(st.lists(st.tuples(words, gaps), min_size=1, max_size=120))
    text = "".join(w + g for w, g in parts).strip() or "x"
    n = len(text)
    units = []
    for index in range(draw(st.integers(0, 6))):
        points = sorted(set(draw(st.lists(st.integers(0, n), min_size=2, max_size=10))))
        spans = tuple((a, b) for a, b in zip(points[::2], points[1::2]) if a < b)
        if any(text[a:b].strip() for a, b in spans):
            units.append(Unit(draw(st.sampled_from(["sentence", "proposition", "claim"])), index, spans))
    return Document("gen", text, units=tuple(units))


@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(doc=documents(), budget=st.integers(8, 40), overlap=st.integers(0, 19), sentences=st.booleans())
def test_generated_documents_chunk_as_with_the_old_placement(tokenizer, doc, budget, overlap, sentences):
    options = ChunkingOptions(max_tokens=budget, overlap=overlap if overlap < budget // 2 else 0, sentences=sentences)
    chunker = Chunker(tokenizer, 512, options)
    assert outcome(chunker, doc) == reference(chunker, doc)


def _lines_run(chunker: Chunker, doc: Document) -> int:
    """Python lines executed inside chunking.py while chunking ``doc`` (a measure of work, not time)."""
    target = str(Path(chunking.__file__).resolve())
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def tracer(frame, event, arg):
        return local if str(Path(frame.f_code.co_filename).resolve()) == target else None

    sys.settrace(tracer)
    try:
        chunker.chunk(doc)
    finally:
        sys.settrace(None)
    return count


def test_chunking_work_grows_linearly_with_the_document(tokenizer):
    sentences = [f"Sentence {i} tells that item {i * 3} weighs {i % 90 + 10} kilograms." for i in range(1600)]
    chunker = Chunker(tokenizer, 512, ChunkingOptions(max_tokens=48, overlap=12))
    small = _lines_run(chunker, Document("d", " ".join(sentences[:400])))
    large = _lines_run(chunker, Document("d", " ".join(sentences)))
    # four times the text: four times the work (a quadratic placement makes it ~16 times)
    print(f"lines run: {small} for {len(sentences) // 4} sentences, {large} for {len(sentences)}")
    assert large < 4.6 * small, (small, large)
