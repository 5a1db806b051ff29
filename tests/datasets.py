"""Small readers of the real data sets, for tests only (the library's readers live in evaluation.py)."""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

from agrame_vdb.units import Passage, Unit, proposition_from_word_indices, units_from_char_spans


def join_sentences(sentences: list[str]) -> tuple[str, list[tuple[int, int]]]:
    spans, parts, pos = [], [], 0
    for s in sentences:
        spans.append((pos, pos + len(s)))
        parts.append(s)
        pos += len(s) + 1
    return " ".join(parts), spans


def scifact(path: Path, limit: int) -> Iterator[tuple[Passage, list[Unit]]]:
    with open(path, encoding="utf-8") as fh:
        for line in itertools.islice(fh, limit):
            row = json.loads(line)
            text, spans = join_sentences([s.strip() for s in row["abstract"]])
            yield Passage.create(str(row["doc_id"]), 0, text), units_from_char_spans(text, spans, kind="sentence")


def wikiqa(path: Path, limit: int) -> Iterator[tuple[Passage, list[Unit]]]:
    docs: dict[str, dict[int, str]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            number = int(row["SentenceID"].rsplit("-", 1)[1])
            docs.setdefault(row["DocumentID"], {})[number] = row["Sentence"]
    for doc_id, by_number in itertools.islice(docs.items(), limit):
        text, spans = join_sentences([by_number[k] for k in sorted(by_number)])
        yield Passage.create(doc_id, 0, text), units_from_char_spans(text, spans, kind="sentence")


def propsegment(folder: Path) -> Iterator[tuple[Passage, list[Unit], list[list[tuple[int, int]]]]]:
    """Each segmented sentence as a passage, its reference propositions as units, and the dataset's word spans."""
    clusters = json.loads((folder / "document_clusters.dev.json").read_text(encoding="utf-8"))
    sentences = {}
    for cluster in clusters:
        for doc in cluster["documents"]:
            for i, s in enumerate(doc["sentences"]):
                words = [
                    (t["character_offset_of_token_in_sentence"], t["character_offset_of_token_in_sentence"] + len(t["text"]))
                    for t in s["tokens"]
                ]
                sentences[(doc["document_id"], i)] = (s["sentence_text"], words)
    for entry in json.loads((folder / "propositions.dev.json").read_text(encoding="utf-8")):
        key = (entry["sentence_id"]["document_id"], entry["sentence_id"]["sentence_index"])
        if key not in sentences:
            continue  # a NewsHead sentence: its text is not distributed
        text, words = sentences[key]
        reference = [r for r in entry["segmentation_responses"] if r.get("is_reference_response")]
        if not reference or not reference[0]["propositions"]:
            continue
        units = [
            proposition_from_word_indices(text, p["token_indices"], index=i, words=words)
            for i, p in enumerate(reference[0]["propositions"])
        ]
        yield Passage.create(f"{key[0]}-{key[1]}", 0, text), units, words
