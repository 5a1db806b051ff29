"""The main job (`agrame-vdb demo`) on a slice of the bundled sample."""

from __future__ import annotations

import itertools
import json

from agrame_vdb.demo import SAMPLE, run_demo


def test_bundled_sample_is_attributed_scifact():
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 200 and all(r["abstract"] and isinstance(r["doc_id"], int) for r in rows)
    assert "ODC-By" in (SAMPLE.parent / "README.md").read_text(encoding="utf-8")


def test_demo_indexes_then_answers_at_passage_and_sentence_level(tmp_path):
    sample = tmp_path / "sample.jsonl"
    with open(SAMPLE, encoding="utf-8") as fh:
        sample.write_text("".join(itertools.islice(fh, 6)), encoding="utf-8")
    store = f"qdrant-edge://{tmp_path / 'store'}"
    first = run_demo(store, sample=sample, questions=["What happens to white matter in newborn brains?"], device="cpu")
    assert first.summary.documents == 6 and first.summary.rejected == 0
    passage, sentence = first.responses
    assert passage.granularity == "passage" and sentence.granularity == "sentence"
    for result in sentence.results:
        assert result.unit_kind == "sentence"
        assert " ".join(result.passage_text[s:e] for s, e in result.char_spans) == result.text
    again = run_demo(store, sample=sample, questions=["What happens to white matter in newborn brains?"], device="cpu")
    assert again.summary.run_passages == 0  # the finished checkpoint: nothing re-indexed
    assert [r.passage_id for r in again.responses[0].results] == [r.passage_id for r in passage.results]
