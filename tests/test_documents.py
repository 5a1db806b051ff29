"""Document records: the JSON form, its checks, and the JSON Lines / Parquet readers."""

from __future__ import annotations

import json

import pytest

from agrame_vdb.documents import (
    Document,
    PassageInput,
    container_of,
    iter_json_lines,
    read_documents,
    read_json_lines,
    records_from_iterable,
)
from agrame_vdb.errors import InvalidInputError, InvalidRecordError
from agrame_vdb.units import Unit, split_sentences


def texts(doc: Document) -> list[tuple[str, int, str]]:
    assert doc.text is not None
    return [(u.kind, u.index, u.text_in(doc.text)) for u in doc.units]


def test_units_and_propositions_in_every_form():
    text = "Paris, in France, is big. The tower in Paris is tall."
    doc = Document.from_json({
        "id": "d",
        "text": text,
        "units": [{"kind": "claim", "spans": [26, 53]}, {"spans": [[0, 5], [10, 16]]}],
        "propositions": [
            {"spans": [[0, 5], [18, 24]]},
            {"sentence": 1, "words": [1, 2, 4, 5]},       # "tower" "in" ... "is" "tall"
            {"sentence": [26, 53], "words": [0, 1]},      # the sentence by its span
        ],
    })
    assert texts(doc) == [
        ("claim", 0, "The tower in Paris is tall."),
        ("custom", 0, "Paris France"),
        ("proposition", 0, "Paris is big"),
        ("proposition", 1, "tower in is tall"),
        ("proposition", 2, "The tower"),
    ]


def test_word_propositions_follow_given_sentences():
    text = "A b. C d e."
    doc = Document.from_json({"id": "d", "text": text, "units": [{"kind": "sentence", "spans": [0, 11]}],
                              "propositions": [{"sentence": 0, "words": [3, 4]}]})
    assert texts(doc)[-1] == ("proposition", 0, "C d")


def test_passages_are_kept_with_their_own_units():
    doc = Document.from_json({"id": 1, "passages": [
        "First passage.", {"text": "Second passage.", "units": [{"kind": "claim", "spans": [0, 6]}],
                           "metadata": {"page": 2}}]})
    assert doc.id == "1" and doc.text is None and len(doc.passages) == 2
    assert doc.passages[1].units[0].char_spans == ((0, 6),) and doc.passages[1].metadata["page"] == 2


@pytest.mark.parametrize(
    "record, reason",
    [
        ([1, 2], "must be a JSON object"),
        ({"text": "x"}, "missing 'id'"),
        ({"id": True, "text": "x"}, "'id' must be a string or an integer"),
        ({"id": 1.5, "text": "x"}, "'id' must be a string or an integer"),
        ({"id": " ", "text": "x"}, "'id' is empty"),
        ({"id": "d"}, "missing 'text'"),
        ({"id": "d", "text": ""}, "'text' is empty"),
        ({"id": "d", "text": {"a": 1}}, "'text' must be a string"),
        ({"id": "d", "text": "x", "passages": ["y"]}, "not both"),
        ({"id": "d", "passages": []}, "'passages' is empty"),
        ({"id": "d", "passages": "text"}, "'passages' must be a list"),
        ({"id": "d", "passages": ["ok", " "]}, "passages[1] is empty"),
        ({"id": "d", "passages": [{"txt": "x"}]}, "unknown field 'txt'"),
        ({"id": "d", "passages": ["x"], "units": [{"spans": [0, 1]}]}, "units per passage"),
        ({"id": "d", "text": "x", "title": 3}, "'title' must be a string"),
        ({"id": "d", "text": "x", "metadata": [1]}, "'metadata' must be an object"),
        ({"id": "d", "text": "hello", "units": {"spans": [0, 1]}}, "'units' must be a list"),
        ({"id": "d", "text": "hello", "units": [[0, 1]]}, "must be an object"),
        ({"id": "d", "text": "hello", "units": [{"kind": "x"}]}, "has no 'spans'"),
        ({"id": "d", "text": "hello", "units": [{"spans": [0, 9]}]}, "outside the text's 5 chars"),
        ({"id": "d", "text": "hello", "units": [{"spans": [3, 2]}]}, "outside the text's 5 chars or empty"),
        ({"id": "d", "text": "hello", "units": [{"spans": [[0, "1"]]}]}, "integer pairs"),
        ({"id": "d", "text": "he  llo", "units": [{"spans": [2, 4]}]}, "only whitespace"),
        ({"id": "d", "text": "hello", "units": [{"kind": "Bad Kind", "spans": [0, 1]}]}, "lower-case identifier"),
        ({"id": "d", "text": "hello", "units": [{"spans": [0, 1], "extra": 1}]}, "unknown field 'extra'"),
        ({"id": "d", "text": "hello", "propositions": [{"sentence": 3, "words": [0]}]}, "names sentence 3"),
        ({"id": "d", "text": "hello", "propositions": [{"words": [0]}]}, "must be"),
        ({"id": "d", "text": "hello", "propositions": [{"sentence": 0, "words": [7]}]}, "word index 7"),
        ({"id": "d", "text": "bad \ud800"}, "lone surrogate"),
        ({"id": "d", "text": "x", "metadata": {"k": "\udc00"}}, "lone surrogate"),
    ],
)
def test_bad_records_say_what_is_wrong(record, reason):
    with pytest.raises(InvalidRecordError) as info:
        Document.from_json(record)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_documents_built_in_python_are_checked():
    with pytest.raises(InvalidRecordError, match="exactly one"):
        Document("d")
    with pytest.raises(InvalidRecordError, match="past the text"):
        Document("d", "short", units=(Unit("claim", 0, ((0, 40),)),))
    doc = Document("d", passages=[PassageInput("one"), PassageInput("two")])
    assert isinstance(doc.passages, tuple)


def test_scifact_records_become_sentence_units_with_their_numbers():
    rec = {"doc_id": 42, "title": "T", "abstract": ["First one. ", "  ", "Third, after an empty one."], "structured": False}
    doc = Document.from_scifact(rec)
    assert doc.id == "42" and doc.title == "T" and doc.metadata == {"structured": False}
    assert doc.text == "First one. Third, after an empty one."
    assert texts(doc) == [("sentence", 0, "First one."), ("sentence", 2, "Third, after an empty one.")]
    with pytest.raises(InvalidRecordError, match="'abstract' must be a list"):
        Document.from_scifact({"doc_id": 1, "abstract": "text"})
    beir = Document.from_beir({"_id": "b1", "title": "", "text": "Body.", "metadata": {"url": "u"}})
    assert (beir.id, beir.title, beir.metadata["url"]) == ("b1", None, "u")


def test_jsonl_reader_positions_resume_exactly(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": f"Text {i}."}) for i in range(5)]
    path.write_bytes(("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n").encode())
    records = list(read_documents(path))
    assert [r.document.id for r in records] == ["d0", "d1", "d2", "d3", "d4"]
    assert [r.line for r in records] == [1, 2, 3, 4, 5]  # blank lines are not records
    rest = list(read_documents(path, start=records[1].position, start_line=records[1].line))
    assert [(r.line, r.document.id) for r in rest] == [(3, "d2"), (4, "d3"), (5, "d4")]
    assert rest[-1].position == path.stat().st_size


def test_jsonl_reader_reports_bad_lines_and_goes_on(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"id": "a", "text": "ok"}\r\n{"id": "b", "text": "caf\xe9"}\n[1, 2]\n{"id": "c", "text": NaN}\n'
                     b'{"id": "d", "text": "\\ud800"}\n{"id": "e", "text": "fine"}')
    records = list(read_documents(path))
    assert [(r.doc_id, r.error is None) for r in records] == [
        ("a", True), (None, False), (None, False), (None, False), ("d", False), ("e", True)
    ]
    assert "invalid UTF-8" in records[1].error and "JSON object" in records[2].error
    assert "NaN" in records[3].error and "surrogate" in records[4].error


def test_the_json_lines_reader_numbers_lines_and_resumes_at_a_byte_offset(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \n[2]\r\n"three"')
    items = list(iter_json_lines(path))
    assert [(i.line, i.value, i.error) for i in items] == [(1, {"a": 1}, None), (2, [2], None), (3, "three", None)]
    assert items[-1].position == path.stat().st_size
    assert [i.line for i in iter_json_lines(path, count_blank_lines=True)] == [1, 4, 5]
    rest = list(iter_json_lines(path, start=items[0].position, start_line=items[0].line))
    assert [(i.line, i.value) for i in rest] == [(2, [2]), (3, "three")]
    assert list(read_json_lines(path)) == [(1, {"a": 1}), (4, [2]), (5, "three")]  # the file's own line numbers


@pytest.mark.parametrize("line, reason", [(b"{nope", "invalid JSON"), (b'{"x": NaN}', "NaN is not valid JSON"),
                                          (b'"caf\xe9"', "invalid UTF-8"), (b"[" * 100_000, "invalid JSON")])
def test_the_json_lines_reader_reports_a_bad_line_or_raises_it_typed(tmp_path, line, reason):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"ok": true}\n\n' + line + b"\n")
    [good, bad] = iter_json_lines(path)
    assert good.error is None and bad.value is None and reason in bad.error
    with pytest.raises(InvalidInputError, match=rf"rows.jsonl:3: .*{reason}"):
        list(read_json_lines(path))


def test_the_json_lines_reader_names_what_it_could_not_read(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot read the queries file .*missing.jsonl"):
        list(read_json_lines(tmp_path / "missing.jsonl", what="the queries file"))
    with pytest.raises(InvalidInputError, match="cannot read training file"):
        list(read_json_lines(tmp_path, what="training file"))  # a folder


def test_parquet_reader_reads_and_resumes(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"id": f"d{i}", "text": f"Text {i}.", "title": None if i % 2 else f"T{i}"} for i in range(7)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "docs.parquet", row_group_size=3)
    records = list(read_documents(tmp_path / "docs.parquet"))
    assert [r.document.id for r in records] == [f"d{i}" for i in range(7)]
    assert [r.document.title for r in records][:2] == ["T0", None]
    rest = list(read_documents(tmp_path / "docs.parquet", start=4))
    assert [r.line for r in rest] == [5, 6, 7] and rest[0].document.id == "d4"
    assert container_of("x.PQ") == ("parquet", "agrame") and container_of("x.jsonl", "scifact") == ("jsonl", "scifact")
    with pytest.raises(InvalidInputError, match="unknown format"):
        container_of("x.jsonl", "csv")


def test_iterables_resume_by_count():
    items = [{"id": "a", "text": "x"}, Document("b", "y"), {"id": "c"}]
    records = list(records_from_iterable(items))
    assert [(r.line, r.doc_id, r.error is None) for r in records] == [(1, "a", True), (2, "b", True), (3, "c", False)]
    assert [r.line for r in records_from_iterable(items, start=2)] == [3]


def test_sentences_found_automatically_are_not_units_of_the_record():
    doc = Document.from_json({"id": "d", "text": "One. Two."})
    assert doc.units == () and len(split_sentences(doc.text)) == 2


@pytest.mark.parametrize("module", ["agrame_vdb.documents", "agrame_vdb.indexer"])
def test_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
